"""Data preparation: a train list (`speaker relative/path`) from a VoxCeleb-style folder
(`speaker/session/utterance.{wav,flac}`) or from a Kaldi data directory (`wav.scp` + `utt2spk`); speakers
split into training and held-out ones, and a balanced trial list of the held-out ones; VoxCeleb2's m4a
files converted to wav or flac with ffmpeg; 3D-Speaker's real RIRs as mono files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerid.data.audio import AudioError, audio_info
from speakerid.data.lists import LIST_ENCODING, SEGMENT_HEADER, Trial
from speakerid.io import atomic_path, write_text_atomic

AUDIO_EXTENSIONS = (".wav", ".flac")


def scan_voxceleb_folder(root: str | os.PathLike, extensions=AUDIO_EXTENSIONS) -> list[tuple[str, str]]:
    """(speaker, relative path) for every audio file at depth speaker/session/file, sorted by path; endings
    match in any case, linked folders are followed, and names starting with '.' (hidden, or macOS `._x.wav`
    AppleDouble stubs, which are not audio) are skipped. Files at another depth are not VoxCeleb layout,
    folders reached twice through links would list their files twice, and names a list cannot hold would
    be misread by every list reader: all are reported rather than guessed at."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    extensions = tuple(e.lower() for e in extensions)
    entries = []
    misplaced = []
    walked: dict[str, Path] = {}  # real path of each folder walked -> its path under root
    twice = []
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        rel_dir = Path(dirpath).relative_to(root)
        real = os.path.realpath(dirpath)
        if real in walked:
            dirs.clear()
            # A link to a folder above it would loop forever; a second way into any other folder is an error.
            if os.path.commonpath([real, os.path.realpath(Path(dirpath).parent)]) != real:
                twice.append(f"{rel_dir.as_posix()} (= {walked[real].as_posix()})")
            continue
        walked[real] = rel_dir
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.lower().endswith(extensions):
                continue
            rel = (rel_dir / name).as_posix()
            if len(rel_dir.parts) != 2:
                misplaced.append(rel)
                continue
            entries.append((rel_dir.parts[0], rel))
    if misplaced:
        raise ValueError(
            f"{root}: {len(misplaced)} audio files are not at speaker/session/utterance depth, e.g. "
            + ", ".join(misplaced[:3])
        )
    if twice:
        raise ValueError(f"{root}: {len(twice)} folders are reached twice through links, so their files would be "
                         f"listed twice: " + ", ".join(sorted(twice)[:10]) + _more(twice, 10))
    if not entries:
        raise ValueError(f"{root}: no {'/'.join(extensions)} files found at speaker/session/utterance depth")
    entries.sort(key=lambda e: e[1])
    check_listable(entries, root)
    return entries


def _more(items: list, shown: int) -> str:
    return f" ... and {len(items) - shown} more" if len(items) > shown else ""


def check_listable(entries: list[tuple[str, str]], root: str | os.PathLike, show: int = 10) -> None:
    """Raise ValueError naming the (speaker, path) entries that a `speaker path` list line cannot hold: list
    readers split a line at whitespace, skip a line that starts with '#' as a comment, and read UTF-8, so
    such a name would be misread or dropped."""
    bad = []
    for speaker, path in entries:
        try:
            f"{speaker} {path}".encode("utf-8")
        except UnicodeEncodeError:  # os.walk keeps undecodable bytes of a name as surrogates
            bad.append(f"{os.fsencode(path).decode('utf-8', 'backslashreplace')}: not UTF-8")
            continue
        if any(c.isspace() for c in speaker + path):  # what str.split() splits at, Unicode spaces included
            bad.append(f"{path!r}: contains whitespace")
        elif speaker.startswith("#"):
            bad.append(f"{path}: speaker {speaker} starts with '#'")
    if bad:
        raise ValueError(f"{root}: {len(bad)} audio files have names that a list cannot hold (its lines are "
                         f"split at whitespace, a line starting with '#' is a comment, and lists are UTF-8); "
                         f"rename them:\n  " + "\n  ".join(bad[:show]) + _more(bad, show))


def write_train_list(entries: list[tuple[str, str]], out: str | os.PathLike, segment_seconds: float | None = None
                     ) -> None:
    """With segment_seconds (entries from rows_per_segment), the list starts with SEGMENT_HEADER: its
    repeated lines are then known to be intended, and are not reported as duplicates."""
    header = "" if segment_seconds is None else (
        f"{SEGMENT_HEADER} {segment_seconds:g}: each utterance is listed once per whole {segment_seconds:g} s of "
        f"it, at least once; the repeated lines are intended\n")
    write_text_atomic(out, header + "".join(f"{speaker} {path}\n" for speaker, path in entries))


