"""Every config rule, in one place: the checks run on the composed config before any data is read (so a
typo costs seconds, not a night), and the named rules that public constructors reuse to reject bad
arguments with the same message. A message names the key, the value and what is allowed."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("speakerid")


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range; the message names the key."""


def require(condition: bool, key: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A number that is not inf or nan (inf passes a `> 0` test)."""
    return is_number(value) and math.isfinite(value)


def is_blank(value: Any) -> bool:
    """An empty string: what `key=` or `key=$UNSET_VARIABLE` gives."""
    return isinstance(value, str) and not value.strip()


# ---------------------------------------------------------------- rules shared with constructors
def check_one_of(value: Any, allowed: Iterable[str], key: str, meaning: str = "") -> None:
    allowed = list(allowed)
    require(value in allowed, key, " or ".join(allowed) + (f" ({meaning})" if meaning else ""), value)


def check_int_at_least(value: Any, minimum: int, key: str, meaning: str = "") -> int:
    require(is_int(value) and value >= minimum, key, f"an integer >= {minimum}" + (f" ({meaning})" if meaning else ""),
            value)
    return value


def check_workers(value: Any, key: str) -> None:
    """Loader processes: 'auto' (chosen from the device and the CPUs, speakerid.resources) or a count >= 0
    (0: read in the main process)."""
    require(value == "auto" or (is_int(value) and value >= 0), key,
            "'auto' or an integer >= 0 (loader processes; 0 reads in the main process)", value)


@dataclass(frozen=True)
class MarginRange:
    """Margins in [0, upper). The upper bound is where the target logit of an embedding lying exactly on its
    class centre stops being positive, i.e. no better than an orthogonal class (cosine 0)."""

    upper: float
    upper_text: str  # how the bound reads in a message
    meaning: str


ANGULAR_MARGIN = MarginRange(math.pi / 2, "pi/2", "an angular margin in radians")  # cos(0 + m) > 0
COSINE_MARGIN = MarginRange(1.0, "1", "a cosine margin")                           # cos(0) - m > 0


def check_margin(value: Any, margin_range: MarginRange = ANGULAR_MARGIN, key: str = "head.m") -> float:
    require(is_number(value) and 0 <= value < margin_range.upper, key,
            f"{margin_range.meaning} in [0, {margin_range.upper_text})", value)
    return float(value)


def check_scale(value: Any, key: str = "head.s") -> float:
    require(is_number(value) and math.isfinite(value) and value > 0, key, "a logit scale > 0", value)
    return float(value)


def check_power_floor(value: Any, categories: dict[str, tuple[int, bool]], key: str = "augment.power_floor") -> float:
    """The floor added to both mean squares of an SNR (TaoRuijie's 1e-4). It needs each file's own level, so a
    category that sums several files must scale each to an SNR of its own. categories: name -> (most files
    per utterance, snr_per_file)."""
    require(is_number(value) and math.isfinite(value) and value >= 0, key,
            "a mean square >= 0 added to the speech and noise powers of an SNR (0: none; TaoRuijie: 1e-4)", value)
    if value > 0:
        for name, (most_files, per_file) in categories.items():
            require(most_files == 1 or per_file, key,
                    f"a floor > 0 applies to each file's own SNR, so augment.categories.{name} (up to {most_files} "
                    f"files summed) needs snr_per_file: true, or set {key}=0", value)
    return float(value)


def check_speed_factors(factors: list, key: str = "augment.speed.factors") -> None:
    require(len(factors) >= 1 and len(set(factors)) == len(factors)
            and all(is_number(f) and 0.5 <= f <= 2.0 for f in factors),
            key, "distinct speed factors in [0.5, 2.0], e.g. [0.9, 1.0, 1.1]", factors)


def check_choice_weights(weights: dict[str, Any], key: str = "augment.choices") -> None:
    for name, weight in weights.items():
        require(is_number(weight) and weight >= 0, f"{key}.{name}.weight", "a number >= 0", weight)
    require(sum(float(w) for w in weights.values()) > 0, key, "at least one choice with a weight > 0", weights)


def check_folder_name(value: Any, key: str) -> None:
    """A name that becomes one folder or file name (run names, list names): never a path out of its parent.
    An integer is taken as its digits (Hydra reads name=123 as a number); other numbers and booleans are not
    (name=1e3 or name=nan would not be the folder name typed)."""
    if is_int(value):
        value = str(value)
    require(isinstance(value, str), key, f"a string (Hydra reads the value typed as a {type(value).__name__}: "
            f"quote it, e.g. {key}=\"'{value}'\")", value)
    require(value not in ("", ".", "..") and "/" not in value and "\\" not in value and "\0" not in value, key,
            "a plain name (no '/', not '..'): it names one folder or file", value)


BANK_DTYPES = ("int16", "float32")
BAD_AUDIO_POLICIES = ("error", "skip")
SAMPLE_DTYPES = ("float32", "int16")
PRECISIONS = ("fp32", "bf16", "fp16")


# Every switch of the train config (a key whose default is true or false). Hydra reads `no`, `off` or `yes` as
# strings, which count as true where the code tests them, so each must be a real true or false.
SWITCHES = ("data.resample", "data.check_files", "data.pin_memory", "data.persistent_workers",
            "trainer.init_head", "trainer.progress_bar", "trainer.deterministic", "trainer.cudnn_benchmark",
            "trainer.sync_batchnorm", "trainer.compile", "features.fbank.mean_norm", "features.specaugment.enabled",
            "augment.speed.speakers_as_new", "model.unbiased_context_std", "head.easy_margin", "optim.nesterov")
# Groups whose keys are read by name (not passed to a constructor, which rejects an unknown keyword): a key
# added there with `+` that no config file defines (+trainer.epoch=5) would be ignored. OPEN nodes hold names
# the user chooses (augment choices and noise categories).
CHECKED_GROUPS = ("data", "trainer", "augment")
OPEN = ("augment.choices", "augment.categories")
CONFIG_DIR = Path(__file__).parent / "configs"
# The train config's own top-level keys (train.yaml and experiments' `required`); the groups' names are added
# from the config folder. `+epochs=5` would otherwise be ignored where trainer.epochs was meant.
TOP_LEVEL_KEYS = ("name", "seed", "run_dir", "runs_root", "required")
GLOBAL_GROUPS = ("experiment", "debug")  # they set keys of other groups, and have no node of their own


def known_top_level_keys() -> list[str]:
    groups = [p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in GLOBAL_GROUPS
              and not p.name.startswith("_")]
    return sorted([*TOP_LEVEL_KEYS, *groups])


@functools.lru_cache(maxsize=None)
def known_keys(group: str) -> dict:
    """The keys the files of a config group define, as a tree: the union over its options (data.generate is
    synthetic's, augment.musan_dir musan_rir's, ...)."""
    def union(known: dict, node: dict) -> dict:
        for key, value in node.items():
            if isinstance(value, dict):
                known[key] = union(known[key] if isinstance(known.get(key), dict) else {}, value)
            else:
                known.setdefault(key, value)
        return known

    known: dict = {}
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        union(known, OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    known.pop("defaults", None)
    return known


def check_known_keys(node: DictConfig, known: dict, prefix: str) -> None:
    """Every key of `node` is one the group files define, and has their shape (check_shape). The nodes of named
    entries (OPEN) and those built by a class (INSTANTIATED: their class checks the keys) are not walked into."""
    for key, value in node.items():
        if key not in known:
            reject_unknown(str(key), prefix, [str(k) for k in known], "a config key")
        full_key = f"{prefix}{key}"
        check_shape(value, known[key], full_key)
        if OmegaConf.is_dict(value) and isinstance(known[key], dict) and full_key not in (*OPEN, *INSTANTIATED):
            check_known_keys(value, known[key], f"{full_key}.")


# Nodes that may be null: no corpus to generate (real data), no SpecAugment.
NULLABLE = ("data.generate", "features.specaugment")


def check_shape(value: Any, default: Any, key: str) -> None:
    """A node of the group files is a node in the config too (or null, where NULLABLE allows), and a list is a
    list: `augment.speed=null` or `augment.speed.factors=0.9` would otherwise fail inside the checks below,
    naming no key."""
    if isinstance(default, dict):
        nullable = key in NULLABLE
        keys = "named entries" if key in OPEN else "keys " + ", ".join(k for k in default if k not in HYDRA_KEYS)
        require(OmegaConf.is_dict(value) or (nullable and value is None), key,
                f"a config node of {keys}" + (", or null (off)" if nullable else ""), value)
    elif isinstance(default, list):
        require(OmegaConf.is_list(value), key, f"a list, e.g. {key}=[{','.join(map(str, default))}]", value)


# Nodes built by Hydra's instantiate: a key their class does not take would fail there, after the lists are read
# and as a TypeError.
INSTANTIATED = ("model", "head", "optim", "scheduler", "margin_schedule", "features.fbank", "features.specaugment")
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def check_constructor_keys(node: DictConfig, key: str) -> None:
    params = inspect.signature(target_class(node, key)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [*params, *HYDRA_KEYS, *(["enabled"] if key == "features.specaugment" else [])]  # builders' own switch
    for name in node:
        if name not in known:
            reject_unknown(str(name), f"{key}.", [p for p in params if p not in ("params", "num_classes")],
                           f"a parameter of {node._target_}")


def target_class(node: DictConfig, key: str) -> type:
    from hydra.utils import get_class

    try:
        return get_class(node._target_)
    except Exception as e:  # an unknown class: instantiate would fail on it too, say so now
        raise ConfigError(f"{key}._target_={node._target_!r} cannot be imported ({e})") from None


def reject_unknown(key: str, prefix: str, known: list[str], what: str) -> None:
    close = difflib.get_close_matches(key, known, n=1)
    raise ConfigError(f"{prefix}{key} is not {what}" + (f": did you mean {prefix}{close[0]}?" if close
                      else f" (known: {', '.join(known)})"))


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
    return sorted(set(found) | set(unset_required_keys(cfg)))


def unset_required_keys(cfg: DictConfig) -> list[str]:
    """Keys named in the top-level `required` list (an experiment's) that are null. An experiment cannot mark a
    key required with '???' once a group has given it a value: OmegaConf's merge keeps the earlier value when
    the later one is '???' (a fine-tuning experiment's trainer.init_from would stay null and it would train
    from scratch), so such an experiment lists the key in `required` instead."""
    required = cfg.get("required")
    if required is None:
        return []
    require(OmegaConf.is_list(required) and all(isinstance(k, str) and k for k in required), "required",
            "a list of dotted config keys that must be given, e.g. [trainer.init_from]",
            OmegaConf.to_container(required) if OmegaConf.is_config(required) else required)
    return [key for key in required if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) is None]


# The groups every run builds or reads (`~eval` trains without validation; margin_schedule is null by default).
REQUIRED_GROUPS = ("data", "features", "augment", "model", "head", "optim", "scheduler", "trainer")
GROUP_HINTS = {"scheduler": "; for a constant learning rate: scheduler=step scheduler.gamma=1"}


def validate_config(cfg: DictConfig) -> None:
    """Every rule of the train config, before any data is read. A key the rules read that `~key` removed is
    named as such (omegaconf's own error would name no remedy)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        _validate_config(cfg)
    except (ConfigAttributeError, ConfigKeyError) as e:
        raise ConfigError(f"{e.full_key} is not in the config (removed with '~{e.full_key}'?): a run needs it; give "
                          f"it a value instead") from None


def _validate_config(cfg: DictConfig) -> None:
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(
            "required config values are not set: " + ", ".join(missing)
            + " (give them on the command line, e.g. " + f"{missing[0]}=/path/to/...)"
        )
    if cfg.get("run_dir") is None:
        raise ConfigError("run_dir is not set (train.py sets it from Hydra's run dir; set it when calling train())")
    if is_int(cfg.run_dir):  # Hydra reads run_dir=2024 as a number: the folder is its digits, as for `name`
        cfg.run_dir = str(cfg.run_dir)
    require(isinstance(cfg.run_dir, str) and not is_blank(cfg.run_dir), "run_dir",
            "the run's folder, not an empty string (an unset variable in a job script?)", cfg.run_dir)
    for group in REQUIRED_GROUPS:
        if not OmegaConf.is_dict(cfg.get(group)):
            options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
            raise ConfigError(f"{group} is not set (removed with '~{group}' or {group}=null?): every run needs one, "
                              f"e.g. {group}={options[0]} (configs/{group}/: {', '.join(options)})"
                              + GROUP_HINTS.get(group, ""))

    for key in ("trainer.init_from", *(cfg.get("required") or ())):  # `key=` (an unset variable) is not a value
        value = OmegaConf.select(cfg, key, default=None)
        require(not is_blank(value), key, "a value, not an empty string (an unset variable in a job script?)", value)
    known_top = known_top_level_keys()
    for key in cfg:
        if key not in known_top:
            within = [f"{group}.{key}" for group in known_top if OmegaConf.is_dict(cfg.get(group)) and key in cfg[group]]
            if within:
                raise ConfigError(f"{key} is not a config key: did you mean {' or '.join(within)}?")
            reject_unknown(str(key), "", known_top, "a config key")
    # The features group's parts are built by name (fbank, specaugment; each checked below as a constructor).
    for group in (*CHECKED_GROUPS, "features"):
        check_known_keys(cfg[group], known_keys(group), f"{group}.")
    for key in INSTANTIATED:
        node = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_dict(node) and "_target_" in node:
            check_constructor_keys(node, key)
    for key in SWITCHES:
        value = OmegaConf.select(cfg, key, default=False)  # an option without it (resnet34: no easy_margin)
        require(isinstance(value, bool), key, "true or false", value)

    check_folder_name(cfg.name, "name")
    if is_int(cfg.name):  # Hydra reads name=123 as a number: the run folder (train.yaml) is named by its digits
        cfg.name = str(cfg.name)
    require(is_int(cfg.seed) and 0 <= cfg.seed < 2**63, "seed", "an integer in [0, 2**63) (the run's random seed)",
            cfg.seed)
    data, trainer, head = cfg.data, cfg.trainer, cfg.head
    require(trainer.init_from is None or isinstance(trainer.init_from, str), "trainer.init_from",
            "null (train from scratch) or the path of a checkpoint to start from", trainer.init_from)
    require(isinstance(trainer.resume, bool) or (isinstance(trainer.resume, str) and not is_blank(trainer.resume)),
            "trainer.resume", "true (the latest run of this name), false or the path of a checkpoint"
            + (": it is empty (an unset variable in a job script?)" if is_blank(trainer.resume) else ""),
            trainer.resume)
    require(is_int(data.batch_size) and data.batch_size >= 2, "data.batch_size", "an integer >= 2 "
            "(BatchNorm needs at least 2 utterances per batch)", data.batch_size)
    require(is_int(data.crop_frames) and data.crop_frames >= 10, "data.crop_frames", "an integer >= 10 (frames "
            "of 10 ms; 200 = 2 s)", data.crop_frames)
    require(is_int(data.sample_rate) and data.sample_rate >= 8000, "data.sample_rate", "an integer >= 8000 (Hz)",
            data.sample_rate)
    check_one_of(data.sample_dtype, SAMPLE_DTYPES, "data.sample_dtype")
    check_one_of(data.get("bad_audio", "error"), BAD_AUDIO_POLICIES, "data.bad_audio",
                 "stop at a bad audio file, naming it; or replace it, log it and count it")
    check_workers(data.num_workers, "data.num_workers")
    if data.get("generate") is not None:  # the synthetic corpus's sizes: checked by its spec, before it is written
        from speakerid.data.synthetic import CorpusSpec

        CorpusSpec(**OmegaConf.to_container(data.generate, resolve=True))

    require(is_int(data.prefetch_factor) and data.prefetch_factor >= 1, "data.prefetch_factor",
            "an integer >= 1 (batches each loader process prepares ahead)", data.prefetch_factor)
    read_threads = data.get("read_threads", 1)
    require(is_int(read_threads) and read_threads >= 1, "data.read_threads",
            "an integer >= 1 (files each loader process reads at once)", read_threads)
    threads = trainer.get("num_threads", "auto")
    require(threads == "auto" or (is_int(threads) and threads >= 1), "trainer.num_threads",
            "'auto' or an integer >= 1 (torch's intra-op threads)", threads)
    _validate_augment(cfg.augment)
    _validate_features(cfg.features, data.sample_rate)
    _validate_model(cfg.model)

    if "m" in head:
        check_margin(head.m, _margin_range(head))
    if "s" in head:
        check_scale(head.s)
    lr = cfg.optim.get("lr")
    require(is_finite(lr) and lr > 0, "optim.lr", "a finite learning rate > 0", lr)
    weight_decay = cfg.optim.get("weight_decay", 0.0)
    require(is_finite(weight_decay) and weight_decay >= 0, "optim.weight_decay", "a finite number >= 0",
            weight_decay)

    check_device(trainer.device)
    check_one_of(trainer.precision, PRECISIONS, "trainer.precision")
    if trainer.precision == "fp16":  # CPU autocast has bf16 (slow, but the same arithmetic), not fp16
        on_cuda = str(trainer.device).startswith("cuda") or (trainer.device == "auto" and torch.cuda.is_available())
        require(on_cuda, "trainer.precision", "fp16 autocast needs a CUDA device; this run is on the CPU "
                "(use trainer.precision=fp32, or bf16)", trainer.precision)
    require(trainer.grad_clip_norm is None or (is_finite(trainer.grad_clip_norm) and trainer.grad_clip_norm > 0),
            "trainer.grad_clip_norm", "null (off) or a finite norm > 0", trainer.grad_clip_norm)
    for key in ("epochs", "log_every_steps", "eval_every_epochs", "keep_checkpoints", "max_nonfinite_steps"):
        check_int_at_least(trainer[key], 1, f"trainer.{key}")
    require(is_finite(trainer.checkpoint_every_minutes) and trainer.checkpoint_every_minutes >= 0,
            "trainer.checkpoint_every_minutes", "a finite number of minutes >= 0 (0 = off)",
            trainer.checkpoint_every_minutes)
    require(is_int(trainer.checkpoint_every_steps) and trainer.checkpoint_every_steps >= 0,
            "trainer.checkpoint_every_steps", "an integer >= 0 (0 = only at epoch ends)",
            trainer.checkpoint_every_steps)
    _validate_schedules(cfg)  # after optim.lr and trainer.epochs, which the schedules take
    _validate_parts(cfg)  # last: the ranges above name their keys more precisely than a constructor's message


def check_device(value: Any, key: str = "trainer.device") -> None:
    """'auto' or a device torch knows (cpu, cuda, cuda:1, ...); whether this machine has it is found when the
    run starts on it."""
    allowed = "auto, cpu, cuda or cuda:<index> (a device torch names)"
    require(isinstance(value, str), key, allowed, value)
    if value != "auto":
        try:
            torch.device(value)
        except RuntimeError:
            require(False, key, allowed, value)


# The class count comes from the train list, read after the config is checked: the head is built for the checks
# with this many, more than any train list has, so that only a rule that needs the real count (head.top_k below
# the number of speakers) waits for the list.
STAND_IN_CLASSES = 1_000_000


def _validate_parts(cfg: DictConfig) -> None:
    """Build the fbank, SpecAugment, model, head and optimizer through speakerid.builders, as the run will, so that
    a value their classes refuse stops the run now, naming its group, rather than after every file of the train
    list was checked. Cheaply: the model and head on the meta device (shapes only: no memory, no arithmetic), the
    optimizer over one stand-in parameter. Then what no class sees alone: the model's input and output sizes
    against the fbank's and the head's."""
    from speakerid import builders

    _build("features.fbank", cfg.features.fbank, lambda: builders.build_fbank(cfg))
    if cfg.features.get("specaugment") is not None:
        _build("features.specaugment", cfg.features.specaugment, lambda: builders.build_specaugment(cfg))
    with torch.device("meta"):
        model = _build("model", cfg.model, lambda: builders.build_model(cfg))
        head = _build("head", cfg.head, lambda: builders.build_head(cfg, STAND_IN_CLASSES))
    _build("optim", cfg.optim, lambda: builders.build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))]))
    in_dim, n_mels = getattr(model, "in_dim", None), cfg.features.fbank.n_mels
    require(in_dim is None or in_dim == n_mels, "model.in_dim", f"the fbank's bands, features.fbank.n_mels={n_mels} "
            "(the model configs take it from there: leave model.in_dim out)", in_dim)
    emb_dim, head_dim = getattr(model, "emb_dim", None), getattr(head, "emb_dim", None)
    require(emb_dim is None or head_dim is None or head_dim == emb_dim, "head.emb_dim",
            f"the model's embedding size, model.emb_dim={emb_dim} (the head configs take it from there: leave "
            "head.emb_dim out)", head_dim)


