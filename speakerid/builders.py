"""Config -> objects. Every object the trainer and the evaluation use is built here, from the config groups
of the same name (`model`, `head`, `features`, `augment`, `optim`, `scheduler`); values that come from the
data, such as the number of speakers, are passed at build time."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from speakerid.augment import NoiseCategory, NoiseReverb, SpeedPerturb
from speakerid.augment import build_noise_reverb as _build_noise_reverb
from speakerid.checkpoint import UnsafeFileConfigError, check_literal_config
from speakerid.evaluation import EmbeddingExtractor, Protocol
from speakerid.schedules import LRSchedule, MarginSchedule


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, imported when a training config is built: using a trained model (a file's
    config, see build_file_extractor) needs no Hydra."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(config, *args, **kwargs)


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
    categories = {name: NoiseCategory(tuple(map(float, c.snr_db)), tuple(map(int, c.files)),
                                      bool(c.get("snr_per_file", False)))
                  for name, c in aug.categories.items()}
    return _build_noise_reverb(
        choices, categories, aug.get("musan_dir"), aug.get("rir_dir"), crop_samples, sample_rate=cfg.data.sample_rate,
        max_file_seconds=aug.max_file_seconds, rir_max_seconds=aug.rir_max_seconds, bank_dtype=aug.bank_dtype,
        max_bank_mb=aug.max_bank_mb, power_floor=aug.get("power_floor", 0.0),
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


def build_lr_schedule(cfg: DictConfig) -> LRSchedule:
    """The learning rate as a function of epochs done (speakerid.schedules), applied every step."""
    return instantiate(cfg.scheduler)


def build_margin_schedule(cfg: DictConfig) -> MarginSchedule | None:
    """The head's margin as a function of epochs done, or None when head.m stays fixed."""
    return None if cfg.get("margin_schedule") is None else instantiate(cfg.margin_schedule)


def _file_buildable() -> dict[str, dict[str, type]]:
    """Per config node, the `_target_`s a file's config may name, with the class each names: the project's
    own encoders, heads and features, under their public and their module paths. Compared as strings:
    importing a named module to check it would already run its code."""
    import speakerid.features
    import speakerid.losses
    import speakerid.models

    def names(package, public: list[str]) -> dict[str, type]:
        classes = [getattr(package, name) for name in public]
        return ({f"{package.__name__}.{c.__name__}": c for c in classes}
                | {f"{c.__module__}.{c.__qualname__}": c for c in classes})

    return {"model": names(speakerid.models, speakerid.models.__all__),
            "head": names(speakerid.losses, speakerid.losses.__all__),
            "features.fbank": names(speakerid.features, ["Fbank"])}


def check_file_config(cfg: DictConfig, nodes: tuple[str, ...], source: str) -> None:
    """Refuse, before anything is built, a config read from a file (a checkpoint's) that would make
    instantiate call anything but the project's own classes: a `_target_` off the allow-list, a nested
    `_target_` (instantiate builds those too) or an interpolation (resolvers run code of their own)."""
    allowed = _file_buildable()
    for node in nodes:
        value = OmegaConf.to_container(OmegaConf.select(cfg, node), resolve=False)
        target = value.get("_target_") if isinstance(value, dict) else None
        if target not in allowed[node]:
            raise UnsafeFileConfigError(f"{source}: its config names {node}._target_={target!r}, which speakerid does not "
                             f"build from a file (allowed: {', '.join(sorted(allowed[node]))})")

        def walk(item, path):
            if isinstance(item, dict):
                for k, v in item.items():
                    if path and k in ("_target_", "_partial_", "_args_"):
                        raise UnsafeFileConfigError(f"{source}: its config has a nested {path}.{k}, which speakerid does not "
                                         f"build from a file")
                    walk(v, f"{path}.{k}" if path else k)
            elif isinstance(item, list):
                for i, v in enumerate(item):
                    walk(v, f"{path}.{i}")
            elif isinstance(item, str) and "${" in item:
                raise UnsafeFileConfigError(f"{source}: its config value {node}.{path}={item!r} is an interpolation, which "
                                 f"speakerid does not resolve from a file")
        walk({k: v for k, v in value.items() if k != "_target_"}, "")


