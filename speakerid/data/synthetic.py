"""A small synthetic multi-speaker corpus in the VoxCeleb layout, for smoke runs without real data.

Voices come from a source-filter model whose speaker parameters vary the way human voices do: pitch
level and range, vocal-tract length (all formants scaled together), a per-speaker accent on each vowel's
formants, formant bandwidths, glottal spectral tilt, breathiness and speaking rate. Each utterance is a
random sequence of vowels and fricative-like consonants with a declining, wandering pitch contour; each
session adds its own channel colouring, pitch shift and background noise, so the same speaker sounds
different across sessions and the task is not trivial.

It is a smoke corpus: it shows that the pipeline learns speaker identity, not how well a model does on
real speech. Generation is deterministic in (seed, sizes) and takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerid.config import check_int_at_least, is_finite, is_int, require
from speakerid.data.check import MIN_TRIAL_SECONDS
from speakerid.data.prepare import make_trials, write_trial_list
from speakerid.io import write_json_atomic, write_text_atomic

SAMPLE_RATE = 16000
_N_FFT = 512
_HOP = 128

# Formant targets F1..F4 (Hz) of an adult male voice (after Peterson & Barney, 1952).
_VOWELS = np.array([
    [270, 2290, 3010, 3500],   # i
    [390, 1990, 2550, 3500],   # I
    [530, 1840, 2480, 3500],   # e
    [730, 1090, 2440, 3400],   # a
    [570, 840, 2410, 3300],    # o
    [300, 870, 2240, 3300],    # u
    [640, 1190, 2390, 3400],   # schwa-like
], dtype=np.float64)
_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 200.0])


@dataclass(frozen=True)
class CorpusSpec:
    seed: int = 1234
    train_speakers: int = 120
    test_speakers: int = 20
    sessions: int = 4
    utterances_per_session: int = 4
    min_seconds: float = 2.0
    max_seconds: float = 3.5
    version: int = 2  # bump when the generator changes, so old corpora are rebuilt (2: no reversed trials)

    def __post_init__(self) -> None:
        """Sizes the generator and the trials can work with, named as the config keys (data.generate.*): checked
        before the corpus folder is marked incomplete, not half-way through writing it."""
        key = "data.generate."
        require(is_int(self.seed) and self.seed >= 0, f"{key}seed", "an integer >= 0 (the corpus's random seed)",
                self.seed)
        check_int_at_least(self.train_speakers, 2, f"{key}train_speakers", "the speakers the head tells apart")
        check_int_at_least(self.test_speakers, 2, f"{key}test_speakers", "the validation trials' speakers: a "
                           "non-target trial pairs two")
        check_int_at_least(self.sessions, 1, f"{key}sessions")
        check_int_at_least(self.utterances_per_session, 1, f"{key}utterances_per_session")
        require(self.sessions * self.utterances_per_session >= 2, f"{key}utterances_per_session",
                f"at least 2 utterances per speaker with {key}sessions={self.sessions} (a target trial pairs two of "
                "a speaker's utterances)", self.utterances_per_session)
        require(is_finite(self.min_seconds) and self.min_seconds >= MIN_TRIAL_SECONDS, f"{key}min_seconds",
                f"a duration >= {MIN_TRIAL_SECONDS} s (the shortest trial file an embedding is made of)",
                self.min_seconds)
        require(is_finite(self.max_seconds) and self.max_seconds >= self.min_seconds, f"{key}max_seconds",
                f"a finite duration >= {key}min_seconds={self.min_seconds} s", self.max_seconds)

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Voice:
    f0: float              # mean pitch, Hz
    f0_range: float        # intonation spread, semitones
    vtl_scale: float       # formant scale: > 1 is a shorter vocal tract
    accent: np.ndarray     # [vowels, 4] multipliers on each vowel's formants
    bandwidth_scale: float
    tilt: float            # glottal source slope, dB per octave
    breathiness: float     # aspiration noise relative to voicing
    rate: float            # syllables per second


def draw_voice(rng: np.random.Generator) -> Voice:
    return Voice(
        f0=float(np.exp(rng.uniform(np.log(80.0), np.log(260.0)))),
        f0_range=float(rng.uniform(0.8, 3.5)),
        vtl_scale=float(rng.uniform(0.82, 1.20)),
        accent=rng.normal(1.0, 0.06, size=_VOWELS.shape).clip(0.8, 1.2),
        bandwidth_scale=float(rng.uniform(0.7, 1.6)),
        tilt=float(rng.uniform(-16.0, -6.0)),
        breathiness=float(rng.uniform(0.01, 0.25)),
        rate=float(rng.uniform(3.0, 6.0)),
    )


def _smooth_noise(rng: np.random.Generator, n: int, smoothness: int) -> np.ndarray:
    """Low-pass random walk of unit standard deviation, length n."""
    raw = rng.standard_normal(n + 2 * smoothness)
    kernel = np.hanning(2 * smoothness + 1)
    out = np.convolve(raw, kernel / kernel.sum(), mode="same")[smoothness:smoothness + n]
    return out / (out.std() + 1e-9)


def _resonance_gain(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """|H(f)| of a cascade of second-order resonators, unity at DC. freqs [bins], formants [frames, k]."""
    f = freqs.astype(np.float32)[None, :]
    squared = np.ones((formants.shape[0], freqs.size), dtype=np.float32)
    for k in range(formants.shape[1]):
        fk = formants[:, k:k + 1].astype(np.float32)
        b2 = np.float32((bandwidths[k] / 2.0) ** 2)
        squared *= (fk * fk + b2) ** 2 / (((f - fk) ** 2 + b2) * ((f + fk) ** 2 + b2))
    return np.sqrt(squared)


def _frame_plan(rng: np.random.Generator, voice: Voice, n_frames: int):
    """Per-frame vowel index (-1 = consonant, -2 = pause) and a smoothed formant track."""
    frame_seconds = _HOP / SAMPLE_RATE
    rate = voice.rate * rng.uniform(0.85, 1.15)
    kinds = np.empty(n_frames, dtype=np.int64)
    targets = np.empty((n_frames, 4))
    t = 0
    while t < n_frames:
        if rng.random() < 0.08:  # a pause
            length = int(rng.uniform(0.08, 0.25) / frame_seconds)
            kinds[t:t + length] = -2
            targets[t:t + length] = targets[t - 1] if t else _VOWELS[6]
            t += length
            continue
        syllable = max(4, int(rng.normal(1.0, 0.2) / rate / frame_seconds))
        consonant = int(syllable * rng.uniform(0.15, 0.35)) if rng.random() < 0.7 else 0
        vowel = int(rng.integers(len(_VOWELS)))
        kinds[t:t + consonant] = -1
        kinds[t + consonant:t + syllable] = vowel
        targets[t:t + syllable] = _VOWELS[vowel] * voice.accent[vowel]
        t += syllable
    kinds, targets = kinds[:n_frames], targets[:n_frames]
    # Coarticulation: formants glide between vowel targets over ~40 ms.
    kernel = np.hanning(11)
    kernel /= kernel.sum()
    padded = np.pad(targets, ((5, 5), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(4)], axis=1)
    return kinds, smooth * voice.vtl_scale


def synthesize(voice: Voice, session_rng_seed: int, utterance_seed: int, seconds: float) -> np.ndarray:
    """One utterance as float32 samples at 16 kHz."""
    session = np.random.default_rng(session_rng_seed)
    rng = np.random.default_rng(utterance_seed)
    n = int(seconds * SAMPLE_RATE)
    n_frames = n // _HOP + 1
    kinds, formants = _frame_plan(rng, voice, n_frames)
    voiced = kinds >= 0
    sounding = kinds != -2

    # Pitch: speaker mean, session shift, declination, slow wander, per-frame jitter.
    session_shift = session.normal(0.0, 0.8)
    semitones = (
        session_shift
        - np.linspace(0.0, rng.uniform(1.0, 3.0), n_frames)
        + voice.f0_range * _smooth_noise(rng, n_frames, 25)
        + 0.15 * rng.standard_normal(n_frames)
    )
    f0_frames = voice.f0 * 2.0 ** (semitones / 12.0)
    f0 = np.interp(np.arange(n) / _HOP, np.arange(n_frames), f0_frames)
    phase = np.cumsum(f0 / SAMPLE_RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    excitation = pulses * np.sqrt(f0 / 100.0)  # constant harmonic power across pitches
    noise = rng.standard_normal(n) * 0.15
    voiced_samples = np.repeat(voiced, _HOP)[:n]
    source = np.where(voiced_samples, excitation + voice.breathiness * noise, noise)

    spectrum = _stft(source)  # [bins, frames]
    freqs = np.fft.rfftfreq(_N_FFT, 1.0 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(freqs, 50.0) / 100.0)
    tract = _resonance_gain(freqs, formants, _BANDWIDTHS * voice.bandwidth_scale).T  # [bins, frames]
    source_tilt = 10.0 ** (voice.tilt * np.maximum(octaves, 0.0) / 20.0)
    # Fricative-like consonants: noise shaped by a high band instead of the vocal tract.
    fricative_band = 1.0 / (1.0 + np.exp(-(freqs - rng.uniform(2500, 5000)) / 400.0))
    envelope = np.where(voiced[None, :], tract * source_tilt[:, None].astype(np.float32),
                        (fricative_band[:, None] * 0.5 * sounding[None, :]).astype(np.float32))
    # Session channel: a smooth random equaliser (+-5 dB) and a low-pass at the channel's bandwidth.
    eq_db = sum(session.uniform(-2.5, 2.5) * np.cos(np.pi * k * np.log2(np.maximum(freqs, 50.0) / 50.0) / 7.3
                                                 + session.uniform(0, 2 * np.pi)) for k in range(1, 3))
    lowpass = 1.0 / (1.0 + (freqs / session.uniform(3500.0, 7800.0)) ** 8)
    channel = (10.0 ** (eq_db / 20.0) * lowpass).astype(np.float32)
    speech = _istft(spectrum * (envelope * channel[:, None]), n)

    # Background noise of the session, at an SNR drawn per utterance around the session's level.
    snr_db = session.uniform(8.0, 30.0) + rng.normal(0.0, 2.0)
    background = rng.standard_normal(n)
    background = np.convolve(background, [1.0, session.uniform(-0.9, 0.9)], mode="same")
    speech_power = np.mean(speech[np.repeat(sounding, _HOP)[:n]] ** 2) + 1e-12
    background *= np.sqrt(speech_power / (np.mean(background ** 2) * 10.0 ** (snr_db / 10.0)))
    audio = speech + background
    audio *= 10.0 ** (rng.uniform(-26.0, -16.0) / 20.0) / (np.sqrt(np.mean(audio ** 2)) + 1e-12)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _stft(x: np.ndarray) -> np.ndarray:
    window = np.hanning(_N_FFT + 1)[:-1]
    padded = np.pad(x, (_N_FFT // 2, _N_FFT // 2 + _HOP))
    n_frames = len(x) // _HOP + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP][:n_frames]
    return np.fft.rfft(frames * window, axis=1).T


def _istft(spectrum: np.ndarray, n: int) -> np.ndarray:
    """Weighted overlap-add inverse of _stft (hop = n_fft / 4)."""
    window = np.hanning(_N_FFT + 1)[:-1]
    frames = np.fft.irfft(spectrum.T, n=_N_FFT, axis=1) * window
    n_frames, parts = frames.shape[0], _N_FFT // _HOP
    out = np.zeros((n_frames + parts - 1, _HOP))
    norm = np.zeros_like(out)
    for j in range(parts):
        out[j:j + n_frames] += frames[:, j * _HOP:(j + 1) * _HOP]
        norm[j:j + n_frames] += window[j * _HOP:(j + 1) * _HOP] ** 2
    return (out.ravel() / np.maximum(norm.ravel(), 1e-8))[_N_FFT // 2:_N_FFT // 2 + n]


def _speaker_id(index: int) -> str:
    return f"syn{index:05d}"


def _write_speaker(args) -> list[str]:
    root, spec, index = args
    rng = np.random.default_rng([spec.seed, index])
    voice = draw_voice(rng)
    speaker = _speaker_id(index)
    written = []
    for s in range(spec.sessions):
        session_seed = int(rng.integers(2**62))
        folder = Path(root) / speaker / f"s{s:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for u in range(spec.utterances_per_session):
            seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
            audio = synthesize(voice, session_seed, int(rng.integers(2**62)), seconds)
            rel = f"{speaker}/s{s:02d}/{u:05d}.wav"
            sf.write(str(Path(root) / rel), audio, SAMPLE_RATE, subtype="PCM_16")
            written.append(rel)
    return written


# A folder speakerid generated carries this marker: its spec's fingerprint and whether generation finished.
# Only such a folder (or an empty one) is ever written into, so a data.dir that names a real corpus is not
# overwritten.
MARKER = ".speakerid-synthetic.json"
_LEGACY_MARKER = "corpus.json"  # the marker before MARKER: written last, so present only when complete
_LISTS = ("train_list.txt", "trials.txt")
_OWN_NAMES = {MARKER, _LEGACY_MARKER, *_LISTS, "wav"}
# Temporary files of an atomic write (speakerid.io) that a kill left behind.
_OWN_TEMP = re.compile(r"\.(" + "|".join(re.escape(n) for n in sorted(_OWN_NAMES - {"wav"})) + r")\..+\.tmp")
# Folders other speakerid generators put inside a corpus folder (scripts/benchmark.py: noise/), by marker.
_GENERATED_SUBFOLDER_MARKERS = ("noise_corpus.json",)
_SPEAKER_FOLDER = re.compile(r"syn\d{5}")


class ForeignFolderError(FileExistsError):
    """The folder chosen for a synthetic corpus holds files that speakerid did not generate."""


def _is_own_entry(root: Path, name: str) -> bool:
    return (name in _OWN_NAMES or _OWN_TEMP.fullmatch(name) is not None
            or any((root / name / m).is_file() for m in _GENERATED_SUBFOLDER_MARKERS))


def _generation_record(root: Path) -> dict | None:
    """What the marker of a generated folder says ({'fingerprint', 'complete', ...}), or None without one."""
    if (root / MARKER).is_file():
        try:
            record = json.loads((root / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        return record if isinstance(record, dict) else {"complete": False}  # ours, but unreadable: regenerate
    try:
        record = json.loads((root / _LEGACY_MARKER).read_text(encoding="utf-8"))
        fingerprint = CorpusSpec(**record["spec"]).fingerprint()
    except (OSError, ValueError, TypeError, KeyError):
        return None
    # Recognised only when its fingerprint is the one its own spec gives, as ensure_corpus wrote it.
    return {**record, "complete": True} if record.get("fingerprint") == fingerprint else None


def _claim(root: Path) -> dict | None:
    """The generation record of root, None when root is empty or does not exist; ForeignFolderError when
    root holds anything speakerid did not generate."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; the synthetic corpus is generated into a folder")
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if not names:
        return None
    record = _generation_record(root)
    foreign = names if record is None else [n for n in names if not _is_own_entry(root, n)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ForeignFolderError(
            f"data.dir={root} holds files that speakerid did not generate ({shown}): the synthetic data config "
            f"(data=synthetic, debug=tiny: data.generate is set) generates a corpus there and would overwrite them. "
            f"Point data.dir at an empty folder or one speakerid generated, or train on the corpus that is there "
            f"with data=folder (with debug=tiny, also data.generate=null)")
    return record


def _write_record(root: Path, spec: CorpusSpec, complete: bool) -> None:
    write_json_atomic(root / MARKER, {"generator": "speakerid.data.synthetic", "fingerprint": spec.fingerprint(),
                                      "spec": asdict(spec), "complete": complete})


def ensure_corpus(root: str | os.PathLike, spec: CorpusSpec = CorpusSpec(), workers: int | None = None) -> dict:
    """Generate the corpus under root unless a complete one with the same spec is there already.

    Returns {'root', 'train_list', 'trials'}. Only an empty (or missing) folder or one speakerid generated
    is written into; any other raises ForeignFolderError before anything is written. The marker is
    rewritten as incomplete before the first file and as complete after the last, so an interrupted
    generation is redone rather than used half-written, whatever was there before.
    """
    root = Path(root)
    paths = {"root": str(root / "wav"), "train_list": str(root / _LISTS[0]), "trials": str(root / _LISTS[1])}
    record = _claim(root)
    if (record is not None and record.get("complete") is True and record.get("fingerprint") == spec.fingerprint()
            and all((root / name).is_file() for name in _LISTS)):
        if not (root / MARKER).is_file():  # a corpus generated before MARKER: recognised, now marked
            _write_record(root, spec, complete=True)
            (root / _LEGACY_MARKER).unlink()
        return paths
    root.mkdir(parents=True, exist_ok=True)
    _write_record(root, spec, complete=False)
    (root / _LEGACY_MARKER).unlink(missing_ok=True)
    wav_root = root / "wav"
    if wav_root.is_dir():  # the speakers of an earlier spec, which the new lists would not name
        for folder in wav_root.iterdir():
            if folder.is_dir() and _SPEAKER_FOLDER.fullmatch(folder.name):
                shutil.rmtree(folder)
    wav_root.mkdir(exist_ok=True)
    total = spec.train_speakers + spec.test_speakers
    jobs = [(wav_root, spec, i) for i in range(total)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            per_speaker = list(pool.map(_write_speaker, jobs, chunksize=4))
    else:
        per_speaker = [_write_speaker(job) for job in jobs]

    train_lines = [f"{_speaker_id(i)} {rel}" for i in range(spec.train_speakers) for rel in per_speaker[i]]
    test_utterances = {_speaker_id(i): per_speaker[i] for i in range(spec.train_speakers, total)}
    trials = make_trials(test_utterances, np.random.default_rng([spec.seed, 10**6]))
    write_text_atomic(root / _LISTS[0], "\n".join(train_lines) + "\n")
    write_trial_list(trials, root / _LISTS[1])
    _write_record(root, spec, complete=True)
    return paths
