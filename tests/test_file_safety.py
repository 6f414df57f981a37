"""No file a user is given can make the program run code: a checkpoint's stored config is only built when it
names the project's own encoders and features (an allow-list checked before anything is called)."""


import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, speakerid_cli
from speakerid.builders import UnsafeFileConfigError, build_model, extractor_from_checkpoint
from speakerid.checkpoint import FORMAT_VERSION


def tiny_checkpoint() -> dict:
    cfg = compose_config(["debug=tiny"])
    return {"format_version": FORMAT_VERSION, "config": OmegaConf.to_container(cfg, resolve=True),
            "model": build_model(cfg).state_dict(), "speakers": ["a", "b"]}


def test_the_projects_own_classes_are_built():
    extractor, cfg = extractor_from_checkpoint(tiny_checkpoint())
    assert cfg.model.channels == 16 and extractor(torch.randn(2, 16000)).shape == (2, 32)


def opener(victim) -> dict:
    return {"_target_": "builtins.open", "file": str(victim), "mode": "w"}


@pytest.mark.parametrize("case", ["model", "fbank", "nested", "nested_args"])
def test_a_checkpoint_naming_anything_else_creates_no_file(tmp_path, case):
    victim = tmp_path / "created-by-the-checkpoint.txt"
    checkpoint = tiny_checkpoint()
    config = checkpoint["config"]
    if case == "model":
        config["model"] = opener(victim)
    elif case == "fbank":
        config["features"]["fbank"] = opener(victim)
    elif case == "nested":  # instantiate builds nested _target_s too
        config["model"]["channels"] = opener(victim)
    else:
        config["model"]["channels"] = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    with pytest.raises(UnsafeFileConfigError, match=r"does not build from a file"):
        extractor_from_checkpoint(checkpoint, source="evil.pt")
    assert not victim.exists()


def test_an_interpolation_in_a_checkpoint_config_is_refused():
    checkpoint = tiny_checkpoint()
    checkpoint["config"]["model"]["channels"] = "${oc.env:HOME}"
    with pytest.raises(UnsafeFileConfigError, match="interpolation"):
        extractor_from_checkpoint(checkpoint)


def test_evaluate_refuses_a_malicious_checkpoint_before_calling_anything(tmp_path):
    victim = tmp_path / "truncated.txt"
    victim.write_text("the user's data\n")
    checkpoint = tiny_checkpoint()
    checkpoint["config"]["model"] = opener(victim)
    torch.save(checkpoint, tmp_path / "evil.pt")
    proc = speakerid_cli("evaluate", "--model", tmp_path / "evil.pt", "--trials", tmp_path / "none.txt",
                         "--root", tmp_path)
    assert proc.returncode == 1 and "builtins.open" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert victim.read_text() == "the user's data\n"
