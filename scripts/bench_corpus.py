"""Corpora and page-cache control for scripts/benchmark.py's storage and extraction stages.

`ensure_long_corpus` writes utterances of VoxCeleb-like lengths in the `folder` layout (`wav/<speaker>/...`,
`train_list.txt`), as 16-bit WAV or FLAC, by joining the utterances of each speaker of a source train list
(real speech when the source is): file sizes and FLAC's compression are then those of speech, not of
noise. `evict` drops files from the page cache, so that the next read comes from the storage device, and
`resident_fraction` says how much of them is cached (mincore), which shows whether an eviction took: on
tmpfs, for one, nothing can be evicted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import mmap
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerid.data.audio import read_full
from speakerid.data.lists import read_train_list
from speakerid.io import write_json_atomic, write_text_atomic

SAMPLE_RATE = 16000
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16")}
RECORD = "bench_corpus.json"


@dataclass(frozen=True)
class LongCorpusSpec:
    """`utterances` files of `min_seconds` to `max_seconds`. `lengths` "voxceleb2": min_seconds plus an
    exponential, drawn again above max_seconds, whose mean is `mean_seconds` (VoxCeleb2's paper: segments of
    at least 4 s, 7.8 s on average, with a long tail); "uniform": uniform between the bounds."""

    source_list: str
    source_root: str
    utterances: int
    fmt: str = "wav"
    min_seconds: float = 4.0
    max_seconds: float = 20.0
    mean_seconds: float = 7.8
    lengths: str = "voxceleb2"
    seed: int = 0


def draw_seconds(spec: LongCorpusSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.lengths == "uniform":
        return rng.uniform(spec.min_seconds, spec.max_seconds, spec.utterances)
    scale = _truncated_exponential_scale(spec.mean_seconds - spec.min_seconds, spec.max_seconds - spec.min_seconds)
    seconds = np.empty(0)
    while len(seconds) < spec.utterances:
        draw = spec.min_seconds + rng.exponential(scale, 2 * spec.utterances)
        seconds = np.concatenate([seconds, draw[draw <= spec.max_seconds]])
    return seconds[:spec.utterances]


def _truncated_exponential_scale(mean: float, upper: float) -> float:
    """The scale s of an exponential cut at `upper` whose mean is `mean`: s - upper / (e^(upper/s) - 1) = mean
    (the mean rises with s; solved by bisection)."""
    low, high = 1e-3, 1e3
    for _ in range(100):
        s = (low + high) / 2
        low, high = (s, high) if s - upper / np.expm1(upper / s) < mean else (low, s)
    return (low + high) / 2


def _write_speaker_files(job: tuple) -> None:
    """Files of one speaker: its source utterances joined in turn (cycling) and cut to each drawn length."""
    source_root, sources, targets, fmt = job
    container, subtype = FORMATS[fmt]
    pending, next_source = np.zeros(0, dtype=np.float32), 0
    for path, samples in targets:
        while len(pending) < samples:
            audio = read_full(Path(source_root) / sources[next_source % len(sources)], SAMPLE_RATE, resample=True)
            pending = np.concatenate([pending, audio])
            next_source += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), pending[:samples], SAMPLE_RATE, format=container, subtype=subtype)
        pending = pending[samples:]


def ensure_long_corpus(root: str | os.PathLike, spec: LongCorpusSpec, workers: int | None = None) -> Path:
    """Write the corpus under root (reused when root holds one of the same spec); returns its train list.
    Speakers keep their source ids, so labels index the same classes as a run on the source list."""
    root = Path(root)
    record = root / RECORD
    if record.is_file() and json.loads(record.read_text()) == asdict(spec):
        return root / "train_list.txt"
    if root.exists() and any(p.name not in ("wav", RECORD, "train_list.txt") for p in root.iterdir()):
        raise FileExistsError(f"{root} holds files this benchmark did not write; give an empty folder")
    record.unlink(missing_ok=True)
    source = read_train_list(spec.source_list, spec.source_root)
    by_speaker: dict[str, list[str]] = {}
    for speaker, path in zip(source.speakers, source.paths):
        by_speaker.setdefault(speaker, []).append(path)
    rng = np.random.default_rng(spec.seed)
    seconds = draw_seconds(spec, rng)
    ext = spec.fmt
    lines, targets = [], {s: [] for s in source.speaker_ids}
    for n, secs in enumerate(seconds):
        speaker = source.speaker_ids[n % len(source.speaker_ids)]
        rel = f"{speaker}/b{n // 1000:03d}/{n:07d}.{ext}"
        lines.append(f"{speaker} {rel}")
        targets[speaker].append((root / "wav" / rel, int(round(secs * SAMPLE_RATE))))
    jobs = [(spec.source_root, by_speaker[s], targets[s], spec.fmt) for s in source.speaker_ids if targets[s]]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_speaker_files, jobs))
    else:
        for job in jobs:
            _write_speaker_files(job)
    write_text_atomic(root / "train_list.txt", "\n".join(lines) + "\n")
    write_json_atomic(record, asdict(spec))
    return root / "train_list.txt"


def evict(paths: list[Path], workers: int = 16) -> None:
    """Drop each file's pages from the page cache: fsync first (dirty pages cannot be dropped), then
    POSIX_FADV_DONTNEED over the whole file."""
    def drop(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(drop, paths))


def warm(paths: list[Path], workers: int = 16) -> None:
    """Read every byte of each file, so that all of it is in the page cache."""
    def read(path: Path) -> None:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(read, paths))


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the pages of these files that are in the page cache (mincore on a mapping, which reads
    nothing); None where mincore is not available."""
    try:
        libc = _libc()
    except (OSError, AttributeError):
        return None
    page = mmap.PAGESIZE
    resident = total = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        pages = (size + page - 1) // page
        fd = os.open(path, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vector = (ctypes.c_ubyte * pages)()
                if libc.mincore(address, size, vector) != 0:
                    return None
                resident += sum(v & 1 for v in vector)
            finally:
                libc.munmap(address, size)
        finally:
            os.close(fd)
        total += pages
    return resident / total if total else None
