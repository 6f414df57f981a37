"""Runs that survive: SIGKILL at random moments (one of them in the middle of a checkpoint write) followed
by resumes ends with the parameters of an uninterrupted run; SIGTERM checkpoints and says how to resume;
NaN/inf steps are skipped and counted, too many in a row stop the run; a full disk keeps the previous
checkpoint intact; an unwritable run folder is an error before training."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from speakerid.checkpoint import CheckpointDir, load_checkpoint
from speakerid.training import NonFiniteLossError, setup_run, train

# Runs train.py in-process after arming a fault: SIGKILL ourselves inside the N-th checkpoint write, after
# the temporary file is complete and before it is renamed over the final name.
KILL_IN_SAVE = """
import os, runpy, signal, sys
import speakerid.checkpoint as ckpt
calls = {"n": 0}
real_replace = os.replace
def replace(src, dst):
    if str(src).endswith(".tmp") and "step-" in str(src):
        calls["n"] += 1
        if calls["n"] == int(os.environ["KILL_AT_SAVE"]):
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
ckpt.os.replace = replace
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def train_command(corpus, run_dir, *extra):
    return [f"data.dir={corpus}", f"hydra.run.dir={run_dir}", "debug=tiny", "trainer.epochs=3",
            "trainer.checkpoint_every_steps=1", "trainer.keep_checkpoints=2", "trainer.eval_every_epochs=3", *extra]


