"""A run never writes where another run (or the user's data) lives: run folders are claimed atomically,
trainer.resume=true picks up only a run of the same name and overrides and says when it has finished, a
validation that fails or is interrupted never costs the epoch, and bad run names or roots are errors."""

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from speakerid.checkpoint import load_checkpoint
from speakerid.data.audio import AudioError
from speakerid.training import setup_run, train
from speakerid.training.state import claim_run_folder


def train_py(*args, timeout=300):
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_claiming_is_atomic_under_a_race(tmp_path):
    names, barrier = [], threading.Barrier(16)

    def claim():
        barrier.wait()
        names.append(claim_run_folder(tmp_path / "runs", "2026-01-01_00-00-00"))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 16 and "2026-01-01_00-00-00" in names and "2026-01-01_00-00-00_16" in names


@pytest.mark.slow
def test_runs_started_together_get_their_own_folders_and_resume_true_finds_finished_runs(tiny_corpus_dir,
                                                                                         tmp_path):
    args = ["debug=tiny", f"data.dir={tiny_corpus_dir}", f"runs_root={tmp_path}", "trainer.epochs=1", "~eval"]
    procs = [subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted((tmp_path / "debug").iterdir())
    assert len(runs) == 2, runs  # Hydra's second-resolution names would have collided
    for run in runs:
        assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 6
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 6 + 1  # steps and the epoch end; none interleaved

    proc = train_py(*args, "trainer.resume=true")
    assert proc.returncode == 0, proc.stderr
    assert "already finished (1 of 1 epochs); nothing to do" in proc.stderr + proc.stdout
    assert sorted((tmp_path / "debug").iterdir()) == runs  # no new, empty run folder

    # Another setting is another run: it is not resumed, it starts.
    proc = train_py(*args, "trainer.resume=true", "head.m=0.3")
    assert proc.returncode == 0, proc.stderr
    assert "started with other settings and are not resumed" in proc.stderr + proc.stdout
    assert len(list((tmp_path / "debug").iterdir())) == 3


@pytest.mark.slow
def test_resume_true_with_run_dir_compares_this_jobs_overrides(tiny_corpus_dir, tmp_path):
    """With run_dir=..., Hydra keeps its record of the command in another folder: resume=true used to find
    no overrides of its own and resume any run beside it (another seed, another learning rate). Runs are
    now compared by the resolved config each wrote when it started."""
    args = ["debug=tiny", f"data.dir={tiny_corpus_dir}", f"runs_root={tmp_path / 'hydra'}", "trainer.epochs=1", "~eval"]
    first = train_py(*args, "seed=5", f"run_dir={tmp_path / 'runs' / 'a'}")
    assert first.returncode == 0, first.stderr
    other = train_py(*args, "seed=9", f"run_dir={tmp_path / 'runs' / 'b'}", "trainer.resume=true")
    assert other.returncode == 0, other.stderr
    assert "started with other settings and are not resumed" in other.stderr + other.stdout
    assert load_checkpoint(tmp_path / "runs" / "b" / "checkpoints" / "last.pt")["config"]["seed"] == 9
    same = train_py(*args, "seed=5", f"run_dir={tmp_path / 'runs' / 'c'}", "trainer.resume=true")
    assert same.returncode == 0, same.stderr
    assert f"{tmp_path / 'runs' / 'a'}/checkpoints/last.pt: this run already finished" in same.stderr + same.stdout
    # Hydra's record of each command and the log are in the run folder; no folder claimed under runs_root
    for run, seed in (("a", 5), ("b", 9)):
        assert "run finished (1/1 epochs)" in (tmp_path / "runs" / run / "train.log").read_text()
        assert "seed=%d" % seed in (tmp_path / "runs" / run / ".hydra" / "overrides.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a", "b"]  # c: nothing to do, removed
    assert not (tmp_path / "hydra").exists()


def test_config_yaml_names_the_checkpoint_that_resume_true_took(tiny_cfg, tmp_path):
    """trainer.resume=true used to be recorded as `true`: nothing said which run was resumed, and
    `speakerid summarize` could not tell it from a new run. The resolved checkpoint is recorded, or false."""
    first = tmp_path / "runs" / "a"
    train(tiny_cfg("trainer.epochs=1", "~eval", run_dir=first))
    # As if it had been stopped after the first of two epochs:
    config = first / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1\n", "epochs: 2\n", 1))
    run = setup_run(tiny_cfg("trainer.epochs=2", "~eval", "trainer.resume=true", run_dir=tmp_path / "runs" / "b"))
    try:
        assert run.cfg.trainer.resume == str((first / "checkpoints" / "last.pt").resolve())
        run.fit()
    finally:
        run.close()
    recorded = yaml.safe_load((tmp_path / "runs" / "b" / "config.yaml").read_text())["trainer"]["resume"]
    assert recorded == str((first / "checkpoints" / "last.pt").resolve())
    assert load_checkpoint(tmp_path / "runs" / "b" / "checkpoints" / "last.pt")["config"]["trainer"]["resume"] == recorded
    new = setup_run(tiny_cfg("trainer.resume=true", run_dir=tmp_path / "alone" / "c"))  # nothing to resume
    try:
        assert new.cfg.trainer.resume is False
    finally:
        new.close()


@pytest.mark.slow
def test_multirun_jobs_resume_only_their_own_run(tiny_corpus_dir, tmp_path):
    args = ["-m", "debug=tiny", f"data.dir={tiny_corpus_dir}", f"runs_root={tmp_path}", "trainer.epochs=1", "~eval",
            "head.m=0.1,0.2", "trainer.resume=true"]
    first = train_py(*args, timeout=600)
    assert first.returncode == 0, first.stderr
    jobs = sorted(p for p in (tmp_path / "debug").iterdir() if p.is_dir())
    assert len(jobs) == 2
    margins = {load_checkpoint(j / "checkpoints" / "last.pt")["config"]["head"]["m"] for j in jobs}
    assert margins == {0.1, 0.2}
    again = train_py(*args, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (again.stderr + again.stdout).count("already finished (1 of 1 epochs)") == 2
    assert sorted(p for p in (tmp_path / "debug").iterdir() if p.is_dir()) == jobs


@pytest.mark.parametrize("key", ["hydra.run.dir", "run_dir"])
def test_a_start_into_a_folder_holding_a_run_is_refused_before_hydra_writes_there(tmp_path, key):
    """hydra.run.dir (or run_dir, which Hydra writes to as well) at another run's folder: Hydra would replace
    that run's .hydra record (and a later resume=true would take it for this run) before the run's own check
    refused the folder."""
    from speakerid.cli.train import launch

    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1234\n")
    with pytest.raises(SystemExit, match=rf"{key}={run} already holds a run's checkpoints: .*"
                                         rf"trainer.resume={run}/checkpoints/last.pt"):
        launch(["debug=tiny", "seed=7", f"{key}={run}"], "python train.py")
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=1234\n"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "checkpoints"]


def folder_holding_a_run(folder: Path) -> Path:
    """A run folder as another run left it: a checkpoint and Hydra's record of its command."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("- seed=1234\n")
    return folder


@pytest.mark.parametrize("spelling", ["run_dir='{}'", 'run_dir="{}"', "++run_dir='{}'", "hydra.run.dir='{}'"])
def test_a_quoted_folder_holding_a_run_is_refused_before_hydra_writes_there(tmp_path, spelling):
    """A path with '=' or ',' must be quoted for Hydra: the check compared the quoted text, found no such
    folder, and Hydra replaced the run's .hydra record (its runtime.cwd too, which evaluate reads) and
    appended to its train.log before the run itself refused."""
    from speakerid.cli.train import launch

    run = folder_holding_a_run(tmp_path / "old run=1,2")
    key = spelling.split("=")[0].lstrip("+")
    with pytest.raises(SystemExit, match=re.escape(f"{key}={run} already holds a run's checkpoints")):
        launch(["debug=tiny", "seed=7", spelling.format(run)], "python train.py")
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=1234\n"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "checkpoints"]


@pytest.mark.parametrize("resume, why", [
    ("no", "FileNotFoundError: trainer.resume=no: no such checkpoint file"),
    ("0", "ConfigError: trainer.resume"),
    ("true", "trainer.resume=true does not take its checkpoints: that run was started with other settings"),
    ("{other}", None),  # another run's checkpoint: its files would be replaced by this run's
])
def test_a_resume_that_takes_nothing_of_the_folder_is_refused_before_hydra_writes_there(tmp_path, resume, why):
    """Only false/null/empty used to count as not resuming: trainer.resume=no or 0 (which the run then stops
    on), or true with other settings, let Hydra replace the run's record before the run refused."""
    from speakerid.cli.train import launch

    run = folder_holding_a_run(tmp_path / "old_run")
    other = folder_holding_a_run(tmp_path / "other_run") / "checkpoints" / "last.pt"
    with pytest.raises(SystemExit) as refused:
        launch(["debug=tiny", f"run_dir={run}", f"trainer.resume={resume.format(other=other)}"], "python train.py")
    assert str(refused.value.code).startswith(f"error: run_dir={run} already holds a run's checkpoints")
    assert why is None or why in str(refused.value.code)
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=1234\n"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "checkpoints"]


def test_a_resume_in_place_of_that_very_run_passes_and_one_of_other_settings_is_refused(tiny_cfg, tiny_corpus_dir,
                                                                                        tmp_path, monkeypatch):
    """The check up front decides as the run does: trainer.resume=true takes the folder's run when its
    settings are this command's, and so does its checkpoint's path (relative to the current folder)."""
    from speakerid.cli.train import launch

    run = tmp_path / "run"
    train(tiny_cfg("trainer.epochs=1", "~eval", run_dir=run))
    args = ["debug=tiny", f"data.dir={tiny_corpus_dir}", "trainer.epochs=1", "~eval", f"run_dir={run}"]
    monkeypatch.chdir(tmp_path)
    for resume in ("true", "run/checkpoints/last.pt"):
        assert launch([*args, f"trainer.resume={resume}"], "python train.py") == {}  # already finished
        assert f"trainer.resume={resume}" in (run / ".hydra" / "overrides.yaml").read_text()
    record, log = (run / ".hydra" / "overrides.yaml").read_text(), (run / "train.log").read_text()
    with pytest.raises(SystemExit, match="trainer.resume=true does not take its checkpoints: that run was started "
                                         "with other settings"):
        launch([*args, "trainer.resume=true", "head.m=0.3"], "python train.py")
    assert (run / ".hydra" / "overrides.yaml").read_text() == record and (run / "train.log").read_text() == log


@pytest.mark.parametrize("empty", ["run_dir=", "run_dir=''", "+run_dir= "])
def test_an_empty_run_dir_is_refused_before_anything_is_written(tiny_corpus_dir, tmp_path, monkeypatch, empty):
    """run_dir=$RUN_DIR with the variable unset: Hydra took it for no run_dir, the run for the current folder,
    and it wrote its config.yaml, metrics and checkpoints over the user's files there."""
    from speakerid.cli.train import launch

    (tmp_path / "config.yaml").write_text("the user's own\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"run_dir is empty \(an unset variable in a job script\?\)"):
        launch(["debug=tiny", f"data.dir={tiny_corpus_dir}", "trainer.epochs=1", "~eval", empty], "python train.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    assert (tmp_path / "config.yaml").read_text() == "the user's own\n"


def test_a_sweep_with_one_run_dir_is_refused_before_anything_is_written(tiny_corpus_dir, tmp_path, monkeypatch):
    """-m with run_dir=X: the first job trained in X with its Hydra record elsewhere, the second found X's
    checkpoints and stopped."""
    from speakerid.cli.train import launch

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"run_dir names one run's folder, but -m starts a job per setting"):
        launch(["-m", "debug=tiny", f"data.dir={tiny_corpus_dir}", "seed=1,2", f"run_dir={tmp_path / 'x'}"],
               "python train.py")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("word,typed,number", [("name=2024_01", "2024_01", 202401),
                                               ("eval.strip_prefix=+5", "+5", 5)])
def test_a_number_hydra_rewrites_is_refused_with_the_quoting_that_keeps_it(tmp_path, monkeypatch, word, typed, number):
    """name=2024_01 named the folder 202401 (Hydra reads an int literal); name=123 stays the folder 123."""
    from speakerid.cli.train import launch

    monkeypatch.chdir(tmp_path)
    key = word.split("=")[0]
    with pytest.raises(SystemExit, match=re.escape(f"{key}={typed} is the number {number} to Hydra, which would "
                                                   f"name {number}: quote it to keep the text, '{key}=\"{typed}\"'")):
        launch(["debug=tiny", f"runs_root={tmp_path}", word], "python train.py")
    assert list(tmp_path.iterdir()) == []
    # and the quoting it gives keeps the text
    from speakerid.cli.overrides import hydra_arguments

    (override,) = hydra_arguments([f'{key}="{typed}"'])[1]
    assert override.value() == typed


def test_run_dir_with_a_trailing_hydra_flag_prints_the_job_config(tiny_corpus_dir, tmp_path, capsys):
    """run_dir's own Hydra override was appended after every word: `--cfg job` took it as its value."""
    from speakerid.cli.train import launch

    launch(["debug=tiny", f"data.dir={tiny_corpus_dir}", f"run_dir={tmp_path / 'x'}", "--cfg", "job"],
           "python train.py")
    assert f"run_dir: {tmp_path / 'x'}" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("sweep_dir", ["mysweep", "{tmp}/scratch/s"])
def test_multirun_jobs_go_beside_single_runs_whatever_the_sweep_dir(tiny_corpus_dir, tmp_path, monkeypatch, sweep_dir):
    """The jobs' subdir went three levels up from hydra.sweep.dir, as from the default one: with
    hydra.sweep.dir=mysweep in a/b, a job trained in <tmp>/debug/ (outside the working folder) and left an
    empty folder claimed under runs/debug/."""
    from speakerid.cli.train import launch

    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    sweep = Path(sweep_dir.format(tmp=tmp_path))
    launch(["-m", "debug=tiny", f"data.dir={tiny_corpus_dir}", "trainer.epochs=1", "~eval",
            f"hydra.sweep.dir={sweep}"], "python train.py")
    (job,) = (cwd / "runs" / "debug").iterdir()
    assert job.name.endswith("_job0")
    assert load_checkpoint(job / "checkpoints" / "last.pt")["progress"]["epoch"] == 1
    assert "run finished (1/1 epochs)" in (job / "train.log").read_text()
    assert (cwd / sweep / "multirun.yaml").is_file()  # Hydra's record of the sweep, where it was asked for
    assert sorted(p.name for p in (cwd / sweep).iterdir()) == ["multirun.yaml"]
    outside = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert outside == ({"a"} if sweep_dir == "mysweep" else {"a", "scratch"})


def test_a_constructors_own_error_is_one_line_not_hydras_instantiate_trace(tiny_corpus_dir, tmp_path):
    proc = train_py("debug=tiny", f"data.dir={tiny_corpus_dir}", f"runs_root={tmp_path}", "model.channels=12")
    assert proc.returncode == 1
    # found by validate_config, which builds the model on the meta device before any data is read
    assert ("ConfigError: model (speakerid.models.ECAPATDNN) cannot be built: model.channels (12) must be divisible "
            "by model.scale (8)") in proc.stderr + proc.stdout
    assert "Error executing job" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_bad_run_names_and_roots_are_errors_before_anything_is_written(tmp_path):
    proc = train_py("debug=tiny", f"runs_root={tmp_path}", "name=../escaped")
    assert proc.returncode == 1 and "name='../escaped' is not allowed" in proc.stderr, proc.stderr
    assert not (tmp_path.parent / "escaped").exists() and not list(tmp_path.iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = train_py("debug=tiny", f"runs_root={blocker}/runs")
    assert proc.returncode == 1 and "cannot create a run folder" in proc.stderr and "runs_root" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failed_validation_keeps_the_epoch_and_resume_validates_it(tiny_cfg, tmp_path, monkeypatch):
    run = setup_run(tiny_cfg("trainer.epochs=2", run_dir=tmp_path / "first"))
    monkeypatch.setattr(run.lists.evaluation, "run", lambda *a, **k: (_ for _ in ()).throw(
        AudioError("trials/x.wav: cannot read audio")))
    with pytest.raises(AudioError):
        run.fit()
    saved = load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")["progress"]
    assert saved["epoch"] == 1 and saved["step"] == 6 and saved["pending_validation"] is True

    resumed = setup_run(tiny_cfg("trainer.epochs=2", f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}",
                                 run_dir=tmp_path / "second"))
    calls = []
    original = resumed.lists.evaluation.run
    monkeypatch.setattr(resumed.lists.evaluation, "run", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = resumed.fit()
    assert len(calls) == 2 and results["epochs"] == 2  # the pending validation of epoch 1, then epoch 2's
    straight = train(tiny_cfg("trainer.epochs=2", run_dir=tmp_path / "straight"))
    assert results["val/eer"] == straight["val/eer"]
    # Resumed without validation (~eval): the pending one is dropped, not a crash.
    unvalidated = train(tiny_cfg("trainer.epochs=2", "~eval", f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}",
                                 run_dir=tmp_path / "third"))
    assert unvalidated["epochs"] == 2 and "val/eer" not in unvalidated


def test_a_signal_during_the_last_validation_stops_with_the_exit_code(tiny_cfg, tmp_path, monkeypatch):
    run = setup_run(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    original = run.lists.evaluation.run

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(run.lists.evaluation, "run", interrupted)
    results = run.fit()
    assert results["exit_code"] == 128 + signal.SIGTERM and results["interrupted"] == "SIGTERM"
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]
    assert saved["epoch"] == 1 and saved["pending_validation"] is False and saved["best_eer"] == results["val/eer"]


def test_a_checkpoint_without_an_optimizer_is_named(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    del checkpoint["optimizer"]
    torch.save(checkpoint, tmp_path / "no-optimizer.pt")
    with pytest.raises(RuntimeError, match=r"no-optimizer.pt: not a training checkpoint that can be resumed "
                                           r"\(it has no optimizer\)"):
        setup_run(tiny_cfg("trainer.epochs=2", f"trainer.resume={tmp_path / 'no-optimizer.pt'}",
                           run_dir=tmp_path / "other"))


def test_training_with_a_generating_data_config_never_writes_into_a_real_corpus(tiny_corpus_dir, tmp_path):
    """The reproduction of the report: debug=tiny (which generates its corpus) pointed at a user's corpus used
    to replace its train_list.txt and trials.txt and add wav/syn0000* files, with exit code 0."""
    corpus = tmp_path / "my_corpus"
    (corpus / "wav" / "spk1" / "s1").mkdir(parents=True)
    lines = (tiny_corpus_dir / "train_list.txt").read_text().splitlines()[:4]
    for line in lines:
        (corpus / "wav" / "spk1" / "s1" / Path(line.split()[1]).name).write_bytes(
            (tiny_corpus_dir / "wav" / line.split()[1]).read_bytes())
    (corpus / "train_list.txt").write_text("".join(f"spk1 spk1/s1/{Path(l.split()[1]).name}\n" for l in lines))
    (corpus / "trials.txt").write_text("1 spk1/s1/00000.wav spk1/s1/00001.wav\n")
    before = {p: p.read_bytes() for p in corpus.rglob("*") if p.is_file()}
    proc = train_py("experiment=arsc", f"data.dir={corpus}", "debug=tiny", "trainer.epochs=1", f"runs_root={tmp_path / 'runs'}")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout + proc.stderr
    assert "speakerid did not generate" in out and "data=folder" in out and "Traceback" not in out
    assert {p: p.read_bytes() for p in corpus.rglob("*") if p.is_file()} == before  # byte-identical, nothing added