def listed_segment_seconds(list_file: str | os.PathLike) -> float | None:
    """The S of a list written by --segment-seconds S, read back from its first line (SEGMENT_HEADER)."""
    with open(list_file, encoding=LIST_ENCODING) as f:
        first = f.readline()
    try:
        return float(first[len(SEGMENT_HEADER):].split(":")[0]) if first.startswith(SEGMENT_HEADER) else None
    except ValueError:
        raise ValueError(f"{list_file}:1: {first.strip()!r} does not say how many seconds a row stands for "
                         f"('{SEGMENT_HEADER} S: ...')") from None


def rows_per_segment(entries: list[tuple[str, str]], root: str | os.PathLike, seconds: float, workers: int = 16
                     ) -> list[tuple[str, str]]:
    """Each entry repeated once per whole `seconds` of its audio, at least once (3D-Speaker's train.csv,
    seg_dur 3.0): an epoch then samples speech time rather than files, each row still a random crop of the
    whole utterance. Durations come from the file headers."""
    with ThreadPoolExecutor(workers) as pool:  # header reads wait on the disk, not the CPU
        infos = list(pool.map(lambda entry: audio_info(Path(root) / entry[1]), entries))
    rows = [max(1, int(frames / rate / seconds)) for frames, rate, _ in infos]
    return [entry for entry, n in zip(entries, rows) for _ in range(n)]


# --------------------------------------------------------------------------------------------- held-out speakers
def split_speakers(speakers: list[str], held_out: float, seed: int, min_held_out: int = 2, min_train: int = 2
                   ) -> tuple[list[str], list[str]]:
    """(training, held-out) speakers, each sorted: a seeded random `held_out` fraction of the distinct
    speakers (rounded, at least `min_held_out`) is held out. The same speakers, fraction and seed give the
    same split, whatever the order the speakers come in."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"the held-out fraction must be between 0 and 1, got {held_out}")
    ordered = sorted(set(speakers))
    n_held = max(min_held_out, round(held_out * len(ordered)))
    if len(ordered) - n_held < min_train:
        raise ValueError(f"{len(ordered)} speakers cannot be split into at least {min_train} training and "
                         f"{min_held_out} held-out speakers ({n_held} held out at the fraction {held_out})")
    chosen = set(np.random.default_rng(seed).permutation(len(ordered))[:n_held].tolist())
    return ([s for i, s in enumerate(ordered) if i not in chosen], [s for i, s in enumerate(ordered) if i in chosen])


def make_trials(utterances: dict[str, list[str]], rng: np.random.Generator,
                max_targets_per_speaker: int | None = None) -> list[Trial]:
    """Balanced trials among speakers {speaker: [speaker/session/file paths]}: target pairs of a speaker's
    utterances from different sessions (from its one session when it has only one), at most
    `max_targets_per_speaker` of them per speaker (drawn at random), and as many distinct non-target pairs
    of two speakers' utterances drawn at random (a-b and b-a are one pair) (fewer targets when there are not that many); shuffled."""
    targets: list[Trial] = []
    for utts in utterances.values():
        targets.extend(Trial(1, a, b) for a, b in _target_pairs(utts, rng, max_targets_per_speaker))
    sizes = [len(u) for u in utterances.values()]
    possible = (sum(sizes) ** 2 - sum(n * n for n in sizes)) // 2  # pairs of utterances of two speakers
    if possible < len(targets):
        targets = [targets[i] for i in sorted(rng.choice(len(targets), possible, replace=False))]
    if not targets:
        raise ValueError(f"no target trials: the {len(utterances)} speakers need at least 2 utterances each")
    speakers = sorted(utterances)
    trials = list(targets)
    seen = set()
    while len(trials) < 2 * len(targets):
        s1, s2 = rng.choice(len(speakers), size=2, replace=False)
        a = utterances[speakers[s1]][rng.integers(len(utterances[speakers[s1]]))]
        b = utterances[speakers[s2]][rng.integers(len(utterances[speakers[s2]]))]
        if frozenset((a, b)) not in seen:  # b-a is the same trial as a-b: it would count twice
            seen.add(frozenset((a, b)))
            trials.append(Trial(0, a, b))
    return [trials[i] for i in rng.permutation(len(trials))]


