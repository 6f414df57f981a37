"""Config -> objects. Every object the trainer and the evaluation use is built here, from the config groups
of the same name (`model`, `head`, `features`, `augment`, `optim`, `scheduler`); values that come from the
data, such as the number of speakers, are passed at build time."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from speakerid.augment import NoiseCategory, NoiseReverb, SpeedPerturb
from speakerid.augment import build_noise_reverb as _build_noise_reverb
from speakerid.evaluation import EmbeddingExtractor, Protocol


def build_fbank(cfg: DictConfig) -> nn.Module:
    return instantiate(cfg.features.fbank)


def build_specaugment(cfg: DictConfig) -> nn.Module | None:
    spec = cfg.features.get("specaugment")
    if spec is None or not spec.get("enabled", True):
        return None
    return instantiate({k: v for k, v in spec.items() if k != "enabled"})


def build_speed_perturb(cfg: DictConfig, num_speakers: int, crop_samples: int) -> SpeedPerturb | None:
    """Speed perturbation from augment.speed, or None when its only factor is 1.0."""
    speed = cfg.augment.speed
    if list(speed.factors) == [1.0]:
        return None
    return SpeedPerturb(list(speed.factors), crop_samples, num_speakers, bool(speed.speakers_as_new),
                        cfg.data.sample_rate)


def build_noise_reverb(cfg: DictConfig, crop_samples: int) -> NoiseReverb | None:
    """Noise and reverberation from the augment group (banks read here, once), or None when no choice
    applies anything. Ranges were checked by validate_config."""
    aug = cfg.augment
    choices = {name: (float(c.weight), list(c.apply)) for name, c in aug.choices.items()}
    categories = {name: NoiseCategory(tuple(map(float, c.snr_db)), tuple(map(int, c.files)))
                  for name, c in aug.categories.items()}
    return _build_noise_reverb(
        choices, categories, aug.get("musan_dir"), aug.get("rir_dir"), crop_samples, sample_rate=cfg.data.sample_rate,
        max_file_seconds=aug.max_file_seconds, rir_max_seconds=aug.rir_max_seconds, bank_dtype=aug.bank_dtype,
        max_bank_mb=aug.max_bank_mb,
    )


def build_model(cfg: DictConfig) -> nn.Module:
    return instantiate(cfg.model)


def build_head(cfg: DictConfig, num_classes: int) -> nn.Module:
    return instantiate(cfg.head, num_classes=num_classes)


# Optimizers whose fused CUDA kernels take the loss scaler's found-inf flag on the device, so that skipping a
# NaN/inf step costs no host synchronisation.
_FUSABLE = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")


def build_optimizer(cfg: DictConfig, parameters, device: torch.device | None = None) -> torch.optim.Optimizer:
    extra = {}
    if device is not None and device.type == "cuda" and cfg.optim.get("_target_") in _FUSABLE \
            and cfg.optim.get("fused") is None:
        extra["fused"] = True
    return instantiate(cfg.optim)(params=parameters, **extra)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    return instantiate(cfg.scheduler)(optimizer=optimizer)


def extractor_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[EmbeddingExtractor, DictConfig]:
    """The embedding extractor (fbank + model) of a checkpoint, built from the config saved inside it."""
    from speakerid.checkpoint import load_state_strict

    cfg = OmegaConf.create(checkpoint["config"])
    model = build_model(cfg)
    load_state_strict(model, checkpoint["model"], what="model")
    return EmbeddingExtractor(build_fbank(cfg), model), cfg


def build_eval_protocol(cfg: DictConfig) -> Protocol:
    """The trial protocol of the `eval` group: list, root, embedding and scoring options."""
    return Protocol.from_config(cfg.eval)


def compose_eval_protocol(overrides: list[str], data: Any) -> Protocol:
    """The protocol of configs/evaluate.yaml with Hydra overrides (`eval=vox1_o`, `eval.dir=...`), with
    `data` (a training config's data node) resolving interpolations such as ${data.dir}."""
    from speakerid.config import ConfigError, missing_keys
    from speakerid.configs import compose

    cfg = compose("evaluate", overrides)
    merged = OmegaConf.create({"data": OmegaConf.to_container(data, resolve=True) if not isinstance(data, dict)
                               else data, "eval": OmegaConf.to_container(cfg.eval, resolve=False)})
    missing = [k for k in missing_keys(merged) if k.startswith("eval.")]
    if missing:
        raise ConfigError("required config values are not set: " + ", ".join(missing)
                          + f" (e.g. {missing[0]}=/path/to/...)")
    return Protocol.from_config(merged.eval)
