"""Checkpoints: everything needed to continue a run exactly or to use the model alone, written atomically.

A checkpoint is a dict saved with torch.save and loadable with weights_only=True (only tensors and plain
Python containers inside), so loading one never executes code.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import re
import shlex
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speakerid.config import check_int_at_least, is_int
from speakerid.io import atomic_write
from speakerid.metrics import format_eer

log = logging.getLogger("speakerid")

FORMAT_VERSION = 1
_MISSING = object()  # a key that is not there


def library_versions() -> dict[str, str]:
    import torchaudio

    import speakerid

    # str(): torch's version is a TorchVersion object, which a weights_only load refuses.
    return {
        "speakerid": str(speakerid.__version__),
        "torch": str(torch.__version__),
        "torchaudio": str(torchaudio.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    # random.getstate() nests tuples; keep them tuples after a round trip through any container format.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through speakerid.io.atomic_write: a crash or a full disk leaves the previous file intact
    and never a half-written one under the final name."""
    path = Path(path)
    try:
        with atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except OSError as e:
        raise OSError(e.errno, f"could not write checkpoint {path} ({e.strerror or e}); the previous "
                               f"checkpoint, if any, is intact") from e


class CheckpointError(RuntimeError):
    """A file given as a checkpoint (or a model) that speakerid cannot use: unreadable, an export of the
    extractor, or a part missing or of another type than training writes."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    require: tuple[str, ...] = (), needed_for: str = "") -> dict[str, Any]:
    """The checkpoint in `path`, checked by `check_checkpoint` (`require`: dotted parts it must hold)."""
    return check_checkpoint(load_weights_only(path, map_location, what="checkpoint"), path, require, needed_for)


def load_weights_only(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                      what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True (tensors and plain containers only: loading runs no code), with
    errors that name the file and say what it is. torch's own text is not passed on where it advises
    loading with weights_only=False: that would run whatever code the file holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's advice for files it then refuses; the error says what they are
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(_why_unreadable(path, what, e)) from None


def _why_unreadable(path: Path, what: str, error: Exception) -> str:
    """Why torch.load(weights_only=True) refused `path`: an export of the extractor, objects other than
    tensors and plain containers, or a damaged file."""
    export = ("a TorchScript export of the extractor (load it with torch.jit.load)" if _is_torchscript_archive(path)
              else "an ONNX export of the extractor (run it with onnxruntime)" if _is_onnx_model(path) else None)
    if export:
        return (f"{path} is {export}: --model (and speakerid.load) take a checkpoint or a model file (speakerid "
                f"export --format model)")
    text = str(error)
    if "weights_only" in text or "WeightsUnpickler" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            return (f"{path}: not a speakerid {what}: it holds Python objects ({found.group(1)}) besides tensors "
                    f"and plain containers, which speakerid does not load (loading them could run code)")
        return (f"{path}: not a speakerid {what}: not a file torch.save writes, or one holding objects besides "
                f"tensors and plain containers, which speakerid does not load (loading them could run code)")
    if path.stat().st_size == 0:
        return f"{path}: not a speakerid {what}: the file is empty"
    reason = text.split(". ")[0].strip() or type(error).__name__
    return f"{path}: not a readable speakerid {what} ({reason}); is the file damaged or cut short?"


def _is_torchscript_archive(path: Path) -> bool:
    """torch.jit.save's zip: like torch.save's, but with the module's code and constants beside its data."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_onnx_model(path: Path, max_fields: int = 100_000) -> bool:
    """Whether `path` reads as an ONNX ModelProto, which has no magic number: protobuf fields from its first
    byte to its last, the first ir_version (field 1, a varint, as onnx.save writes it), a graph (field 7)
    among them. Length-delimited fields are skipped, not read."""
    size = path.stat().st_size
    fields: set[int] = set()
    try:
        with open(path, "rb") as f:
            for _ in range(max_fields):
                if f.tell() >= size:
                    break
                key = _read_varint(f)
                if key is None or key >> 3 == 0 or (not fields and key != 0x08):
                    return False
                wire = key & 7
                if wire == 0:
                    if _read_varint(f) is None:
                        return False
                elif wire == 2:
                    length = _read_varint(f)
                    if length is None or f.tell() + length > size:
                        return False
                    f.seek(length, os.SEEK_CUR)
                elif wire in (1, 5):
                    f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                else:
                    return False
                fields.add(key >> 3)
            return f.tell() == size and {1, 7} <= fields
    except OSError:
        return False


