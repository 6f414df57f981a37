"""Stratified evaluation report of a score file: EER and minDCF with bootstrap intervals over speakers,
overall and by groups of trials: bins of enrolment and of test duration (read from the audio files'
headers) and the values of any attribute a user supplies per trial in a column file.

A group's interval comes from the same speaker resamples as the overall one (speakerid.bootstrap),
restricted to the group's trials; resamples that leave a group without target or non-target trials are
not counted for it (its `n_bootstrap` says how many were). A group with few speakers gets wide intervals,
which is the point: a difference between two groups is only a difference when their intervals say so.

Attribute file: tab-separated (or whitespace-separated when the header has no tab), a header line naming the
columns, then `enrol test value...` per trial, the paths as in the score file:

    enrol	test	channel	snr_db
    id10270/x6uYqmx31kE/00001.wav	id10273/0OCW1HUxZyg/00001.wav	phone	12.5
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speakerid.bootstrap import SpeakerResampler, percentile_interval
from speakerid.calibration import Calibration, calibration_measures
from speakerid.data.audio import audio_info
from speakerid.data.lists import LIST_ENCODING, ListFormatError, check_files_exist, map_files
from speakerid.metrics import SortedTrials, eer_at, min_dcf_at, validate_scores
from speakerid.thresholds import Threshold, rates_at


DURATIONS = ("enrol_duration", "test_duration")
DEFAULT_DURATION_EDGES = (2.0, 4.0, 6.0, 10.0, 20.0)  # seconds: <2, 2-4, 4-6, 6-10, 10-20, >=20
P_TARGETS = (0.01, 0.05)


@dataclass(frozen=True)
class Bins:
    """Half-open bins [a, b) between increasing inner edges, with an open bin at each end."""

    edges: tuple[float, ...]
    unit: str = ""

    def __post_init__(self):
        if not self.edges or any(not math.isfinite(e) for e in self.edges) or \
                any(a >= b for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"bin edges must be finite and increasing, got {list(self.edges)}")

    @classmethod
    def parse(cls, text: str, unit: str = "") -> Bins:
        """'2,4,8' -> bins <2, 2-4, 4-8, >=8."""
        try:
            edges = tuple(float(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"bin edges must be numbers separated by commas, got {text!r}") from None
        return cls(edges, unit)

    def ranges(self) -> list[tuple[float, float]]:
        bounds = (-math.inf, *self.edges, math.inf)
        return list(zip(bounds[:-1], bounds[1:]))

    def label(self, index: int) -> str:
        """'<2', '2-4', '>=8' (and the unit). Rows are grouped by label, so edges keep all their digits:
        `:g` printed 1000000 and 1000001 alike and merged their bins."""
        lo, hi = self.ranges()[index]
        if lo == -math.inf:
            text = f"<{hi:.15g}"
        elif hi == math.inf:
            text = f">={lo:.15g}"
        else:
            text = f"{lo:.15g}-{hi:.15g}"
        return f"{text} {self.unit}".rstrip()

    def assign(self, values) -> np.ndarray:
        """The bin index of each value: edges[i-1] <= value < edges[i]."""
        return np.searchsorted(np.asarray(self.edges), np.asarray(values, dtype=np.float64), side="right")


def parse_bins_option(text: str) -> tuple[str, Bins]:
    """A command-line `name=e1,e2,...` (e.g. `enrol_duration=3,6,12` or `snr_db=0,10,20`)."""
    name, sep, edges = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--bins takes NAME=EDGES, e.g. enrol_duration=2,4,8; got {text!r}")
    return name, Bins.parse(edges, unit="s" if name in DURATIONS else "")


def with_default_bins(bins: dict[str, Bins] | None) -> dict[str, Bins]:
    """The given bins, and the default duration bins where none are given."""
    bins = dict(bins or {})
    for name in DURATIONS:
        bins.setdefault(name, Bins(DEFAULT_DURATION_EDGES, "s"))
    return bins


def file_durations(root: str | os.PathLike, paths: Sequence[str]) -> dict[str, float]:
    """Seconds of each file under root, from its header (no audio is decoded)."""
    unique = list(dict.fromkeys(paths))
    check_files_exist(root, unique, what="score file", show=10)
    infos = map_files(audio_info, root, unique)
    return {path: frames / rate for path, (frames, rate, _) in zip(unique, infos)}


@dataclass(frozen=True)
class Attributes:
    """Per-trial attributes from a column file: names and, per (enrol, test), the values and their line."""

    path: Path
    names: list[str]
    values: dict[tuple[str, str], tuple[str, ...]]
    lines: dict[tuple[str, str], int]


def read_attributes(path: str | os.PathLike) -> Attributes:
    """Parse an attribute file (module docstring): a header, then `enrol test value...` lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding=LIST_ENCODING)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: attribute file does not exist") from None
    except UnicodeDecodeError as e:
        raise ListFormatError(f"{path}: not a UTF-8 text file ({e})") from None
    rows = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ListFormatError(f"{path}: the attribute file is empty; it needs a header line and a line per trial")
    header_line, header = rows[0]
    separator = "\t" if "\t" in header else None

    def split(line: str) -> list[str]:
        return [field.strip() for field in line.strip("\r\n").split(separator)] if separator else line.split()

    names = split(header)
    if len(names) < 3:
        raise ListFormatError(f"{path}:{header_line}: the header must name the enrol and test columns and at least "
                              f"one attribute, got {names}")
    if len(set(names)) != len(names):
        raise ListFormatError(f"{path}:{header_line}: repeated column names in the header: {names}")
    reserved = set(names[2:]) & {"all", *DURATIONS}
    if reserved:
        raise ListFormatError(f"{path}:{header_line}: the report's own groups use the names all, enrol_duration and "
                              f"test_duration; rename the column {', '.join(sorted(reserved))}")
    values: dict[tuple[str, str], tuple[str, ...]] = {}
    lines: dict[tuple[str, str], int] = {}
    for number, line in rows[1:]:
        fields = split(line)
        if len(fields) != len(names):
            raise ListFormatError(f"{path}:{number}: {len(fields)} fields, but the header (line {header_line}) names "
                                  f"{len(names)}: {' | '.join(fields)!r}")
        key, row = (fields[0], fields[1]), tuple(fields[2:])
        if key in values and values[key] != row:
            raise ListFormatError(f"{path}:{number}: trial {key[0]} {key[1]} has other values on line {lines[key]}")
        values[key] = row
        lines.setdefault(key, number)
    if not values:
        raise ListFormatError(f"{path}: the attribute file has a header but no trials")
    return Attributes(path, names[2:], values, lines)


