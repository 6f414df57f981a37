"""Every shipped config composes, and bad values stop the run before any data is read, naming the key."""

from pathlib import Path

import pytest

from conftest import CONFIGS, compose_config
from speakerid.config import ConfigError, validate_config

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
PATHS = {
    "data.train_list": "/x/train.txt", "data.train_root": "/x/wav",
    "data.trials": "/x/trials.txt", "data.trials_root": "/x/wav", "data.dir": "/x",
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"experiment={experiment}", "run_dir=/tmp/x"])
    overrides = [f"{k}={v}" for k, v in PATHS.items() if _is_missing(cfg, k)]
    cfg = compose_config([f"experiment={experiment}", "run_dir=/tmp/x", "trainer.precision=fp32", *overrides])
    validate_config(cfg)
    assert cfg.name == experiment
    assert cfg.head.emb_dim == cfg.model.emb_dim


def _is_missing(cfg, dotted):
    from omegaconf import OmegaConf

    return OmegaConf.is_missing(OmegaConf.select(cfg, dotted.rsplit(".", 1)[0]), dotted.rsplit(".", 1)[1])


def test_default_is_the_smoke_experiment_on_synthetic_data():
    cfg = compose_config(["run_dir=/tmp/x"])
    validate_config(cfg)
    assert cfg.name == "smoke"
    assert cfg.data.generate is not None
    assert cfg.model.channels == 128
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 2e-5 and cfg.scheduler.gamma == 0.97


def test_paper_defaults_of_the_groups():
    cfg = compose_config(["experiment=vox2_ecapa_c1024", "run_dir=/tmp/x"])
    assert (cfg.model.channels, cfg.model.emb_dim, cfg.head.m, cfg.head.s) == (1024, 256, 0.2, 30.0)
    assert cfg.data.crop_frames == 200
    assert compose_config(["experiment=vox2_ecapa_c512"]).model.channels == 512


@pytest.mark.parametrize("override,key", [
    ("head.m=1.6", "head.m"),
    ("head.m=-0.2", "head.m"),
    ("head.s=0", "head.s"),
    ("data.batch_size=1", "data.batch_size"),
    ("data.crop_frames=0", "data.crop_frames"),
    ("data.sample_dtype=float16", "data.sample_dtype"),
    ("optim.lr=0", "optim.lr"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("trainer.precision=bf16", "trainer.precision"),  # trainer.device=cpu in debug=tiny
    ("trainer.grad_clip_norm=-1", "trainer.grad_clip_norm"),
    ("trainer.log_every_steps=0", "trainer.log_every_steps"),
])
def test_bad_values_name_the_key(override, key):
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_required_paths_are_named():
    cfg = compose_config(["experiment=arsc", "run_dir=/tmp/x"])
    with pytest.raises(ConfigError, match="data.dir"):
        validate_config(cfg)


def test_unknown_key_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="head.margin"):
        compose_config(["head.margin=0.3"])


def test_configs_mirror_the_package():
    groups = {p.name for p in CONFIGS.iterdir() if p.is_dir()}
    assert {"data", "model", "head", "optim", "scheduler", "trainer", "experiment"} <= groups
    assert Path(CONFIGS / "train.yaml").is_file()
