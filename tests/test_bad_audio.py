"""Bad audio found during training: data.bad_audio=error stops naming the file; skip replaces the file by
another utterance, logs it and counts it in TensorBoard, and the run finishes."""

import shutil

import numpy as np
import pytest
import soundfile as sf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from speakerid.data.audio import AudioError
from speakerid.training import train


@pytest.fixture
def corpus_with_bad_files(tiny_corpus_dir, tmp_path):
    root = tmp_path / "wav"
    lines = (tiny_corpus_dir / "train_list.txt").read_text().splitlines()
    for line in lines:
        rel = line.split()[1]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_corpus_dir / "wav" / rel, root / rel)
    bad = {}

    def put(name, writer):
        rel = f"syn00000/bad/{name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        writer(root / rel)
        bad[name] = rel

    tone = (0.1 * np.sin(np.arange(24000) / 5.0)).astype(np.float32)
    put("garbage.wav", lambda p: p.write_bytes(b"RIFF" + b"\0" * 100))
    put("empty.wav", lambda p: sf.write(str(p), np.zeros(0, np.float32), 16000))
    put("rate8k.wav", lambda p: sf.write(str(p), tone, 8000))
    put("stereo.wav", lambda p: sf.write(str(p), np.stack([tone, tone], 1), 16000))
    with_nans = tone.copy()
    with_nans[::500] = np.nan  # in every crop: only the crop is read, so only its samples can be checked
    put("nan.wav", lambda p: sf.write(str(p), with_nans, 16000, subtype="FLOAT"))

    def truncated(p):
        sf.write(str(p.with_suffix(".tmp.flac")), np.tile(tone, 8), 16000)
        p.write_bytes(p.with_suffix(".tmp.flac").read_bytes()[:5000])
        p.with_suffix(".tmp.flac").unlink()

    put("truncated.flac", truncated)
    return root, lines, bad


def write_list(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_skip_policy_replaces_logs_and_counts(tiny_cfg, tmp_path, corpus_with_bad_files):
    root, lines, bad = corpus_with_bad_files
    entries = lines + [f"syn00000 {rel}" for rel in bad.values()]  # 36 + 6 = 42 = 7 batches of 6
    lst = write_list(tmp_path / "train.txt", entries)
    results = train(tiny_cfg(f"data.train_list={lst}", f"data.train_root={root}", "data.bad_audio=skip",
                             "data.check_files=true", "trainer.epochs=1", run_dir=tmp_path / "run"))
    assert results["epochs"] == 1
    logged = (tmp_path / "run" / "skipped_files.txt").read_text()
    for name, rel in bad.items():
        assert rel in logged, name
    assert "contains NaN" in logged and "sample rate is 8000 Hz" in logged and "2 channels" in logged
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    counts = [e.value for e in acc.Scalars("train/skipped_files")]
    assert counts[-1] == len(logged.splitlines()) >= len(bad)


@pytest.mark.parametrize("name,message", [
    ("nan.wav", "contains NaN or infinite samples"),
    ("truncated.flac", "cannot read audio"),
    ("stereo.wav", "expected mono audio, got 2 channels"),
])
def test_error_policy_names_the_file(tiny_cfg, tmp_path, corpus_with_bad_files, name, message):
    root, lines, bad = corpus_with_bad_files
    lst = write_list(tmp_path / "train.txt", lines[:5] + [f"syn00000 {bad[name]}"] + lines[6:12])
    with pytest.raises(AudioError, match=f"{bad[name]}: {message}"):
        train(tiny_cfg(f"data.train_list={lst}", f"data.train_root={root}", "trainer.epochs=1"))


def test_a_trial_file_that_cannot_be_embedded_stops_the_run_before_the_first_step(tiny_cfg, tiny_corpus_dir,
                                                                                   tmp_path):
    """8 kHz, 10 ms and non-audio trial files used to crash the first validation, after an epoch of training."""
    root = tmp_path / "trial_wav"
    shutil.copytree(tiny_corpus_dir / "wav", root)
    tone = (0.1 * np.sin(np.arange(24000) / 5.0)).astype(np.float32)
    sf.write(str(root / "rate8k.wav"), tone, 8000)
    sf.write(str(root / "tiny.wav"), tone[:160], 16000)  # 10 ms
    (root / "text.wav").write_text("not audio")
    trials = (tiny_corpus_dir / "trials.txt").read_text().splitlines()
    good = trials[0].split()[1]
    lines = trials + [f"0 {good} rate8k.wav", f"1 {good} tiny.wav", f"0 text.wav {good}"]
    write_list(tmp_path / "trials.txt", lines)
    cfg = tiny_cfg(f"eval.trials={tmp_path / 'trials.txt'}", f"eval.root={root}", run_dir=tmp_path / "run")
    with pytest.raises(AudioError, match=r"(?s)3 files of trial list .*cannot be embedded.*data.resample=true"
                                         r".*rate8k.wav: 8000 Hz.*tiny.wav: 0.010 s.*text.wav: cannot read audio"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was taken
