"""What a torchrun run checks and computes before and around its collectives, tested in one process: the
batch shares and the resume position are refused before anything is read or written, and the logged means
of a mid-epoch resume do not depend on the number of processes that wrote or read the checkpoint."""

import math
from pathlib import Path

import pytest
import torch

from speakerid.distributed import DistEnv
from speakerid.training import setup_run
from speakerid.training.loop import DeviceMeans
from speakerid.training.setup import Environment, setup_run_folder
from speakerid.training.step import StepResult


def as_rank_0_of(monkeypatch, world_size):
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")


@pytest.mark.parametrize("batch, message", [
    (7, r"data.batch_size=7 is the global batch, split over the 2 processes torchrun started, and 2 does not "
        r"divide it: give a multiple of 2 \(e.g. data.batch_size=8\)"),
    (2, r"data.batch_size=2 over 2 processes leaves 1 utterance per process, and BatchNorm needs at least 2: "
        r"give data.batch_size=4 or more"),
])
def test_a_global_batch_that_does_not_split_into_shares_of_2_stops_before_the_processes_connect(
        tiny_cfg, tmp_path, monkeypatch, batch, message):
    as_rank_0_of(monkeypatch, 2)  # no process group is started: the check comes first
    with pytest.raises(ValueError, match=message):
        setup_run(tiny_cfg(f"data.batch_size={batch}", run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def mid_epoch_checkpoint(path: Path, position: int, batch_size: int) -> Path:
    """What load_resume_checkpoint needs of a checkpoint written `position` utterances into epoch 1."""
    torch.save({"format_version": 1, "model": {}, "head": {}, "optimizer": {}, "scaler": {}, "rng": {},
                "speakers": [], "config": {"data": {"batch_size": batch_size}},
                "progress": {"epoch": 0, "position": position, "step": position // batch_size}}, path)
    return path


def test_a_mid_epoch_resume_off_the_global_batch_names_the_checkpoint_and_batch_size(tiny_cfg, tmp_path):
    """Stopped after 12 utterances with batch 6, resumed with batch 8 over 2 processes: the sampler used to
    stop at the first epoch with 'resume position 12 is not a multiple of the global batch 8'."""
    ckpt = mid_epoch_checkpoint(tmp_path / "step-2-mid.pt", position=12, batch_size=6)
    cfg = tiny_cfg("data.batch_size=8", f"trainer.resume={ckpt}", run_dir=tmp_path / "run")
    env = Environment(DistEnv(rank=0, local_rank=0, world_size=2), torch.device("cpu"), tmp_path / "run")
    with pytest.raises(ValueError, match=rf"trainer.resume={ckpt}: the checkpoint stopped 12 utterances into epoch 1"
                                         rf".* whole global batches of data.batch_size=8, of which 12 is not a "
                                         rf"multiple. Resume with a data.batch_size that divides 12 and is a multiple "
                                         rf"of 2 \(the checkpoint's was 6\), in one process, or from a checkpoint "
                                         rf"written at an epoch's end"):
        setup_run_folder(cfg, env)
    assert not (tmp_path / "run").exists()
    # batch 12 over 2 processes, or batch 8 in one process, continue from there
    for batch, world in ((12, 2), (8, 1)):
        env = Environment(DistEnv(rank=0, local_rank=0, world_size=world), torch.device("cpu"), tmp_path / f"ok{batch}")
        cfg = tiny_cfg(f"data.batch_size={batch}", f"trainer.resume={ckpt}", run_dir=env.run_dir)
        assert setup_run_folder(cfg, env)[1] == ckpt


def step(loss, top1, finite=True):
    return StepResult(torch.tensor(loss), torch.tensor(top1), torch.tensor(finite))


def test_means_saved_by_two_ranks_resume_in_one_process():
    """Two ranks, two steps each of loss 10 and top-1 0.5: state() holds the sums over both ranks, [40, 2, 4].
    One process that resumes and takes a step of loss 1, top-1 0, has the means of three steps. Read as a
    single rank's sums they gave loss 41/5 and '-2 of the last steps were skipped'."""
    means = DeviceMeans(torch.device("cpu"), {"sums": [40.0, 2.0, 4.0], "world_size": 2, "steps": 2})
    means.add(step(1.0, 0.0))
    loss, top1, skipped = means.read(DistEnv())
    assert (loss, top1, skipped) == (pytest.approx(7.0), pytest.approx(1 / 3), 0)


def two_ranks_resume_means_saved_by_one(rank, rendezvous, out):
    """Rank `rank` of 2 (gloo): restores what one process saved after 2 steps of loss 10, top-1 0.5, adds one
    step of its own (rank 0: loss 1, top-1 0; rank 1: loss 3, top-1 1), reads, saves, adds a skipped step and
    reads again; rank 0 writes what it saw to `out`."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    dist = DistEnv(rank=rank, local_rank=rank, world_size=2)
    means = DeviceMeans(torch.device("cpu"), {"sums": [20.0, 1.0, 2.0], "world_size": 1, "steps": 2})
    means.add(step(1.0, 0.0) if rank == 0 else step(3.0, 1.0))
    first = means.read(dist)
    saved = means.state(dist)
    means.add(step(math.nan, 0.0, finite=False))  # skipped on every rank: gradients are averaged
    second = means.read(dist)
    if rank == 0:
        torch.save({"first": first, "saved": saved, "second": second}, out)
    torch.distributed.destroy_process_group()


def test_means_saved_by_one_process_resume_on_two_ranks(tmp_path):
    out = tmp_path / "seen.pt"
    torch.multiprocessing.spawn(two_ranks_resume_means_saved_by_one, args=(tmp_path / "rendezvous", out),
                                nprocs=2)
    seen = torch.load(out)
    # three steps: 10, 10 and the mean of the ranks' 1 and 3; top-1 0.5, 0.5 and the mean of 0 and 1
    assert seen["first"] == (pytest.approx(22 / 3), pytest.approx(0.5), 0)
    # each rank restored [20, 1, 2] and added its step: summed over the two ranks
    assert seen["saved"] == {"sums": [40.0 + 1.0 + 3.0, 2.0 + 0.0 + 1.0, 4.0 + 2.0], "world_size": 2, "steps": 3}
    assert seen["second"] == (pytest.approx(22 / 3), pytest.approx(0.5), 1)  # one step of four skipped
    # and that checkpoint, resumed in one process, reads the same
    assert DeviceMeans(torch.device("cpu"), seen["saved"]).read(DistEnv()) == (pytest.approx(22 / 3),
                                                                              pytest.approx(0.5), 0)


def test_means_of_a_checkpoint_from_before_the_world_size_was_recorded_count_the_ranks_that_saved_it(
        tiny_cfg, tmp_path, monkeypatch):
    """Such a checkpoint written by 2 ranks holds sums over both and no world_size: its number of ranks is
    that of its RNG states."""
    from speakerid.training import loop

    stop_requested = loop.Loop.stop_requested

    def stop_after_step_2(self, log_step):
        if self.run.state.progress.step == 2:
            self.stop.received = 15
        return stop_requested(self, log_step)

    monkeypatch.setattr(loop.Loop, "stop_requested", stop_after_step_2)
    run = setup_run(tiny_cfg("trainer.epochs=1", "~eval", run_dir=tmp_path / "first"))
    assert run.fit()["exit_code"] == 143
    run.close()
    checkpoint = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    progress = checkpoint["progress"]
    expected = [DeviceMeans(torch.device("cpu"), progress[k]).read() for k in ("epoch_means", "window_means")]
    for key in ("epoch_means", "window_means"):  # as 2 ranks of the old format wrote it
        progress[key] = {"sums": [2 * x for x in progress[key]["sums"]], "steps": progress[key]["steps"]}
    checkpoint["rng_per_rank"] = [checkpoint["rng"]] * 2
    torch.save(checkpoint, tmp_path / "old.pt")
    monkeypatch.setattr(loop.Loop, "stop_requested", stop_requested)
    resumed = setup_run(tiny_cfg("trainer.epochs=1", "~eval", f"trainer.resume={tmp_path / 'old.pt'}",
                                 run_dir=tmp_path / "second"))
    progress = resumed.state.progress
    assert progress.epoch_means["world_size"] == progress.window_means["world_size"] == 2
    assert [DeviceMeans(torch.device("cpu"), progress.epoch_means).read(),
            DeviceMeans(torch.device("cpu"), progress.window_means).read()] == expected
    resumed.close()
