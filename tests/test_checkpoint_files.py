"""The checkpoint files of runs that resume one another: the best.pt a resumed run takes along, the inputs
`speakerid average` counts once, and where `--last N` finds the epochs of a run that resumed from another
folder. Checkpoints are written here by hand as training lays them out (step-<N>.pt, last.pt a hard link to
the newest, best.pt), with small weights whose means are worked out in the tests."""

from __future__ import annotations

import logging
import math
import os
import shlex
from pathlib import Path

import pytest
import torch

from conftest import speakerid_cli
from speakerid.checkpoint import (FORMAT_VERSION, CheckpointDir, average_checkpoints, last_epoch_checkpoints,
                                  load_checkpoint)

STEPS_PER_EPOCH = 6


def run_config(run_dir: Path, resume: str | bool = False, seed: int = 1, lr: float = 0.001) -> dict:
    """The parts of a resolved training config that checkpoints of one run share (or not)."""
    return {"seed": seed, "run_dir": str(run_dir), "optim": {"lr": lr},
            "model": {"_target_": "speakerid.models.ECAPATDNN", "channels": 8},
            "features": {"fbank": {"n_mels": 80, "sample_rate": 16000}},
            "trainer": {"epochs": 3, "resume": resume, "keep_checkpoints": 3}}


def write_checkpoint(path: Path, step: int, config: dict, weight: float, best_eer: float = math.inf,
                     pending: bool = False) -> Path:
    """A checkpoint at `step` (an epoch end, or mid-epoch where step is no multiple of STEPS_PER_EPOCH) whose
    every weight is `weight`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    position = (step % STEPS_PER_EPOCH) * 6
    progress = {"epoch": step // STEPS_PER_EPOCH, "step": step, "position": position, "best_eer": best_eer,
                "pending_validation": pending}
    torch.save({"format_version": FORMAT_VERSION, "config": config, "speakers": ["a", "b"],
                "model": {"w": torch.full((2, 3), weight)}, "head": {"h": torch.full((2,), weight)},
                "optimizer": {}, "progress": progress}, path)
    return path


def link(target: Path, name: str) -> Path:
    """last.pt or best.pt as training leaves them: a hard link to a step file."""
    path = target.parent / name
    path.unlink(missing_ok=True)
    os.link(target, path)
    return path


# ------------------------------------------------------------------ best.pt of a run resumed into a new folder
def finished_run_a(tmp_path: Path) -> Path:
    """Run A of 3 epochs: EER 33.33% (step 6), 29.63% (step 12, best.pt), 33.33% (step 18)."""
    folder = tmp_path / "A" / "checkpoints"
    config = run_config(tmp_path / "A")
    write_checkpoint(folder / "step-000000006.pt", 6, config, 1.0, best_eer=0.3333)
    write_checkpoint(folder / "best.pt", 12, config, 2.0, best_eer=0.2963)
    write_checkpoint(folder / "step-000000012.pt", 12, config, 2.0, best_eer=0.2963)
    link(write_checkpoint(folder / "step-000000018.pt", 18, config, 3.0, best_eer=0.2963), "last.pt")
    return folder


def test_a_run_resumed_from_an_older_epoch_does_not_adopt_the_best_pt_of_later_epochs(tmp_path, caplog):
    """B resumes A's step 6 (best EER 33.33%): A's best.pt is its step 12 (29.63%), a model B never trained
    nor validated. B took it along as its best.pt; summarize and the run's end block called it B's best."""
    a = finished_run_a(tmp_path)
    resumed = load_checkpoint(a / "step-000000006.pt")["progress"]
    b = CheckpointDir(tmp_path / "B" / "checkpoints")
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        b.adopt_best(a / "best.pt", resumed=resumed)
    assert not b.best.exists()
    assert (f"{a / 'best.pt'} is not taken along as this run's best.pt: it is the model of step 12, after step 6 "
            f"of the checkpoint resumed") in caplog.text
    assert "first validation better than the best so far (33.33%)" in caplog.text


def test_a_run_resumed_at_or_after_the_best_epoch_adopts_best_pt_as_a_link(tmp_path):
    a = finished_run_a(tmp_path)
    for name in ("step-000000012.pt", "step-000000018.pt", "last.pt"):
        b = CheckpointDir(tmp_path / f"B-{name}" / "checkpoints")
        b.adopt_best(a / "best.pt", resumed=load_checkpoint(a / name)["progress"])
        assert os.path.samefile(b.best, a / "best.pt"), name


def test_a_best_pt_of_another_best_eer_than_the_checkpoint_resumed_records_is_not_adopted(tmp_path, caplog):
    """A best.pt at an earlier step whose EER is not the best the resumed checkpoint records (best.pt of
    another line of training, put there by hand) is not this run's best either."""
    a = finished_run_a(tmp_path)
    write_checkpoint(a / "best.pt", 6, run_config(tmp_path / "A"), 9.0, best_eer=0.25)
    b = CheckpointDir(tmp_path / "B" / "checkpoints")
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        b.adopt_best(a / "best.pt", resumed=load_checkpoint(a / "step-000000012.pt")["progress"])
    assert not b.best.exists()
    assert "its EER 25.00% is not the best EER the checkpoint resumed records (29.63%)" in caplog.text


