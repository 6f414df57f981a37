"""Model files: a trained model as a deployment needs it, in one small file, and `load_extractor`, which reads
any file a model comes in (a training checkpoint, an averaged checkpoint or a model file). `speakerid.load`
and every command that takes --model go through `load_extractor`.

A model file is a plain dict saved with torch.save, so that `torch.load(path, weights_only=True)` reads it
and loading it runs no code (its config is built only through `speakerid.builders.check_file_config`'s
allow-list):

    format          "speakerid-model/1"
    extractor       state dict of the extractor: fbank (`fbank.*`) and encoder (`model.*`)
    config          {"model": {...}, "features": {"fbank": {...}}}: what the extractor is built from
    sample_rate     the rate the model takes (other rates are resampled)
    provenance      where it came from: the checkpoint's path and SHA-256, its kind, epoch and step, its
                    metrics when it has them, the checkpoints averaged into it, the library versions; and
                    `calibration_source`, the scores its calibration and threshold were fitted on (the
                    `source` of `speakerid.calibration`: scoring, model, the SHA-256 of their mean embedding)
    embedding_mean  None, or the mean unit embedding of a training set, subtracted before cosine scoring
                    (`speakerid.scoring.subtract_mean`)
    calibration     None, or {"slope", "offset", ...} for `speakerid.calibration.Calibration.from_dict`:
                    score -> log-likelihood ratio
    threshold       None, or {"score", "kind", "target", ...} for `speakerid.thresholds.Threshold.from_dict`:
                    the decision threshold on the score (same speaker when score >= threshold["score"])

It holds no head, optimizer or training state: an ECAPA-TDNN C=1024 is about 60 MB in float32.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from speakerid.builders import build_file_extractor
from speakerid.calibration import Calibration
from speakerid.checkpoint import (check_checkpoint, check_literal_config, load_state_strict, load_weights_only,
                                  plain_value_problem)
from speakerid.evaluation import EmbeddingExtractor, file_digest
from speakerid.io import atomic_write
from speakerid.thresholds import Threshold

FORMAT = "speakerid-model/1"
_FORMAT_NAME = "speakerid-model/"
_REQUIRED = ("format", "extractor", "config", "sample_rate", "provenance")
_OPTIONAL = ("embedding_mean", "calibration", "threshold")


class ModelFileError(RuntimeError):
    """A model file, or a part meant for one (a calibration, a threshold, a mean), is malformed."""


@dataclass
class LoadedModel:
    """A model read from any file it comes in, its extractor built and its weights loaded (on the CPU, in
    eval mode)."""

    path: Path
    sha256: str                     # of the file read
    kind: str                       # "checkpoint", "averaged checkpoint" or "model file"
    extractor: EmbeddingExtractor
    config: dict[str, Any]          # {"model": ..., "features": {"fbank": ...}}, plain containers
    sample_rate: int
    resample: bool                  # a checkpoint's data.resample (files at other rates were resampled)
    data: dict[str, Any]            # what ${data.*} of an eval protocol resolves against
    provenance: dict[str, Any]
    embedding_mean: list[float] | None = None
    calibration: dict[str, Any] | None = None
    threshold: dict[str, Any] | None = None
    # data paths a checkpoint holds relative to the folder its training ran in, which is not known: left out
    # of `data` (key -> path, e.g. {"dir": "data/synthetic_tiny"})
    relative_paths: dict[str, str] = field(default_factory=dict)

    @property
    def identities(self) -> set[str]:
        """The SHA-256s this model is known by: its file's, and the checkpoint's it was exported from (a model
        file is the same model as that checkpoint; a checkpoint's provenance names itself)."""
        return {self.sha256, self.provenance.get("checkpoint_sha256")} - {None}


def load_extractor(path: str | os.PathLike) -> LoadedModel:
    """The model in `path`: a training checkpoint (last.pt, best.pt, step-N.pt), an averaged checkpoint
    (`speakerid average`) or a model file (`speakerid export`). Errors name the file and what is wrong: a part
    missing or malformed, an export given instead, weights that are not finite, an fbank built for another rate
    than the audio is read at."""
    path = Path(path)
    content = load_weights_only(path, what="model (checkpoint or model file)")
    sha256 = file_digest(path)
    if isinstance(content, dict) and "format" in content:
        loaded = _from_model_file(check_model_file(content, str(path)), path, sha256)
    elif isinstance(content, dict) and "format_version" in content:
        loaded = _from_checkpoint(check_checkpoint(content, path, EXTRACTOR_PARTS, "to embed with it"), path, sha256)
    else:
        raise ModelFileError(f"{path}: neither a speakerid checkpoint nor a model file (it has no format_version "
                             f"and no format)")
    check_finite_weights(loaded.extractor, path)
    analysed = loaded.extractor.fbank.mel.sample_rate
    if analysed != loaded.sample_rate:  # audio would be read at one rate and analysed as if at the other
        raise ModelFileError(f"{path}: audio is read at {loaded.sample_rate} Hz for this model, but its fbank is built "
                             f"for {analysed} Hz (features.fbank.sample_rate, or its default); speakerid writes them "
                             f"equal")
    return loaded


# What a checkpoint must hold to give an extractor: the encoder's weights and what it and its fbank are
# built from, and the rate audio is read at.
EXTRACTOR_PARTS = ("model", "config.model", "config.features.fbank", "config.data.sample_rate")


def check_finite_weights(extractor: torch.nn.Module, path: str | os.PathLike) -> None:
    """Refuse an extractor with a NaN or infinite weight or buffer: whatever the audio, its embeddings would
    not be finite. (A checkpoint of a run that diverged can still be read with load_checkpoint.)"""
    tensors = [*extractor.named_parameters(), *extractor.named_buffers()]
    bad = [name for name, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelFileError(f"{path}: {len(bad)} of the model's {len(tensors)} tensors hold NaN or infinite values "
                             f"({', '.join(bad[:8])}{', ...' if len(bad) > 8 else ''}), so no embedding it computes "
                             f"is finite; the training run diverged? Use an earlier checkpoint")


def evaluated_model_identities(report: dict[str, Any], known: set[str] = frozenset()) -> set[str]:
    """The SHA-256s the model of an evaluation JSON is known by: the evaluated file's (`checkpoint_sha256`) and
    that of the checkpoint it was exported from (`provenance_sha256`). An evaluation of an older speakerid does
    not record the latter: it is read from the evaluated file, while that file is there unchanged (not when
    the recorded one is among `known` already)."""
    ours = {report.get("checkpoint_sha256"), report.get("provenance_sha256")} - {None}
    if ours & known or "provenance_sha256" in report or not isinstance(report.get("checkpoint"), str) or not ours:
        return ours
    path = Path(report["checkpoint"])
    try:
        if not path.is_file() or file_digest(path) not in ours:
            return ours
        content = load_weights_only(path, what="model")
    except (OSError, RuntimeError):
        return ours
    provenance = content.get("provenance") if isinstance(content, dict) and "format" in content else None
    exported_from = provenance.get("checkpoint_sha256") if isinstance(provenance, dict) else None
    return ours | ({exported_from} if isinstance(exported_from, str) else set())


def _from_checkpoint(checkpoint: dict[str, Any], path: Path, sha256: str) -> LoadedModel:
    from speakerid.builders import extractor_from_checkpoint

    extractor, cfg = extractor_from_checkpoint(checkpoint, source=str(path))
    kind = "averaged checkpoint" if "averaged_from" in checkpoint else "checkpoint"
    progress = checkpoint.get("progress", {})
    provenance: dict[str, Any] = {"checkpoint": str(path.resolve()), "checkpoint_sha256": sha256, "kind": kind,
                                  "epoch": progress.get("epoch"), "step": progress.get("step")}
    best_eer = progress.get("best_eer")
    if isinstance(best_eer, float) and math.isfinite(best_eer):
        provenance["best_eer"] = best_eer
    for key in ("metrics", "averaged_from", "versions"):
        if key in checkpoint:
            provenance[key] = checkpoint[key]
    config = {"model": OmegaConf.to_container(cfg.model, resolve=True),
              "features": {"fbank": OmegaConf.to_container(cfg.features.fbank, resolve=True)}}
    data, relative = _absolute_data_paths(checkpoint["config"])
    return LoadedModel(path, sha256, kind, extractor.eval(), config, checkpoint["config"]["data"]["sample_rate"],
                       bool(data.get("resample", False)), data, provenance, relative_paths=relative)


DATA_PATHS = ("dir", "train_list", "train_root")  # what ${data.*} of an eval protocol may name


def _absolute_data_paths(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A checkpoint's data config (checked free of interpolations) with its paths absolute, and the relative
    ones that could not be made so. Training did not change directory, so a relative data.dir is relative to
    the folder training ran in, not to the one evaluating: read from anywhere else it would name another
    corpus, or none. That folder is the one Hydra recorded in the run folder (<run_dir>/.hydra/hydra.yaml,
    hydra.runtime.cwd); when it is not there, the relative paths are left out of `data`, so that only a
    protocol that needs them stops, naming them."""
    data = dict(config.get("data") or {})
    relative = {k: data[k] for k in DATA_PATHS if isinstance(data.get(k), str) and not os.path.isabs(data[k])}
    start = _training_directory(config.get("run_dir")) if relative else None
    for key, value in relative.items():
        if start is None:
            del data[key]
        else:
            data[key] = str(start / value)
    return data, ({} if start is not None else relative)


def _training_directory(run_dir: Any) -> Path | None:
    """The working directory of the training that wrote to `run_dir`, as Hydra recorded it; None when the run
    folder or the record is not there (a run started from Python, a checkpoint copied elsewhere)."""
    if not isinstance(run_dir, str) or not os.path.isabs(run_dir):
        return None
    try:  # safe_load: plain values only, and nothing in it is resolved
        with open(Path(run_dir) / ".hydra" / "hydra.yaml", encoding="utf-8") as f:
            cwd = yaml.safe_load(f)["hydra"]["runtime"]["cwd"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return None
    return Path(cwd) if isinstance(cwd, str) and os.path.isabs(cwd) and Path(cwd).is_dir() else None


def _from_model_file(content: dict[str, Any], path: Path, sha256: str) -> LoadedModel:
    extractor = build_file_extractor(OmegaConf.create(content["config"]), str(path))
    load_state_strict(extractor, content["extractor"], what=f"{path} extractor")
    rate = content["sample_rate"]
    return LoadedModel(path, sha256, "model file", extractor.eval(), content["config"], rate, False,
                       {"sample_rate": rate}, content["provenance"], content.get("embedding_mean"),
                       content.get("calibration"), content.get("threshold"))


def save_model_file(path: str | os.PathLike, *, extractor_state: dict[str, torch.Tensor], config: dict[str, Any],
                    sample_rate: int, provenance: dict[str, Any], embedding_mean: list[float] | None = None,
                    calibration: dict[str, Any] | None = None, threshold: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write a model file atomically (a crash leaves no partial file). An existing `path` is a
    FileExistsError unless overwrite=True. What is written is checked as `load_extractor` checks it."""
    path = Path(path)
    content = {
        "format": FORMAT,
        "extractor": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in extractor_state.items()},
        "config": config, "sample_rate": sample_rate, "provenance": provenance,
        "embedding_mean": None if embedding_mean is None else [float(x) for x in embedding_mean],
        "calibration": calibration, "threshold": threshold,
    }
    check_model_file(content, str(path))
    with atomic_write(path, "wb", overwrite=overwrite) as f:
        torch.save(content, f)
    return path


def check_model_file(content: Any, source: str) -> dict[str, Any]:
    """`content` if it is a model file this speakerid reads; ModelFileError naming the part that is not."""
    if not isinstance(content, dict):
        raise ModelFileError(f"{source}: not a speakerid model file (a {type(content).__name__}, not a dict)")
    name = content.get("format")
    if name != FORMAT:
        newer = isinstance(name, str) and name.startswith(_FORMAT_NAME)
        raise ModelFileError(f"{source}: " + (f"written by a newer speakerid (format {name!r}; this one reads "
                                              f"{FORMAT!r})" if newer else f"unknown format {name!r}"))
    missing = [k for k in _REQUIRED if k not in content]
    unknown = sorted(set(content) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ModelFileError(f"{source}: " + "; ".join(
            ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"has unknown keys {', '.join(unknown)}"]
                                                                      if unknown else [])))
    state = content["extractor"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(f"{source}: extractor must be a state dict (names -> tensors)")
    config = content["config"]
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict)
            and isinstance(config.get("features"), dict) and isinstance(config["features"].get("fbank"), dict)):
        raise ModelFileError(f"{source}: config must hold model and features.fbank")
    _check_plain(config, f"{source}: config")
    check_literal_config(config, source)
    rate = content["sample_rate"]
    if not (isinstance(rate, int) and not isinstance(rate, bool) and rate > 0):
        raise ModelFileError(f"{source}: sample_rate must be a positive integer, got {rate!r}")
    fbank_rate = config["features"]["fbank"].get("sample_rate", rate)
    if fbank_rate != rate:
        raise ModelFileError(f"{source}: sample_rate is {rate} but features.fbank.sample_rate is {fbank_rate}")
    if not isinstance(content["provenance"], dict):
        raise ModelFileError(f"{source}: provenance must be a dict")
    _check_plain(content["provenance"], f"{source}: provenance")
    if content.get("embedding_mean") is not None:
        check_embedding_mean(content["embedding_mean"], f"{source}: embedding_mean")
    if content.get("calibration") is not None:
        check_calibration(content["calibration"], f"{source}: calibration")
    if content.get("threshold") is not None:
        check_threshold(content["threshold"], f"{source}: threshold")
    return content


