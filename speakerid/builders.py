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
from speakerid.evaluation import EmbeddingExtractor


def build_fbank(cfg: DictConfig) -> nn.Module:
    return instantiate(cfg.features.fbank)


def build_specaugment(cfg: DictConfig) -> nn.Module | None:
    spec = cfg.features.get("specaugment")
    if spec is None or not spec.get("enabled", True):
        return None
    return instantiate({k: v for k, v in spec.items() if k != "enabled"})


def build_speed_perturb(cfg: DictConfig, num_speakers: int, crop: int) -> SpeedPerturb | None:
    """Speed perturbation from augment.speed, or None when its only factor is 1.0."""
    speed = cfg.augment.speed
    if list(speed.factors) == [1.0]:
        return None
    return SpeedPerturb(list(speed.factors), crop, num_speakers, bool(speed.speakers_as_new),
                        cfg.data.sample_rate)


def build_noise_reverb(cfg: DictConfig, crop: int) -> NoiseReverb | None:
    """Noise and reverberation from the augment group (banks read here, once), or None when no choice
    applies anything. Ranges were checked by validate_config."""
    aug = cfg.augment
    choices = {name: (float(c.weight), list(c.apply)) for name, c in aug.choices.items()}
    categories = {name: NoiseCategory(tuple(map(float, c.snr_db)), tuple(map(int, c.files)))
                  for name, c in aug.categories.items()}
    return _build_noise_reverb(
        choices, categories, aug.get("musan_dir"), aug.get("rir_dir"), crop, sample_rate=cfg.data.sample_rate,
        max_file_seconds=aug.max_file_seconds, rir_max_seconds=aug.rir_max_seconds, bank_dtype=aug.bank_dtype,
        max_bank_mb=aug.max_bank_mb,
    )


def build_model(cfg: DictConfig) -> nn.Module:
    return instantiate(cfg.model)


def build_head(cfg: DictConfig, num_classes: int) -> nn.Module:
    return instantiate(cfg.head, num_classes=num_classes)


def build_optimizer(cfg: DictConfig, parameters) -> torch.optim.Optimizer:
    return instantiate(cfg.optim)(params=parameters)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    return instantiate(cfg.scheduler)(optimizer=optimizer)


def extractor_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[EmbeddingExtractor, DictConfig]:
    """The embedding extractor (fbank + model) of a checkpoint, built from the config saved inside it."""
    from speakerid.checkpoint import load_state_strict

    cfg = OmegaConf.create(checkpoint["config"])
    model = build_model(cfg)
    load_state_strict(model, checkpoint["model"], what="model")
    return EmbeddingExtractor(build_fbank(cfg), model), cfg
