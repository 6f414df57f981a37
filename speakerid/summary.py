"""Several evaluation results side by side: runs of one setup with different seeds summarised as mean and
standard deviation per metric (so that a gain can be told from run-to-run noise), and several systems
compared on the same trials.

A result is read from either
- an evaluation JSON written by `speakerid evaluate` (`eer`, `min_dcf_p0.01`, ... and the score file it
  came from), or
- a training run folder `runs/<name>/<date_time>[_jobN]/` (a Hydra `-m seed=1,2,3` sweep writes one per
  job): its metrics.jsonl, whose validation lines give the final `val/eer`, `val/min_dcf_p0.01` and
  `val/min_dcf_p0.05`, and its checkpoints/last.pt, whose progress gives the best `val/eer` of the whole run
  (`best/eer`): a resumed run's folder logs only the epochs after the resume.
The seed is taken from the run's config.yaml (for an evaluation JSON, that of the run its checkpoint lies in).

`check_summarizable` refuses results that a mean would mix: measured on other trials or scored otherwise,
the same checkpoint or run folder twice, a run folder beside the one that resumed it; equal seeds get a
warning (their spread is not that of seeds).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speakerid.checkpoint import load_checkpoint
from speakerid.config import ConfigError
from speakerid.evaluation import file_digest
from speakerid.evaluation.protocol import Protocol
from speakerid.io import read_json
from speakerid.report import format_table
from speakerid.training.state import read_run_config

VALIDATION_METRICS = ("val/eer", "val/min_dcf_p0.01", "val/min_dcf_p0.05")


@dataclass
class Result:
    """The metrics of one run or evaluation."""

    source: Path
    metrics: dict[str, float]
    seed: int | None = None
    scores: Path | None = None       # the score file of an evaluation JSON
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the reader could not know for sure: shown as warnings


def _number(value: Any, where: str) -> float:
    try:
        return float(value)  # metrics.jsonl writes non-finite values as strings: "nan", "inf"
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number") from None


def _config_of(run_dir: Path) -> dict[str, Any]:
    """A run's config.yaml as plain YAML ({} when it is missing; see read_run_config), with its `trainer`
    checked to be a mapping. ValueError naming the file when it cannot be read, so that a damaged record
    never passes for a run of unknown settings."""
    config = read_run_config(run_dir) or {}
    trainer = config.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):
        raise ValueError(f"{run_dir / 'config.yaml'}: trainer is a {type(trainer).__name__}, not a mapping: "
                         f"not a config.yaml training wrote")
    return config


def _seed_of(run_dir: Path) -> int | None:
    """The seed in a run's config.yaml, None when it is not an integer there."""
    seed = _config_of(run_dir).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _best_eer_of_run(run_dir: Path, logged_best: float, config: dict[str, Any]) -> tuple[float, list[str]]:
    """The best val/eer of the whole run and notes. checkpoints/last.pt records it (progress.best_eer) across
    resumes; metrics.jsonl of a resumed run's folder holds only the validations after the resume, so it is
    only used for a run that never resumed. NaN when no validation gave a finite EER."""
    last = run_dir / "checkpoints" / "last.pt"
    resumed = (config.get("trainer") or {}).get("resume") not in (None, False)
    try:
        best = float(load_checkpoint(last)["progress"]["best_eer"])
        return (best if math.isfinite(best) else math.nan), []
    except FileNotFoundError:
        problem = f"{last} does not exist"
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        problem = f"{last} does not give it ({e})"
    if not resumed:
        return logged_best, []
    return math.nan, [f"{run_dir}: best/eer left out: the run resumed from another checkpoint, so its metrics.jsonl "
                      f"lacks the validations before the resume, and {problem}"]


def _run_dir_of_checkpoint(path: Any) -> Path | None:
    """runs/<name>/<date_time> of runs/<name>/<date_time>/checkpoints/<file>.pt, resolved; None otherwise."""
    if not isinstance(path, str) or not path:
        return None
    checkpoint = Path(path)
    return checkpoint.parent.parent.resolve() if checkpoint.parent.name == "checkpoints" else None


def read_run_folder(run_dir: str | os.PathLike) -> Result:
    """The final and best validation metrics of a training run folder."""
    run_dir = Path(run_dir)
    history = run_dir / "metrics.jsonl"
    if not history.is_file():
        raise ValueError(f"{run_dir}: not a run folder (no metrics.jsonl) and not an evaluation JSON")
    final: dict[str, float] = {}
    logged_best = math.nan
    with open(history, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{history}:{number}: not UTF-8 text ({e.reason} at byte {e.start} of the line, "
                                 f"from 0): not a metrics.jsonl training wrote") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{history}:{number}: not a JSON line ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{history}:{number}: a JSON {type(record).__name__}, not an object of metrics: "
                                 f"not a metrics.jsonl training wrote")
            if "val/eer" in record:
                final = {k: _number(record[k], f"{history}:{number}: {k}") for k in VALIDATION_METRICS if k in record}
                logged_best = np.fmin(logged_best, final["val/eer"])  # a NaN validation is no best
    if not final:
        raise ValueError(f"{history}: no validation lines (val/eer): the run has not validated yet")
    config = _config_of(run_dir)
    best, notes = _best_eer_of_run(run_dir, float(logged_best), config)
    trainer = config.get("trainer") or {}
    info = {"protocol": _validation_protocol(config.get("eval")),
            "resumed_from": _run_dir_of_checkpoint(trainer.get("resume"))}
    return Result(run_dir, {**final, "best/eer": best}, _seed_of(run_dir), info=info, notes=notes)