def _build(key: str, node: DictConfig, build: Callable[[], Any]) -> Any:
    """build(), with an argument its class refuses (ValueError or TypeError) raised as a ConfigError that names
    `key`; the node's values are listed when the class's own message names none of them (torch's optimizers)."""
    from hydra.errors import InstantiationException

    try:
        return build()
    except InstantiationException as e:  # Hydra's wrapper around what the class raised
        error = e.__cause__ or e
    except (ValueError, TypeError) as e:  # the optimizer: instantiate gives a partial, called with the parameters
        error = e
    if isinstance(error, ConfigError):
        raise error from None
    if not isinstance(error, (ValueError, TypeError)):
        raise error
    message = str(error)
    if f"{key}." not in message:
        given = ", ".join(f"{key}.{name}={value!r}" for name, value in node.items() if name not in HYDRA_KEYS)
        message += f" (given {given})"
    raise ConfigError(f"{key} ({node.get('_target_')}) cannot be built: {message}") from None


def _validate_schedules(cfg: DictConfig) -> None:
    """The LR and margin schedules check their own values when built (pure and cheap): built here, a bad one
    stops before the corpus is read rather than after. A margin the schedule reaches must suit the head."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    for key in ("scheduler", "margin_schedule"):
        node = cfg.get(key)
        if node is None:
            continue
        try:
            instantiate(node)
        except InstantiationException as e:
            raise (e.__cause__ if isinstance(e.__cause__, ConfigError) else e) from None
    schedule = cfg.get("margin_schedule")
    if schedule is not None:
        for key in ("initial_margin", "final_margin"):
            if key in schedule:
                check_margin(schedule[key], _margin_range(cfg.head), f"margin_schedule.{key}")
        start = schedule.get("increase_start_epoch")
        if is_number(start) and is_int(cfg.trainer.epochs) and start >= cfg.trainer.epochs:
            log.warning("margin_schedule.increase_start_epoch=%s is not before trainer.epochs=%s: the margin stays "
                        "margin_schedule.initial_margin=%s for the whole run", start, cfg.trainer.epochs,
                        schedule.get("initial_margin"))


def _validate_augment(aug: DictConfig) -> None:
    """Ranges of the augment group (the folders are checked when the banks are built)."""
    for name, choice in aug.choices.items():
        require(OmegaConf.is_dict(choice) and set(choice) == {"weight", "apply"}, f"augment.choices.{name}",
                "{weight: w, apply: [...]}", _plain(choice))
        require(OmegaConf.is_list(choice.apply) and all(isinstance(a, str) for a in choice.apply),
                f"augment.choices.{name}.apply", "a list of what to apply: reverb and noise category names, e.g. "
                "[reverb, noise] ([] for nothing)", _plain(choice.apply))
    check_choice_weights({name: choice.weight for name, choice in aug.choices.items()})
    for name, category in aug.categories.items():
        require(OmegaConf.is_dict(category) and {"snr_db", "files"} <= set(category)
                <= {"snr_db", "files", "snr_per_file"}, f"augment.categories.{name}",
                "{snr_db: [lo, hi], files: [lo, hi]} and optionally snr_per_file", _plain(category))
        require(isinstance(category.get("snr_per_file", False), bool), f"augment.categories.{name}.snr_per_file",
                "true (each file at its own SNR) or false (their sum at one SNR)", category.get("snr_per_file"))
        snr = _plain(category.snr_db)
        require(isinstance(snr, list) and len(snr) == 2 and all(is_finite(v) for v in snr) and snr[0] <= snr[1],
                f"augment.categories.{name}.snr_db", "[low, high] in dB with low <= high", snr)
        files = _plain(category.files)
        require(isinstance(files, list) and len(files) == 2 and all(is_int(v) for v in files)
                and 1 <= files[0] <= files[1], f"augment.categories.{name}.files",
                "[low, high] integers with 1 <= low <= high", files)
    check_power_floor(aug.get("power_floor", 0.0),
                      {name: (int(c.files[1]), bool(c.get("snr_per_file", False))) for name, c in aug.categories.items()})
    for key in ("max_file_seconds", "rir_max_seconds"):
        require(aug[key] is None or (is_finite(aug[key]) and aug[key] > 0), f"augment.{key}",
                "null or a finite duration > 0 in seconds", aug[key])
    check_one_of(aug.bank_dtype, BANK_DTYPES, "augment.bank_dtype")
    require(is_finite(aug.max_bank_mb) and aug.max_bank_mb > 0, "augment.max_bank_mb",
            "a finite size > 0 in MB", aug.max_bank_mb)
    check_speed_factors(list(aug.speed.factors))


def _plain(value: Any) -> Any:
    """A config value as Python: a node as a dict or list (for checks and messages), anything else as it is."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _validate_features(features: DictConfig, sample_rate: int) -> None:
    fbank = features.fbank
    # The fbank's own rate places its Mel bands: another than the audio's reads every frequency wrongly.
    require(fbank.get("sample_rate") == sample_rate, "features.fbank.sample_rate",
            f"data.sample_rate={sample_rate}, the rate the audio is read at (features/fbank.yaml takes it from "
            "there: leave features.fbank.sample_rate out)", fbank.get("sample_rate"))
    nyquist = sample_rate / 2
    require(is_number(fbank.f_max) and 0 < fbank.f_max <= nyquist, "features.fbank.f_max",
            f"a frequency in (0, {nyquist:g}] Hz, half of data.sample_rate={sample_rate} (above it the Mel "
            f"filterbank has empty bands); e.g. features.fbank.f_max={min(7600, int(nyquist * 0.95))}", fbank.f_max)
    require(is_number(fbank.f_min) and 0 <= fbank.f_min < fbank.f_max, "features.fbank.f_min",
            f"a frequency in [0, features.fbank.f_max={fbank.f_max})", fbank.f_min)
    for key in ("n_mels", "n_fft", "win_length", "hop_length"):
        check_int_at_least(fbank[key], 1, f"features.fbank.{key}")
    # The centred STFT pads n_fft // 2 on each side: an odd n_fft gives 1 + (samples - 1) // hop frames, not the
    # 1 + samples // hop that Fbank.num_frames (padded evaluation batches) counts.
    require(fbank.n_fft % 2 == 0, "features.fbank.n_fft", "an even number of samples (512 at 16 kHz)", fbank.n_fft)
    require(fbank.win_length <= fbank.n_fft, "features.fbank.win_length",
            f"at most features.fbank.n_fft={fbank.n_fft} samples (the window is zero-padded to the FFT size)",
            fbank.win_length)
    specaugment = features.get("specaugment")
    if OmegaConf.is_dict(specaugment):
        for key, most in (("freq_mask", fbank.n_mels), ("time_mask", None)):
            if key in specaugment:
                value = specaugment[key]
                limit = f" and at most features.fbank.n_mels={most}" if most is not None else ""
                require(is_int(value) and value >= 0 and (most is None or value <= most),
                        f"features.specaugment.{key}", f"an integer >= 0{limit} (the widest mask; 0 = none)", value)


