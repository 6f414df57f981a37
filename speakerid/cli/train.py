"""Train a speaker-verification model. The arguments are Hydra overrides and flags, passed through unchanged,
so `speakerid train ...` and `python train.py ...` (in a checkout) are the same command.

    speakerid train                                     # the smoke experiment on a generated synthetic corpus
    speakerid train experiment=arsc data.dir=/data/arsc
    speakerid train experiment=vox2_ecapa_c1024 data.train_list=/data/vox2/train_list.txt \\
        data.train_root=/data/vox2/dev/wav eval.dir=/data/voxceleb1 \\
        augment.musan_dir=/data/musan augment.rir_dir=/data/RIRS_NOISES
    speakerid train experiment=arsc data.dir=/data/arsc trainer.resume=true   # continue the latest such run
    speakerid train trainer.init_from=best.pt trainer.init_head=false ...    # fine-tune on other speakers
    speakerid train -m seed=1,2,3                       # Hydra multirun: one run folder per job
    speakerid train debug=tiny                          # seconds-long run with a tiny model, for checks
    speakerid train experiment=arsc --cfg job           # print the composed config and exit

Each run writes runs/<name>/<date_time>/ (config, TensorBoard, metrics.jsonl, checkpoints, train.log), or the
folder run_dir=X names (Hydra's .hydra/ record and train.log included). With
a terminal a progress bar shows each epoch; without one (nohup, a batch job) or with
trainer.progress_bar=false, the log gets a line every trainer.log_every_steps steps: epoch and step, loss,
top-1, learning rate, utterances/s and the time left in the epoch and in the run. The run ends with a block
naming best.pt and the TensorBoard, evaluate, verify and resume commands.

Exit status: 0 trained (or already finished: nothing to resume), 1 a config, list, audio or checkpoint
error (named), 128+N stopped by signal N after checkpointing (resume with trainer.resume=true).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from speakerid.builders import build_eval_protocol
from speakerid.cli.evaluate import default_out_dir
from speakerid.cli.overrides import hydra_arguments, hydra_override, join, last_override
from speakerid.config import ConfigError, check_folder_name, is_blank, validate_config
from speakerid.data.check import HEADER_RECORD
from speakerid.configs import SEARCH_PATH
from speakerid.metrics import format_eer
from speakerid.training import train
from speakerid.training.state import (RESUME_KEYS, RUN_LOCK, RunFinished, RunFolderClaim, check_run_folder_free,
                                      claim_run_folder, find_resume_checkpoint)

log = logging.getLogger("speakerid")

HELP = "train a model (Hydra overrides, as train.py takes them)"
PASS_THROUGH = True  # speakerid.cli.main hands the arguments over unparsed: they are Hydra's

_claimed: dict[tuple[str, str], str] = {}


def runs_of(runs_root: str, name: str) -> str:
    """runs/<name>: where the runs of one name live, side by side (trainer.resume=true looks there). Absolute,
    so that a multirun job's folder (hydra.sweep.subdir, which Hydra joins to hydra.sweep.dir) is this one
    wherever the sweep's own folder is."""
    try:
        check_folder_name(name, "name")
    except ConfigError as e:
        sys.exit(f"error: {e}")
    return os.path.abspath(Path(runs_root) / name)


def claimed_folder(parent: str, stamp: str) -> str:
    """A run folder name under `parent` that no other run has, created now (Hydra's date-and-time name has
    one-second resolution). Under torchrun only rank 0 claims; the others keep their Hydra files apart."""
    key = (parent, stamp)
    if key not in _claimed:  # Hydra may resolve its run dir more than once
        rank = int(os.environ.get("RANK", "0"))
        try:
            _claimed[key] = claim_run_folder(parent, stamp) if rank == 0 else f".ranks/{stamp}-rank{rank}-{os.getpid()}"
        except OSError as e:
            sys.exit(f"error: cannot create a run folder under {parent} ({e.strerror or e}); give a writable "
                     f"folder with runs_root=...")
    return _claimed[key]


OmegaConf.register_new_resolver("speakerid.runs_of", runs_of, replace=True)
OmegaConf.register_new_resolver("speakerid.claim", claimed_folder, replace=True)


