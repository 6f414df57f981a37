"""Train lists (`speaker relative/path`) and trial lists (`label enrol test`), with errors that name the
file, the line and what is wrong."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


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


def _content_lines(list_file: Path):
    """Yield (line_number, fields) for non-blank, non-comment lines."""
    try:
        with open(list_file, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                yield number, stripped.split()
    except FileNotFoundError:
        raise FileNotFoundError(f"{list_file}: list file does not exist") from None
    except UnicodeDecodeError as e:
        raise ListFormatError(f"{list_file}: not a UTF-8 text file ({e})") from None


def read_train_list(list_file: str | os.PathLike, root: str | os.PathLike) -> TrainList:
    """Parse a VoxCeleb2-style train list: one `speaker relative/path` per line."""
    list_file = Path(list_file)
    paths: list[str] = []
    speakers: list[str] = []
    for number, fields in _content_lines(list_file):
        if len(fields) != 2:
            raise ListFormatError(
                f"{list_file}:{number}: expected 2 fields 'speaker relative/path', got {len(fields)}: "
                f"{' '.join(fields)!r}"
            )
        speaker, path = fields
        if os.path.isabs(path):
            raise ListFormatError(
                f"{list_file}:{number}: path {path!r} is absolute; train-list paths are relative to data.root"
            )
        speakers.append(speaker)
        paths.append(path)
    if not paths:
        raise ListFormatError(f"{list_file}: the list has no entries")
    speaker_ids = sorted(set(speakers))
    if len(speaker_ids) < 2:
        raise ListFormatError(f"{list_file}: a speaker classifier needs at least 2 speakers, found {len(speaker_ids)}")
    return TrainList(Path(root), paths, speakers, speaker_ids)


def read_trials(list_file: str | os.PathLike, strip_prefix: str | None = None) -> list[Trial]:
    """Parse a VoxCeleb1-style trial list: one `label enrol test` per line (label 1 = same speaker), or
    `enrol test` on every line for a list without labels (trials are then scored, not measured).

    strip_prefix: a leading path part that every trial path carries and that the data root already
    includes (e.g. `wav/` in `1 wav/id10270/a.wav wav/id10271/b.wav`); it is removed from each path."""
    list_file = Path(list_file)
    trials: list[Trial] = []
    labelled: bool | None = None  # set by the first line; every line must agree
    first_line = 0
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
        if strip_prefix:
            enrol, test = (_strip(list_file, number, p, strip_prefix) for p in (enrol, test))
        trials.append(Trial(label, enrol, test))
    if not trials:
        raise ListFormatError(f"{list_file}: the trial list has no entries")
    if labelled:
        labels = {t.label for t in trials}
        if labels != {0, 1}:
            raise ListFormatError(f"{list_file}: EER needs both target (1) and non-target (0) trials; "
                                  f"found only {labels}")
    return trials


def _strip(list_file: Path, number: int, path: str, prefix: str) -> str:
    if not path.startswith(prefix):
        raise ListFormatError(f"{list_file}:{number}: path {path!r} does not start with the prefix {prefix!r} "
                              f"that eval.strip_prefix removes")
    return path[len(prefix):]


def has_labels(trials: list[Trial]) -> bool:
    return trials[0].label is not None


def trial_files(trials: list[Trial]) -> list[str]:
    """Unique files named by a trial list, in first-seen order."""
    return list(dict.fromkeys(p for t in trials for p in (t.enrol, t.test)))


def find_missing(root: str | os.PathLike, paths: list[str], workers: int = 16) -> list[str]:
    """Relative paths that do not exist under root, in input order. Threads hide the latency of network
    file systems when a million files are checked."""
    root = Path(root)
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        exists = list(pool.map(lambda p: os.path.isfile(root / p), unique, chunksize=256))
    return [p for p, ok in zip(unique, exists) if not ok]


def check_files_exist(root: str | os.PathLike, paths: list[str], what: str, show: int = 5) -> None:
    """Raise MissingFilesError naming how many of `paths` are missing under root and the first few."""
    if not Path(root).is_dir():
        raise MissingFilesError(f"{what}: data root {root} is not a directory")
    missing = find_missing(root, paths)
    if missing:
        listing = "\n  ".join(str(Path(root) / p) for p in missing[:show])
        more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
        raise MissingFilesError(
            f"{what}: {len(missing)} of {len(set(paths))} files do not exist under {root}:\n  {listing}{more}"
        )
