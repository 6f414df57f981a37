"""A run folder belongs to one run, and a resume goes on with what the run had: a second run started into a
folder a run is training in is refused (and a killed run leaves no stale claim); best.pt always holds the
best EER last.pt records, however a save is cut short; a mid-epoch resume keeps the seed its epoch's order
was drawn from; trainer.resume=true steps over a sibling run folder whose config.yaml is damaged."""

import collections
import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from speakerid.checkpoint import CheckpointDir, load_checkpoint
from speakerid.data.dataset import CropDataset
from speakerid.distributed import DistEnv
from speakerid.training import setup_run, train
from speakerid.training import step as step_module
from speakerid.training.setup import Environment, setup_run_folder
from speakerid.training.state import RunState, find_resume_checkpoint

RUN_LOCK = ".run.lock"  # the file a run flock-s in its folder (README: the run folder)

# Holds an flock on the run folder's claim file, as the run of another process does, until killed.
HOLD_LOCK = """
import fcntl, sys
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.write("pid 4242 on test-host since now\\n")
f.flush()
print("locked", flush=True)
sys.stdin.read()
"""

# Tries to lock the claim file as a second process would: exit status 3 when it is held.
TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)
"""


def try_lock(run_dir) -> int:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(run_dir / RUN_LOCK)], timeout=60).returncode


@contextlib.contextmanager
def lock_held_by_another_process(run_dir):
    """`run_dir`'s run lock held by another process (HOLD_LOCK) until the block ends, when it is SIGKILLed."""
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / RUN_LOCK)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_a_run_started_into_a_folder_another_process_trains_in_is_refused_until_that_process_dies(tiny_cfg,
                                                                                                   tmp_path):
    """Two runs started into one run_dir both trained and left a folder mixing their checkpoints, config.yaml
    and metrics.jsonl: the only guard was an existing checkpoints/last.pt, which the first run writes after
    its first epoch."""
    run_dir = tmp_path / "run"
    with lock_held_by_another_process(run_dir):
        with pytest.raises(FileExistsError, match=rf"{run_dir} is in use: another process \(pid 4242 on test-host "
                                                  rf"since now\) is training there.* or give another run_dir"):
            setup_run(tiny_cfg("trainer.epochs=1", run_dir=run_dir))
        assert sorted(p.name for p in run_dir.iterdir()) == [RUN_LOCK]  # nothing of the second run written
    # SIGKILL left no stale claim: the kernel released the lock with the process
    run = setup_run(tiny_cfg("trainer.epochs=1", run_dir=run_dir))
    assert try_lock(run_dir) == 3  # held by this run while it lives ...
    run.close()
    assert try_lock(run_dir) == 0  # ... and given up when it closes