def run_training(cfg: DictConfig, launcher: str) -> dict[str, Any]:
    """One Hydra job: train, report, and exit with the run's status when it is not 0."""
    if cfg.run_dir is None:
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        results = train(cfg)
    except RunFinished as e:
        log.info("%s", e)
        discard_unused_run_folder(Path(cfg.run_dir))
        return {}
    except (ValueError, OSError, RuntimeError, InstantiationException) as e:
        # Expected user errors (bad config, list, audio or checkpoint): the message says what and where. A
        # constructor's own error (model.channels=12 with scale 8) comes wrapped by Hydra's instantiate.
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        log.error("%s: %s", type(cause).__name__, cause)
        sys.exit(1)
    eer = results.get("val/eer")
    if eer is not None and "exit_code" not in results:
        log.info("final: EER %s, minDCF(0.01) %.4f, minDCF(0.05) %.4f; best EER %s", format_eer(eer),
                 results["val/min_dcf_p0.01"], results["val/min_dcf_p0.05"], format_eer(results["best/eer"]))
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("%s", end_block(results, cfg, command_overrides(), launcher,
                                 HydraConfig.get().runtime.choices.get("eval")))
    if "exit_code" in results:  # stopped by SIGTERM/SIGINT after checkpointing
        sys.exit(results["exit_code"])
    return results


def command_overrides() -> list[str]:
    """The overrides this job was started with, less trainer.resume and what names its run folder: those of
    the config, then the user's Hydra settings (hydra.searchpath, ...)."""
    overrides = HydraConfig.get().overrides
    task = [o for o in overrides.task if not o.lstrip("+~").startswith(tuple(f"{k}=" for k in RESUME_KEYS))]
    own = ("hydra.mode=", "hydra.run.", "hydra.sweep.")
    return task + [o for o in overrides.hydra if not o.startswith(own)]


def end_block(results: dict[str, Any], cfg: DictConfig, overrides: list[str], launcher: str,
              eval_group: str | None = None) -> str:
    """Where the run's files are and the commands that use them, as the last lines of its log."""
    run_dir = Path(results["run_dir"]).resolve()
    checkpoints = run_dir / "checkpoints"
    model = checkpoints / "best.pt" if (checkpoints / "best.pt").is_file() else checkpoints / "last.pt"
    # trainer.resume=true finds the run among its siblings under runs_root/name; a run folder given by
    # hand (hydra.run.dir, run_dir) is resumed by naming its checkpoint.
    sibling = run_dir.parent == Path(runs_of(cfg.runs_root, cfg.name)).resolve()
    resume = "trainer.resume=true" if sibling else hydra_override("trainer.resume", str(checkpoints / "last.pt"))
    if "LOCAL_RANK" in os.environ:
        launcher = f"torchrun <the same torchrun options> {launcher.split()[-1]}"
    # the protocol it validated on: its eval group (evaluate's default is eval=folder, on the checkpoint's
    # own data config) and the eval values given on the command line
    evaluate = [o for o in overrides if o.lstrip("+").startswith(("eval=", "eval."))]
    if eval_group not in (None, "folder") and not any(o.lstrip("+").startswith("eval=") for o in evaluate):
        evaluate.insert(0, f"eval={eval_group}")
    # verify needs a threshold: the EER threshold of that evaluation (a checkpoint stores none)
    if cfg.get("eval") is not None:
        protocol = build_eval_protocol(cfg)
        evaluated = default_out_dir(model) / f"{protocol.name}.{protocol.scoring}.json"
        verify = join("speakerid", "verify", "--model", str(model), "--threshold-from", str(evaluated))
        verify += " a.wav b.wav  (after evaluate)"
    else:
        verify = join("speakerid", "verify", "--model", str(model), "--threshold", "<score>") + " a.wav b.wav"
    if "exit_code" in results:
        head = (f"run stopped by {results['interrupted']} after {results['epochs']} of {cfg.trainer.epochs} "
                f"epochs: {run_dir}")
    else:
        best = f", best EER {format_eer(results['best/eer'])}" if math.isfinite(results["best/eer"]) else ""
        head = f"run finished ({results['epochs']}/{cfg.trainer.epochs} epochs{best}): {run_dir}"
    lines = [
        head,
        f"  model        {model}" + ("  (best validation EER)" if model.name == "best.pt" else ""),
        f"  TensorBoard  tensorboard --logdir {shlex.quote(str(run_dir.parent))}",
        f"  evaluate     {join('speakerid', 'evaluate', '--model', str(model), *evaluate)}",
        f"  verify       {verify}",
        f"  resume       {launcher} {join(*overrides, resume)}",
    ]
    return "\n".join(lines)


