"""A full check of a train list and a trial list before any training: every file exists, reads, is mono at
the expected rate and long enough; duplicates, speakers with too few utterances, and train speakers that
also appear in the trials (which would make the EER meaningless) are reported.

Problems are `error`s (training or evaluation would fail or be invalid) or `warning`s (worth a look).
The header pass the trainer needs (`short_files`, `warn_short_training_files`) lives here too."""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerid.data.audio import AudioError, cannot_crop, length_at, read_header, unresamplable

from speakerid.data.lists import (
    has_labels,
    map_files,
    read_train_list,
    read_trials,
    repeated,
    repeated_trials,
    self_trials,
    starts_with_bom,
    trial_files,
)
from speakerid.io import atomic_write, write_json_atomic

log = logging.getLogger("speakerid")

# Trial files shorter than this are an error. The fbank cannot be computed at all below 257 samples (its
# centred 512-point STFT reflect-pads 256 samples each side) and evaluation stops there; up to 0.1 s (10
# frames) an embedding says next to nothing about the speaker.
MIN_TRIAL_SECONDS = 0.1


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


@dataclass(frozen=True)
class _LengthRule:
    """What a file shorter than `seconds` is: the problem it gets and why it matters."""
    seconds: float
    severity: str
    kind: str
    consequence: str


def _train_rule(min_seconds: float) -> _LengthRule:
    return _LengthRule(min_seconds, "warning", "short", "wrap-padded")


def _trial_rule(min_seconds: float) -> _LengthRule:
    return _LengthRule(min_seconds, "error", "too_short", "too short to embed")


