"""The Hydra configs, shipped inside the package so that `train.py`, the scripts and an installed speakerid
all find them from any working directory (Hydra's search path `pkg://speakerid.configs`). One folder per
config group, mirroring the package; `experiment/` holds named setups and `debug/` scaled-down runs."""

from __future__ import annotations

from typing import Iterable

from omegaconf import DictConfig

SEARCH_PATH = "pkg://speakerid.configs"


def compose(config_name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
    """The named entry config (train, evaluate) with Hydra overrides, outside a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="speakerid.configs", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