def _target_pairs(utts: list[str], rng: np.random.Generator, cap: int | None) -> list[tuple[str, str]]:
    """One speaker's target pairs (a, b), a before b in `utts`: those of different sessions, or all of them
    when every utterance is of one session; at most `cap`, drawn at random and kept in that order. A capped
    draw picks pair numbers and finds just those pairs: listing every pair of a VoxCeleb2 speaker's hundreds
    of utterances, for 6,000 speakers, took minutes to keep a few dozen each."""
    sessions = [_session(u) for u in utts]
    n = len(utts)
    any_pair = len(set(sessions)) <= 1
    # later[i]: the pairs (i, j > i) there are, by counting each session's utterances from the end
    later, seen = [0] * n, Counter()
    for i in range(n - 1, -1, -1):
        later[i] = n - 1 - i - (0 if any_pair else seen[sessions[i]])
        seen[sessions[i]] += 1
    count = sum(later)
    if cap is None or count <= cap:
        return [(utts[i], utts[j]) for i in range(n) for j in range(i + 1, n)
                if any_pair or sessions[i] != sessions[j]]
    ends = np.cumsum(later)  # pairs numbered in the order listed above: those of utterance i end at ends[i]
    pairs = []
    for number in sorted(rng.choice(count, cap, replace=False)):
        i = int(np.searchsorted(ends, number, side="right"))
        skip = number - (int(ends[i - 1]) if i else 0)
        for j in range(i + 1, n):  # the skip-th pair of utterance i
            if any_pair or sessions[i] != sessions[j]:
                if skip == 0:
                    break
                skip -= 1
        pairs.append((utts[i], utts[j]))
    return pairs


def _session(path: str) -> str:
    return path.split("/")[1]


def write_trial_list(trials: list[Trial], out: str | os.PathLike) -> None:
    write_text_atomic(out, "".join(f"{trial.line()}\n" for trial in trials))


# --------------------------------------------------------------------------------------------- Kaldi
class KaldiFormatError(ValueError):
    """A Kaldi data directory (wav.scp, utt2spk) has a line or an entry we cannot use."""


def _read_kaldi_table(path: Path, what: str) -> dict[str, tuple[int, str]]:
    """`key value...` lines -> {key: (line number, value)}; duplicate keys are an error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a Kaldi data directory needs wav.scp and utt2spk)")
    table: dict[str, tuple[int, str]] = {}
    with open(path, encoding=LIST_ENCODING) as f:
        for number, line in enumerate(f, start=1):
            stripped = line.strip()
            if not stripped:
                continue
            parts = stripped.split(maxsplit=1)
            if len(parts) != 2:
                raise KaldiFormatError(f"{path}:{number}: expected '<utterance-id> {what}', got {stripped!r}")
            key, value = parts
            if key in table:
                raise KaldiFormatError(f"{path}:{number}: utterance id {key!r} repeats line {table[key][0]}")
            table[key] = (number, value.strip())
    if not table:
        raise KaldiFormatError(f"{path}: the file has no entries")
    return table


# Kaldi's extended filename `file.ark:1234` (optionally with a `[from:to]` range): a byte offset into an
# archive, not a file path.
_ARCHIVE_OFFSET = re.compile(r":\d+(\[[^\]]*\])?$")


def read_kaldi_data_dir(data_dir: str | os.PathLike, base: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(speaker, absolute audio path) for every utterance of a Kaldi data directory (`wav.scp` with
    `<utt> <path>` lines, `utt2spk` with `<utt> <speaker>`), sorted by path. Relative paths are resolved
    against `base` (default: the current directory, as Kaldi does); every file must exist. Piped commands
    (`... |`), archive offsets (`file.ark:1234`) and `segments` files are not supported: convert those
    recordings to files first."""
    data_dir = Path(data_dir)
    if (data_dir / "segments").exists():
        raise KaldiFormatError(f"{data_dir}/segments: utterances cut from longer recordings are not supported; "
                               f"extract them to files first (e.g. Kaldi's extract-segments)")
    wavs = _read_kaldi_table(data_dir / "wav.scp", "<audio path>")
    speakers = _read_kaldi_table(data_dir / "utt2spk", "<speaker>")
    base = Path(base) if base is not None else Path.cwd()
    entries = []
    missing = []
    for utt, (number, value) in wavs.items():
        if value.endswith("|") or len(value.split()) != 1:
            raise KaldiFormatError(f"{data_dir / 'wav.scp'}:{number}: {value!r} is a command or has spaces; "
                                   f"only plain audio file paths are supported")
        if _ARCHIVE_OFFSET.search(value):
            raise KaldiFormatError(f"{data_dir / 'wav.scp'}:{number}: {value!r} is a byte offset into an archive "
                                   f"(Kaldi's file.ark:offset); only plain audio file paths are supported: write "
                                   f"the recordings out as files first (e.g. Kaldi's wav-copy)")
        if utt not in speakers:
            raise KaldiFormatError(f"{data_dir / 'wav.scp'}:{number}: utterance {utt!r} has no line in utt2spk")
        speaker = speakers[utt][1]
        if len(speaker.split()) != 1:
            raise KaldiFormatError(f"{data_dir / 'utt2spk'}:{speakers[utt][0]}: expected one speaker id, "
                                   f"got {speaker!r}")
        path = os.path.normpath(Path(value) if os.path.isabs(value) else base / value)
        if not os.path.isfile(path):
            missing.append(f"wav.scp:{number}: {path}")
        entries.append((speaker, path))
    extra = sorted(set(speakers) - set(wavs))
    if extra:
        raise KaldiFormatError(f"{data_dir / 'utt2spk'}: {len(extra)} utterances have no audio in wav.scp, "
                               f"e.g. {', '.join(extra[:3])}")
    if missing:  # a list naming them would stop training later, far from the cause
        raise KaldiFormatError(f"{data_dir / 'wav.scp'}: {len(missing)} audio files do not exist (relative paths "
                               f"start from {base}; give the folder they start from with --kaldi-base):\n  "
                               + "\n  ".join(missing[:5]) + _more(missing, 5))
    return sorted(entries, key=lambda e: e[1])


