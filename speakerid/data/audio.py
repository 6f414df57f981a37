"""Reading audio with soundfile, for training crops, evaluation and the augmentation banks alike: only the
requested crop is read from disk, so a 10-minute file costs no more than a 2 s one."""

from __future__ import annotations

import math
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class AudioError(RuntimeError):
    """An audio file cannot be used: unreadable, empty, multi-channel or at the wrong sample rate."""


TRAINING_RATE_ADVICE = "set data.resample=true to resample on the fly"


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, sample_rate, channels) of an audio file, with errors that name it."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or TypeError by version
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    return info.frames, info.samplerate, info.channels


def mono_info(path: str | os.PathLike) -> tuple[int, int]:
    """(frames, sample_rate) of a non-empty mono audio file, from its header, with errors that name it."""
    frames, rate, channels = audio_info(path)
    _check(path, frames, rate, channels, rate, resample=False)
    return frames, rate


def length_at(path: str | os.PathLike, sample_rate: int, resample: bool = False, rate_name: str = "data.sample_rate",
              rate_advice: str = TRAINING_RATE_ADVICE) -> int:
    """Length in samples at `sample_rate` of a non-empty mono file (its resampled length when it has another
    rate and `resample` is on), from its header, with errors that name it. `rate_name` and `rate_advice` say,
    in the error for a file at another rate, whose rate it should have and how the caller's user fixes it."""
    frames, rate, channels = audio_info(path)
    _check(path, frames, rate, channels, sample_rate, resample, rate_name, rate_advice)
    return resampled_length(frames, rate, sample_rate)


def resampled_length(frames: int, rate: int, sample_rate: int) -> int:
    """Samples of `frames` samples at `rate` once resampled to `sample_rate` (torchaudio's length)."""
    return frames if rate == sample_rate else math.ceil(frames * sample_rate / rate)


# libsndfile's frame count when the header does not say (a FLAC encoded to a pipe): seeking then fails.
UNKNOWN_LENGTH = 2**62


def _check(path, frames: int, sample_rate: int, channels: int, expected_rate: int, resample: bool,
           rate_name: str = "data.sample_rate", rate_advice: str = TRAINING_RATE_ADVICE) -> None:
    if frames <= 0:
        raise AudioError(f"{path}: audio file is empty (0 samples)")
    if frames >= UNKNOWN_LENGTH:
        raise AudioError(f"{path}: the header does not give the number of samples (encoded to a pipe?), so crops "
                         f"cannot be found by seeking; re-encode the file (e.g. ffmpeg -i in.flac out.flac)")
    if channels != 1:
        raise AudioError(f"{path}: expected mono audio, got {channels} channels")
    if sample_rate != expected_rate and not resample:
        raise AudioError(f"{path}: sample rate is {sample_rate} Hz but {rate_name} is {expected_rate} Hz ({rate_advice})")


# Subtypes whose samples libsndfile reads into an integer array without scaling them from [-1, 1].
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def wrap_pad(samples: np.ndarray, length: int) -> np.ndarray:
    """Repeat a short signal cyclically up to `length` samples (TaoRuijie's 'wrap' padding)."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)), mode="wrap")


def resample_audio(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """float32 samples at source_rate -> target_rate (torchaudio's windowed-sinc resampling), as every file
    at another rate is read."""
    return AF.resample(torch.from_numpy(samples), source_rate, target_rate).numpy()


def read_crop(
    path: str | os.PathLike,
    crop_samples: int,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    resample: bool = False,
    dtype: str = "float32",
) -> np.ndarray:
    """A random crop of `crop_samples` samples (at `sample_rate`) of a mono file, read by seeking; files
    shorter than the crop are wrap-padded. `dtype` int16 halves the bytes moved out of loader workers (a float
    file is read as float32 and then converted, scaled down to a peak of 1 where it exceeds it). NaN or infinite samples are an AudioError naming the file."""
    try:
        with sf.SoundFile(str(path)) as f:
            frames, rate, channels = f.frames, f.samplerate, f.channels
            _check(path, frames, rate, channels, sample_rate, resample)
            # Crop length in the file's own rate, so that resampling yields crop_samples.
            source_len = crop_samples if rate == sample_rate else int(np.ceil(crop_samples * rate / sample_rate))
            start = int(rng.integers(0, frames - source_len + 1)) if frames > source_len else 0
            if start:
                f.seek(start)
            # libsndfile scales integer PCM to int16, but hands float files' values over unscaled (0.3 -> 0).
            direct = dtype == "int16" and rate == sample_rate and f.subtype not in FLOAT_SUBTYPES
            samples = f.read(min(source_len, frames), dtype="int16" if direct else "float32", always_2d=False)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    if len(samples) == 0:
        raise AudioError(f"{path}: no samples could be read (truncated file?)")
    if samples.dtype != np.int16 and not np.isfinite(samples).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if rate != sample_rate:
        samples = resample_audio(samples, rate, sample_rate)
    if dtype == "int16" and samples.dtype != np.int16:
        # A float file may exceed [-1, 1]: scaled down rather than clipped, its crop keeps its waveform (a
        # level the mean-normalised features do not see, nor the SNR of the noise added to it).
        peak = float(np.abs(samples).max())
        if peak > 1.0:
            samples = samples / peak
        samples = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
    return wrap_pad(samples, crop_samples)


def read_full(path: str | os.PathLike, sample_rate: int = 16000, resample: bool = False,
              max_samples: int | None = None) -> np.ndarray:
    """The whole file as float32 in [-1, 1] at sample_rate (full-utterance evaluation, noise and RIR banks),
    or its first max_samples samples, reading only those from disk."""
    try:
        with sf.SoundFile(str(path)) as f:
            _check(path, f.frames, f.samplerate, f.channels, sample_rate, resample)
            rate = f.samplerate
            frames = -1 if max_samples is None else min(f.frames, math.ceil(max_samples * rate / sample_rate))
            samples = f.read(frames, dtype="float32", always_2d=False)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    if len(samples) == 0:
        raise AudioError(f"{path}: no samples could be read (truncated file?)")
    if not np.isfinite(samples).all():  # one NaN would turn an embedding, or every crop it is mixed into, to NaN
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if rate != sample_rate:
        samples = resample_audio(samples, rate, sample_rate)
    return samples if max_samples is None else samples[:max_samples]


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """int16 or float waveforms -> float32 in [-1, 1]."""
    if batch.dtype == torch.int16:
        return batch.float() / 32768.0
    return batch.float()