def test_a_checkpoint_resumed_before_its_validation_leaves_best_pt_to_the_validation_done_again(tmp_path):
    """Step 12 saved before its validation (pending, best EER still 33.33%), then validated as the best:
    best.pt is step 12 at 29.63%. The resumed run validates step 12 first and writes best.pt itself."""
    a = finished_run_a(tmp_path)
    pending = write_checkpoint(tmp_path / "pending.pt", 12, run_config(tmp_path / "A"), 2.0, best_eer=0.3333,
                               pending=True)
    b = CheckpointDir(tmp_path / "B" / "checkpoints")
    b.adopt_best(a / "best.pt", resumed=load_checkpoint(pending)["progress"])
    assert not b.best.exists()


def test_an_unreadable_best_pt_of_the_run_resumed_is_not_adopted(tmp_path, caplog):
    a = finished_run_a(tmp_path)
    (a / "best.pt").unlink()
    (a / "best.pt").write_bytes(b"not a checkpoint")
    b = CheckpointDir(tmp_path / "B" / "checkpoints")
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        b.adopt_best(a / "best.pt", resumed=load_checkpoint(a / "last.pt")["progress"])
    assert not b.best.exists() and f"{a / 'best.pt'}: not a" in caplog.text


def test_training_resumed_from_an_older_epoch_of_a_run_does_not_adopt_its_later_best_pt(tiny_cfg, tmp_path):
    """The hunt's best_adopt.sh: A trained 2 epochs, its best.pt that of step 12; B resumes A's step 6 with
    another optim.lr. B's best.pt was a hard link to A's step-12 model."""
    from speakerid.training import setup_run, train

    train(tiny_cfg("trainer.epochs=2", "seed=1", run_dir=tmp_path / "A"))
    a = tmp_path / "A" / "checkpoints"
    later_best = load_checkpoint(a / "step-000000012.pt")
    later_best["progress"]["best_eer"] = load_checkpoint(a / "step-000000006.pt")["progress"]["best_eer"] / 2
    (a / "best.pt").unlink()
    torch.save(later_best, a / "best.pt")  # whatever the tiny EERs were: epoch 2 is A's best
    b = setup_run(tiny_cfg("trainer.epochs=2", "seed=1", "optim.lr=0.05", f"trainer.resume={a / 'step-000000006.pt'}",
                           run_dir=tmp_path / "B"))
    try:
        assert not (tmp_path / "B" / "checkpoints" / "best.pt").exists()
    finally:
        b.close()


# ------------------------------------------------------------------ average: each model once
def test_average_refuses_best_pt_beside_the_step_file_of_its_epoch(tmp_path):
    """best.pt is a separate file (not a link) with step 12's weights: 'mean of 3 checkpoints' counted
    epoch 2 twice: (1 + 2 + 2 + ...) instead of the mean of epochs 1-3."""
    a = finished_run_a(tmp_path)
    inputs = [a / "best.pt", a / "step-000000012.pt", a / "step-000000018.pt"]
    with pytest.raises(ValueError) as error:
        average_checkpoints(inputs)
    assert str(error.value).startswith(f"{a / 'best.pt'} and {a / 'step-000000012.pt'} are both step 12 of one "
                                       f"run")
    assert "the mean would count that model twice; give only one of them" in str(error.value)
    proc = speakerid_cli("average", "--out", tmp_path / "avg.pt", *inputs)
    assert proc.returncode == 1 and "best.pt and" in proc.stderr and "step-000000012.pt are both step 12" in proc.stderr
    assert not (tmp_path / "avg.pt").exists()