def relative_entries(entries: list[tuple[str, str]], root: str | os.PathLike | None = None
                     ) -> tuple[Path, list[tuple[str, str]]]:
    """Absolute paths -> (root, paths relative to it), root being the given one or the deepest folder
    that holds them all; a path outside a given root is an error."""
    paths = [os.path.abspath(p) for _, p in entries]
    root = Path(os.path.abspath(root)) if root is not None else Path(os.path.commonpath([os.path.dirname(p) for p in paths]))
    relative = []
    for (speaker, _), path in zip(entries, paths):
        rel = os.path.relpath(path, root)
        if rel.startswith(".."):
            raise ValueError(f"{path} is not under the root {root}")
        relative.append((speaker, Path(rel).as_posix()))
    return root, relative


# --------------------------------------------------------------------------------------------- m4a -> wav/flac
class FFmpegNotFoundError(RuntimeError):
    """ffmpeg, needed to decode VoxCeleb2's m4a files, is not installed."""


def find_ffmpeg(ffmpeg: str | None = None) -> str:
    found = shutil.which(ffmpeg or "ffmpeg")
    if found is None:
        raise FFmpegNotFoundError(
            f"{ffmpeg or 'ffmpeg'} was not found on PATH; it decodes VoxCeleb2's m4a files. Install it "
            f"(Debian/Ubuntu: apt-get install ffmpeg; conda: conda install -c conda-forge ffmpeg; macOS: "
            f"brew install ffmpeg) or give its path with --ffmpeg")
    return found


@dataclass
class ConversionReport:
    converted: int = 0
    skipped: int = 0                                   # outputs that already existed (earlier run)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, ffmpeg's message)


def conversion_jobs(src: Path, dst: Path, fmt: str, source_ext: str = ".m4a") -> list[tuple[Path, Path]]:
    """(input, output) for every source_ext file under src, mirrored under dst with the new ending: the files
    that listing finds (scan_voxceleb_folder: endings in any case, linked folders followed, names starting
    with '.', such as macOS `._x.m4a` stubs that ffmpeg cannot decode, skipped), so that no file listing
    would see is left unconverted."""
    return [(src / rel, dst / Path(rel).with_suffix(f".{fmt}")) for _, rel in scan_voxceleb_folder(src, (source_ext,))]


def mismatched_outputs(targets: list[Path], sample_rate: int, workers: int = 16) -> list[str]:
    """'path: what differs' for each existing output that is not what this conversion writes (mono, at
    sample_rate, not empty): an earlier run with another --sample-rate, or a file from elsewhere."""
    def problem(target: Path) -> str | None:
        try:
            frames, rate, channels = audio_info(target)
        except AudioError as e:
            return str(e)
        differs = ([f"{rate} Hz, not {sample_rate}"] if rate != sample_rate else []) + (
            [f"{channels} channels, not 1"] if channels != 1 else []) + (["no samples"] if frames <= 0 else [])
        return f"{target}: " + ", ".join(differs) if differs else None

    with ThreadPoolExecutor(workers) as pool:  # header reads wait on the disk, not the CPU
        return [p for p in pool.map(problem, targets) if p is not None]