def wav_data_shortfall(path: str | os.PathLike) -> tuple[int, int] | None:
    """(declared, present): the bytes a WAV file's header gives its data chunk and the bytes that follow it,
    when fewer are present; None for a complete WAV, another format, or a data size left unknown (0 or
    0xFFFFFFFF, as streaming writers leave it). libsndfile reads a cut-short WAV (an interrupted copy) as a
    shorter file without a word, so only the RIFF header tells."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        data64 = None  # RF64: the data size is in the ds64 chunk
        position = 12
        while position + 8 <= size:
            f.seek(position)
            chunk, declared = struct.unpack("<4sI", f.read(8))
            if chunk == b"ds64":
                fields = f.read(16)
                data64 = struct.unpack("<Q", fields[8:16])[0] if len(fields) == 16 else None
            elif chunk == b"data":
                if declared == 0xFFFFFFFF and data64:
                    declared = data64
                elif declared in (0, 0xFFFFFFFF):
                    return None
                present = size - position - 8
                return (declared, present) if present < declared else None
            position += 8 + declared + (declared & 1)  # chunks are padded to an even size
    return None


def _inspect(path: Path, sample_rate: int, length: _LengthRule, deep: bool, crops: bool = False
             ) -> list[tuple[str, str, str]]:
    """(severity, kind, detail) problems of one audio file; `crops`: training reads crops of it, by seeking."""
    if not path.is_file():
        return [("error", "missing", "file does not exist")]
    try:
        info = read_header(path)
    except Exception as e:
        return [("error", "unreadable", f"cannot read audio ({e})")]
    problems = []
    if info.frames <= 0:
        return [("error", "empty", "no samples")]
    if info.sample_rate != sample_rate:
        # A rate that resampling cannot take has its own kind: data.resample / --resample does not excuse it.
        why = unresamplable(info.sample_rate, sample_rate)
        problems.append(("error", "sample_rate", f"{info.sample_rate} Hz, expected {sample_rate} Hz") if why is None
                        else ("error", "unresamplable_rate", why))
    if info.channels != 1:
        problems.append(("error", "channels", f"{info.channels} channels, expected mono"))
    if crops and (why := cannot_crop(info)):
        problems.append(("error", "unseekable", why))
    duration = info.frames / info.sample_rate
    if duration < length.seconds:
        problems.append((length.severity, length.kind,
                         f"{duration:.3f} s, shorter than {length.seconds:.2f} s ({length.consequence})"))
    if deep:
        try:
            samples = sf.read(str(path), dtype="float32", always_2d=True)[0]
        except Exception as e:
            return problems + [("error", "corrupt", f"header reads but decoding fails ({e}): truncated or corrupt")]
        if len(samples) < info.frames:
            problems.append(("error", "corrupt", f"header says {info.frames} samples, decoded {len(samples)}"))
        shortfall = wav_data_shortfall(path) if info.format == "WAV" else None
        if shortfall is not None:
            declared, present = shortfall
            problems.append(("error", "truncated",
                             f"the WAV header's data chunk declares {declared} bytes, the file holds {present}: it "
                             f"was cut short ({duration:.2f} s of {duration * declared / present:.2f} s); copy it "
                             f"again or remove it from the list"))
        if not np.isfinite(samples).all():
            problems.append(("error", "non_finite", f"{int((~np.isfinite(samples)).sum())} NaN/inf samples"))
        elif not np.any(samples):
            problems.append(("warning", "silent", "all samples are zero"))
    return problems


def _inspect_all(report: DataReport, root: Path, paths: list[str], sample_rate: int, length: _LengthRule,
                 deep: bool, workers: int, crops: bool = False) -> None:
    results = map_files(lambda p: _inspect(p, sample_rate, length, deep, crops), root, paths, workers)
    for rel, problems in zip(paths, results):
        for severity, kind, detail in problems:
            report.add(severity, kind, str(root / rel), detail)


def _check_bom(report: DataReport, list_file: str | os.PathLike) -> None:
    if starts_with_bom(list_file):
        report.add("warning", "bom", str(list_file),
                   "starts with a UTF-8 byte-order mark: speakerid ignores it, other tools may read it as part of the "
                   "first line; save the file as UTF-8 without BOM")


def check_trial_audio(root: str | os.PathLike, paths: list[str], sample_rate: int, resample: bool = False,
                      what: str = "trial list", resample_advice: str = "data.resample=true", show: int = 10,
                      workers: int = 16) -> None:
    """Stop with an AudioError naming every file that evaluation could not embed (unreadable, empty,
    multi-channel, at another rate without resampling or at one too odd to resample, too short), from the
    headers alone, so that a bad trial file is found before training rather than at the first validation.
    A codec that cannot seek is no problem here: evaluation reads whole files."""
    root = Path(root)
    unique = list(dict.fromkeys(paths))
    rule = _trial_rule(MIN_TRIAL_SECONDS)
    found = map_files(lambda p: _inspect(p, sample_rate, rule, deep=False), root, unique, workers)
    bad = [(rel, kind, detail) for rel, problems in zip(unique, found) for severity, kind, detail in problems
           if severity == "error" and not (resample and kind == "sample_rate")]
    if bad:
        lines = [f"  {root / rel}: {detail}" for rel, _, detail in bad[:show]]
        more = f"\n  ... and {len(bad) - show} more" if len(bad) > show else ""
        advice = (f" (files at another rate: set {resample_advice})" if any(k == "sample_rate" for _, k, _ in bad)
                  else "")
        raise AudioError(f"{len(bad)} files of {what} cannot be embedded{advice}; speakerid check-data "
                         f"lists every problem:\n" + "\n".join(lines) + more)


# What a run records of the training files' headers it read (in its run folder): a resumed run reads again
# only the files whose size or modification time changed. On VoxCeleb2 (1.09M files) the header pass takes
# minutes on a warm cache and far longer on a network file system, at every requeue of a job.
HEADER_RECORD = "audio_headers.npz"


def _stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns), or None for a file that cannot be stat-ed (its header read names the problem)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def read_header_record(path: Path, root: str | os.PathLike, sample_rate: int, resample: bool
                       ) -> dict[str, tuple[tuple[int, int], int]]:
    """{relative path: ((size, mtime_ns), length at sample_rate)} of a run's HEADER_RECORD for the same root,
    rate and resampling; {} when there is none or it does not apply (read without pickle: data only)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            settings = (str(f["root"]), int(f["sample_rate"]), bool(f["resample"]))
            if settings != (str(Path(root).resolve()), sample_rate, bool(resample)):
                return {}
            return {p: ((int(size), int(mtime)), int(n))
                    for p, (size, mtime), n in zip(f["paths"].tolist(), f["stamps"], f["lengths"])}
    except (OSError, KeyError, ValueError) as e:
        if not isinstance(e, FileNotFoundError):
            log.warning("%s cannot be read (%s): every training file's header is read again", path, e)
        return {}