def _read_varint(f) -> int | None:
    value = 0
    for shift in range(0, 64, 7):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def _is_count(value: Any) -> bool:
    return is_int(value) and value >= 0


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# What each part of a checkpoint must be where it is there (dotted: config.data.sample_rate is
# checkpoint["config"]["data"]["sample_rate"]); training writes all of them. Parents come before their parts.
CHECKPOINT_PARTS: dict[str, tuple[str, Any]] = {
    "model": ("a state dict (names -> tensors)", _is_state_dict),
    "head": ("a state dict (names -> tensors)", _is_state_dict),
    "optimizer": ("a dict", lambda v: isinstance(v, dict)),
    "scaler": ("a dict", lambda v: isinstance(v, dict)),
    "rng": ("a dict", lambda v: isinstance(v, dict)),
    "speakers": ("a list of speaker names", _is_strings),
    "averaged_from": ("a list of paths", _is_strings),
    "progress": ("a dict", lambda v: isinstance(v, dict)),
    "progress.epoch": ("a count (an integer >= 0)", _is_count),
    "progress.step": ("a count (an integer >= 0)", _is_count),
    "progress.position": ("a count (an integer >= 0)", _is_count),
    "progress.best_eer": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "progress.pending_validation": ("true or false", lambda v: isinstance(v, bool)),
    "config": ("a dict", lambda v: isinstance(v, dict)),
    "config.model": ("a dict", lambda v: isinstance(v, dict)),
    "config.features": ("a dict", lambda v: isinstance(v, dict)),
    "config.features.fbank": ("a dict", lambda v: isinstance(v, dict)),
    "config.data": ("a dict", lambda v: isinstance(v, dict)),
    "config.data.sample_rate": ("a positive integer", lambda v: _is_count(v) and v > 0),
    "config.data.resample": ("true or false", lambda v: isinstance(v, bool)),
    "config.trainer": ("a dict", lambda v: isinstance(v, dict)),
    "config.trainer.epochs": ("a count (an integer >= 0)", _is_count),
}


def checkpoint_part(checkpoint: dict[str, Any], dotted: str) -> Any:
    """checkpoint["a"]["b"] for "a.b"; _MISSING where a level is not there."""
    value: Any = checkpoint
    for key in dotted.split("."):
        value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
    return value


def check_checkpoint(checkpoint: Any, path: str | os.PathLike, require: tuple[str, ...] = (),
                     needed_for: str = "") -> dict[str, Any]:
    """`checkpoint` (as loaded from `path`) if it is a checkpoint of a format this speakerid reads: each part
    of CHECKPOINT_PARTS it holds of the type training writes, its config plain values free of
    interpolations, and the dotted parts of `require` (which `needed_for`, e.g. "to embed", needs) there.
    CheckpointError naming the file and the part otherwise."""
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path}: not a speakerid checkpoint (no format_version)")
    version = checkpoint["format_version"]
    if not _is_count(version) or version == 0:
        raise CheckpointError(f"{path}: format_version must be a positive integer, got {_shown(version)}; not a "
                              f"checkpoint speakerid wrote")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer speakerid (format {version}; this one reads up to "
                              f"{FORMAT_VERSION})")
    check_literal_config(checkpoint.get("config"), str(path))  # first: the reason that matters most
    for dotted, (what, fits) in CHECKPOINT_PARTS.items():
        value = checkpoint_part(checkpoint, dotted)
        if value is not _MISSING and not fits(value):
            raise CheckpointError(f"{path}: {dotted} must be {what}, got {_shown(value)}; the file is damaged or "
                                  f"was not written by speakerid's training")
    config = checkpoint.get("config")
    problem = plain_value_problem(config, "config") if config is not None else None
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    missing = [dotted for dotted in require if checkpoint_part(checkpoint, dotted) is _MISSING]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)}{f', needed {needed_for}' if needed_for else ''}"
                              f" (speakerid's training writes {'them' if len(missing) > 1 else 'it'} into every "
                              f"checkpoint)")
    return checkpoint


