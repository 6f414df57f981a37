"""Train lists (`speaker relative/path`), trial lists (`label enrol test`) and score files (`enrol test score
label`), with errors that name the file, the line and what is wrong."""

from __future__ import annotations

import codecs
import logging
import os
import posixpath
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, TypeVar

import numpy as np

log = logging.getLogger("speakerid")

# UTF-8, with a leading byte-order mark (which Windows editors write) accepted and dropped: read as plain
# UTF-8 it would become part of the first speaker id or label.
LIST_ENCODING = "utf-8-sig"

# The first line of a list that `speakerid prepare --segment-seconds` writes: its repeated lines (one per
# segment of an utterance) are intended, and are not reported as duplicates.
SEGMENT_HEADER = "# speakerid prepare --segment-seconds"

T = TypeVar("T")
H = TypeVar("H", bound=Hashable)


class ListFormatError(ValueError):
    """A list file has a line that does not follow its format."""


class MissingFilesError(FileNotFoundError):
    """Files named by a list do not exist under its root."""


@dataclass(frozen=True)
class TrainList:
    root: Path
    paths: list[str]          # relative to root, in list order
    speakers: list[str]       # speaker id of each utterance
    speaker_ids: list[str]    # sorted unique speakers; the class index of a speaker is its position here
    segmented: bool = False   # starts with SEGMENT_HEADER: a file is listed once per segment of it

    @property
    def labels(self) -> list[int]:
        index = {spk: i for i, spk in enumerate(self.speaker_ids)}
        return [index[s] for s in self.speakers]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class Trial:
    label: int | None     # 1 = same speaker, 0 = different; None in a list without labels (scores only)
    enrol: str
    test: str
    number: int | None = field(default=None, compare=False, repr=False)  # its line in the list, for messages

    @property
    def pair(self) -> tuple[str, str]:
        """The two files in a fixed order: scoring is symmetric, so `a b` and `b a` are the same trial."""
        return (self.enrol, self.test) if self.enrol <= self.test else (self.test, self.enrol)

    def line(self) -> str:
        """The trial as a list line."""
        return " ".join(([] if self.label is None else [str(self.label)]) + [self.enrol, self.test])


def _content_lines(list_file: Path):
    """Yield (line_number, fields) for non-blank, non-comment lines."""
    try:
        with open(list_file, encoding=LIST_ENCODING) as f:
            for number, line in enumerate(f, start=1):
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                yield number, stripped.split()
    except FileNotFoundError:
        raise FileNotFoundError(f"{list_file}: list file does not exist") from None
    except UnicodeDecodeError as e:
        raise ListFormatError(_not_utf8(list_file, e)) from None


