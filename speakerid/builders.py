"""Config -> objects. Every object the trainer and the evaluation use is built here, from the config groups
of the same name (`model`, `head`, `features`, `optim`, `scheduler`); values that come from the data, such
as the number of speakers, are passed at build time."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from speakerid.evaluation import EmbeddingExtractor


def build_fbank(cfg: DictConfig) -> nn.Module:
    return instantiate(cfg.features.fbank)


def build_specaugment(cfg: DictConfig) -> nn.Module | None:
    spec = cfg.features.get("specaugment")
    if spec is None or not spec.get("enabled", True):
        return None
    return instantiate({k: v for k, v in spec.items() if k != "enabled"})


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