def check_embedding_mean(mean: Any, source: str, dim: int | None = None) -> list[float]:
    """A mean embedding as a list of finite floats (of `dim` values when given)."""
    if not isinstance(mean, (list, tuple)) or not mean or not all(_is_number(x) and math.isfinite(x) for x in mean):
        raise ModelFileError(f"{source}: the mean embedding must be a non-empty list of finite numbers")
    if dim is not None and len(mean) != dim:
        raise ModelFileError(f"{source}: the mean embedding has {len(mean)} values but the model's embeddings "
                             f"{dim}")
    return [float(x) for x in mean]


def check_calibration(calibration: Any, source: str) -> dict[str, Any]:
    """A calibration dict that `Calibration.from_dict` reads, with a positive slope (a higher score must mean
    a higher likelihood of the same speaker)."""
    if not isinstance(calibration, dict):
        raise ModelFileError(f"{source}: must be a dict with slope and offset, got {type(calibration).__name__}")
    try:
        parsed = Calibration.from_dict(calibration)
    except ValueError as e:
        raise ModelFileError(f"{source}: {e}") from None
    if parsed.slope <= 0:
        raise ModelFileError(f"{source}: slope must be positive (a higher score means more likely the same "
                             f"speaker), got {parsed.slope}")
    _check_plain(calibration, source)
    return dict(calibration)


def check_threshold(threshold: Any, source: str) -> dict[str, Any]:
    """A threshold dict that `speakerid.thresholds.Threshold.from_dict` reads: score, kind (far, eer or dcf),
    target, and what else `speakerid calibrate` records (error rates, intervals)."""
    if not isinstance(threshold, dict):
        raise ModelFileError(f"{source}: must be a dict with score, kind and target, got "
                             f"{type(threshold).__name__}")
    try:
        Threshold.from_dict(threshold)
    except ValueError as e:
        raise ModelFileError(f"{source}: {e}") from None
    _check_plain(threshold, source)
    return dict(threshold)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_plain(value: Any, source: str) -> None:
    """Only what torch.load(weights_only=True) and JSON both read: None, bool, numbers, str, lists, dicts
    with str keys."""
    problem = plain_value_problem(value, "")
    if problem:
        raise ModelFileError(f"{source}{problem}")