def _not_utf8(list_file: Path, error: UnicodeDecodeError) -> str:
    """The message for a list that is not UTF-8, naming its first such line: the decoder's position is
    within the chunk it was decoding, not within the file."""
    with open(list_file, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode(LIST_ENCODING if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                return (f"{list_file}:{number}: not UTF-8 text: byte {line[e.start]:#04x} at column {e.start + 1} "
                        f"({line[max(0, e.start - 20):e.start + 20]!r}); save the list as UTF-8")
    return f"{list_file}: not a UTF-8 text file ({error})"


def starts_with_bom(list_file: str | os.PathLike) -> bool:
    """Whether a file starts with a UTF-8 byte-order mark (accepted by the readers here, not by every tool)."""
    with open(list_file, "rb") as f:
        return f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8


def _list_path(list_file: Path, number: int, path: str, strip_prefix: str | None = None) -> str:
    """A path of a list line, as the lists' rules compare it: less `strip_prefix` (a leading folder), spelled
    one way (`./a/b.wav`, `a//b.wav` and `a/./b.wav` are `a/b.wav`, so that a file listed under two speakers, a
    repeated trial or a file paired with itself is found however it is written), and inside the root."""
    if "//" in path or "/./" in path or path.startswith("./") or path.endswith("/."):  # normpath costs ~1 us
        path = posixpath.normpath(path)
    if strip_prefix:  # after: ./wav/a.wav and wav//a.wav lose their wav/ too
        path = _strip(list_file, number, path, strip_prefix)
    _check_inside_root(list_file, number, path)
    return path


def _check_inside_root(list_file: Path, number: int, path: str) -> None:
    """A list path is joined to a root: an absolute one or one with `..` would open files outside it."""
    if not path.startswith("/") and ".." not in path:  # most paths: no Path to build (5 us, a million times)
        return
    if os.path.isabs(path):
        why = "is absolute"
    elif ".." in Path(path).parts:
        why = "goes up with '..'"
    else:
        return
    raise ListFormatError(f"{list_file}:{number}: path {path!r} {why}: paths must be relative to the root and stay "
                          f"inside it")


def read_train_list(list_file: str | os.PathLike, root: str | os.PathLike) -> TrainList:
    """Parse a VoxCeleb2-style train list: one `speaker relative/path` per line. A file listed under two
    speakers is an error: training would teach the same audio as two classes."""
    list_file = Path(list_file)
    paths: list[str] = []
    speakers: list[str] = []
    speaker_of: dict[str, str] = {}
    for number, fields in _content_lines(list_file):
        if len(fields) != 2:
            raise ListFormatError(
                f"{list_file}:{number}: expected 2 fields 'speaker relative/path', got {len(fields)}: "
                f"{' '.join(fields)!r} (paths and speaker ids cannot contain whitespace)"
            )
        speaker, path = fields
        path = _list_path(list_file, number, path)
        if speaker_of.setdefault(path, speaker) != speaker:
            first = next(n for n, f in _content_lines(list_file)  # only on this error: no memory
                         if len(f) == 2 and _list_path(list_file, n, f[1]) == path)
            raise ListFormatError(f"{list_file}:{number}: {path} is listed for speaker {speaker}, but line {first} "
                                  f"lists it for speaker {speaker_of[path]}: one file cannot be two speakers")
        speakers.append(speaker)
        paths.append(path)
    if not paths:
        raise ListFormatError(f"{list_file}: the list has no entries")
    speaker_ids = sorted(set(speakers))
    if len(speaker_ids) < 2:
        raise ListFormatError(f"{list_file}: a speaker classifier needs at least 2 speakers, found {len(speaker_ids)}")
    return TrainList(Path(root), paths, speakers, speaker_ids, _first_line(list_file).startswith(SEGMENT_HEADER))


def _first_line(list_file: Path) -> str:
    with open(list_file, encoding=LIST_ENCODING) as f:
        return f.readline()


def read_trials(list_file: str | os.PathLike, strip_prefix: str | None = None) -> list[Trial]:
    """Parse a VoxCeleb1-style trial list: one `label enrol test` per line (label 1 = same speaker), or
    `enrol test` on every line for a list without labels (trials are then scored, not measured).

    strip_prefix: a leading path part that every trial path carries and that the data root already
    includes (e.g. `wav/` in `1 wav/id10270/a.wav wav/id10271/b.wav`); it is removed from each path."""
    list_file = Path(list_file)
    trials: list[Trial] = []
    labelled: bool | None = None  # set by the first line; every line must agree
    first_line = 0
    labels: dict[tuple[str, str], Trial] = {}  # the first trial of each pair of files, in either order
    for number, fields in _content_lines(list_file):
        if len(fields) not in (2, 3):
            raise ListFormatError(
                f"{list_file}:{number}: expected 3 fields 'label enrol test' (or 2, 'enrol test', in a list "
                f"without labels), got {len(fields)}: {' '.join(fields)!r}"
            )
        if labelled is None:
            labelled, first_line = len(fields) == 3, number
        elif labelled != (len(fields) == 3):
            raise ListFormatError(
                f"{list_file}:{number}: {len(fields)} fields, but line {first_line} has {3 if labelled else 2}; "
                f"a trial list is either all 'label enrol test' or all 'enrol test'"
            )
        if labelled:
            label, enrol, test = fields
            if label not in ("0", "1"):
                raise ListFormatError(f"{list_file}:{number}: label must be 0 or 1, got {label!r}")
            label = int(label)
        else:
            enrol, test = fields
            if enrol in ("0", "1"):
                raise ListFormatError(f"{list_file}:{number}: {' '.join(fields)!r} starts with a label but has only "
                                      f"one path")
            label = None
        enrol, test = (_list_path(list_file, number, p, strip_prefix) for p in (enrol, test))
        trial = Trial(label, enrol, test, number)
        if labelled:
            first = labels.setdefault(trial.pair, trial)
            if first.label != label:
                raise ListFormatError(f"{list_file}:{number}: the pair {enrol} {test} is labelled {label}, but line "
                                      f"{first.number} labels it {first.label} ({first.line()!r}): a pair of files "
                                      f"is either the same speaker or not")
        trials.append(trial)
    if not trials:
        raise ListFormatError(f"{list_file}: the trial list has no entries")
    if labelled:
        found = {t.label for t in trials}
        if found != {0, 1}:
            raise ListFormatError(f"{list_file}: EER needs both target (1) and non-target (0) trials; "
                                  f"found only {found}")
    return trials


def read_file_list(list_file: str | os.PathLike) -> list[str]:
    """Parse a list of audio files to embed: `relative/path` on every line, or `speaker relative/path` on
    every line (a train list), in list order; paths stay inside the root they are joined to.

    A path cannot contain whitespace: `a/my file.wav` would read as speaker `a/my` and path `file.wav`. So
    the first line sets the format and every line must follow it, and a speaker with a `/` (a path, not a
    speaker id) is refused, naming the line."""
    list_file = Path(list_file)
    paths: list[str] = []
    first: tuple[int, list[str]] | None = None
    for number, fields in _content_lines(list_file):
        line = " ".join(fields)
        if len(fields) > 2:
            raise ListFormatError(f"{list_file}:{number}: expected 'path' or 'speaker path', got {len(fields)} "
                                  f"fields: {line!r} (a path cannot contain whitespace)")
        first = first or (number, fields)
        if len(fields) != len(first[1]):
            raise ListFormatError(f"{list_file}:{number}: {line!r} has {len(fields)} field(s), but line {first[0]} "
                                  f"({' '.join(first[1])!r}) has {len(first[1])}: a list is either all 'path' or "
                                  f"all 'speaker path' lines, and a path cannot contain whitespace")
        if len(fields) == 2 and "/" in fields[0]:
            raise ListFormatError(f"{list_file}:{number}: {line!r}: {fields[0]!r} is a path, not a speaker id: if "
                                  f"the line is one path, it contains whitespace, which a list cannot hold "
                                  f"(rename the file)")
        paths.append(_list_path(list_file, number, fields[-1]))
    if not paths:
        raise ListFormatError(f"{list_file}: the list has no entries")
    return paths


def _strip(list_file: Path, number: int, path: str, prefix: str) -> str:
    """`path` less the leading folder(s) `prefix`: `wav` and `wav/` both take `wav/a/b.wav` to `a/b.wav`."""
    folder = posixpath.normpath(prefix).rstrip("/") + "/"
    if not path.startswith(folder):
        raise ListFormatError(f"{list_file}:{number}: path {path!r} does not start with the prefix {folder!r} "
                              f"that eval.strip_prefix removes")
    return path[len(folder):]


@dataclass(frozen=True)
class ScoreList:
    """A score file: its trials, their scores, and the line each came from (for messages)."""

    path: Path
    trials: list[Trial]
    scores: np.ndarray   # float64
    lines: list[int]

    @property
    def labels(self) -> np.ndarray | None:
        """1 = same speaker, 0 = different; None for a file without labels."""
        if not has_labels(self.trials):
            return None
        return np.fromiter((t.label for t in self.trials), dtype=np.int64, count=len(self.trials))

    def require_labels(self, purpose: str) -> np.ndarray:
        """The labels, or an error saying that `purpose` needs them and which classes are missing."""
        labels = self.labels
        if labels is None:
            raise ListFormatError(f"{self.path}: {purpose} needs labelled trials (`enrol test score label` lines, as "
                                  f"`speakerid evaluate` writes for a labelled list); this file has 3 fields a line")
        if labels.all() or not labels.any():
            raise ListFormatError(f"{self.path}: {purpose} needs both target (1) and non-target (0) trials; all "
                                  f"{len(labels)} are {int(labels[0])}")
        return labels

    @property
    def enrol(self) -> list[str]:
        return [t.enrol for t in self.trials]

    @property
    def test(self) -> list[str]:
        return [t.test for t in self.trials]


def read_scores(score_file: str | os.PathLike) -> ScoreList:
    """Parse a score file as speakerid.evaluation.write_scores writes it: `enrol test score label` per line
    (label 1 = same speaker), or `enrol test score` on every line for a list without labels."""
    score_file = Path(score_file)
    trials: list[Trial] = []
    scores: list[float] = []
    lines: list[int] = []
    width = None  # set by the first line; every line must agree
    for number, fields in _content_lines(score_file):
        if len(fields) not in (3, 4):
            raise ListFormatError(f"{score_file}:{number}: expected 4 fields 'enrol test score label' (or 3, 'enrol "
                                  f"test score', without labels), got {len(fields)}: {' '.join(fields)!r}")
        if width is None:
            width, first_line = len(fields), number
        elif len(fields) != width:
            raise ListFormatError(f"{score_file}:{number}: {len(fields)} fields, but line {first_line} has {width}; a "
                                  f"score file is either all 'enrol test score label' or all 'enrol test score'")
        enrol, test, score = fields[:3]
        try:
            value = float(score)
        except ValueError:
            raise ListFormatError(f"{score_file}:{number}: score {score!r} is not a number") from None
        if not np.isfinite(value):
            raise ListFormatError(f"{score_file}:{number}: score {score!r} is not finite")
        label = None
        if width == 4:
            if fields[3] not in ("0", "1"):
                raise ListFormatError(f"{score_file}:{number}: label must be 0 or 1, got {fields[3]!r}")
            label = int(fields[3])
        trials.append(Trial(label, enrol, test))
        scores.append(value)
        lines.append(number)
    if not trials:
        raise ListFormatError(f"{score_file}: the score file has no entries")
    return ScoreList(score_file, trials, np.asarray(scores, dtype=np.float64), lines)


def has_labels(trials: list[Trial]) -> bool:
    return trials[0].label is not None


def trial_files(trials: list[Trial]) -> list[str]:
    """Unique files named by a trial list, in first-seen order."""
    return list(dict.fromkeys(p for t in trials for p in (t.enrol, t.test)))


def repeated(items: Iterable[H]) -> dict[H, int]:
    """Items that occur more than once, with their counts, in first-seen order."""
    return {item: n for item, n in Counter(items).items() if n > 1}


def warn_duplicate_paths(list_file: str | os.PathLike, train: TrainList) -> dict[str, int]:
    """Log a warning when a train list names a file more than once (each copy is drawn as an utterance of
    its own, so the file weighs more in training), unless the list is one of `prepare --segment-seconds`,
    which repeats files on purpose; returns {path: count} of the repeated paths."""
    dups = repeated(train.paths)
    if dups and not train.segmented:
        path, n = next(iter(dups.items()))
        log.warning("train list %s: %d files are listed more than once (%d extra lines), e.g. %s %d times; each "
                    "copy is drawn as a separate utterance. Remove the repeated lines (speakerid check-data "
                    "lists them all)", list_file, len(dups), sum(dups.values()) - len(dups), path, n)
    return dups


def repeated_trials(trials: list[Trial]) -> dict[Trial, int]:
    """Trials whose pair of files occurs more than once (in either order), as first listed, with counts."""
    first: dict[tuple[str, str], Trial] = {}
    for trial in trials:
        first.setdefault(trial.pair, trial)
    return {first[pair]: n for pair, n in repeated(t.pair for t in trials).items()}


def self_trials(trials: list[Trial]) -> list[Trial]:
    """Trials of a file against itself: they score 1 whatever the model, so they measure nothing."""
    return [t for t in trials if t.enrol == t.test]


def warn_duplicate_trials(list_file: str | os.PathLike, trials: list[Trial]) -> dict[Trial, int]:
    """Log a warning when a trial list repeats a trial, in either order (each copy counts in the EER and
    minDCF), or pairs a file with itself; returns {trial: count} of the repeated trials."""
    dups = repeated_trials(trials)
    if dups:
        trial, n = next(iter(dups.items()))
        log.warning("trial list %s: %d trials appear more than once (%d extra lines), e.g. '%s' %d times; each "
                    "copy counts in the EER and minDCF. Remove the repeated lines (speakerid check-data lists "
                    "them all)", list_file, len(dups), sum(dups.values()) - len(dups), trial.line(), n)
    same = self_trials(trials)
    if same:
        log.warning("trial list %s: %d trials pair a file with itself, e.g. line %s '%s'; they score 1 whatever "
                    "the model. Remove them (speakerid check-data lists them all)", list_file, len(same),
                    same[0].number, same[0].line())
    return dups


PROGRESS_SECONDS = 15.0  # a scan of a million files takes minutes: say how far it is at this interval


def map_files(fn: Callable[[Path], T], root: str | os.PathLike, paths: list[str], workers: int = 16,
              chunksize: int = 1024, progress: str | None = None) -> list[T]:
    """fn(root / path) for each path, in input order, on `workers` threads: file-system calls and libsndfile
    release the GIL, so threads hide the latency of network file systems when a million files are checked.
    Each task takes a chunk of up to `chunksize` paths (ThreadPoolExecutor.map ignores its own chunksize:
    one future per file cost a million-file list 40 s and 1.9 GB before any file was read), small enough
    that every thread gets work on a short list. With `progress` (what is checked), a long scan logs how
    far it is every PROGRESS_SECONDS."""
    root = Path(root)
    size = max(1, min(chunksize, -(-len(paths) // (4 * workers))))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    results: list[T] = []
    last = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(lambda chunk: [fn(root / p) for p in chunk], chunks):
            results.extend(part)
            if progress is not None and time.monotonic() - last >= PROGRESS_SECONDS:
                log.info("%s: %d of %d files checked", progress, len(results), len(paths))
                last = time.monotonic()
    return results


def find_missing(root: str | os.PathLike, paths: list[str], workers: int = 16, progress: str | None = None
                 ) -> list[str]:
    """Relative paths that do not exist under root, in input order."""
    unique = list(dict.fromkeys(paths))
    exists = map_files(os.path.isfile, root, unique, workers, progress=progress)
    return [p for p, ok in zip(unique, exists) if not ok]


def check_files_exist(root: str | os.PathLike, paths: list[str], what: str, show: int = 5) -> None:
    """Raise MissingFilesError naming how many of `paths` are missing under root and the first few."""
    if not Path(root).is_dir():
        raise MissingFilesError(f"{what}: data root {root} is not a directory")
    missing = find_missing(root, paths, progress=f"{what}, files found" if len(paths) > 10_000 else None)
    if missing:
        listing = "\n  ".join(str(Path(root) / p) for p in missing[:show])
        more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
        raise MissingFilesError(
            f"{what}: {len(missing)} of {len(set(paths))} files do not exist under {root}:\n  {listing}{more}"
        )