def discard_unused_run_folder(run_dir: Path) -> None:
    """Remove the folder this invocation claimed when it trained nothing: it holds only Hydra's record of
    the command, the log (whose message the user has just seen) and the record of the audio headers read."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", HEADER_RECORD, RUN_LOCK}:
        release_guard_claims()  # its lock file goes with it
        shutil.rmtree(run_dir, ignore_errors=True)


class RunFolderGuard(Callback):
    """Registered in train.yaml (hydra.callbacks): Hydra calls it with the composed config of a single run,
    before it writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = refuse_a_run_folder_in_use(config)
        if int(os.environ.get("RANK", "0")) == 0:
            # Claimed now, before Hydra writes there, not only once setup reaches it (after the corpus, the
            # header pass): a second run started meanwhile would replace this one's .hydra/ record. The run's
            # setup takes this claim over (RunFolderClaim), and the run's close gives it up.
            folder.mkdir(parents=True, exist_ok=True)
            try:
                _guard_claims.append(RunFolderClaim(folder))
            except FileExistsError as e:
                sys.exit(f"error: {e}")


_guard_claims: list[RunFolderClaim] = []


def release_guard_claims() -> None:
    """Give up the claims the guard took and no run took over (a run that stopped before its setup)."""
    for claim in _guard_claims:
        claim.release()
    _guard_claims.clear()


def refuse_a_run_folder_in_use(config: DictConfig) -> Path:
    """Exit when the folder Hydra is about to write its record of the command (.hydra/) and train.log into
    (hydra.run.dir, or run_dir: see run_dir_for_hydra) holds a run's checkpoints and this run does not resume
    that run in place: Hydra would replace that run's record before any check of the run's own could refuse,
    and a later trainer.resume=true would take it for this run. Decided on the composed config, so however
    the command spelled or quoted these values, and for trainer.resume=true on the checkpoint it would take.
    Returns the folder."""
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    hydra_config.set_config(config)  # as Hydra does before it resolves its run dir (${hydra:...} in it)
    try:
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
    finally:
        hydra_config.cfg = saved
    if int(os.environ.get("RANK", "0")) == 0:  # a run training there now: Hydra would write into its folder
        try:
            check_run_folder_free(folder)
        except FileExistsError as e:
            sys.exit(f"error: {e}")
    last = folder / "checkpoints" / "last.pt"
    if not last.exists():
        return folder
    task = copy.deepcopy(config)
    with open_dict(task):
        del task["hydra"]
        if task.run_dir is None:
            task.run_dir = str(folder)
    named_by_run_dir = Path(str(task.run_dir)).resolve() == folder.resolve()
    resume = task.trainer.get("resume")
    resumed, why = (None, None) if resume is False or resume is None else checkpoint_to_resume(task)
    if named_by_run_dir and resumed is not None and resumed.resolve().parent == last.parent.resolve():
        return folder
    key = "run_dir" if config.run_dir is not None and named_by_run_dir else "hydra.run.dir"
    if resume is True and why is None:
        why = ("trainer.resume=true does not take its checkpoints: " + (
            f"it takes {resumed} (a newer run of these settings)" if resumed is not None
            else "that run was started with other settings"))
    sys.exit(f"error: {key}={folder} already holds a run's checkpoints"
             + (f" ({why})" if why else "") + ": give a new folder, or resume that run in place with "
             + shlex.quote(hydra_override("trainer.resume", str(last))))


def checkpoint_to_resume(cfg: DictConfig) -> tuple[Path | None, str | None]:
    """(the checkpoint the run will resume from or None, None), as the run will find it, or (None, why) when
    its config or trainer.resume value is one the run will stop on."""
    logging.disable(logging.WARNING)  # what it finds, the run says itself
    try:
        validate_config(cfg)
        return find_resume_checkpoint(cfg, Path(cfg.run_dir)), None
    except Exception as e:  # noqa: BLE001 - a bad config or trainer.resume (no, 0, a missing file) takes nothing
        return None, f"{type(e).__name__}: {e}"
    finally:
        logging.disable(logging.NOTSET)