# What makes two measurements comparable: the trial list and how it was scored. Extraction settings that only
# change speed (batch_size, max_batch_seconds, num_workers, precision) are left out.
def _protocol(trials: Any, scoring: Any, embedding: Any, asnorm: Any, mean_subtraction: Any) -> dict[str, Any]:
    embedding = embedding if isinstance(embedding, dict) else {}
    asnorm = asnorm if isinstance(asnorm, dict) and asnorm.get("enabled", True) else {}
    mean = mean_subtraction if isinstance(mean_subtraction, dict) and mean_subtraction.get("enabled") else {}
    multicrop = embedding.get("mode") == "multicrop"
    return {"trials": trials, "scoring": scoring,
            "crop_frames": embedding.get("crop_frames") if multicrop else None,
            "max_trim": embedding.get("max_trim"),
            "AS-norm cohort": asnorm.get("cohort_list"),
            "AS-norm utterances_per_speaker": asnorm.get("utterances_per_speaker"),
            "mean subtraction list": mean.get("list", mean.get("given")),
            "mean subtraction utterances_per_speaker": mean.get("utterances_per_speaker")}


def _validation_protocol(node: Any) -> dict[str, Any] | None:
    """The protocol of a run's validations (its config's eval node); None when the config does not say."""
    if not isinstance(node, dict):
        return None
    try:
        scoring = Protocol.from_config(node).scoring
    except (ConfigError, KeyError, TypeError, ValueError):
        scoring = None
    return _protocol(node.get("trials"), scoring, node.get("embedding"), node.get("asnorm"),
                     node.get("mean_subtraction"))


