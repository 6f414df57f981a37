"""Checks on the composed config, run before any data is read, so a typo costs seconds, not a night."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range; the message names the key."""


def _require(condition: bool, key: str, allowed: str, value) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def missing_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys whose value is '???' (required), without resolving interpolations that point at them."""
    found = []

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        elif node == "???":
            found.append(prefix[:-1])

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return sorted(found)


def validate_config(cfg: DictConfig) -> None:
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(
            "required config values are not set: " + ", ".join(missing)
            + " (give them on the command line, e.g. " + f"{missing[0]}=/path/to/...)"
        )
    if cfg.get("run_dir") is None:
        raise ConfigError("run_dir is not set (train.py sets it from Hydra's run dir; set it when calling train())")

    data, trainer, head = cfg.data, cfg.trainer, cfg.head
    _require(_is_int(data.batch_size) and data.batch_size >= 2, "data.batch_size", "an integer >= 2 "
             "(BatchNorm needs at least 2 utterances per batch)", data.batch_size)
    _require(_is_int(data.crop_frames) and data.crop_frames >= 10, "data.crop_frames", "an integer >= 10 (frames "
             "of 10 ms; 200 = 2 s)", data.crop_frames)
    _require(_is_int(data.sample_rate) and data.sample_rate >= 8000, "data.sample_rate", "an integer >= 8000 (Hz)",
             data.sample_rate)
    _require(data.sample_dtype in ("float32", "int16"), "data.sample_dtype", "float32 or int16", data.sample_dtype)
    _require(data.get("bad_audio", "error") in ("error", "skip"), "data.bad_audio",
             "error (stop at a bad audio file, naming it) or skip (replace it, log it and count it)",
             data.get("bad_audio"))
    _require(data.num_workers == "auto" or (_is_int(data.num_workers) and data.num_workers >= 0),
             "data.num_workers", "'auto' or an integer >= 0", data.num_workers)

    for key in ("pin_memory", "persistent_workers"):
        _require(isinstance(data[key], bool), f"data.{key}", "true or false", data[key])
    _require(_is_int(data.prefetch_factor) and data.prefetch_factor >= 1, "data.prefetch_factor",
             "an integer >= 1 (batches each loader process prepares ahead)", data.prefetch_factor)
    _require(isinstance(trainer.compile, bool), "trainer.compile", "true or false", trainer.compile)
    _validate_augment(cfg.augment)

    _require(isinstance(head.m, (int, float)) and 0 <= head.m < math.pi / 2, "head.m",
             "an angular margin in radians in [0, pi/2)", head.m)
    _require(isinstance(head.s, (int, float)) and head.s > 0, "head.s", "a logit scale > 0", head.s)
    lr = cfg.optim.get("lr")
    _require(isinstance(lr, (int, float)) and lr > 0, "optim.lr", "a learning rate > 0", lr)

    _require(_is_int(trainer.epochs) and trainer.epochs >= 1, "trainer.epochs", "an integer >= 1", trainer.epochs)
    _require(trainer.precision in ("fp32", "bf16", "fp16"), "trainer.precision", "fp32, bf16 or fp16",
             trainer.precision)
    if trainer.precision == "fp16":  # CPU autocast has bf16 (slow, but the same arithmetic), not fp16
        on_cuda = str(trainer.device).startswith("cuda") or (trainer.device == "auto" and torch.cuda.is_available())
        _require(on_cuda, "trainer.precision", "fp16 autocast needs a CUDA device; this run is on the CPU "
                 "(use trainer.precision=fp32, or bf16)", trainer.precision)
    _require(trainer.grad_clip_norm is None or (isinstance(trainer.grad_clip_norm, (int, float))
                                                and trainer.grad_clip_norm > 0),
             "trainer.grad_clip_norm", "null (off) or a norm > 0", trainer.grad_clip_norm)
    for key in ("log_every_steps", "eval_every_epochs"):
        _require(_is_int(trainer[key]) and trainer[key] >= 1, f"trainer.{key}", "an integer >= 1", trainer[key])
    for key in ("keep_checkpoints", "max_nonfinite_steps"):
        _require(_is_int(trainer[key]) and trainer[key] >= 1, f"trainer.{key}", "an integer >= 1", trainer[key])
    _require(isinstance(trainer.checkpoint_every_minutes, (int, float)) and trainer.checkpoint_every_minutes >= 0,
             "trainer.checkpoint_every_minutes", "a number of minutes >= 0 (0 = off)", trainer.checkpoint_every_minutes)
    _require(_is_int(trainer.checkpoint_every_steps) and trainer.checkpoint_every_steps >= 0,
             "trainer.checkpoint_every_steps", "an integer >= 0 (0 = only at epoch ends)",
             trainer.checkpoint_every_steps)


def _validate_augment(aug: DictConfig) -> None:
    """Ranges of the augment group (the folders are checked when the banks are built)."""
    for name, choice in aug.choices.items():
        _require(set(choice) == {"weight", "apply"}, f"augment.choices.{name}", "{weight: w, apply: [...]}",
                 OmegaConf.to_container(choice))
        weight = choice.get("weight")
        _require(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0,
                 f"augment.choices.{name}.weight", "a number >= 0", weight)
    _require(sum(float(c.weight) for c in aug.choices.values()) > 0, "augment.choices",
             "at least one choice with a weight > 0", OmegaConf.to_container(aug.choices))
    for name, category in aug.categories.items():
        _require(set(category) == {"snr_db", "files"}, f"augment.categories.{name}",
                 "{snr_db: [lo, hi], files: [lo, hi]}", OmegaConf.to_container(category))
        snr = list(category.get("snr_db") or [])
        _require(len(snr) == 2 and all(isinstance(v, (int, float)) for v in snr) and snr[0] <= snr[1],
                 f"augment.categories.{name}.snr_db", "[low, high] in dB with low <= high", snr)
        files = list(category.get("files") or [])
        _require(len(files) == 2 and all(_is_int(v) for v in files) and 1 <= files[0] <= files[1],
                 f"augment.categories.{name}.files", "[low, high] integers with 1 <= low <= high", files)
    for key in ("max_file_seconds", "rir_max_seconds"):
        _require(aug[key] is None or (isinstance(aug[key], (int, float)) and aug[key] > 0), f"augment.{key}",
                 "null or a duration > 0 in seconds", aug[key])
    _require(aug.bank_dtype in ("int16", "float32"), "augment.bank_dtype", "int16 or float32", aug.bank_dtype)
    _require(isinstance(aug.max_bank_mb, (int, float)) and aug.max_bank_mb > 0, "augment.max_bank_mb",
             "a size > 0 in MB", aug.max_bank_mb)
    factors = list(aug.speed.factors)
    _require(len(factors) >= 1 and len(set(factors)) == len(factors)
             and all(isinstance(f, (int, float)) and 0.5 <= f <= 2.0 for f in factors),
             "augment.speed.factors", "distinct speed factors in [0.5, 2.0], e.g. [0.9, 1.0, 1.1]", factors)
    _require(isinstance(aug.speed.speakers_as_new, bool), "augment.speed.speakers_as_new", "true or false",
             aug.speed.speakers_as_new)


def validate_eval(node: dict, key: str = "eval") -> None:
    """Types and ranges of an `eval` node as a plain dict (`name`, `trials`, `root`, `embedding.*`, `asnorm.*`).
    A key left out keeps its default (ExtractionOptions, ASNormOptions), which is valid; unknown keys are
    checked by Protocol.from_config, against those dataclasses."""
    for name in ("name", "trials", "root"):
        _require(isinstance(node.get(name), str) and node[name] != "", f"{key}.{name}", "a non-empty string",
                 node.get(name))
    embedding_rules = {
        "mode": (lambda v: v in ("full", "multicrop"), "full or multicrop"),
        "num_crops": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "crop_frames": (lambda v: _is_int(v) and v >= 10, "an integer >= 10 (frames of 10 ms)"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "max_batch_seconds": (lambda v: isinstance(v, (int, float)) and v > 0, "a number of seconds > 0"),
        "max_trim": (lambda v: isinstance(v, (int, float)) and 0 <= v < 0.5,
                     "a fraction in [0, 0.5) (0 = batch only equal lengths)"),
        "precision": (lambda v: v in ("fp32", "bf16"), "fp32 or bf16"),
    }
    embedding = node.get("embedding") or {}
    for name, (ok, allowed) in embedding_rules.items():
        if name in embedding:
            _require(ok(embedding[name]), f"{key}.embedding.{name}", allowed, embedding[name])
    asnorm = node.get("asnorm") or {}
    if not asnorm.get("enabled"):
        return
    if "top_k" in asnorm:
        _require(_is_int(asnorm["top_k"]) and asnorm["top_k"] >= 2, f"{key}.asnorm.top_k", "an integer >= 2",
                 asnorm["top_k"])
    for name in ("cohort_list", "cohort_root"):
        value = asnorm.get(name)
        _require(isinstance(value, str) and value != "", f"{key}.asnorm.{name}", "a path (AS-norm is enabled)", value)
    per_speaker = asnorm.get("utterances_per_speaker")
    _require(per_speaker is None or (_is_int(per_speaker) and per_speaker >= 1), f"{key}.asnorm.utterances_per_speaker",
             "null (all) or an integer >= 1", per_speaker)