def params(path):
    ckpt = load_checkpoint(path)
    return ckpt["progress"], {f"{part}.{k}": v for part in ("model", "head") for k, v in ckpt[part].items()}


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_uninterrupted(tiny_corpus_dir, tmp_path):
    straight = tmp_path / "straight"
    proc = subprocess.run([sys.executable, "train.py", *train_command(tiny_corpus_dir, straight)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    runs = tmp_path / "runs"
    rng = random.Random(0)
    kills = 0
    attempt = 0
    while True:
        attempt += 1
        args = train_command(tiny_corpus_dir, runs / f"attempt{attempt:02d}", "trainer.resume=true")
        env = dict(os.environ)
        if attempt == 2:  # die inside a checkpoint write
            cmd = [sys.executable, "-c", KILL_IN_SAVE, *args]
            env["KILL_AT_SAVE"] = "3"
        else:
            cmd = [sys.executable, "train.py", *args]
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if attempt not in (2,) and attempt <= 6:
            # wait until this attempt trains, then kill it at a random moment
            deadline = time.time() + 120
            while p.poll() is None and time.time() < deadline and not list(
                    (runs / f"attempt{attempt:02d}").glob("checkpoints/step-*.pt")):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.6))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
        stderr = p.communicate(timeout=300)[1]
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, stderr[-2000:]
        if attempt == 2:
            kills += 1
            left = list((runs / "attempt02" / "checkpoints").glob(".step-*.tmp"))
            assert left, "the injected kill should leave a complete but unrenamed temporary file"
        assert attempt < 20

    assert kills >= 3
    final = max(runs.glob("*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
    progress_a, a = params(straight / "checkpoints" / "last.pt")
    progress_b, b = params(final)
    assert progress_a["step"] == progress_b["step"] == 18 and progress_b["epoch"] == 3
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=0, msg=name)
    for folder in runs.iterdir():  # every checkpoint that exists under a final name is complete
        for ckpt in folder.glob("checkpoints/*.pt"):
            load_checkpoint(ckpt)


def test_sigterm_checkpoints_and_says_how_to_resume(tiny_corpus_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"data.dir={tiny_corpus_dir}", f"hydra.run.dir={run_dir}", "debug=tiny", "trainer.epochs=500",
            "trainer.eval_every_epochs=1000"]
    p = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "SIGTERM received" in out and "trainer.resume=true" in out
    assert "Traceback" not in out
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert ckpt["progress"]["step"] == logged[-1]  # the checkpoint holds the last step taken
    assert 0 < ckpt["progress"]["step"] < 500 * 6


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tiny_cfg, tmp_path):
    trainer = setup_run(tiny_cfg("trainer.epochs=2", "trainer.max_nonfinite_steps=4", run_dir=tmp_path / "run"))
    real_forward = trainer.parts.head.forward
    calls = {"n": 0}
    snapshots = {}

    def sometimes_nan(embeddings, labels):
        calls["n"] += 1
        loss, top1 = real_forward(embeddings, labels)
        if calls["n"] in (3, 4):
            snapshots[calls["n"]] = [p.detach().clone() for p in trainer.parts.parameters]
            return loss * float("nan"), top1
        if calls["n"] == 5:  # a finite loss with an infinite gradient
            snapshots[5] = [p.detach().clone() for p in trainer.parts.parameters]
            embeddings.register_hook(lambda g: g * float("inf"))
            loss, top1 = real_forward(embeddings, labels)
            assert torch.isfinite(loss)
            return loss, top1
        if calls["n"] == 6:
            snapshots[6] = [p.detach().clone() for p in trainer.parts.parameters]
        return loss, top1

    trainer.parts.head.forward = sometimes_nan
    results = trainer.fit()
    assert results["nonfinite_steps"] == 3 and results["epochs"] == 2
    for before, after in ((3, 4), (4, 5), (5, 6)):  # the skipped steps changed nothing
        for x, y in zip(snapshots[before], snapshots[after]):
            assert torch.equal(x, y)
    scalars = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("train/nonfinite_steps", 0) for r in scalars) == 3

    # All steps NaN: after 3 in a row the run stops, and the last good checkpoint is untouched.
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    before = load_checkpoint(last)["progress"]
    again = setup_run(tiny_cfg("trainer.epochs=4", "trainer.max_nonfinite_steps=3", f"trainer.resume={last}",
                             run_dir=tmp_path / "run2"))
    again.parts.head.forward = lambda e, l: (real_forward(e, l)[0] * float("nan"), torch.tensor(0.0))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps.*trainer.max_nonfinite_steps=3"):
        again.fit()
    assert load_checkpoint(last)["progress"] == before
    assert not (tmp_path / "run2" / "checkpoints" / "last.pt").exists()


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep=2)
    ckpts.save({"format_version": 1, "step": torch.tensor(1)}, step=1)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*step-000000002.pt \(No space left on device\)"
                                      r"; the previous checkpoint, if any, is intact"):
        ckpts.save({"format_version": 1, "step": torch.tensor(2)}, step=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(ckpts.last)["step"].item() == 1
    assert sorted(p.name for p in ckpts.folder.iterdir()) == ["last.pt", "step-000000001.pt"]


def test_checkpoint_rotation_keeps_the_last_k(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=2)
    for step in range(1, 6):
        ckpts.save({"format_version": 1, "step": torch.tensor(step)}, step=step)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-000000004.pt", "step-000000005.pt"]
    assert load_checkpoint(ckpts.last)["step"].item() == 5
    assert os.path.samefile(ckpts.last, tmp_path / "step-000000005.pt")  # a link, not a second write


def test_mid_epoch_saves_never_push_an_epoch_end_out(tmp_path):
    """Epoch ends rotate among themselves; a mid-epoch save (a stop signal, checkpoint_every_*) is kept only
    while it is the newest, so `average --last N` finds the last N epoch ends after a preemption."""
    ckpts = CheckpointDir(tmp_path, keep=2)

    def save(step, position):
        return ckpts.save({"format_version": 1, "progress": {"position": position}}, step=step)

    for step, position in [(6, 0), (9, 18), (12, 0), (15, 18), (16, 24)]:
        save(step, position)
    names = sorted(p.name for p in tmp_path.glob("step-*.pt"))
    assert names == ["step-000000006.pt", "step-000000012.pt", "step-000000016-mid.pt"]
    assert os.path.samefile(ckpts.last, tmp_path / "step-000000016-mid.pt")
    save(18, 0)  # the epoch ends: the mid-epoch save is superseded
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-000000012.pt", "step-000000018.pt"]


def test_a_run_resumed_in_another_folder_carries_its_best_checkpoint(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "first"))
    best = tmp_path / "first" / "checkpoints" / "best.pt"
    resumed = setup_run(tiny_cfg("trainer.epochs=2", f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}",
                                 run_dir=tmp_path / "second"))
    assert os.path.samefile(tmp_path / "second" / "checkpoints" / "best.pt", best)
    resumed.close()


def test_unwritable_run_folder_fails_before_training(tiny_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="is not writable"):
        setup_run(tiny_cfg(run_dir=blocker / "run"))