def refuse_a_blank_run_dir(argv: list[str]) -> None:
    """`run_dir=` (run_dir=$RUN_DIR with the variable unset) is not a folder: Hydra would take it for no
    run_dir and the run would then write into the current folder, over the files there. Nor is run_dir one
    folder for a sweep's jobs: the second would find the first's checkpoints, and their Hydra records would
    not be in it."""
    multirun, overrides = hydra_arguments(argv)
    given = last_override(overrides, "run_dir")
    if given is None or given.is_delete() or given.value() is None:
        return
    if is_blank(given.value()):
        sys.exit("error: run_dir is empty (an unset variable in a job script?): give the run's folder, or "
                 "leave run_dir out for a new folder under runs_root/<name>/")
    if multirun:
        sys.exit("error: run_dir names one run's folder, but -m starts a job per setting: leave it out (each job "
                 "gets runs_root/<name>/<date_time>_job<N>), or give runs_root= to put the jobs elsewhere")


# Keys whose integer value is taken as its digits (config.check_folder_name, check_strip_prefix): name=123.
DIGITS_KEYS = ("name", "run_dir", "runs_root", "eval.strip_prefix")


def refuse_numbers_hydra_rewrites(argv: list[str]) -> None:
    """name=2024_01 is the number 202401 to Hydra (and +5 is 5): taken as its digits, it would name another
    folder than the one typed. Refused, with the quoting that keeps the text."""
    for override in hydra_arguments(argv)[1]:
        if override.key_or_group not in DIGITS_KEYS or override.is_delete():
            continue
        value, typed = override.value(), override.input_line.split("=", 1)[-1]
        if isinstance(value, int) and not isinstance(value, bool) and typed != str(value):
            sys.exit(f"error: {override.key_or_group}={typed} is the number {value} to Hydra, which would name "
                     f"{value}: quote it to keep the text, {join(hydra_override(override.key_or_group, typed))}")


def run_dir_for_hydra(argv: list[str]) -> list[str]:
    """With run_dir=X, Hydra's own folder (its .hydra/ record of the command, train.log) is X too, rather
    than a runs_root/<name>/<date> folder that it would claim and the run leave empty. Not when the command
    names hydra.run.dir itself, nor for a multirun (its jobs have folders of their own); under torchrun the
    other ranks keep their Hydra folders apart, as without run_dir. The command line is read as Hydra reads
    it: run_dir='X' (quoted) names X as well."""
    multirun, overrides = hydra_arguments(argv)
    run_dir = last_override(overrides, "run_dir")
    if (run_dir is None or run_dir.is_delete() or run_dir.value() is None
            or last_override(overrides, "hydra.run.dir") is not None
            or multirun or int(os.environ.get("RANK", "0")) != 0):
        return []
    return ["hydra.run.dir=${run_dir}"]  # the value as the config resolved it, however the command quoted it


def launch(argv: list[str], launcher: str) -> dict[str, Any]:
    """Run the training app on Hydra arguments `argv`, as `launcher` ("python train.py", "speakerid train")
    names the command in what the run prints. Returns the results of its (last) job; exits on errors."""
    results: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=SEARCH_PATH, config_name="train")
    def app(cfg: DictConfig) -> float:
        results.clear()
        results.update(run_training(cfg, launcher))
        eer = results.get("val/eer")
        return eer if eer is not None else float("nan")  # the value Hydra sweepers optimise

    refuse_a_blank_run_dir(argv)
    refuse_numbers_hydra_rewrites(argv)
    _claimed.clear()  # run folders claimed by an earlier launch in this process are not this one's
    # Hydra reads sys.argv; its own override first, so that a trailing flag (--cfg job) keeps its value
    saved, sys.argv = sys.argv, [sys.argv[0], *run_dir_for_hydra(argv), *argv]
    try:
        app()
    finally:
        sys.argv = saved
        release_guard_claims()
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="Hydra overrides (key=value, group=option, +key=value, ~key) and flags "
                             "(-m, --cfg job, --info, --hydra-help)")


def run(args: argparse.Namespace) -> int:
    launch(list(args.overrides), "speakerid train")
    return 0