def test_average_refuses_the_step_files_of_one_step_in_a_resumed_run_and_the_run_it_resumed(tmp_path):
    """B resumed A's last.pt (step 12, saved before a validation that failed) and saved step 12 again after
    validating it: A/step-12 and B/step-12 are one training position (here with weights that differ in the
    last bits, as on a GPU), also under --allow-different-runs."""
    a = tmp_path / "A" / "checkpoints"
    config_a = run_config(tmp_path / "A")
    write_checkpoint(a / "step-000000006.pt", 6, config_a, 1.0)
    link(write_checkpoint(a / "step-000000012.pt", 12, config_a, 2.0, pending=True), "last.pt")
    b = tmp_path / "B" / "checkpoints"
    config_b = run_config(tmp_path / "B", resume=str(a / "last.pt"))
    write_checkpoint(b / "step-000000012.pt", 12, config_b, 2.0 + 2**-20)
    link(write_checkpoint(b / "step-000000018.pt", 18, config_b, 3.0), "last.pt")
    inputs = [a / "step-000000006.pt", a / "step-000000012.pt", b / "step-000000012.pt", b / "step-000000018.pt"]
    for allow in (False, True):
        with pytest.raises(ValueError, match=f"^{a / 'step-000000012.pt'} and {b / 'step-000000012.pt'} are both "
                                             f"step 12 of one run"):
            average_checkpoints(inputs, allow_different_runs=allow)
    averaged = average_checkpoints([a / "step-000000006.pt", b / "step-000000012.pt", b / "step-000000018.pt"])
    assert torch.allclose(averaged["model"]["w"].double(), torch.full((2, 3), (1.0 + 2.0 + 2**-20 + 3.0) / 3,
                                                                      dtype=torch.float64))


def test_average_counts_runs_of_other_settings_at_one_step_but_never_one_model_twice(tmp_path):
    """--allow-different-runs: step 12 of a run with another seed is another model (mean 2.5); a copy of a
    checkpoint with its config edited holds the same weights and is refused."""
    one = write_checkpoint(tmp_path / "one" / "step-000000012.pt", 12, run_config(tmp_path / "one"), 2.0)
    other = write_checkpoint(tmp_path / "two" / "step-000000012.pt", 12, run_config(tmp_path / "two", seed=2), 3.0)
    averaged = average_checkpoints([one, other], allow_different_runs=True)
    assert torch.equal(averaged["model"]["w"], torch.full((2, 3), 2.5))
    copy = write_checkpoint(tmp_path / "copy.pt", 12, run_config(tmp_path / "one", seed=3), 2.0)
    with pytest.raises(ValueError, match=f"^{one} and {copy} are the same model \\(equal weights\\)"):
        average_checkpoints([one, copy], allow_different_runs=True)


# ------------------------------------------------------------------ average --last on a resumed run's folder
def test_average_last_on_a_run_resumed_mid_epoch_names_the_earlier_epochs_in_the_folder_it_resumed(tmp_path):
    """A stopped in epoch 2 (step 6 an epoch end, step 9 mid-epoch); B resumed A's last.pt and finished
    (steps 12, 18). `--last 3` on B said 'keep_checkpoints must be at least 3, and the run finished', though
    both hold: the third epoch end is A's step 6. The printed command averages the right three."""
    a = tmp_path / "A" / "checkpoints"
    write_checkpoint(a / "step-000000006.pt", 6, run_config(tmp_path / "A"), 1.0)
    link(write_checkpoint(a / "step-000000009-mid.pt", 9, run_config(tmp_path / "A"), 1.5), "last.pt")
    b = tmp_path / "B" / "checkpoints"
    config_b = run_config(tmp_path / "B", resume=str(a / "last.pt"))
    write_checkpoint(b / "step-000000012.pt", 12, config_b, 2.0)
    link(write_checkpoint(b / "step-000000018.pt", 18, config_b, 3.0), "last.pt")

    out = tmp_path / "out dir" / "avg.pt"
    with pytest.raises(ValueError) as error:
        last_epoch_checkpoints(tmp_path / "B", 3, out=out)
    message = str(error.value)
    assert message.startswith(f"{b} holds 2 epoch checkpoints, 3 are to be averaged: the run resumed from "
                              f"{a / 'last.pt'}, so its earlier epochs are in {a}, which holds 1 of them; give the "
                              f"last 3 by name:\n  speakerid average --out ")
    assert "keep_checkpoints" not in message
    command = shlex.split(message.splitlines()[-1])
    assert command[3:] == [str(out), str(a / "step-000000006.pt"), str(b / "step-000000012.pt"),
                           str(b / "step-000000018.pt")]
    assert last_epoch_checkpoints(tmp_path / "B", 2) == [b / "step-000000012.pt", b / "step-000000018.pt"]

    proc = speakerid_cli("average", "--out", out, "--last", "3", tmp_path / "B")
    assert proc.returncode == 1 and "give the last 3 by name" in proc.stderr and shlex.quote(str(out)) in proc.stderr
    out.parent.mkdir()
    proc = speakerid_cli(*command[1:])  # the command given works: the mean of epochs 1-3
    assert proc.returncode == 0 and "the mean of 3 checkpoints" in proc.stdout, proc.stderr
    assert torch.equal(load_checkpoint(out)["model"]["w"], torch.full((2, 3), 2.0))