def test_a_command_into_a_folder_a_run_trains_in_is_refused_before_hydra_writes_there(tiny_corpus_dir, tmp_path):
    """The run's own claim comes after Hydra has written .hydra/ and train.log: the command line's check,
    before Hydra writes, refuses a folder in use too, so the running run's record stays its own."""
    run_dir = tmp_path / "run"
    with lock_held_by_another_process(run_dir):
        proc = subprocess.run([sys.executable, "train.py", "debug=tiny", f"data.dir={tiny_corpus_dir}",
                               f"run_dir={run_dir}", "trainer.epochs=1"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1 and f"{run_dir} is in use: another process" in proc.stderr, proc.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [RUN_LOCK]  # no .hydra, no train.log


def test_a_second_command_into_a_new_run_dir_is_refused_before_hydra_writes_there(tiny_corpus_dir, tmp_path):
    """The command line claims the folder before Hydra writes there, not only once the run's setup reaches it
    (after the corpus and the header pass): a second run started meanwhile replaced the first's .hydra/."""
    from speakerid.cli.train import launch

    run_dir = tmp_path / "race"
    seen = {}

    def second_command(*args, **kwargs):  # as the first run starts its setup, before the setup's own claim
        proc = subprocess.run([sys.executable, "train.py", "debug=tiny", f"data.dir={tiny_corpus_dir}",
                               f"run_dir={run_dir}", "seed=222"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        seen["second"] = proc
        return real(*args, **kwargs)

    from speakerid.training import run as run_module

    real = run_module.validate_config
    run_module.validate_config = second_command
    try:
        launch(["debug=tiny", f"data.dir={tiny_corpus_dir}", f"run_dir={run_dir}", "seed=111", "trainer.epochs=1",
                "~eval"], "python train.py")
    finally:
        run_module.validate_config = real
    proc = seen["second"]
    assert proc.returncode == 1 and f"{run_dir} is in use" in proc.stderr, proc.stderr
    assert "seed=111" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "seed=222" not in (run_dir / "train.log").read_text()
    assert try_lock(run_dir) == 0  # given up when the command ends


def test_a_setup_that_failed_after_claiming_gives_the_folder_up(tiny_cfg, tmp_path, monkeypatch):
    """A setup error after the claim (a list, an audio file) left the folder locked for the rest of a Python
    session: a shell's train.py then said another process was training there. setup_run gives it up."""
    from speakerid.training import setup as setup_module

    def broken(*args, **kwargs):
        raise ValueError("train list: a bad line")

    real = setup_module.setup_lists
    monkeypatch.setattr(setup_module, "setup_lists", broken)
    with pytest.raises(ValueError, match="a bad line"):
        setup_run(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    assert try_lock(tmp_path / "run") == 0
    monkeypatch.setattr(setup_module, "setup_lists", real)
    run = setup_run(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    assert try_lock(tmp_path / "run") == 3
    run.close()
    assert try_lock(tmp_path / "run") == 0


def test_a_run_past_its_first_epoch_in_another_process_is_named_as_training_not_as_a_run_to_resume(tiny_corpus_dir,
                                                                                                  tiny_cfg, tmp_path):
    run_dir = tmp_path / "run"
    settings = ["trainer.epochs=500", "trainer.eval_every_epochs=1000"]
    other = subprocess.Popen([sys.executable, "train.py", "debug=tiny", f"data.dir={tiny_corpus_dir}",
                              f"hydra.run.dir={run_dir}", *settings], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not last.exists():
            time.sleep(0.1)
        assert last.exists()
        # neither 'resume it with trainer.resume=true' nor a second run writing beside the first
        for resume in ("false", "true", str(last)):
            with pytest.raises(FileExistsError, match=rf"{run_dir} is in use: another process \(pid {other.pid} on "
                                                      rf".*\) is training there"):
                setup_run(tiny_cfg(*settings, f"trainer.resume={resume}", run_dir=run_dir))
        # nor a resume of it into another folder (a requeued job while its first copy still runs): a fork
        for resume in ("true", str(last)):
            with pytest.raises(FileExistsError, match=rf"trainer.resume: {last} is of a run still training, or being resumed: "
                                                      rf"{run_dir} is in use"):
                setup_run(tiny_cfg(*settings, f"trainer.resume={resume}", run_dir=tmp_path / "fork"))
        assert not (tmp_path / "fork").exists()
    finally:
        other.kill()
        other.wait(timeout=60)
    run = setup_run(tiny_cfg(*settings, f"trainer.resume={last}", run_dir=run_dir))  # killed: resumed in place
    assert run.state.progress.step >= 6
    run.close()


def test_a_stopped_run_is_resumed_by_one_process_at_a_time(tiny_cfg, tiny_corpus_dir, tmp_path):
    """Two copies of a requeued trainer.resume=true job, started together, both resumed the stopped run, each
    into a folder of its own: the run forked. The first takes a claim on the resumed run's folder too."""
    first = tmp_path / "runs" / "a"
    train(tiny_cfg("trainer.epochs=1", "~eval", run_dir=first))
    config = first / "config.yaml"  # as if it had been stopped after the first of two epochs
    config.write_text(config.read_text().replace("epochs: 1\n", "epochs: 2\n", 1))
    copy = setup_run(tiny_cfg("trainer.epochs=2", "~eval", "trainer.resume=true", run_dir=tmp_path / "runs" / "b"))
    try:
        second = subprocess.run([sys.executable, "train.py", "debug=tiny", f"data.dir={tiny_corpus_dir}",
                                 "trainer.epochs=2", "~eval", "trainer.resume=true",
                                 f"run_dir={tmp_path / 'runs' / 'c'}"], cwd=REPO, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 1
        assert (f"trainer.resume: {first / 'checkpoints' / 'last.pt'} is of a run still training, or being resumed: "
                f"{first} is in use") in second.stderr + second.stdout, second.stderr
        assert not (tmp_path / "runs" / "c" / "checkpoints").exists()
    finally:
        copy.close()
    assert try_lock(first) == 0 and try_lock(tmp_path / "runs" / "b") == 0  # given up with the run


def test_only_rank_0_claims_the_run_folder(tiny_cfg, tmp_path):
    for rank in (1, 0):
        env = Environment(DistEnv(rank=rank, local_rank=rank, world_size=2), torch.device("cpu"), tmp_path / "run")
        setup_run_folder(tiny_cfg(run_dir=env.run_dir), env)
        assert (env.claim is None) == (rank == 1)
        assert (env.run_dir / RUN_LOCK).exists() == (rank == 0)
        env.close()


class Killed(Exception):
    """Stands for a kill between two checkpoint writes."""


def best_and_last(checkpoints):
    last = load_checkpoint(checkpoints / "last.pt")["progress"]["best_eer"]
    best = checkpoints / "best.pt"
    return last, (load_checkpoint(best)["progress"]["best_eer"] if best.is_file() else None)


def test_a_kill_between_the_checkpoint_writes_of_a_best_epoch_never_leaves_the_run_without_best_pt(tiny_cfg,
                                                                                                   tmp_path,
                                                                                                   monkeypatch):
    """The step file and last.pt were written before best.pt: a kill in between left last.pt recording a
    best EER that no file held, and the resumed run never wrote best.pt unless it beat that EER."""
    armed, writes = {"on": False, "fired": False}, []
    real_state_save = RunState.save

    def state_save(self, best=False):
        armed["on"] = best and not armed["fired"]
        try:
            return real_state_save(self, best)
        finally:
            armed["on"] = False

    def write(real):
        def wrapper(self, *args):
            if armed["on"]:
                writes.append(real.__name__)
                if len(writes) == 2:  # the second of the two writes of the first best save
                    armed["fired"] = True
                    raise Killed
            return real(self, *args)
        return wrapper

    monkeypatch.setattr(RunState, "save", state_save)
    monkeypatch.setattr(CheckpointDir, "save", write(CheckpointDir.save))
    monkeypatch.setattr(CheckpointDir, "save_best", write(CheckpointDir.save_best))
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny_cfg("trainer.epochs=2", run_dir=run_dir))
    last, best = best_and_last(run_dir / "checkpoints")
    assert math.isinf(last) or (best is not None and best <= last), (last, best, writes)

    results = train(tiny_cfg("trainer.epochs=2", f"trainer.resume={run_dir / 'checkpoints' / 'last.pt'}",
                             run_dir=run_dir))
    last, best = best_and_last(run_dir / "checkpoints")
    logged = [json.loads(line)["val/eer"] for line in open(run_dir / "metrics.jsonl") if "val/eer" in line]
    assert results["epochs"] == 2 and math.isfinite(last)
    assert best == last == min(logged)


def stop_at_step(monkeypatch, step):
    calls = {"n": 0}
    real = step_module.TrainingStep.__call__

    def call(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(step_module.TrainingStep, "__call__", call)


def test_a_mid_epoch_resume_with_another_seed_is_refused_and_with_the_same_seed_draws_the_epoch_once(
        tiny_cfg, tmp_path, monkeypatch):
    """Resumed at step 3 of 6 with seed=7, the rest of epoch 1 was drawn from seed 7's order: of 36 utterances
    10 were drawn twice and 10 never, with only a warning that the seed differed."""
    drawn = []
    real_get = CropDataset.__getitem__
    monkeypatch.setattr(CropDataset, "__getitem__", lambda self, item: drawn.append(item[0]) or real_get(self, item))
    stop_at_step(monkeypatch, 3)
    first = train(tiny_cfg("trainer.epochs=1", "~eval", "seed=1234", run_dir=tmp_path / "a"))
    assert first["interrupted"] == "SIGTERM"
    stopped = tmp_path / "a" / "checkpoints" / "last.pt"
    position = load_checkpoint(stopped)["progress"]["position"]
    assert 0 < position < 36 and len(drawn) == position
    monkeypatch.undo()
    monkeypatch.setattr(CropDataset, "__getitem__", lambda self, item: drawn.append(item[0]) or real_get(self, item))

    with pytest.raises(ValueError, match=rf"trainer.resume={stopped}: the checkpoint stopped {position} utterances "
                                         rf"into epoch 1, whose order was drawn from seed=1234; with seed=7 .* "
                                         rf"Resume with seed=1234, or from a checkpoint written at an epoch's end"):
        setup_run(tiny_cfg("trainer.epochs=1", "~eval", "seed=7", f"trainer.resume={stopped}", run_dir=tmp_path / "b"))
    assert len(drawn) == position

    train(tiny_cfg("trainer.epochs=1", "~eval", "seed=1234", f"trainer.resume={stopped}", run_dir=tmp_path / "c"))
    assert collections.Counter(drawn) == collections.Counter(range(36))  # every utterance once


def test_an_epoch_end_resume_may_change_the_seed(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1", "~eval", run_dir=tmp_path / "a"))
    results = train(tiny_cfg("trainer.epochs=2", "~eval", "seed=7",
                             f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}", run_dir=tmp_path / "b"))
    assert results["epochs"] == 2


@pytest.mark.parametrize("content, problem", [
    (b"seed: [1, 2\n", r"not a readable YAML file \(while parsing"),
    (b"seed: \xff\n", r"not a readable YAML file \("),
    (b"- 1\n- 2\n", r"its top level is a list, not a mapping"),
])
def test_resume_true_steps_over_a_sibling_whose_config_yaml_is_damaged(tiny_cfg, tmp_path, caplog, content,
                                                                      problem):
    """A sibling folder with an unparsable config.yaml stopped every trainer.resume=true of the name with a
    YAML traceback that named no file."""
    from omegaconf import OmegaConf

    runs = tmp_path / "runs"
    cfg = tiny_cfg("trainer.resume=true", run_dir=runs / "new")
    for name, config in (("junk", content), ("good", OmegaConf.to_yaml(cfg, resolve=True).encode())):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.pt").write_bytes(b"")
        (runs / name / "config.yaml").write_bytes(config)
    os.utime(runs / "junk" / "checkpoints" / "last.pt", (time.time() + 60,) * 2)  # the newer of the two
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        assert find_resume_checkpoint(cfg, runs / "new") == runs / "good" / "checkpoints" / "last.pt"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(runs / "junk" / "config.yaml") in w and "that run folder is not resumed" in w for w in warnings)
    assert any(re.search(problem, w) for w in warnings), warnings