def _shown(value: Any) -> str:
    """A value for a message: short ones as they are, others by their type."""
    text = repr(value)
    return text if isinstance(value, (int, float, str, type(None))) and len(text) <= 40 else f"a {type(value).__name__}"


def plain_value_problem(value: Any, where: str) -> str | None:
    """Where `value` holds something other than what torch.load(weights_only=True) and JSON both read (None,
    bool, numbers, str, lists, dicts with str keys): "<where>.<key>: <what>", or None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        bad_keys = [k for k in value if not isinstance(k, str)]
        if bad_keys:
            return f"{where}: key {bad_keys[0]!r} is not a string"
        items = ((f"{where}.{k}", v) for k, v in value.items())
    else:
        return f"{where}: a {type(value).__name__} cannot be stored (only numbers, strings, lists and dicts)"
    return next(filter(None, (plain_value_problem(v, w) for w, v in items)), None)


class UnsafeFileConfigError(RuntimeError):
    """A config read from a file would make speakerid build something other than its own classes, or resolve
    an interpolation."""


def check_literal_config(config: Any, source: str, where: str = "") -> None:
    """Refuse a config read from a file (a checkpoint's, a model file's) with an interpolation in any value:
    once the config is an OmegaConf object, reading any value resolves it, and resolvers run code
    (${speakerid.claim:...} creates folders, ${oc.env:...} reads the environment). Training stores its config
    resolved, so its own checkpoints never hold one."""
    if isinstance(config, dict):
        for k, v in config.items():
            check_literal_config(v, source, f"{where}.{k}" if where else str(k))
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            check_literal_config(v, source, f"{where}.{i}")
    elif isinstance(config, str) and "${" in config:
        raise UnsafeFileConfigError(f"{source}: its config value {where}={config!r} is an interpolation, which "
                                    f"speakerid does not resolve from a file")


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that names the keys and shapes that differ instead of loading partially."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{what}: the checkpoint does not match the configured architecture"]
        if missing:
            lines.append(f"  missing in checkpoint ({len(missing)}): {', '.join(missing[:8])}")
        if unexpected:
            lines.append(f"  not in the model ({len(unexpected)}): {', '.join(unexpected[:8])}")
        if mismatched:
            lines.append(f"  shapes differ ({len(mismatched)}):")
        for k in mismatched[:8]:
            lines.append(f"    {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise RuntimeError("\n".join(lines))
    module.load_state_dict(state)


MID_EPOCH = "-mid"  # step-<N>-mid.pt: saved in the middle of an epoch


def is_mid_epoch(path: Path) -> bool:
    return path.name.endswith(f"{MID_EPOCH}.pt")


class CheckpointDir:
    """The checkpoints of one run: `step-<N>.pt` for the last `keep` epoch ends, `step-<N>-mid.pt` for the
    newest save in the middle of an epoch (trainer.checkpoint_every_*, a stop signal) while no epoch end is
    newer, `last.pt` naming the newest (a hard link, so it costs no second write) and `best.pt`. A mid-epoch
    save never pushes an epoch end out: `speakerid average --last N` needs the last N. Every file appears
    atomically."""

    def __init__(self, folder: str | os.PathLike, keep: int = 3):
        check_int_at_least(keep, 1, "trainer.keep_checkpoints")
        self.folder = Path(folder)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        mid = bool((state.get("progress") or {}).get("position"))
        path = self.folder / f"step-{step:09d}{MID_EPOCH if mid else ''}.pt"
        save_atomic(state, path)
        self._point_last_at(path, state)
        saved = sorted(self.folder.glob("step-*.pt"))  # step-<9 digits>: name order is step order
        ends = [p for p in saved if not is_mid_epoch(p)]
        mids = [p for p in saved if is_mid_epoch(p)]
        stale = ends[:-self.keep] + mids[:-1]
        if mids and ends and ends[-1].name[:14] > mids[-1].name[:14]:  # an epoch end has superseded it
            stale.append(mids[-1])
        for old in stale:
            old.unlink(missing_ok=True)
        return path

    def adopt_best(self, best: Path, resumed: dict[str, Any] | None = None) -> None:
        """Give this folder the best.pt of the run it resumes (in another folder), so that best.pt names the
        best checkpoint of the whole run: a hard link, or an atomic copy where links are not possible.
        `resumed`, the progress of the checkpoint resumed: only a best.pt of this run's line of training is
        taken, one at or before its step with the best EER it records. A best.pt from later (the run resumed
        went on past the checkpoint: epochs this run does not continue) or of another EER is left, with a
        warning; this run's own validations then write best.pt."""
        if self.best.exists() or not best.is_file() or best.resolve().parent == self.folder.resolve():
            return
        if resumed is not None and not self._of_resumed_line(best, resumed):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".best.pt.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(best, tmp)
        except OSError:
            shutil.copyfile(best, tmp)
        os.replace(tmp, self.best)

    @staticmethod
    def _of_resumed_line(best: Path, resumed: dict[str, Any]) -> bool:
        """Whether `best` is the best model up to the checkpoint whose progress is `resumed`; warns why not."""
        step, best_eer = resumed.get("step", 0), resumed.get("best_eer", math.inf)
        try:
            progress = load_checkpoint(best, require=("progress.step", "progress.best_eer"),
                                       needed_for="to tell whether it is of the run resumed")["progress"]
        except (CheckpointError, OSError) as e:
            log.warning("the best.pt of the run resumed is not taken along: %s", e)
            return False
        recorded = format_eer(best_eer) if math.isfinite(best_eer) else "none yet"
        if progress["step"] > step:
            why = (f"it is the model of step {progress['step']}, after step {step} of the checkpoint resumed: a "
                   f"later part of that run, which this run does not continue")
        elif progress["step"] == step and resumed.get("pending_validation"):
            log.info("%s is not taken along: the checkpoint resumed was saved before the validation that wrote "
                     "it, which this run does again first", best)
            return False
        elif progress["best_eer"] != best_eer:
            why = (f"its EER {format_eer(progress['best_eer'])} is not the best EER the checkpoint resumed "
                   f"records ({recorded})")
        else:
            return True
        log.warning("%s is not taken along as this run's best.pt: %s. This run writes its best.pt at its first "
                    "validation better than the best so far (%s)", best, why, recorded)
        return False

    def save_best(self, state: dict[str, Any]) -> Path:
        save_atomic(state, self.best)
        return self.best

    def _point_last_at(self, path: Path, state: dict[str, Any]) -> None:
        tmp = self.folder / f".last.pt.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links: write a second copy
            save_atomic(state, self.last)
            return
        os.replace(tmp, self.last)