def convert_one(ffmpeg: str, source: Path, target: Path, fmt: str, sample_rate: int = 16000) -> str | None:
    """Decode source to 16-bit mono `fmt` at sample_rate; write to a temporary name and rename, so an
    interrupted run never leaves a half-written file under the final name. Returns ffmpeg's error or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    codec = ["-c:a", "pcm_s16le"] if fmt == "wav" else ["-c:a", "flac", "-sample_fmt", "s16"]
    proc = subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-vn",
         "-ac", "1", "-ar", str(sample_rate), *codec, "-f", fmt, str(tmp)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"ffmpeg exit code {proc.returncode}"
    os.replace(tmp, target)
    return None


def convert_tree(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "wav", workers: int | None = None,
                 ffmpeg: str | None = None, sample_rate: int = 16000, source_ext: str = ".m4a",
                 progress=None) -> ConversionReport:
    """Convert every source_ext file under src to `fmt` under dst (same relative layout), in parallel.
    Resumable: outputs that exist are complete (written by rename) and are skipped, once their headers show
    what this conversion writes; any other (another sample rate, stereo, empty) is an error, never kept."""
    if fmt not in ("wav", "flac"):
        raise ValueError(f"output format must be wav or flac, got {fmt!r}")
    ffmpeg = find_ffmpeg(ffmpeg)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a directory")
    jobs = conversion_jobs(src, dst, fmt, source_ext)
    report = ConversionReport()
    todo = [(source, target) for source, target in jobs if not target.exists()]
    existing = [target for _, target in jobs if target.exists()]
    mismatched = mismatched_outputs(existing, sample_rate)
    if mismatched:  # kept, they would mix sample rates in one list
        raise ValueError(f"{dst}: {len(mismatched)} of the {len(existing)} files already there are not {fmt} "
                         f"mono at {sample_rate} Hz as this conversion writes them (an earlier run with other "
                         f"options?); delete them to convert them again, or convert into another folder:\n  "
                         + "\n  ".join(mismatched[:10]) + _more(mismatched, 10))
    report.skipped = len(existing)
    workers = workers or os.cpu_count() or 1
    # Threads suffice: each job waits on its own ffmpeg process.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (source, _), error in zip(todo, pool.map(lambda j: convert_one(ffmpeg, j[0], j[1], fmt, sample_rate), todo)):
            if error is None:
                report.converted += 1
            else:
                report.failed.append((str(source), error))
            if progress is not None:
                progress(report, len(todo))
    return report


REAL_RIRS = "real_rirs_isotropic_noises"


def write_real_rirs(rirs_noises: str | os.PathLike, out: str | os.PathLike) -> int:
    """3D-Speaker's RIRs (egs/voxceleb/sv-cam++/local/prepare_data.sh): the real impulse responses that
    RIRS_NOISES/real_rirs_isotropic_noises/rir_list names, their first channel (3D-Speaker reads
    torchaudio.load(...)[0]), as mono float files in `out`, the folder augment.rir_dir then takes (its
    RIR bank reads mono files). Returns the number of files in `out`. A file already there with the same
    samples is kept, so the command can run again; one with other content is an error, never replaced."""
    folder = Path(rirs_noises) / REAL_RIRS
    rir_list = folder / "rir_list"
    if not rir_list.is_file():
        raise FileNotFoundError(f"{rir_list} not found: give the RIRS_NOISES folder as distributed "
                                f"(https://www.openslr.org/28)")
    names = sorted({Path(field).name for line in rir_list.read_text(encoding="utf-8").splitlines()
                    for field in line.split() if field.endswith(".wav")})
    if not names:
        raise ValueError(f"{rir_list}: no .wav file named in it")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            audio, rate = sf.read(folder / name, dtype="float32", always_2d=True)
        except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
            raise ValueError(f"{folder / name} (named in {rir_list}): cannot be read: {e}") from None
        first = audio[:, 0]
        target = out / name
        if target.exists():
            kept, kept_rate = sf.read(target, dtype="float32")
            if kept_rate != rate or not np.array_equal(kept, first):
                raise FileExistsError(f"{target} already exists with other content than the first channel of "
                                      f"{folder / name}; remove it or write into another folder")
            continue
        with atomic_path(target, overwrite=False) as tmp:
            sf.write(tmp, first, rate, subtype="FLOAT", format="WAV")
    return len(names)
