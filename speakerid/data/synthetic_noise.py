"""Synthetic stand-ins for MUSAN and RIRS_NOISES, in their distributed layouts, for machines without them
(tests, the benchmark on a fresh GPU machine). They exercise the augmentation code path and cost the same
to process as the real sets; they are not a substitute for them in training.

    <root>/musan/{noise,speech,music}/synthetic/*.wav
    <root>/RIRS_NOISES/simulated_rirs/smallroom/RoomNNN/RoomNNN-00001.wav
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerid.data.synthetic import SAMPLE_RATE, ForeignFolderError, draw_voice, synthesize
from speakerid.io import write_json_atomic


@dataclass(frozen=True)
class NoiseSpec:
    seed: int = 99
    noise_files: int = 12
    speech_files: int = 10
    music_files: int = 6
    rirs: int = 20
    seconds: float = 8.0
    min_seconds: float | None = None  # durations uniform in [min_seconds, seconds]; None: all `seconds` long
    version: int = 1


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    slope = rng.uniform(-1.0, 0.3)  # power-law colour, from brown-ish to slightly blue
    spectrum *= np.maximum(freqs, 20.0) ** (slope / 2)
    x = np.fft.irfft(spectrum, n)
    hum = rng.uniform(40, 400)
    x /= np.std(x) + 1e-12
    return x + rng.uniform(0, 1.0) * np.sin(2 * np.pi * hum * np.arange(n) / SAMPLE_RATE)


def _music(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    note_len = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
    for start in range(0, n, note_len):
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        seg = slice(start, min(n, start + note_len))
        envelope = np.exp(-np.arange(seg.stop - seg.start) / (0.3 * note_len))
        for h in range(1, 6):
            out[seg] += envelope * np.sin(2 * np.pi * f0 * h * t[seg]) / h
    return out


def _rir(rng: np.random.Generator) -> np.ndarray:
    rt60 = rng.uniform(0.2, 0.9)
    n = int(min(1.0, rt60 * 1.2) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    delay = int(rng.uniform(0.002, 0.02) * SAMPLE_RATE)  # direct path after the source-microphone distance
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    tail[:delay] = 0.0
    tail[delay] = 1.0
    return tail


def _write(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = 0.5 * audio / (np.abs(audio).max() + 1e-12)
    sf.write(str(path), audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def ensure_noise_corpus(root: str | os.PathLike, spec: NoiseSpec = NoiseSpec()) -> dict[str, str]:
    """Generate the folders under root unless the same spec is there already; returns {'musan_dir',
    'rir_dir'}. Only an empty (or missing) folder or one this function generated is written into: a real
    MUSAN there would otherwise get synthetic files mixed in (ForeignFolderError). The marker says
    "incomplete" from the first file to the last, so an interrupted generation is redone."""
    root = Path(root)
    paths = {"musan_dir": str(root / "musan"), "rir_dir": str(root / "RIRS_NOISES")}
    marker = root / "noise_corpus.json"
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("spec") == asdict(spec) and record.get("complete", True):  # (older markers: written last)
            return paths
        for generated in ("musan", "RIRS_NOISES"):  # ours, of another spec or interrupted: replaced whole
            shutil.rmtree(root / generated, ignore_errors=True)
    elif root.is_dir() and any(root.iterdir()):
        shown = ", ".join(sorted(p.name for p in root.iterdir())[:5])
        raise ForeignFolderError(f"{root} holds files that speakerid did not generate ({shown}); synthetic noise "
                                 f"banks are generated only into an empty folder or one generated before")
    write_json_atomic(marker, {"spec": asdict(spec), "complete": False})
    rng = np.random.default_rng(spec.seed)

    def seconds() -> float:
        return spec.seconds if spec.min_seconds is None else float(rng.uniform(spec.min_seconds, spec.seconds))

    for i in range(spec.noise_files):
        _write(root / "musan" / "noise" / "synthetic" / f"noise-{i:03d}.wav",
               _coloured_noise(rng, int(seconds() * SAMPLE_RATE)))
    for i in range(spec.speech_files):
        voice = draw_voice(rng)
        _write(root / "musan" / "speech" / "synthetic" / f"speech-{i:03d}.wav",
               synthesize(voice, int(rng.integers(2**62)), int(rng.integers(2**62)), seconds()))
    for i in range(spec.music_files):
        _write(root / "musan" / "music" / "synthetic" / f"music-{i:03d}.wav", _music(rng, int(seconds() * SAMPLE_RATE)))
    for i in range(spec.rirs):
        room = f"Room{i // 4 + 1:03d}"
        _write(root / "RIRS_NOISES" / "simulated_rirs" / "smallroom" / room / f"{room}-{i % 4 + 1:05d}.wav",
               _rir(rng))
    write_json_atomic(marker, {"spec": asdict(spec), "complete": True})
    return paths