def last_epoch_checkpoints(run_dir: str | os.PathLike, count: int, out: str | os.PathLike = "avg.pt") -> list[Path]:
    """The checkpoints of a finished run's last `count` epochs, oldest first: what WeSpeaker averages
    (`num_avg`). Errors say what to change: a run that kept fewer (trainer.keep_checkpoints), one that has not
    finished, one that resumed a checkpoint of another folder, which holds its earlier epochs (the
    `speakerid average --out <out>` command that names them), or a mid-epoch checkpoint
    (trainer.checkpoint_every_*) among the last `count`."""
    check_int_at_least(count, 1, "--last")
    folder = Path(run_dir) / "checkpoints"
    saved = sorted(p for p in folder.glob("step-*.pt") if not is_mid_epoch(p))  # name order is step order
    if len(saved) < count:
        raise ValueError(_too_few_epoch_ends(folder, saved, count, out))
    # The last N checkpoints are the last N epochs only once the run has trained all of them.
    newest = load_checkpoint(folder / "last.pt", require=("progress.epoch", "config.trainer.epochs"),
                             needed_for="to tell whether the run finished")
    done, epochs = newest["progress"]["epoch"], newest["config"]["trainer"]["epochs"]
    if done < epochs:
        raise ValueError(f"{folder / 'last.pt'} is at epoch {done} of {epochs}: finish the run first "
                         f"(trainer.resume=true)")
    chosen = saved[-count:]
    for path in chosen:
        progress = load_checkpoint(path, require=("progress",), needed_for="to average it")["progress"]
        if progress.get("position", 0) != 0:
            raise ValueError(f"{path} was saved in the middle of an epoch (trainer.checkpoint_every_*): "
                             f"average epoch ends only, given by name")
    return chosen