def read_evaluation(path: str | os.PathLike) -> Result:
    """The metrics of an evaluation JSON of `speakerid evaluate`."""
    path = Path(path)
    record = read_json(path, "evaluation JSON")
    if not isinstance(record, dict) or "eer" not in record:
        raise ValueError(f"{path}: not an evaluation JSON of `speakerid evaluate` (no eer; a list without labels "
                         f"has no metrics)")
    metrics = {k: _number(v, f"{path}: {k}") for k, v in record.items()
               if k == "eer" or (k.startswith("min_dcf_p") and not k.endswith("_threshold"))}
    for key in ("checkpoint", "checkpoint_sha256", "scores", "name", "scoring"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(f"{path}: {key} is {record[key]!r}, not a string: not an evaluation JSON of "
                             f"`speakerid evaluate`")
    seed, notes = None, []
    if record.get("checkpoint"):  # runs/<name>/<date_time>/checkpoints/best.pt
        try:
            seed = _seed_of(Path(record["checkpoint"]).parent.parent)
        except ValueError as e:
            notes.append(f"{path}: the seed of its checkpoint's run is not known: {e}")
    scores = Path(record["scores"]) if record.get("scores") else None
    info = {k: record[k] for k in ("name", "scoring", "n_trials", "checkpoint", "checkpoint_sha256") if k in record}
    info["protocol"] = {**_protocol(record.get("trials"), record.get("scoring"), record.get("embedding"),
                                    record.get("asnorm"), record.get("mean_subtraction")),
                        "n_trials": record.get("n_trials")}
    return Result(path, metrics, seed, scores, info, notes)


def read_result(path: str | os.PathLike) -> Result:
    """An evaluation JSON or a run folder (module docstring)."""
    path = Path(path)
    if path.is_dir():
        return read_run_folder(path)
    return read_evaluation(path)


def short_names(paths: Sequence[Path]) -> list[str]:
    """Each path less the folders all of them share and a .json / .scores.txt ending."""
    resolved = [Path(p).resolve() for p in paths]
    common = Path(os.path.commonpath([str(p) for p in resolved])) if len(resolved) > 1 else resolved[0].parent
    names = []
    for p in resolved:
        name = str(p.relative_to(common)) if p != common else p.name
        for suffix in (".scores.txt", ".json"):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        names.append(name or p.name)
    return names


def _same_trials(a: Any, b: Any) -> bool:
    """Two trial list paths name the same list: the same path, or files with the same bytes."""
    if a == b:
        return True
    try:
        return file_digest(a) == file_digest(b)
    except (OSError, TypeError):
        return False


def _protocol_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'key: a vs b' for each part of two protocols that differs; a part either does not record (an older
    evaluation JSON, a config without it) is taken as the same."""
    differences = []
    for key in [k for k in a if k in b]:
        x, y = a[key], b[key]
        if x is None or y is None or (x == y if key != "trials" else _same_trials(x, y)):
            continue
        differences.append(f"{key}: {x} vs {y}")
    return differences


def check_summarizable(results: Sequence[Result]) -> list[str]:
    """ValueError naming the files when a mean over `results` would not be one over runs of a setup:
    measured on other trials or scored otherwise (a run's validations or an evaluation JSON), the same
    result twice (one path, one checkpoint), a run folder beside the one that resumed it (a resume writes a
    new folder; the later one's best/eer covers both). Returns warnings: results with equal seeds, whose
    spread is not that of seeds, and what a reader could not know (Result.notes)."""
    seen: dict[Path, Path] = {}
    for r in results:
        real = r.source.resolve()
        if real in seen:
            raise ValueError(f"{seen[real]} and {r.source} are the same result given twice; give it once")
        seen[real] = r.source
    for kind in ("run folder", "evaluation JSON"):
        group = [r for r in results if (r.source.is_dir()) == (kind == "run folder")]
        first = next((r for r in group if r.info.get("protocol")), None)
        for r in group:
            differences = _protocol_differences(first.info["protocol"], r.info.get("protocol") or {}) if first else []
            if differences:
                raise ValueError(f"{first.source} and {r.source} were not measured alike "
                                 f"({'; '.join(differences)}): a mean over them would mix trial lists or scorings, "
                                 f"not seeds. Summarize results of one protocol (to set systems side by side, use "
                                 f"`speakerid compare`)")
    by_sha: dict[str, Path] = {}
    for r in results:
        sha = r.info.get("checkpoint_sha256")
        if sha in by_sha:
            raise ValueError(f"{by_sha[sha]} and {r.source} evaluate the same checkpoint (sha256 {sha[:12]}...): its "
                             f"result would count twice; give one of them")
        if sha:
            by_sha[sha] = r.source
    folders = {r.source.resolve(): r.source for r in results if r.source.is_dir()}
    for r in results:
        earlier = r.info.get("resumed_from")
        if earlier is not None and earlier != r.source.resolve() and earlier in folders:
            raise ValueError(f"{r.source} resumes the run of {folders[earlier]} (its trainer.resume): they are one "
                             f"run, which would count twice; give only {r.source}, whose best/eer covers both")
    warnings = [note for r in results for note in r.notes]
    for kind in ("run folder", "evaluation JSON"):
        by_seed: dict[int, list[Path]] = {}
        for r in results:
            if r.seed is not None and r.source.is_dir() == (kind == "run folder"):
                by_seed.setdefault(r.seed, []).append(r.source)
        for seed, sources in by_seed.items():
            if len(sources) > 1:
                warnings.append(f"{', '.join(map(str, sources))} have the same seed {seed}: their spread is not "
                                f"that of seeds (if one resumes the other, give only the later one)")
    return warnings


def summarize(results: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Per metric: n, mean, sample standard deviation (None for a single value), min and max over the finite
    values of the results that have it (None without any), `left_out` the non-finite ones (a run that
    diverged: NaN), and all the values."""
    names = list(dict.fromkeys(k for r in results for k in r.metrics))
    summary = {}
    for name in names:
        values = np.array([r.metrics[name] for r in results if name in r.metrics], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[name] = {"n": int(finite.size), "mean": float(finite.mean()) if finite.size else None,
                         "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
                         "min": float(finite.min()) if finite.size else None,
                         "max": float(finite.max()) if finite.size else None,
                         "left_out": int(values.size - finite.size), "values": values.tolist()}
    return summary


def _metric_label(name: str) -> str:
    return f"{name} %" if name.endswith("eer") else name


def _value(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}" if name.endswith("eer") else f"{value:.4f}"


def summary_table(results: Sequence[Result], names: Sequence[str], summary: dict[str, dict[str, Any]]) -> str:
    """One row per result, then mean, standard deviation and n per metric (EERs in %)."""
    metrics = list(summary)
    header = ["run", "seed", *(_metric_label(m) for m in metrics)]
    rows = [[name, "-" if r.seed is None else str(r.seed), *(_value(m, r.metrics.get(m)) for m in metrics)]
            for name, r in zip(names, results)]
    rows.append(["mean", "", *(_value(m, summary[m]["mean"]) for m in metrics)])
    rows.append(["std", "", *(_value(m, summary[m]["std"]) for m in metrics)])
    rows.append(["n", "", *(str(summary[m]["n"]) for m in metrics)])
    return format_table(header, rows)


def comparison_table(names: Sequence[str], metrics: Sequence[dict[str, float]], n_trials: Sequence[int]) -> str:
    """Systems side by side: trials, EER in %, minDCF."""
    keys = list(dict.fromkeys(k for m in metrics for k in m))
    header = ["system", "trials", *(_metric_label(k) for k in keys)]
    rows = [[name, str(n), *(_value(k, m.get(k)) for k in keys)] for name, m, n in zip(names, metrics, n_trials)]
    return format_table(header, rows)
