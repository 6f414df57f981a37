"""Configs read from files the user is given (checkpoints, averaged checkpoints, model files, a run's
config.yaml) are data: no interpolation in them is ever resolved (resolvers run code: speakerid.claim creates
folders). Paths given on the command line are taken literally, a checkpoint's relative data paths are those
of the folder its training ran in, and only checkpoints of one run (or at least of one model) average."""

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

import speakerid
import speakerid.cli.train  # noqa: F401  registers the speakerid.claim resolver, as any `speakerid` command does
from conftest import compose_config, speakerid_cli
from speakerid.builders import UnsafeFileConfigError, build_model
from speakerid.checkpoint import FORMAT_VERSION


def checkpoint_of(*overrides: str, step: int = 6) -> dict:
    """A checkpoint as training writes one (resolved config), of an untrained debug=tiny model."""
    cfg = compose_config(["debug=tiny", *overrides])
    torch.manual_seed(step)  # checkpoints of other steps hold other weights, as training's do
    return {"format_version": FORMAT_VERSION, "config": OmegaConf.to_container(cfg, resolve=True),
            "model": build_model(cfg).state_dict(), "head": {}, "speakers": ["a", "b"],
            "progress": {"epoch": 1, "step": step}}


def claim(folder) -> str:
    """An interpolation that, once resolved, creates `folder`/made."""
    return "${speakerid.claim:" + str(folder) + ",made}"


@pytest.mark.parametrize("key", ["data.note", "data.train_list", "data.sample_rate", "seed", "trainer.device"])
def test_no_interpolation_in_a_checkpoint_is_resolved(tmp_path, tiny_corpus_dir, key):
    victim = tmp_path / "victim"
    checkpoint = checkpoint_of(f"data.dir={tiny_corpus_dir}", f"run_dir={tmp_path / 'run'}")
    *parents, last = key.split(".")
    node = checkpoint["config"]
    for part in parents:
        node = node[part]
    node[last] = claim(victim)
    torch.save(checkpoint, tmp_path / "crafted.pt")
    message = rf"crafted.pt: its config value {key}='\$\{{speakerid.claim:.*' is an interpolation"

    with pytest.raises(UnsafeFileConfigError, match=message):
        speakerid.load(tmp_path / "crafted.pt", device="cpu")
    # data.train_list: AS-norm's default cohort
    proc = speakerid_cli("evaluate", "--model", tmp_path / "crafted.pt", "--out-dir", tmp_path / "eval",
                         "--device", "cpu", "eval.asnorm.enabled=true")
    assert proc.returncode == 1 and f"config value {key}=" in proc.stderr, proc.stderr
    torch.save(checkpoint_of(f"data.dir={tiny_corpus_dir}", f"run_dir={tmp_path / 'run'}", step=3),
               tmp_path / "clean.pt")
    proc = speakerid_cli("average", "--out", tmp_path / "avg.pt", "--allow-different-runs", tmp_path / "clean.pt",
                         tmp_path / "crafted.pt")
    assert proc.returncode == 1 and f"config value {key}=" in proc.stderr, proc.stderr
    assert not victim.exists() and not (tmp_path / "avg.pt").exists()


def test_no_interpolation_in_a_model_file_is_resolved(tmp_path):
    torch.save(checkpoint_of(), tmp_path / "best.pt")
    path = speakerid.load(tmp_path / "best.pt", device="cpu").save(tmp_path / "model.pt")
    content = torch.load(path, weights_only=True)
    victim = tmp_path / "victim"
    content["config"]["data"] = {"dir": claim(victim)}
    torch.save(content, tmp_path / "crafted.pt")
    with pytest.raises(UnsafeFileConfigError, match=r"crafted.pt: its config value data.dir=.* is an interpolation"):
        speakerid.load(tmp_path / "crafted.pt")
    assert not victim.exists()


def write_run(run_dir, config_yaml: str, eer: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "val/eer": eer, "val/min_dcf_p0.01": 0.5}) + "\n")


