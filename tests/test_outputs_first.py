"""Commands check that they can write their outputs before doing the work, and say how to fix what they
cannot do (evaluate resamples with --resample)."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, speakerid_cli
from speakerid.training import train


def run(script, *args):
    """A script of the checkout, or a `speakerid` subcommand (a name without .py: run in this process)."""
    if not script.endswith(".py"):
        return speakerid_cli(script, *args)
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_corpus_dir):
    from conftest import compose_config

    out = tmp_path_factory.mktemp("run")
    train(compose_config(["debug=tiny", f"data.dir={tiny_corpus_dir}", f"run_dir={out}", "trainer.epochs=1", "~eval"]))
    return out / "checkpoints" / "last.pt"


def test_unwritable_outputs_are_named_before_any_work(checkpoint, tiny_corpus_dir, tmp_path):
    a_folder = tmp_path / "a-folder"
    a_folder.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    proc = run("embed", "--model", checkpoint, "--folder", tiny_corpus_dir / "wav", "--out", a_folder)
    assert proc.returncode == 1 and f"--out {a_folder} is a folder" in proc.stderr, proc.stderr
    assert "embedded" not in proc.stdout
    proc = run("evaluate", "--model", checkpoint, "--out-dir", a_file / "eval")
    assert proc.returncode == 1 and f"--out-dir {a_file / 'eval'} is not writable" in proc.stderr, proc.stderr
    proc = run("check-data", "--trials", tiny_corpus_dir / "trials.txt", "--root",
               tiny_corpus_dir / "wav", "--out", a_folder)
    assert proc.returncode == 1 and f"--out {a_folder} is a folder" in proc.stderr, proc.stderr


def test_evaluate_on_8khz_audio_offers_an_option_that_works(checkpoint, tiny_corpus_dir, tmp_path):
    root = tmp_path / "wav8k"
    trials = (tiny_corpus_dir / "trials.txt").read_text().splitlines()[:20]
    for line in trials:
        for rel in line.split()[1:]:
            audio, rate = sf.read(str(tiny_corpus_dir / "wav" / rel), dtype="float32")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(root / rel), audio[::2].astype(np.float32), rate // 2)
    (tmp_path / "trials.txt").write_text("\n".join(trials) + "\n")
    args = ["--model", checkpoint, "--trials", tmp_path / "trials.txt", "--root", root, "--out-dir", tmp_path / "e"]
    proc = run("evaluate", *args)
    assert proc.returncode == 1 and "8000 Hz, expected 16000 Hz" in proc.stderr and "--resample" in proc.stderr
    assert "data.resample" not in proc.stderr, proc.stderr
    proc = run("evaluate", *args, "--resample")
    assert proc.returncode == 0 and "EER" in proc.stdout, proc.stderr


def test_verify_on_a_file_with_nan_samples_is_an_error_naming_it(checkpoint, tiny_corpus_dir, tmp_path):
    """It printed 'score nan < threshold: different speakers' and exited 0; an error exits 2 (1 means
    different speakers)."""
    good = next((tiny_corpus_dir / "wav").rglob("*.wav"))
    audio, rate = sf.read(str(good), dtype="float32")
    audio[100:110] = np.nan
    sf.write(str(tmp_path / "nan.wav"), audio, rate, subtype="FLOAT")
    proc = run("verify", "--model", checkpoint, "--threshold", "0.5", good, tmp_path / "nan.wav")
    # named when the file is read, before any embedding
    assert proc.returncode == 2 and "nan.wav: contains NaN or infinite samples" in proc.stderr, proc.stderr
    assert "score" not in proc.stdout
