"""The run state: where a run stands (`Progress`), what a checkpoint holds, how it is saved and restored,
and which checkpoint `trainer.resume` means. The files themselves (atomic writes, rotation, `last.pt`,
`best.pt`) are `speakerid.checkpoint`'s."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from speakerid.checkpoint import (
    FORMAT_VERSION,
    RUN_PLACE_KEYS,
    CheckpointDir,
    config_differences,
    library_versions,
    load_checkpoint,
    load_state_strict,
    rng_state,
    set_rng_state,
)
from speakerid.data.lists import TrainList
from speakerid.distributed import DistEnv, all_gather_objects, barrier, broadcast_buffers

log = logging.getLogger("speakerid")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0            # epoch in progress (0-based); equals the number of finished epochs
    position: int = 0         # samples of this epoch's order already consumed
    step: int = 0             # optimizer steps since the start of the run
    best_eer: float = math.inf
    nonfinite_steps: int = 0  # steps skipped because the loss or a gradient was NaN/inf
    # Set in the checkpoint written at an epoch's end before validating, so that a run stopped during
    # validation (or by it failing) validates that epoch first when resumed.
    pending_validation: bool = False
    margin: float | None = None  # the head's margin at the last step (a record: the schedule recomputes it)
    # Mid-epoch: the loss and top-1 sums (over every rank, with the number of ranks) and step counts of the
    # epoch and of the logging window in progress, so that a resumed run, under any number of processes,
    # logs the means an uninterrupted one would (loop.DeviceMeans).
    epoch_means: dict | None = None
    window_means: dict | None = None


class NonFiniteCounter:
    """Skipped (non-finite) steps, in total and in a row, counted on the device so that the host never
    waits for a step's result."""

    def __init__(self, device: torch.device, total: int = 0):
        self._total = torch.tensor(total, dtype=torch.int64, device=device)
        self._in_a_row = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, finite: torch.Tensor) -> None:
        bad = (~finite).to(torch.int64)
        self._total += bad
        self._in_a_row = (self._in_a_row + 1) * bad

    @property
    def total(self) -> int:
        return int(self._total.item())

    @property
    def in_a_row(self) -> int:
        return int(self._in_a_row.item())


def train_list_fingerprint(train_list: TrainList) -> dict[str, Any]:
    """What a checkpoint records of its train list: the number of utterances and a digest of the
    (speaker, path) lines in order. An epoch's order is a permutation of the list's indices, so the rest of
    an epoch can only be drawn as it would have been from the same list."""
    lines = "".join(f"{speaker}\t{path}\n" for speaker, path in zip(train_list.speakers, train_list.paths))
    return {"utterances": len(train_list), "sha256": hashlib.sha256(lines.encode()).hexdigest()}


class RunFinished(Exception):
    """trainer.resume found the run already trained to trainer.epochs: there is nothing to do."""


RESUME_KEYS = ("trainer.resume",)  # overrides that may differ between a run and its resumption



def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config.yaml a run wrote when it started, read as plain YAML (nothing in it is
    interpolated: training writes the file resolved, so a value that is not plain is not one training used),
    or None without one. ValueError, naming the file, when it cannot be read as a YAML mapping."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a readable YAML file ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a run's config (its top level is a {type(config).__name__}, not a mapping)")
    return config


def find_resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """trainer.resume: false -> None; a path -> that file; true -> the newest last.pt among the runs of this
    name (the sibling folders of this run, multirun jobs included) whose resolved config is this one's but
    for RUN_PLACE_KEYS, or None when there is none yet, so that a job script can always pass resume=true and be
    requeued at any moment. Runs of other settings (another job of a sweep, another seed, a default changed
    since) are never picked up, however their folders were named."""
    resume = cfg.trainer.resume
    if resume is False or resume is None:
        return None
    if resume is True:
        ours = yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))
        candidates, others = [], []
        for last in run_dir.parent.glob("*/checkpoints/last.pt"):
            try:
                theirs = read_run_config(last.parent.parent)
            except ValueError as e:  # one damaged folder must not block every resume of the name
                log.warning("trainer.resume=true: %s; that run folder is not resumed", e)
                continue
            same = theirs is not None and not config_differences(theirs, ours, ignore=RUN_PLACE_KEYS)
            (candidates if same else others).append(last)
        if others:
            log.info("trainer.resume=true: %d run(s) of this name were started with other settings and are "
                     "not resumed (e.g. %s)", len(others), others[0].parent.parent)
        if not candidates:
            log.warning("trainer.resume=true: no checkpoint of a run with these settings under %s/*/checkpoints/ "
                        "yet; starting a new run", run_dir.parent)
            return None
        return max(candidates, key=lambda p: p.stat().st_mtime)
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: no such checkpoint file")
    return path