def test_summarize_and_compare_resolve_nothing_in_a_run_config(tmp_path):
    victim = tmp_path / "victim"
    write_run(tmp_path / "a", f"seed: {claim(victim)}\nname: x\n", 0.1)
    write_run(tmp_path / "b", "seed: 7\nname: x\n", 0.2)
    write_run(tmp_path / "c", "seed: ${oc.env:HOME}\n", 0.3)
    out = tmp_path / "summary.json"
    proc = speakerid_cli("summarize", tmp_path / "a", tmp_path / "b", tmp_path / "c", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert [r["seed"] for r in json.loads(out.read_text())["runs"]] == [None, 7, None]  # unknown: shown as '-'

    # an evaluation JSON: the seed of the run its checkpoint lies in (<run>/checkpoints/best.pt)
    scores = tmp_path / "trials.cosine.scores.txt"
    scores.write_text("a/1.wav b/1.wav 0.9 1\na/1.wav c/1.wav 0.1 0\n")
    evaluation = tmp_path / "trials.cosine.json"
    evaluation.write_text(json.dumps({"eer": 0.0, "min_dcf_p0.01": 0.0, "scores": str(scores),
                                      "checkpoint": str(tmp_path / "a" / "checkpoints" / "best.pt")}))
    proc = speakerid_cli("summarize", evaluation)
    assert proc.returncode == 0, proc.stderr
    proc = speakerid_cli("compare", evaluation, scores, "--names", "json", "scores", "--out", tmp_path / "det.png")
    assert proc.returncode == 0, proc.stderr
    assert not victim.exists()


def test_average_takes_checkpoints_of_one_run_or_at_least_of_one_model(tmp_path):
    def save(name: str, *overrides: str, step: int = 6):
        torch.save(checkpoint_of(*overrides, step=step), tmp_path / name)
        return tmp_path / name

    run = ("run_dir=/runs/debug/1", "seed=1")
    newest = save("newest.pt", *run, step=12)

    def average(other, *flags):
        return speakerid_cli("average", "--out", tmp_path / "avg.pt", "--overwrite", *flags, other, newest)

    # another model or fbank: refused, also with --allow-different-runs, the differing keys named
    for overrides, named in [(("model.unbiased_context_std=true",), "model.unbiased_context_std: True -> False"),
                             (("features.fbank.f_max=4000.0",), "features.fbank.f_max: 4000.0 -> 7600.0")]:
        other = save("other.pt", *run, *overrides)
        for flags in ([], ["--allow-different-runs"]):
            proc = average(other, *flags)
            assert proc.returncode == 1 and named in proc.stderr and "otherwise" in proc.stderr, proc.stderr
    # another run (another seed, its own folder): only with --allow-different-runs
    other = save("other.pt", "run_dir=/runs/debug/2", "seed=2")
    proc = average(other)
    assert proc.returncode == 1 and "seed: 2 -> 1" in proc.stderr and "--allow-different-runs" in proc.stderr, \
        proc.stderr
    assert not (tmp_path / "avg.pt").exists()
    assert average(other, "--allow-different-runs").returncode == 0
    # the run resumed into a new folder
    proc = average(save("resumed.pt", "run_dir=/runs/debug/0", "seed=1", "trainer.resume=true"))
    assert proc.returncode == 0 and "the mean of 2 checkpoints" in proc.stdout, proc.stderr


WEIRD = "we,ird 'q' \"d\" ${oc.env:HOME} {x} $y"


def test_evaluate_takes_trials_and_root_literally(tmp_path, tiny_corpus_dir):
    folder = tmp_path / WEIRD
    shutil.copytree(tiny_corpus_dir / "wav", folder / "wav")
    trials = folder / f"{WEIRD}.txt"
    shutil.copy(tiny_corpus_dir / "trials.txt", trials)
    torch.save(checkpoint_of(f"data.dir={tiny_corpus_dir}"), tmp_path / "best.pt")
    proc = speakerid_cli("evaluate", "--model", tmp_path / "best.pt", "--trials", trials, "--root", folder / "wav",
                         "--out-dir", tmp_path / "eval", "--device", "cpu")
    assert proc.returncode == 0 and "EER" in proc.stdout, proc.stderr
    report = json.loads((tmp_path / "eval" / f"{WEIRD}.cosine.json").read_text())
    assert (report["trials"], report["root"], report["name"]) == (str(trials), str(folder / "wav"), WEIRD)


def test_relative_data_paths_are_those_of_the_folder_training_ran_in(tmp_path, tiny_corpus_dir, monkeypatch):
    trained_in, elsewhere, run_dir = tmp_path / "trained_in", tmp_path / "elsewhere", tmp_path / "run"
    (trained_in / "data").mkdir(parents=True)
    (trained_in / "data" / "corpus").symlink_to(tiny_corpus_dir)
    trials = (tiny_corpus_dir / "trials.txt").read_text().splitlines()
    decoy = elsewhere / "data" / "corpus"  # the same relative path under the folder evaluate runs in
    decoy.mkdir(parents=True)
    (decoy / "wav").symlink_to(tiny_corpus_dir / "wav")
    (decoy / "trials.txt").write_text("\n".join(trials[:4]) + "\n")
    # as train.py through Hydra leaves it (a relative data.dir is resolved as given; hydra.yaml is not resolved)
    victim = tmp_path / "victim"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  run:\n    dir: {claim(victim)}\n  runtime:\n    cwd: {trained_in}\n")
    torch.save(checkpoint_of("data.dir=data/corpus", f"run_dir={run_dir}"), tmp_path / "best.pt")
    monkeypatch.chdir(elsewhere)

    proc = speakerid_cli("evaluate", "--model", tmp_path / "best.pt", "--out-dir", tmp_path / "eval", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval" / "trials.cosine.json").read_text())
    assert report["trials"] == str(trained_in / "data" / "corpus" / "trials.txt")
    assert report["n_trials"] == len(trials) and not victim.exists()

    # without the record (a run started from Python, a checkpoint copied away from its run): stop, saying why
    shutil.rmtree(run_dir / ".hydra")
    proc = speakerid_cli("evaluate", "--model", tmp_path / "best.pt", "--out-dir", tmp_path / "eval2",
                         "--device", "cpu")
    assert proc.returncode == 1 and "data.dir=data/corpus" in proc.stderr, proc.stderr
    assert "relative to the folder its training ran in" in proc.stderr and "--trials and --root" in proc.stderr
    proc = speakerid_cli("evaluate", "--model", tmp_path / "best.pt", "--out-dir", tmp_path / "eval2",
                         "--device", "cpu", "--trials", decoy / "trials.txt", "--root", decoy / "wav")
    assert proc.returncode == 0, proc.stderr