def _validate_model(model: DictConfig) -> None:
    """Sizes of the encoder (channels, emb_dim, ...): positive integers, so that a typo names its key
    instead of failing inside torch. Floats and switches are the encoder's own business."""
    for key, value in model.items():
        if key == "_target_" or isinstance(value, (bool, float)) or value is None:
            continue
        values = list(value) if OmegaConf.is_list(value) else [value]
        require(all(is_int(v) and v >= 1 for v in values), f"model.{key}",
                "a positive integer" + (" for each item" if OmegaConf.is_list(value) else ""),
                OmegaConf.to_container(value) if OmegaConf.is_list(value) else value)


def _margin_range(head: DictConfig) -> MarginRange:
    """The head class's own margin range (AM-softmax's margin is a cosine, the others' an angle)."""
    return getattr(target_class(head, "head"), "margin_range", ANGULAR_MARGIN)


def validate_eval(node: dict, key: str = "eval") -> None:
    """Types and ranges of an `eval` node as a plain dict (`name`, `trials`, `root`, `embedding.*`, `asnorm.*`,
    `mean_subtraction.*`).
    A key left out keeps its default (ExtractionOptions, ASNormOptions), which is valid; unknown keys are
    checked by Protocol.from_config, against those dataclasses."""
    for name in ("name", "trials", "root"):
        require(isinstance(node.get(name), str) and node[name] != "", f"{key}.{name}", "a non-empty string",
                node.get(name))
    check_folder_name(node["name"], f"{key}.name")  # it names the report and score files
    check_strip_prefix(node.get("strip_prefix"), f"{key}.strip_prefix")
    embedding_rules = {
        "mode": (lambda v: v in ("full", "multicrop"), "full or multicrop"),
        "num_crops": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "crop_frames": (lambda v: is_int(v) and v >= 10, "an integer >= 10 (frames of 10 ms)"),
        "batch_size": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "max_batch_seconds": (lambda v: is_finite(v) and v > 0, "a finite number of seconds > 0"),
        "max_trim": (lambda v: isinstance(v, (int, float)) and 0 <= v < 0.5,
                     "a fraction in [0, 0.5) (0 = batch only equal lengths)"),
        "precision": (lambda v: v in ("fp32", "bf16"), "fp32 or bf16"),
    }
    embedding = node.get("embedding") or {}
    for name, (ok, allowed) in embedding_rules.items():
        if name in embedding:
            require(ok(embedding[name]), f"{key}.embedding.{name}", allowed, embedding[name])
    if "num_workers" in embedding:
        check_workers(embedding["num_workers"], f"{key}.embedding.num_workers")
    for section in ("asnorm", "mean_subtraction"):  # a string ('no') would count as true
        enabled = (node.get(section) or {}).get("enabled", False)
        require(isinstance(enabled, bool), f"{key}.{section}.enabled", "true or false", enabled)
    asnorm = node.get("asnorm") or {}
    if asnorm.get("enabled"):
        if "top_k" in asnorm:
            require(is_int(asnorm["top_k"]) and asnorm["top_k"] >= 2, f"{key}.asnorm.top_k", "an integer >= 2",
                    asnorm["top_k"])
        _check_train_subset(asnorm, f"{key}.asnorm", ("cohort_list", "cohort_root"), "AS-norm")
    mean = node.get("mean_subtraction") or {}
    if mean.get("enabled"):
        _check_train_subset(mean, f"{key}.mean_subtraction", ("list", "root"), "mean subtraction")


def check_strip_prefix(value: Any, key: str = "eval.strip_prefix") -> str | None:
    """The leading folder every trial path carries, as a string; None for none (null or ''). An integer is taken as
    its digits, as for `name`: Hydra reads a year folder, eval.strip_prefix=2024, as a number."""
    if value is None or value == "":
        return None
    if is_int(value):
        value = str(value)
    require(isinstance(value, str), key, f"null or the leading folder of every trial path, e.g. wav/ (Hydra reads "
            f"the value typed as a {type(value).__name__}: quote it, e.g. {key}=\"'{value}'\")", value)
    return value


def _check_train_subset(node: dict, key: str, path_keys: tuple[str, str], what: str) -> None:
    """The training list (and root) that AS-norm's cohort or the subtracted mean is computed from."""
    for name in path_keys:
        value = node.get(name)
        require(isinstance(value, str) and value != "", f"{key}.{name}", f"a path ({what} is enabled)", value)
    per_speaker = node.get("utterances_per_speaker")
    require(per_speaker is None or (is_int(per_speaker) and per_speaker >= 1), f"{key}.utterances_per_speaker",
            "null (all) or an integer >= 1", per_speaker)