def _too_few_epoch_ends(folder: Path, saved: list[Path], count: int, out: str | os.PathLike) -> str:
    """Why `folder` holds fewer than `count` epoch ends (`saved`), and what to do. A run resumed from a
    checkpoint of another folder (last.pt's config.trainer.resume) has its earlier epochs there: the command
    that averages them by name, where enough of them are kept."""
    short = (f"{folder} holds {len(saved)} epoch checkpoints, {count} are to be averaged" if saved else
             f"{folder}: no epoch checkpoints (step-*.pt)")
    keep = f"trainer.keep_checkpoints must be at least {count}, and the run finished"
    try:
        newest = load_checkpoint(folder / "last.pt")
    except (CheckpointError, OSError):
        newest = None
    resumed = _resumed_elsewhere(newest, folder) if newest is not None else None
    if resumed is None:
        return (f"{short} ({keep})" if saved else
                f"{short}; is {folder.parent} a run folder that trained?")
    done, epochs = newest["progress"].get("epoch"), (newest["config"].get("trainer") or {}).get("epochs")
    if isinstance(done, int) and isinstance(epochs, int) and done < epochs:
        return f"{short}, and {folder / 'last.pt'} is at epoch {done} of {epochs}: finish the run first"
    earlier = _earlier_epoch_ends(resumed, before=_step_of_name(saved[0]) if saved else None)
    where = sorted({str(p.parent) for p in earlier}) or [str(resumed.parent)]
    short += (f": the run resumed from {resumed}, so its earlier epochs are in {' and '.join(where)}, "
              f"which hold{'s' if len(where) == 1 else ''} {len(earlier)} of them")
    if isinstance(epochs, int) and count > epochs:
        return f"{short}; the run has {epochs} epochs"
    if len(earlier) + len(saved) < count:
        return f"{short}; too few (trainer.keep_checkpoints must be at least {count} in each run of the line)"
    chosen = (earlier + saved)[-count:]
    # A run continued with other settings (more epochs, say) is not one run to average's check: say so.
    flags = []
    try:
        if not of_one_run(load_checkpoint(resumed), newest):
            flags = ["--allow-different-runs"]
            short += f" (it was resumed with other settings than {resumed}'s, so the command allows them)"
    except (CheckpointError, OSError):
        pass
    command = " ".join(shlex.quote(str(p)) for p in ("speakerid", "average", "--out", out, *flags, *chosen))
    return f"{short}; give the last {count} by name:\n  {command}"


def _step_of_name(path: Path) -> int | None:
    """N of step-<N>.pt or step-<N>-mid.pt; None for other names (last.pt, best.pt, a copy)."""
    found = re.fullmatch(rf"step-(\d+)(?:{MID_EPOCH})?\.pt", path.name)
    return int(found.group(1)) if found else None