def trial_groups(enrol: Sequence[str], test: Sequence[str], durations: dict[str, float] | None = None,
                 attributes: Attributes | None = None, bins: dict[str, Bins] | None = None,
                 source: str = "the score file", lines: Sequence[int] | None = None) -> dict[str, list[str]]:
    """The group of every trial in each stratification (name -> one label per trial, in order): enrolment and
    test duration bins when `durations` are given, and each attribute's values (binned when `bins` names
    it). `source` and `lines` name the score file's lines in messages."""
    bins = with_default_bins(bins)
    known = set(DURATIONS) | set(attributes.names if attributes else [])
    unknown = set(bins) - known
    if unknown:
        raise ValueError(f"--bins names {', '.join(sorted(unknown))}, which is neither enrol_duration, "
                         f"test_duration nor a column of the attribute file ({', '.join(sorted(known))})")
    columns: dict[str, list] = {}
    if durations is not None:
        columns["enrol_duration"] = [durations[p] for p in enrol]
        columns["test_duration"] = [durations[p] for p in test]
    if attributes is not None:
        rows = []
        for i, key in enumerate(zip(enrol, test)):
            if key not in attributes.values:
                where = f"line {lines[i]} of {source}" if lines is not None else source
                missing = sum(k not in attributes.values for k in zip(enrol, test))
                raise ListFormatError(f"{attributes.path}: has no line for the trial {key[0]} {key[1]} ({where}); "
                                      f"{missing} of {len(enrol)} trials are missing from it")
            rows.append(attributes.values[key])
        for j, name in enumerate(attributes.names):
            columns[name] = [row[j] for row in rows]
    groups: dict[str, list[str]] = {}
    for name, values in columns.items():
        if name not in bins:
            groups[name] = list(values)
            continue
        try:
            numbers = np.asarray(values, dtype=np.float64)
        except ValueError:
            bad = next(i for i, v in enumerate(values) if not _is_number(v))
            key = (enrol[bad], test[bad])
            raise ListFormatError(f"{attributes.path}:{attributes.lines[key]}: {name} value {values[bad]!r} is not a "
                                  f"number, but --bins {name}=... bins it") from None
        if not np.isfinite(numbers).all():  # NaN would fall in the top bin, inf in an end bin: no bin holds them
            bad = int(np.flatnonzero(~np.isfinite(numbers))[0])
            where = (f"{attributes.path}:{attributes.lines[enrol[bad], test[bad]]}" if name not in DURATIONS
                     else f"{enrol[bad]} {test[bad]}")
            raise ListFormatError(f"{where}: {name} value {values[bad]!r} is not a finite number, but --bins "
                                  f"{name}=... bins it")
        index = bins[name].assign(numbers)
        groups[name] = [bins[name].label(int(i)) for i in index]
    return groups


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _group_order(labels: list[str], binned: Bins | None) -> list[str]:
    present = set(labels)
    if binned is not None:
        return [label for label in (binned.label(i) for i in range(len(binned.edges) + 1)) if label in present]
    return sorted(present)