def test_average_last_on_a_run_continued_with_more_epochs_prints_a_command_that_works(tmp_path):
    """A trained 1 epoch; B resumed it with trainer.epochs=3 (the end block's own advice). The printed command
    was refused by average itself: 'not of the run of ... (trainer.epochs: 1 -> 3)'."""
    a = tmp_path / "A" / "checkpoints"
    config_a = run_config(tmp_path / "A")
    config_a["trainer"]["epochs"] = 1
    link(write_checkpoint(a / "step-000000006.pt", 6, config_a, 1.0), "last.pt")
    b = tmp_path / "B" / "checkpoints"
    config_b = run_config(tmp_path / "B", resume=str(a / "last.pt"))
    config_b["trainer"]["epochs"] = 3
    write_checkpoint(b / "step-000000012.pt", 12, config_b, 2.0)
    link(write_checkpoint(b / "step-000000018.pt", 18, config_b, 3.0), "last.pt")
    out = tmp_path / "avg.pt"
    proc = speakerid_cli("average", "--out", out, "--last", "3", tmp_path / "B")
    assert proc.returncode == 1 and "resumed with other settings" in proc.stderr, proc.stderr
    command = shlex.split(proc.stderr.strip().splitlines()[-1])
    assert "--allow-different-runs" in command
    proc = speakerid_cli(*command[1:])
    assert proc.returncode == 0 and "the mean of 3 checkpoints" in proc.stdout, proc.stderr


def test_average_last_on_a_run_resumed_from_an_older_epoch_leaves_out_the_epochs_it_abandoned(tmp_path):
    """B resumed A's step 6 of 18: A's steps 12 and 18 are not B's epochs; C resumed B's step 12 in turn.
    Too few kept along the line: the message says how many there are and what to change."""
    a = finished_run_a(tmp_path)
    b = tmp_path / "B" / "checkpoints"
    config_b = run_config(tmp_path / "B", resume=str(a / "step-000000006.pt"))
    write_checkpoint(b / "step-000000012.pt", 12, config_b, 5.0)
    link(write_checkpoint(b / "step-000000018.pt", 18, config_b, 6.0), "last.pt")
    with pytest.raises(ValueError, match="give the last 3 by name") as error:
        last_epoch_checkpoints(tmp_path / "B", 3)
    assert shlex.split(str(error.value).splitlines()[-1])[4:] == [str(a / "step-000000006.pt"),
                                                                  str(b / "step-000000012.pt"),
                                                                  str(b / "step-000000018.pt")]
    with pytest.raises(ValueError, match="which holds 1 of them; the run has 3 epochs$"):
        last_epoch_checkpoints(tmp_path / "B", 4)

    c = tmp_path / "C" / "checkpoints"
    config_c = dict(run_config(tmp_path / "C", resume=str(b / "step-000000012.pt")),
                    trainer={"epochs": 4, "resume": str(b / "step-000000012.pt"), "keep_checkpoints": 3})
    write_checkpoint(c / "step-000000018.pt", 18, config_c, 7.0)
    link(write_checkpoint(c / "step-000000024.pt", 24, config_c, 8.0), "last.pt")
    with pytest.raises(ValueError, match=f"its earlier epochs are in {a} and {b}, which hold 2 of them") as error:
        last_epoch_checkpoints(tmp_path / "C", 4)
    assert shlex.split(str(error.value).splitlines()[-1])[4:] == [  # C was resumed with more epochs than B's
        "--allow-different-runs", str(a / "step-000000006.pt"), str(b / "step-000000012.pt"),
        str(c / "step-000000018.pt"), str(c / "step-000000024.pt")]
    (a / "step-000000006.pt").unlink()  # rotated out (keep_checkpoints)
    with pytest.raises(ValueError, match="which holds 1 of them; too few \\(trainer.keep_checkpoints must be at "
                                         "least 4 in each run of the line\\)$"):
        last_epoch_checkpoints(tmp_path / "C", 4)


def test_average_last_on_an_unfinished_resumed_run_says_to_finish_it(tmp_path):
    a = tmp_path / "A" / "checkpoints"
    link(write_checkpoint(a / "step-000000006.pt", 6, run_config(tmp_path / "A"), 1.0), "last.pt")
    b = tmp_path / "B" / "checkpoints"
    link(write_checkpoint(b / "step-000000012.pt", 12, run_config(tmp_path / "B", resume=str(a / "last.pt")), 2.0),
         "last.pt")
    with pytest.raises(ValueError, match=f"{b / 'last.pt'} is at epoch 2 of 3: finish the run first"):
        last_epoch_checkpoints(tmp_path / "B", 2)