def _resumed_elsewhere(checkpoint: dict[str, Any], folder: Path) -> Path | None:
    """The checkpoint that the run of `checkpoint` (one of `folder`) resumed from (config.trainer.resume, an
    absolute path), where that is in another folder; None for a run that did not resume, or resumed there."""
    resume = ((checkpoint.get("config") or {}).get("trainer") or {}).get("resume")
    if not isinstance(resume, str) or not resume:
        return None
    path = Path(resume)
    return None if path.parent.resolve() == folder.resolve() else path


def _earlier_epoch_ends(resumed: Path | None, before: int | None) -> list[Path]:
    """The epoch ends of the line of training that led to the checkpoint `resumed`, oldest first: those of
    its folder at or before its step (later ones are a part of that run that the resumed one does not
    continue) and before step `before`, then, where that run itself resumed from another folder, those of
    that folder before them."""
    found: list[Path] = []
    seen: set[Path] = set()
    while resumed is not None and resumed.parent.resolve() not in seen:
        folder = resumed.parent.resolve()
        seen.add(folder)
        try:
            checkpoint = load_checkpoint(resumed)
        except (CheckpointError, OSError):
            checkpoint = None
        step = _step_of_name(resumed)
        if step is None and checkpoint is not None:
            step = (checkpoint.get("progress") or {}).get("step")
        ends = sorted((n, p) for p in folder.glob("step-*.pt")
                      if not is_mid_epoch(p) and (n := _step_of_name(p)) is not None
                      and (step is None or n <= step) and (before is None or n < before))
        found = [p for _, p in ends] + found
        if ends:
            before = ends[0][0]
        resumed = None if checkpoint is None else _resumed_elsewhere(checkpoint, folder)
    return found


