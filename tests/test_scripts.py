"""The command-line entry points, run as a user runs them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from speakerid.training import train


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tiny_corpus_dir, tmp_path_factory):
    from conftest import compose_config

    run_dir = tmp_path_factory.mktemp("evalrun")
    cfg = compose_config(["debug=tiny", f"data.dir={tiny_corpus_dir}", f"run_dir={run_dir}", "trainer.epochs=2"])
    return run_dir, train(cfg)


def test_evaluate_reproduces_validation_and_writes_scores(trained_run, tiny_corpus_dir, tmp_path):
    run_dir, results = trained_run
    out = tmp_path / "scores.txt"
    proc = run("scripts/evaluate.py", "--checkpoint", run_dir / "checkpoints" / "last.pt",
               "--root", tiny_corpus_dir / "wav", "--trials", tiny_corpus_dir / "trials.txt", "--out", out,
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"EER {100 * results['val/eer']:.2f}%" in proc.stdout
    trials = (tiny_corpus_dir / "trials.txt").read_text().splitlines()
    lines = out.read_text().splitlines()
    assert len(lines) == len(trials)
    for trial, line in zip(trials, lines):
        label, enrol, test = trial.split()
        e, t, score, lab = line.split()
        assert (e, t, lab) == (enrol, test, label) and -1.0 <= float(score) <= 1.0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["eer"] == pytest.approx(results["val/eer"], abs=1e-9)
    assert report["min_dcf_p0.01"] == pytest.approx(results["val/min_dcf_p0.01"], abs=1e-9)


def test_evaluate_stops_on_a_trial_naming_a_missing_file(trained_run, tiny_corpus_dir, tmp_path):
    run_dir, _ = trained_run
    trials = tmp_path / "trials.txt"
    trials.write_text((tiny_corpus_dir / "trials.txt").read_text() + "1 syn00006/s00/00000.wav nobody/s0/x.wav\n")
    out = tmp_path / "scores.txt"
    proc = run("scripts/evaluate.py", "--checkpoint", run_dir / "checkpoints" / "last.pt",
               "--root", tiny_corpus_dir / "wav", "--trials", trials, "--out", out, "--device", "cpu")
    assert proc.returncode == 1
    assert "1 of" in proc.stderr and "nobody/s0/x.wav" in proc.stderr
    assert not out.exists()


def test_prepare_list_scans_voxceleb_layout(tmp_path):
    root = tmp_path / "wav"
    for rel in ["id002/vidB/00001.flac", "id001/vidA/00002.wav", "id001/vidA/00001.wav"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), np.zeros(160, dtype=np.int16), 16000)
    (root / "id001" / "vidA" / "notes.txt").write_text("not audio")
    out = tmp_path / "lists" / "train.txt"
    proc = run("scripts/prepare_list.py", "--root", root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == ("id001 id001/vidA/00001.wav\nid001 id001/vidA/00002.wav\n"
                               "id002 id002/vidB/00001.flac\n")
    assert "3 utterances of 2 speakers" in proc.stdout

    (root / "stray.wav").write_bytes(b"")
    proc = run("scripts/prepare_list.py", "--root", root, "--out", out)
    assert proc.returncode == 1 and "stray.wav" in proc.stderr


def test_train_py_reports_bad_config_without_a_traceback(tmp_path):
    proc = run("train.py", "debug=tiny", "head.m=2.0", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert "head.m=2.0 is not allowed" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