def claim_resumed_run(checkpoint: Path, run_dir: Path) -> "RunFolderClaim | None":
    """The claim on the folder of the run `checkpoint` belongs to, when that is not `run_dir` (then this run
    claims it as its own), held while this run trains: FileExistsError when a process trains there, or is
    resuming it already (two copies of a requeued job would fork the run into two folders). None for a
    checkpoint outside a run folder, or one whose folder cannot take a lock file (read-only), with a warning.
    For rank 0: under torchrun the others would find their own rank 0's claim."""
    folder = checkpoint.parent.parent
    if checkpoint.parent.name != "checkpoints" or folder.resolve() == Path(run_dir).resolve():
        return None
    try:
        return RunFolderClaim(folder)
    except FileExistsError as e:
        raise FileExistsError(f"trainer.resume: {checkpoint} is of a run still training, or being resumed: "
                              f"{e}") from None
    except OSError as e:  # a read-only copy of a run: nothing to fork into it
        log.warning("trainer.resume: %s cannot take a lock file (%s): a second resume of it would not be refused",
                    folder, e.strerror or e)
        return None


def claim_run_folder(parent: str | os.PathLike, stamp: str) -> str:
    """Create a new folder under `parent` named `stamp` (or `stamp_2`, `stamp_3`, ... when taken) and return
    its name. mkdir is atomic, so two runs started in the same second (a job array) never share one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        name = stamp if n == 1 else f"{stamp}_{n}"
        try:
            (parent / name).mkdir()
            return name
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free run folder name for {stamp}")


RUN_LOCK = ".run.lock"  # in the run folder: flock-ed by the process training there


class RunFolderClaim:
    """The claim of the process training in a run folder, held for the whole run: an exclusive flock on
    <run_dir>/.run.lock. A second run started into the folder (a job array, a retyped command) is refused
    instead of mixing its checkpoints, config.yaml and metrics.jsonl with the first's. The kernel releases a
    flock when its process ends, however it ends (a crash, SIGKILL), so a stopped run leaves no stale claim;
    the file stays (unlinking it would let two processes lock two different files)."""

    # A process trains one run at a time: a claim of its own still held on the folder is taken over (with no
    # moment unlocked). It is that of a run whose setup failed before it could be closed (a notebook or a test
    # retrying), or one the command line took before Hydra wrote there; not another run's.
    _held: dict[Path, "RunFolderClaim"] = {}

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._key = self.run_dir.resolve()
        earlier = self._held.get(self._key)
        if earlier is not None:
            self._file, earlier._file = earlier._file, None
            self._held[self._key] = self
            return
        self._file = open(self.run_dir / RUN_LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(self._file)
            self._file.close()
            raise FileExistsError(in_use_message(self.run_dir, holder)) from None
        except OSError as e:  # a file system without locks (some network mounts): train unguarded
            log.warning("%s cannot be locked (%s): a second run started into this folder would not be refused",
                        self.run_dir / RUN_LOCK, e.strerror or e)
            self._file.close()
            self._file = None
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._file.flush()
        self._held[self._key] = self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)  # also for forked loader workers that share the open file
            self._file.close()
            self._file = None
        if self._held.get(self._key) is self:
            del self._held[self._key]


def _holder_of(lock_file) -> str:
    lock_file.seek(0)
    holder = lock_file.read().strip()
    return f" ({holder})" if holder else ""


def in_use_message(run_dir: Path, holder: str = "") -> str:
    return (f"{run_dir} is in use: another process{holder} is training there. Wait for it to finish or stop it "
            f"(a stopped run is resumed with trainer.resume=true), or give another run_dir")


def check_run_folder_free(run_dir: str | os.PathLike) -> None:
    """FileExistsError when another process holds the claim on `run_dir` (RunFolderClaim); creates nothing.
    For the checks made before a run claims its folder, so that they name the run in progress there."""
    run_dir = Path(run_dir)
    if run_dir.resolve() in RunFolderClaim._held:
        return
    try:
        lock_file = open(run_dir / RUN_LOCK, encoding="utf-8")
    except OSError:  # no lock file: no run has claimed the folder
        return
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(in_use_message(run_dir, _holder_of(lock_file))) from None
        except OSError:
            return
        fcntl.flock(lock_file, fcntl.LOCK_UN)


class RunState:
    """Everything a checkpoint holds, gathered from the objects that own it: model, head, optimizer,
    loss scaler, progress (the learning rate and the margin are functions of it), every rank's RNG state, the resolved config, the speaker map and
    library versions. `save` writes it through the run's CheckpointDir; `restore` puts a checkpoint back
    into the same objects, so a resumed run continues exactly where the checkpoint was written."""

    def __init__(self, cfg: DictConfig, dist: DistEnv, device: torch.device, checkpoints: CheckpointDir,
                 model: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, train_list: TrainList):
        self.cfg, self.dist, self.device = cfg, dist, device
        self.checkpoints = checkpoints
        self.model, self.head = model, head
        self.optimizer, self.scaler = optimizer, scaler
        self.speakers = list(train_list.speaker_ids)
        self.train_list = train_list_fingerprint(train_list)
        self.progress = Progress()
        self.nonfinite = NonFiniteCounter(device)

    def state_dict(self) -> dict[str, Any]:
        self.progress.nonfinite_steps = self.nonfinite.total
        self.progress.margin = getattr(self.head, "m", None)
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(),  # replaced in save() by the states of every rank
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "speakers": self.speakers,
            "train_list": self.train_list,
            "versions": library_versions(),
        }

    def save(self, best: bool = False) -> Path:
        """Checkpoint (rank 0 writes; every rank takes part, as each contributes its RNG state)."""
        broadcast_buffers(self.model, self.dist)  # BatchNorm statistics as rank 0 has them
        rngs = all_gather_objects(rng_state(), self.dist)
        path = self.checkpoints.last
        if self.dist.is_main:
            state = self.state_dict()
            state["rng"], state["rng_per_rank"] = rngs[0], rngs
            # best.pt first: last.pt must never record a best EER that no file holds (a kill between the two
            # writes would leave it so for good). Killed after best.pt, the resumed run validates the epoch
            # again and writes the same best.pt.
            if best:
                self.checkpoints.save_best(state)
            path = self.checkpoints.save(state, self.progress.step)
        barrier(self.dist)
        return path

    def restore(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """Put `checkpoint` (loaded from `path` by load_resume_checkpoint) into the run's objects."""
        if checkpoint["speakers"] != self.speakers:
            raise RuntimeError(
                f"{path}: the checkpoint was trained on {len(checkpoint['speakers'])} speakers that differ from "
                f"the {len(self.speakers)} of {self.cfg.data.train_list}; resume needs the same train list"
            )
        self._check_settings(path, checkpoint)
        self._check_train_list(path, checkpoint)
        load_state_strict(self.model, checkpoint["model"], what=f"{path} model")
        load_state_strict(self.head, checkpoint["head"], what=f"{path} head")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.progress = Progress(**checkpoint["progress"])
        for means in (self.progress.epoch_means, self.progress.window_means):
            if means is not None:  # written before the sums carried their number of ranks: those that saved
                means.setdefault("world_size", len(checkpoint.get("rng_per_rank", [None])))
        self.nonfinite = NonFiniteCounter(self.device, total=self.progress.nonfinite_steps)
        per_rank = checkpoint.get("rng_per_rank", [checkpoint["rng"]])
        if len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank])
        else:  # another number of processes: rank 0 continues the saved stream, the others are reseeded
            set_rng_state(checkpoint["rng"])
            if self.dist.rank:
                torch.manual_seed(self.cfg.seed + 1000 * self.dist.rank + self.progress.step)
        log.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch + 1, self.progress.step)

    # What the weights and the optimizer state mean: a resume must not change it. The optimizer's own
    # settings come back from its state (weight decay, betas, momentum), so a change there would be
    # ignored, or, for another optimizer, fail at its first step; its lr is the one exception: the LR
    # schedule sets it at every step from the config (a lower optim.lr is how a diverging run goes on).
    FIXED_ON_RESUME = ("features.fbank", "optim")
    CHANGEABLE_ON_RESUME = ("optim.lr",)

    def _check_settings(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """Stop when this run's model, fbank or optimizer settings differ from the checkpoint's; name every
        other difference (more epochs, another margin, ...) in a warning."""
        from speakerid.builders import model_config_differences

        saved = checkpoint.get("config")
        if not saved:
            return
        current = yaml.safe_load(OmegaConf.to_yaml(self.cfg, resolve=True))
        fixed = [f"model.{d}" for d in model_config_differences(saved.get("model") or {}, current["model"])]
        for node in self.FIXED_ON_RESUME:
            fixed += config_differences(saved, current, node, ignore=self.CHANGEABLE_ON_RESUME)
        if fixed:
            raise RuntimeError(
                f"{path}: this run's settings differ from the checkpoint's in what its weights or optimizer "
                f"state mean (checkpoint -> this run): {'; '.join(fixed)}. Resume with the checkpoint's settings, "
                f"or start a new run from its weights with trainer.init_from")
        other = config_differences(saved, current, ignore=("model", *self.FIXED_ON_RESUME, *RUN_PLACE_KEYS))
        other += config_differences(saved, current, "optim.lr")
        if other:
            log.warning("resuming %s with settings that differ from the checkpoint's (checkpoint -> this run): %s",
                        path, "; ".join(other[:12]) + (f"; and {len(other) - 12} more" if len(other) > 12 else ""))

    def _check_train_list(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """A train list edited since the checkpoint (a bad file's line removed, say): from an epoch's end the
        next epochs simply draw from the new list; in the middle of an epoch the rest of the epoch cannot be
        drawn as it would have been, so the resume stops. Checkpoints from before this record pass."""
        saved = checkpoint.get("train_list")
        if saved is None or saved == self.train_list:
            return
        change = (f"{self.cfg.data.train_list} has changed since {path} was written ({saved['utterances']} -> "
                  f"{self.train_list['utterances']} utterances)")
        position = checkpoint["progress"]["position"]
        if position:
            raise RuntimeError(
                f"{change}, which was written after {position} utterances of epoch "
                f"{checkpoint['progress']['epoch'] + 1}: that epoch's order is a permutation of the list it "
                f"was drawn from, so the run cannot go on where it stopped. Restore the list, or resume from a "
                f"checkpoint written at the end of an epoch (trainer.resume=<run>/checkpoints/step-*.pt)")
        log.warning("%s; the epochs from here on are drawn from the list as it is now", change)


RESUME_PARTS = ("model", "head", "optimizer", "scaler", "progress", "rng", "speakers")


def load_resume_checkpoint(path: Path, epochs: int) -> dict[str, Any]:
    """The checkpoint to resume from, loaded on the CPU (RNG states must stay there; load_state_dict moves
    the rest to the device), checked to hold a training state and to have epochs left to train."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    if "averaged_from" in checkpoint:
        raise RuntimeError(f"{path} averages {len(checkpoint['averaged_from'])} checkpoints: it has no "
                           f"optimizer or RNG state to resume from; resume from one of them")
    missing = [part for part in RESUME_PARTS if part not in checkpoint]
    if missing:
        raise RuntimeError(f"{path}: not a training checkpoint that can be resumed (it has no "
                           f"{', '.join(missing)}); resume from a run's checkpoints/last.pt or step-*.pt")
    done = checkpoint["progress"]["epoch"]
    if done >= epochs and not checkpoint["progress"].get("pending_validation", False):
        raise RunFinished(f"{path}: this run already finished ({done} of {epochs} epochs); nothing to do. "
                          f"To train it longer, give trainer.resume={path} trainer.epochs=<more than {done}>")
    return checkpoint