def model_config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: saved -> current` for every value in which two resolved `model` configs differ. A key that only
    one of them has counts as the class's default there (a checkpoint written before the key existed), so
    only real differences are named: switches such as unbiased_context_std change what the weights compute
    without changing their shapes, which loading weights alone would never notice."""
    import inspect

    if saved.get("_target_") != current.get("_target_"):
        return [f"_target_: {saved.get('_target_')} -> {current.get('_target_')}"]
    cls = _file_buildable()["model"].get(current.get("_target_"))
    defaults = {} if cls is None else {name: p.default for name, p in inspect.signature(cls).parameters.items()
                                       if p.default is not inspect.Parameter.empty}

    def value(config: dict[str, Any], key: str) -> Any:
        v = config.get(key, defaults.get(key))
        return list(v) if isinstance(v, (list, tuple)) else v

    return [f"{key}: {value(saved, key)!r} -> {value(current, key)!r}" for key in sorted(set(saved) | set(current))
            if key != "_target_" and value(saved, key) != value(current, key)]


def build_file_extractor(cfg: DictConfig, source: str) -> EmbeddingExtractor:
    """The extractor (fbank + model, untrained) that a config read from a file (a checkpoint's, a model
    file's) describes: checked against the allow-list, then built by calling the allowed class itself with
    the node's values, so that no name is imported and no Hydra is needed."""
    check_file_config(cfg, ("model", "features.fbank"), source)
    buildable = _file_buildable()

    def build(node: str) -> nn.Module:
        values = OmegaConf.to_container(OmegaConf.select(cfg, node), resolve=False)
        target = values.pop("_target_")
        special = sorted(k for k in values if k.startswith("_"))
        if special:  # Hydra's _args_, _partial_, _convert_, ...: not for a file's config
            raise UnsafeFileConfigError(f"{source}: its config has {node}.{special[0]}, which speakerid does not "
                                        f"build from a file")
        try:
            return buildable[node][target](**values)
        except (TypeError, ValueError) as e:
            raise RuntimeError(f"{source}: its config {node} ({target}) cannot be built: {e}") from None

    return EmbeddingExtractor(build("features.fbank"), build("model"))


def extractor_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint"
                              ) -> tuple[EmbeddingExtractor, DictConfig]:
    """The embedding extractor (fbank + model) of a checkpoint, built from the config saved inside it once
    that config is known to name only the project's own classes. (`speakerid.model_file.load_extractor`
    reads any file a model comes in.)"""
    from speakerid.checkpoint import load_state_strict

    check_literal_config(checkpoint["config"], source)  # before OmegaConf, whose every read resolves
    cfg = OmegaConf.create(checkpoint["config"])
    extractor = build_file_extractor(cfg, source)
    load_state_strict(extractor.model, checkpoint["model"], what=f"{source} model")
    return extractor, cfg


def build_eval_protocol(cfg: DictConfig) -> Protocol:
    """The trial protocol of the `eval` group: list, root, embedding and scoring options."""
    return Protocol.from_config(cfg.eval)


def compose_eval_protocol(overrides: list[str], data: Any, source: str = "the model",
                          literal: dict[str, str] | None = None) -> Protocol:
    """The protocol of configs/evaluate.yaml with Hydra overrides (`eval=vox1_o`, `eval.dir=...`), with
    `data` (a training config's data node, from `source`) resolving interpolations such as ${data.dir}.
    `literal` (eval keys such as trials, root, name) are set after composing and taken as they are: a path
    may hold what Hydra's override grammar or OmegaConf would read otherwise (`,`, quotes, `${...}`)."""
    from omegaconf.errors import InterpolationKeyError

    from speakerid.config import ConfigError, missing_keys
    from speakerid.configs import compose

    literal = literal or {}
    cfg = compose("evaluate", overrides)
    merged = OmegaConf.create({"data": OmegaConf.to_container(data, resolve=True) if not isinstance(data, dict)
                               else data, "eval": OmegaConf.to_container(cfg.eval, resolve=False)})
    for section in ("asnorm", "mean_subtraction"):  # off: not resolved (a model file has no ${data.train_list})
        if section in merged.eval and not merged.eval[section].get("enabled", False):
            merged.eval[section] = {"enabled": False}
    for key in literal:  # filled in after resolving: a string in an OmegaConf node would be parsed
        merged.eval[key] = None
    if {"trials", "root"} <= literal.keys() and "dir" in merged.eval.keys():  # dir only spells out those two
        del merged.eval["dir"]
    missing = [k for k in missing_keys(merged) if k.startswith("eval.")]
    if missing:
        raise ConfigError("required config values are not set: " + ", ".join(missing)
                          + f" (e.g. {missing[0]}=/path/to/...)")
    try:
        for key in ("trials", "root"):  # resolved now, through eval.dir only where they still use it
            merged.eval[key] = merged.eval[key]
        if "dir" in merged.eval.keys():  # it only spells out those two (and a model file keeps no data.dir)
            del merged.eval["dir"]
        return Protocol.from_config({**OmegaConf.to_container(merged.eval, resolve=True), **literal})
    except InterpolationKeyError as e:  # a model file keeps no training paths for ${data.dir} and the like
        hint = " (evaluate: --trials and --root)" if e.full_key in ("eval.trials", "eval.root") else ""
        raise ConfigError(f"{e.full_key} is not set: {str(e).splitlines()[0].lower()} in {source}; set "
                          f"{e.full_key}=...{hint}") from None