def write_header_record(path: Path, root: str | os.PathLike, sample_rate: int, resample: bool,
                        headers: dict[str, tuple[tuple[int, int], int]]) -> None:
    with atomic_write(path, "wb") as f:
        np.savez(f, root=np.array(str(Path(root).resolve())), sample_rate=np.array(sample_rate),
                 resample=np.array(bool(resample)), paths=np.array(list(headers), dtype=str),
                 stamps=np.array([stamp for stamp, _ in headers.values()], dtype=np.int64).reshape(-1, 2),
                 lengths=np.array([n for _, n in headers.values()], dtype=np.int64))


def check_training_audio(root: str | os.PathLike, paths: list[str], crop_samples: int, sample_rate: int = 16000,
                         resample: bool = False, stop: bool = True, what: str = "train list", show: int = 10,
                         workers: int = 16, record: Path | None = None, previous: Path | None = None
                         ) -> list[tuple[str, int]]:
    """One pass over the training files' headers before the first step. Files the loader could not read
    (unreadable, empty, multi-channel, at another rate without data.resample or at one too odd to resample,
    in a codec that cannot seek to a crop) stop the run here with an AudioError naming them, rather than at
    whatever step first draws one, hours in; with stop=False
    (data.bad_audio=skip, which replaces them as training meets them) they get a warning. Files shorter
    than a tenth of the crop get a warning: the loader repeats them ten times or more to fill a crop, so
    the model sees the same few frames over and over. Returns those short files, (path, length at
    sample_rate), in list order. Missing files are check_files_exist's.

    `record`: where to write the lengths of the files found good, with their size and modification time
    (HEADER_RECORD); `previous`: such a record of an earlier run (the one resumed), whose files unchanged
    since are not read again."""
    unique = list(dict.fromkeys(paths))
    progress = len(unique) > 10_000
    known = {} if previous is None else read_header_record(previous, root, sample_rate, resample)
    stamps = (map_files(_stamp, root, unique, workers, progress=f"{what}, sizes and times read" if progress else None)
              if known or record is not None else [None] * len(unique))

    def header(path: Path) -> tuple[int | None, str | None]:
        try:
            return length_at(path, sample_rate, resample, crops=True), None
        except AudioError as e:
            return None, str(e)

    todo = [i for i, (p, stamp) in enumerate(zip(unique, stamps)) if p not in known or known[p][0] != stamp]
    found: list[tuple[int | None, str | None]] = [(known[p][1], None) if p in known else (None, None) for p in unique]
    for i, result in zip(todo, map_files(header, root, [unique[i] for i in todo], workers,
                                          progress=f"{what}, headers read" if progress else None)):
        found[i] = result
    if known:
        log.info("%s: %d of %d files unchanged since %s; read the headers of the other %d", what,
                 len(unique) - len(todo), len(unique), previous, len(todo))
    bad = [error for _, error in found if error is not None]
    if bad:
        listing = "\n".join(f"  {error}" for error in bad[:show])
        more = f"\n  ... and {len(bad) - show} more" if len(bad) > show else ""
        message = f"{len(bad)} of {len(unique)} files of {what} cannot be read for training:\n{listing}{more}"
        if stop:
            raise AudioError(f"{message}\nRemove them from the list (speakerid check-data lists every problem), or "
                             f"set data.bad_audio=skip to train on the others")
        log.warning("%s\ndata.bad_audio=skip: training replaces them whenever it draws them", message)
    if record is not None:  # the files found good; a bad one is read again next time
        write_header_record(record, root, sample_rate, resample, {p: (stamp, n) for p, stamp, (n, _)
                                                                  in zip(unique, stamps, found)
                                                                  if n is not None and stamp is not None})
    short = [(rel, n) for rel, (n, _) in zip(unique, found) if n is not None and n < crop_samples // 10]
    if short:
        path, n = short[0]
        log.warning("%d of %d training files are shorter than a tenth of the %.1f s crop and are repeated to fill "
                    "it, e.g. %s (%.3f s); remove them from the train list or check them with "
                    "speakerid check-data --min-seconds %.2f", len(short), len(unique),
                    crop_samples / sample_rate, path, n / sample_rate, crop_samples / 10 / sample_rate)
    return short


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
    min_trial_seconds: float = MIN_TRIAL_SECONDS,
    strip_prefix: str | None = None,
) -> DataReport:
    """Check a train list and/or a trial list. A malformed list line, a path that is absolute or goes up
    with `..`, a file listed under two speakers or a pair of trial files labelled both 1 and 0 raises
    ListFormatError (file:line). Training files shorter than min_seconds are a warning (wrap-padded), trial
    files shorter than min_trial_seconds an error (no usable embedding). strip_prefix is removed from each
    trial path as evaluation's eval.strip_prefix removes it, so that the first folder left is the speaker."""
    report = DataReport()
    train_speakers: set[str] = set()
    if train_list is not None:
        parsed = read_train_list(train_list, train_root)
        _check_bom(report, train_list)
        unique = list(dict.fromkeys(parsed.paths))
        counts = Counter(parsed.speakers)
        train_speakers = set(counts)
        report.stats.update({"train_utterances": len(parsed), "train_speakers": len(counts)})
        for rel, n in ({} if parsed.segmented else repeated(parsed.paths)).items():  # segments repeat on purpose
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
        _inspect_all(report, Path(train_root), unique, sample_rate, _train_rule(min_seconds), deep, workers,
                     crops=True)

    if trials is not None:
        parsed_trials = read_trials(trials, strip_prefix)
        _check_bom(report, trials)
        files = trial_files(parsed_trials)
        report.stats.update({"trials": len(parsed_trials), "trial_files": len(files),
                             "target_trials": (sum(t.label for t in parsed_trials) if has_labels(parsed_trials)
                                               else None)})  # None: a list without labels
        for trial, n in repeated_trials(parsed_trials).items():
            report.add("warning", "duplicate", str(trials),
                       f"trial {trial.line()} appears {n} times, in either order (first on line {trial.number})")
        for trial in self_trials(parsed_trials):
            report.add("warning", "self_trial", str(trials), f"line {trial.number}: {trial.line()} pairs a file with "
                                                             f"itself (it scores 1 whatever the model)")
        trial_speakers = {p.split("/")[0] for p in files if "/" in p}
        overlap = sorted(train_speakers & trial_speakers)
        if overlap:
            report.add("error", "speaker_overlap", str(trials),
                       f"{len(overlap)} trial speakers are also training speakers (e.g. {', '.join(overlap[:5])}): "
                       f"the EER would not measure unseen speakers")
        elif train_speakers and len(trial_speakers) == 1:  # e.g. `wav/id10270/...`: the overlap check saw no speaker
            [folder] = trial_speakers
            report.add("warning", "trial_speakers", str(trials),
                       f"every trial path starts with {folder}/, so the speaker overlap check found one speaker; if "
                       f"{folder}/ is not a speaker, give the prefix to remove with --strip-prefix {folder}/")
        # Evaluation embeds whole utterances: only a file too short for any embedding is a problem.
        _inspect_all(report, Path(trials_root), files, sample_rate, _trial_rule(min_trial_seconds), deep, workers)
    return report
