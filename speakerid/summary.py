"""Several evaluation results side by side: runs of one setup with different seeds summarised as mean and
standard deviation per metric (so that a gain can be told from run-to-run noise), and several systems
compared on the same trials.

A result is read from either
- an evaluation JSON written by `speakerid evaluate` (`eer`, `min_dcf_p0.01`, ... and the score file it
  came from), or
- a training run folder `runs/<name>/<date_time>[_jobN]/` (a Hydra `-m seed=1,2,3` sweep writes one per
  job): its metrics.jsonl, whose validation lines give the final `val/eer`, `val/min_dcf_p0.01`,
  `val/min_dcf_p0.05` and the best `val/eer` of the run (`best/eer`).
The seed is taken from the run's config.yaml (for an evaluation JSON, that of the run its checkpoint lies in).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from speakerid.io import read_json
from speakerid.report import format_table

VALIDATION_METRICS = ("val/eer", "val/min_dcf_p0.01", "val/min_dcf_p0.05")


@dataclass
class Result:
    """The metrics of one run or evaluation."""

    source: Path
    metrics: dict[str, float]
    seed: int | None = None
    scores: Path | None = None       # the score file of an evaluation JSON
    info: dict[str, Any] = field(default_factory=dict)


def _number(value: Any, where: str) -> float:
    try:
        return float(value)  # metrics.jsonl writes non-finite values as strings: "nan", "inf"
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number") from None


def _seed_of(run_dir: Path) -> int | None:
    """The seed in a run's config.yaml, None when it is not an integer there. Read as plain YAML: OmegaConf
    would resolve an interpolation (`seed: ${oc.env:...}` or a resolver with side effects), and training
    writes the file resolved, so a seed that is not a number is not one training used."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    try:
        with open(config, encoding="utf-8") as f:
            seed = yaml.safe_load(f).get("seed")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):  # not YAML, or not a mapping: '-'
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def read_run_folder(run_dir: str | os.PathLike) -> Result:
    """The final and best validation metrics of a training run folder."""
    run_dir = Path(run_dir)
    history = run_dir / "metrics.jsonl"
    if not history.is_file():
        raise ValueError(f"{run_dir}: not a run folder (no metrics.jsonl) and not an evaluation JSON")
    final: dict[str, float] = {}
    best = math.inf
    with open(history, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{history}:{number}: not a JSON line ({e})") from None
            if "val/eer" in record:
                final = {k: _number(record[k], f"{history}:{number}: {k}") for k in VALIDATION_METRICS if k in record}
                best = min(best, final["val/eer"])
    if not final:
        raise ValueError(f"{history}: no validation lines (val/eer): the run has not validated yet")
    return Result(run_dir, {**final, "best/eer": best}, _seed_of(run_dir))


def read_evaluation(path: str | os.PathLike) -> Result:
    """The metrics of an evaluation JSON of `speakerid evaluate`."""
    path = Path(path)
    record = read_json(path, "evaluation JSON")
    if not isinstance(record, dict) or "eer" not in record:
        raise ValueError(f"{path}: not an evaluation JSON of `speakerid evaluate` (no eer; a list without labels "
                         f"has no metrics)")
    metrics = {k: _number(v, f"{path}: {k}") for k, v in record.items()
               if k == "eer" or (k.startswith("min_dcf_p") and not k.endswith("_threshold"))}
    seed = None
    if record.get("checkpoint"):  # runs/<name>/<date_time>/checkpoints/best.pt
        seed = _seed_of(Path(record["checkpoint"]).parent.parent)
    scores = Path(record["scores"]) if record.get("scores") else None
    info = {k: record[k] for k in ("name", "scoring", "n_trials", "checkpoint") if k in record}
    return Result(path, metrics, seed, scores, info)


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


def summarize(results: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Per metric: n, mean, sample standard deviation (None for a single value), min, max and the values,
    over the results that have it."""
    names = list(dict.fromkeys(k for r in results for k in r.metrics))
    summary = {}
    for name in names:
        values = np.array([r.metrics[name] for r in results if name in r.metrics], dtype=np.float64)
        summary[name] = {"n": int(values.size), "mean": float(values.mean()),
                         "std": float(values.std(ddof=1)) if values.size > 1 else None,
                         "min": float(values.min()), "max": float(values.max()), "values": values.tolist()}
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
