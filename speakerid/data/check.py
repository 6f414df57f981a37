"""A full check of a train list and a trial list before any training: every file exists, reads, is mono at
the expected rate and long enough; duplicates, speakers with too few utterances, and train speakers that
also appear in the trials (which would make the EER meaningless) are reported.

Problems are `error`s (training or evaluation would fail or be invalid) or `warning`s (worth a look)."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerid.data.lists import has_labels, read_train_list, read_trials
from speakerid.io import write_json_atomic


@dataclass
class Problem:
    severity: str   # "error" or "warning"
    kind: str       # missing, unreadable, corrupt, empty, sample_rate, channels, non_finite, silent, short, ...
    where: str      # the file or list concerned
    detail: str


@dataclass
class DataReport:
    problems: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def add(self, severity: str, kind: str, where: str, detail: str) -> None:
        self.problems.append(Problem(severity, kind, where, detail))

    def summary(self, show: int = 5) -> str:
        lines = [f"{k}: {v}" for k, v in self.stats.items()]
        by_kind = Counter((p.severity, p.kind) for p in self.problems)
        for (severity, kind), count in sorted(by_kind.items()):
            lines.append(f"{severity.upper()} {kind}: {count}")
            for p in [p for p in self.problems if p.kind == kind and p.severity == severity][:show]:
                lines.append(f"  {p.where}: {p.detail}")
        lines.append(f"{len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join(lines)

    def write_json(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, {"stats": self.stats, "problems": [asdict(p) for p in self.problems]}, indent=1)


def _inspect(path: Path, sample_rate: int, min_seconds: float, deep: bool) -> list[tuple[str, str, str]]:
    """(severity, kind, detail) problems of one audio file."""
    if not path.is_file():
        return [("error", "missing", "file does not exist")]
    try:
        info = sf.info(str(path))
    except Exception as e:
        return [("error", "unreadable", f"cannot read audio ({e})")]
    problems = []
    if info.frames <= 0:
        return [("error", "empty", "no samples")]
    if info.samplerate != sample_rate:
        problems.append(("error", "sample_rate", f"{info.samplerate} Hz, expected {sample_rate} Hz"))
    if info.channels != 1:
        problems.append(("error", "channels", f"{info.channels} channels, expected mono"))
    duration = info.frames / info.samplerate
    if duration < min_seconds:
        problems.append(("warning", "short", f"{duration:.2f} s, shorter than {min_seconds:.2f} s (wrap-padded)"))
    if deep:
        try:
            samples = sf.read(str(path), dtype="float32", always_2d=True)[0]
        except Exception as e:
            return problems + [("error", "corrupt", f"header reads but decoding fails ({e}): truncated or corrupt")]
        if len(samples) < info.frames:
            problems.append(("error", "corrupt", f"header says {info.frames} samples, decoded {len(samples)}"))
        if not np.isfinite(samples).all():
            problems.append(("error", "non_finite", f"{int((~np.isfinite(samples)).sum())} NaN/inf samples"))
        elif not np.any(samples):
            problems.append(("warning", "silent", "all samples are zero"))
    return problems


def _inspect_all(report: DataReport, root: Path, paths: list[str], sample_rate: int, min_seconds: float,
                 deep: bool, workers: int) -> None:
    # soundfile releases the GIL in libsndfile calls, so threads overlap the file-system latency.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: _inspect(root / p, sample_rate, min_seconds, deep), paths, chunksize=64)
        for rel, problems in zip(paths, results):
            for severity, kind, detail in problems:
                report.add(severity, kind, str(root / rel), detail)


def check_data(
    train_list: str | os.PathLike | None = None,
    train_root: str | os.PathLike | None = None,
    trials: str | os.PathLike | None = None,
    trials_root: str | os.PathLike | None = None,
    sample_rate: int = 16000,
    min_seconds: float = 2.0,
    min_utterances: int = 2,
    deep: bool = False,
    workers: int = 16,
) -> DataReport:
    """Check a train list and/or a trial list. A malformed list line raises ListFormatError (file:line)."""
    report = DataReport()
    train_speakers: set[str] = set()
    if train_list is not None:
        parsed = read_train_list(train_list, train_root)
        unique = list(dict.fromkeys(parsed.paths))
        counts = Counter(parsed.speakers)
        train_speakers = set(counts)
        report.stats.update({"train_utterances": len(parsed), "train_speakers": len(counts)})
        for rel, n in Counter(parsed.paths).items():
            if n > 1:
                report.add("warning", "duplicate", str(train_list), f"{rel} is listed {n} times")
        for speaker, n in sorted(counts.items()):
            if n < min_utterances:
                report.add("warning", "few_utterances", str(train_list),
                           f"speaker {speaker} has {n} utterance(s), fewer than {min_utterances}")
        for speaker, rel in zip(parsed.speakers, parsed.paths):
            if rel.split("/")[0] != speaker and "/" in rel:
                report.add("warning", "speaker_folder", str(train_list),
                           f"{rel} is listed for speaker {speaker} but lies in folder {rel.split('/')[0]}")
                break  # one example is enough: a list either follows the layout or does not
        _inspect_all(report, Path(train_root), unique, sample_rate, min_seconds, deep, workers)

    if trials is not None:
        parsed_trials = read_trials(trials)
        files = list(dict.fromkeys(p for t in parsed_trials for p in (t.enrol, t.test)))
        report.stats.update({"trials": len(parsed_trials), "trial_files": len(files),
                             "target_trials": (sum(t.label for t in parsed_trials) if has_labels(parsed_trials)
                                               else None)})  # None: a list without labels
        for line, n in Counter((t.label, t.enrol, t.test) for t in parsed_trials).items():
            if n > 1:
                text = " ".join(str(x) for x in line if x is not None)
                report.add("warning", "duplicate", str(trials), f"trial {text} appears {n} times")
        trial_speakers = {p.split("/")[0] for p in files if "/" in p}
        overlap = sorted(train_speakers & trial_speakers)
        if overlap:
            report.add("error", "speaker_overlap", str(trials),
                       f"{len(overlap)} trial speakers are also training speakers (e.g. {', '.join(overlap[:5])}): "
                       f"the EER would not measure unseen speakers")
        # Evaluation uses whole utterances: any length is usable, so no 'short' warning for trial files.
        _inspect_all(report, Path(trials_root), files, sample_rate, 0.0, deep, workers)
    return report
