"""Multi-process training with torchrun on CPU (gloo): the ranks hold the same parameters after every
step, the result matches one process with the same global batch, and a torchrun training run logs and
checkpoints once (rank 0), validates with embeddings gathered from both ranks, and resumes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from speakerid.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def env(**extra):
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    e.update(extra)
    return e


def run(cmd, timeout=300, **extra_env):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env(**extra_env))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def run_or_kill(cmd, timeout):
    """(returncode, output) of cmd; on a timeout every process it started is killed and the test fails, so
    that a hang (ranks waiting in mismatched collectives until gloo's 30-minute timeout) is a failure."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        for pid in children(proc.pid):  # torchrun starts its workers in sessions of their own
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"hung for {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def children(pid):
    """The ids of the processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("frozen_bn", [True, False])
def test_two_ranks_agree_and_match_one_process(tiny_corpus_dir, tmp_path, frozen_bn):
    batch, steps = (12, 3) if frozen_bn else (36, 1)
    overrides = ["debug=tiny", f"data.dir={tiny_corpus_dir}", f"data.batch_size={batch}",
                 "features.specaugment.enabled=false", "optim=sgd", "optim.lr=0.005"]
    flag = {"SPEAKERID_TEST_FROZEN_BN": "1" if frozen_bn else "0"}
    run(TORCHRUN + ["tests/ddp_driver.py", str(tmp_path / "ddp"), str(steps), *overrides,
                    f"run_dir={tmp_path / 'r2'}"], **flag)
    run([sys.executable, "tests/ddp_driver.py", str(tmp_path / "one"), str(steps), *overrides,
         f"run_dir={tmp_path / 'r1'}"], **flag)
    ddp = json.loads((tmp_path / "ddp" / "info.json").read_text())
    one = json.loads((tmp_path / "one" / "info.json").read_text())
    assert ddp["world_size"] == 2 and ddp["per_rank_batch"] == batch // 2 and one["per_rank_batch"] == batch
    assert ddp["rank_spread"] == [0.0] * steps  # identical parameters on both ranks after every step
    start = np.load(tmp_path / "one" / "initial.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "ddp" / "initial.npy"), start)
    a = np.load(tmp_path / "ddp" / "params.npy") - start
    b = np.load(tmp_path / "one" / "params.npy") - start
    if frozen_bn:
        # Each utterance's gradient is then independent of the others: the average of the two ranks'
        # half-batch gradients is the full-batch gradient, up to float32 summation order.
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5
    else:
        # Training-mode BatchNorm normalises over each rank's half batch (sync_batchnorm is GPU-only); the
        # embedding-level BatchNorms see only 18 utterances per rank here, so the update moves, not turns.
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine > 0.8, cosine


def test_torchrun_training_checkpoints_once_and_resumes(tiny_corpus_dir, tmp_path):
    common = ["debug=tiny", f"data.dir={tiny_corpus_dir}", "data.batch_size=12"]
    first = run(TORCHRUN + ["train.py", *common, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'a'}"])
    log = first.stdout + first.stderr
    assert "x 2 processes" in log
    assert log.count("epoch 2/2 done") == 1  # rank 0 alone reports
    assert len(list((tmp_path / "a" / "tensorboard").iterdir())) == 1
    records = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val/eer" in r] == [3, 6]  # 36 utterances / global batch 12
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert ckpt["progress"]["epoch"] == 2 and ckpt["progress"]["step"] == 6
    assert len(ckpt["rng_per_rank"]) == 2

    again = run(TORCHRUN + ["train.py", *common, "trainer.epochs=3",
                            f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={tmp_path / 'b'}"])
    resumed = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert resumed["progress"]["epoch"] == 3 and resumed["progress"]["step"] == 9
    # every rank finds the changed setting; rank 0 alone warns
    assert (again.stdout + again.stderr).count("trainer.epochs: 2 -> 3") == 1


def test_a_batch_of_one_utterance_per_rank_stops_every_rank_before_training_naming_it(tiny_corpus_dir, tmp_path):
    """data.batch_size=2 over 2 processes used to pass every check and fail inside BatchNorm on every rank
    ('Expected more than 1 value per channel'). Each rank's error is shown, rank 1's named as its own."""
    run_dir = tmp_path / "run"
    status, out = run_or_kill(TORCHRUN + ["train.py", "debug=tiny", f"data.dir={tiny_corpus_dir}", "data.batch_size=2",
                                          "trainer.epochs=1", f"hydra.run.dir={run_dir}"], timeout=180)
    message = ("ValueError: data.batch_size=2 over 2 processes leaves 1 utterance per process, and BatchNorm needs "
               "at least 2: give data.batch_size=4 or more (a multiple of 2), or start fewer processes")
    # Each rank stops on its own; torchrun ends the other when the first exits, which may be before it logs.
    own = out.count(f"rank 1: {message}")
    assert status != 0 and own <= 1 and 1 <= out.count(message) <= 2 and out.count(message) - own <= 1, out[-3000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", ".run.lock", "train.log"]  # Hydra's record and the claim


def test_a_sigterm_reaching_one_rank_after_the_last_logging_step_checkpoints_on_every_rank(tiny_corpus_dir,
                                                                                            tmp_path):
    """Ranks agree on a stop at logging steps only. A SIGTERM that reached rank 1 alone after the epoch's last
    one (step 2 of 3, logging every 100 steps) used to take rank 1 to the mid-epoch save (two all_reduce) and
    rank 0 to the epoch-end save (a broadcast): the run hung with no checkpoint."""
    run_dir = tmp_path / "run"
    status, out = run_or_kill(TORCHRUN + ["tests/stop_one_rank_driver.py", "1", "2", "debug=tiny",
                                          f"data.dir={tiny_corpus_dir}", "data.batch_size=12", "trainer.epochs=2",
                                          "trainer.log_every_steps=100", f"hydra.run.dir={run_dir}"], timeout=240)
    assert "rank 0 exit 143" in out and "rank 1 exit 143" in out, out[-3000:]
    progress = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]
    # stopped where the ranks agreed: at the end of epoch 1's 3 steps (36 utterances / 12), saved with its sums
    assert (progress["epoch"], progress["step"], progress["position"]) == (0, 3, 36)
    assert progress["epoch_means"]["steps"] == 3
    assert "SIGTERM received: stopped in epoch 1, step 3" in out