def config_differences(saved: Any, current: Any, node: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: saved -> current` for every value under the dotted `node` ("" for all) in which two plain
    configs differ, less the dotted keys in `ignore` and what lies under them. A key only `current` has is
    not named: `saved` was written before the key existed."""

    def at(config: Any) -> Any:
        for key in filter(None, node.split(".")):
            config = config.get(key, _MISSING) if isinstance(config, dict) else _MISSING
        return config

    def walk(a: Any, b: Any, prefix: str) -> list[str]:
        if a is _MISSING or prefix[:-1] in ignore:
            return []
        if isinstance(a, dict) and a and isinstance(b, dict):
            return [d for key in sorted(a, key=str) for d in walk(a[key], b.get(key), f"{prefix}{key}.")]
        b = None if b is _MISSING else b
        return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]

    return walk(at(saved), at(current), f"{node}." if node else "")


AVERAGED_PARTS = ("model", "head", "speakers", "progress.epoch", "progress.step")
# The config keys in which checkpoints of one run (and a run and its resumption) may differ: a resumed run
# writes to a new folder, with trainer.resume set.
RUN_PLACE_KEYS = ("run_dir", "trainer.resume")


def of_one_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two checkpoints' configs are those of one run (the same but for RUN_PLACE_KEYS)."""
    a, b = a.get("config") or {}, b.get("config") or {}
    return not config_differences(a, b, ignore=RUN_PLACE_KEYS) and not config_differences(b, a, ignore=RUN_PLACE_KEYS)


def refuse_one_model_twice(paths: list[str | os.PathLike], checkpoints: list[dict[str, Any]]) -> None:
    """Refuse a mean that would count one model twice: the same step of one run (best.pt beside the step file
    of its epoch; a resumed run's step file beside that of the run it resumed, which ends the same epoch), or
    the same weights (a copy). ValueError naming both files."""
    for j in range(len(paths)):
        for i in range(j):
            a, b = checkpoints[i], checkpoints[j]
            step = a["progress"]["step"]
            if step == b["progress"]["step"] and of_one_run(a, b):
                why = (f"both step {step} of one run (the same config but for the run folder and trainer.resume: "
                       f"best.pt and the step file of its epoch, or the step files of a resumed run and of the "
                       f"run it resumed)")
            elif all(_equal_state(a[part], b[part]) for part in ("model", "head")):
                why = "the same model (equal weights)"
            else:
                continue
            raise ValueError(f"{paths[i]} and {paths[j]} are {why}: the mean would count that model twice; give "
                             f"only one of them")


def _equal_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
                                    for k in a)


def average_checkpoints(paths: list[str | os.PathLike], allow_different_runs: bool = False) -> dict[str, Any]:
    """A checkpoint whose model and head are the element-wise mean of those of `paths` (WeSpeaker averages
    the last checkpoints of a run before scoring). Floating-point tensors are averaged in float64 and stored
    in their own dtype; integer buffers (BatchNorm's num_batches_tracked) keep the newest value. The result
    holds the newest checkpoint's config, speakers and progress, but no optimizer, scheduler or RNG state:
    it is for evaluation and export, not for resuming.

    The checkpoints must have the same model and fbank config (switches such as unbiased_context_std or
    f_max change what the weights compute, not their shapes) and, unless `allow_different_runs` (a model
    soup of runs with other seeds or settings), be of one run: the same config but for the run folder and
    trainer.resume. Differences are named `key: checkpoint -> newest checkpoint`. Each model counts once
    (refuse_one_model_twice)."""
    from speakerid.builders import model_config_differences

    if not paths:
        raise ValueError("no checkpoints to average")
    seen: dict[tuple[int, int], str | os.PathLike] = {}
    for p in paths:  # last.pt is a hard link to the newest step-<N>.pt: the same file must not count twice
        st = os.stat(p)
        if (st.st_dev, st.st_ino) in seen:
            raise ValueError(f"{p} and {seen[(st.st_dev, st.st_ino)]} are the same file")
        seen[(st.st_dev, st.st_ino)] = p
    checkpoints = [load_checkpoint(p, require=AVERAGED_PARTS, needed_for="to average it") for p in paths]
    newest = max(range(len(paths)), key=lambda i: checkpoints[i]["progress"]["step"])
    reference = checkpoints[newest]
    for path, ckpt in zip(paths, checkpoints):
        for part in ("model", "head"):
            ours, theirs = reference[part], ckpt[part]
            differ = sorted(k for k in set(ours) | set(theirs)
                            if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
            if differ:
                raise ValueError(f"{path}: its {part} differs from that of {paths[newest]} "
                                 f"({len(differ)} keys, e.g. {differ[0]}); only checkpoints of one run average")
        if ckpt["speakers"] != reference["speakers"]:
            raise ValueError(f"{path}: trained on other speakers than {paths[newest]}")
        theirs, ours = ckpt.get("config") or {}, reference.get("config") or {}
        differ = [f"model.{d}" for d in model_config_differences(theirs.get("model") or {}, ours.get("model") or {})]
        differ += config_differences(theirs, ours, "features.fbank")
        if differ:
            raise ValueError(f"{path}: its model or fbank was configured otherwise than that of {paths[newest]} "
                             f"({'; '.join(differ)}); the mean of their weights would compute neither")
        if not allow_different_runs:
            differ = config_differences(theirs, ours, ignore=RUN_PLACE_KEYS)
            if differ:
                raise ValueError(f"{path}: not of the run of {paths[newest]} ({'; '.join(differ[:8])}"
                                 f"{'; ...' if len(differ) > 8 else ''}); only checkpoints of one run average, "
                                 f"unless --allow-different-runs is given")
    refuse_one_model_twice(paths, checkpoints)  # after the checks above, which name what differs
    averaged = {k: v for k, v in reference.items() if k not in ("optimizer", "scheduler", "scaler", "rng",
                                                                   "rng_per_rank")}
    for part in ("model", "head"):
        state = {}
        for key, newest_tensor in reference[part].items():
            if newest_tensor.is_floating_point():
                total = sum(ckpt[part][key].double() for ckpt in checkpoints)
                state[key] = (total / len(checkpoints)).to(newest_tensor.dtype)
            else:
                state[key] = newest_tensor.clone()
        averaged[part] = state
    averaged["averaged_from"] = [str(Path(p).resolve()) for p in paths]
    return averaged