def stratified_report(scores, labels, enrol: Sequence[str], test: Sequence[str],
                      groups: dict[str, list[str]] | None = None, bins: dict[str, Bins] | None = None,
                      p_targets: Sequence[float] = P_TARGETS, n_bootstrap: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> list[dict[str, Any]]:
    """One row per group (the first for all trials): counts of trials, targets, non-targets and speakers,
    EER and minDCF at each p_target with bootstrap intervals over speakers (module docstring)."""
    scores, labels = validate_scores(scores, labels)
    resampler = SpeakerResampler(enrol, test)
    bins = with_default_bins(bins)
    cells: list[tuple[str, str, np.ndarray]] = [("all", "all", np.arange(scores.size))]
    ranges: dict[tuple[str, str], tuple[float, float]] = {}
    for name, trial_labels in (groups or {}).items():
        trial_labels = np.asarray(trial_labels, dtype=object)
        if name in bins:
            ranges.update({(name, bins[name].label(i)): r for i, r in enumerate(bins[name].ranges())})
        for group in _group_order(list(trial_labels), bins.get(name)):
            cells.append((name, group, np.flatnonzero(trial_labels == group)))

    rows, measured = [], []
    for name, group, index in cells:
        cell_labels = labels[index]
        speakers = np.union1d(resampler.enrol_index[index], resampler.test_index[index])
        row: dict[str, Any] = {"by": name, "group": group, "n_trials": int(index.size),
                               "n_target": int(cell_labels.sum()), "n_nontarget": int((~cell_labels).sum()),
                               "n_speakers": int(speakers.size)}
        if (name, group) in ranges:
            row["range"] = [x if math.isfinite(x) else None for x in ranges[name, group]]
        rows.append(row)
        if cell_labels.all() or not cell_labels.any():
            row["note"] = "no target trials" if not cell_labels.any() else "no non-target trials"
            continue
        sorted_trials = SortedTrials(scores[index], cell_labels)
        row.update(_measure(sorted_trials.points(), p_targets))
        measured.append((row, index, cell_labels, sorted_trials, []))

    for weights in resampler.resamples(n_bootstrap, seed, labels):
        for row, index, cell_labels, sorted_trials, values in measured:
            w = weights[index]
            if w[cell_labels].any() and w[~cell_labels].any():
                values.append(_measure(sorted_trials.points(w), p_targets))
    for row, _, _, _, values in measured:
        for key in _measure_keys(p_targets):
            interval = percentile_interval([v[key] for v in values], confidence)
            # None where no resample held both classes of the group
            row[f"{key}_ci"] = [x if math.isfinite(x) else None for x in interval]
        row["n_bootstrap"] = len(values)
    return rows


def calibration_check(scores, labels, enrol: Sequence[str], test: Sequence[str], calibration: Calibration,
                      threshold: Threshold, p_target: float = 0.01, n_bootstrap: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """How a calibration and threshold fitted elsewhere do on these trials: Cllr and actual DCF of the raw
    scores and of the calibrated LLRs (calibration_measures), and the FAR and FRR reached at the threshold,
    with intervals over these trials' speakers."""
    rates = rates_at(scores, labels, SpeakerResampler(enrol, test), threshold.score, n_bootstrap, confidence, seed)
    return {**calibration_measures(scores, labels, calibration, p_target),
            "threshold": {"score": threshold.score, "kind": threshold.kind, "target": threshold.target,
                          "far": rates.far, "frr": rates.frr, "far_ci": list(rates.far_ci),
                          "frr_ci": list(rates.frr_ci)}}


def _measure_keys(p_targets: Sequence[float]) -> list[str]:
    return ["eer"] + [f"min_dcf_p{p:g}" for p in p_targets]


def _measure(points, p_targets: Sequence[float]) -> dict[str, float]:
    values = {"eer": eer_at(points)[0]}
    for p in p_targets:
        values[f"min_dcf_p{p:g}"] = min_dcf_at(points, p, 1.0, 1.0)[0]
    return values


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned: text to the left, numbers (cells starting with a digit or sign) to the right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells) -> str:
        out = []
        for cell, width in zip(cells, widths):
            cell = str(cell)
            numeric = cell[:1].isdigit() or (cell[:1] in "-+" and cell[1:2].isdigit())
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _with_interval(value: float | None, interval: Sequence[float] | None, scale: float, digits: int) -> str:
    if value is None:
        return "-"
    text = f"{scale * value:.{digits}f}"
    if interval is not None and all(x is not None and math.isfinite(x) for x in interval):
        text += f" [{scale * interval[0]:.{digits}f}, {scale * interval[1]:.{digits}f}]"
    return text


def report_table(rows: Sequence[dict[str, Any]], p_targets: Sequence[float] = P_TARGETS,
                 confidence: float = 0.95) -> str:
    """The rows of stratified_report as a readable table (EER in %, intervals in brackets)."""
    level = f"{100 * confidence:g}%"
    header = ["by", "group", "trials", "targets", "speakers", f"EER % [{level}]",
              *(f"minDCF p={p:g} [{level}]" for p in p_targets)]
    lines = []
    for row in rows:
        cells = [row["by"].replace("_", " "), row["group"], str(row["n_trials"]), str(row["n_target"]),
                 str(row["n_speakers"])]
        if "note" in row:
            cells += [row["note"]] + [""] * len(p_targets)
        else:
            cells.append(_with_interval(row["eer"], row.get("eer_ci"), 100, 2))
            cells += [_with_interval(row[f"min_dcf_p{p:g}"], row.get(f"min_dcf_p{p:g}_ci"), 1, 4) for p in p_targets]
        lines.append(cells)
    return format_table(header, lines)
