"""Reading audio with soundfile, for training crops, evaluation and the augmentation banks alike: only the
requested crop is read from disk, so a 10-minute file costs no more than a 2 s one."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF


class AudioError(RuntimeError):
    """An audio file cannot be used: unreadable, empty, multi-channel or at the wrong sample rate."""


TRAINING_RATE_ADVICE = "set data.resample=true to resample on the fly"


@dataclass(frozen=True)
class AudioHeader:
    frames: int
    sample_rate: int
    channels: int
    format: str     # libsndfile's container name: WAV, FLAC, AIFF, ...
    subtype: str    # and codec: PCM_16, GSM610, ...
    seekable: bool


def read_header(path: str | os.PathLike) -> AudioHeader:
    """The header of an audio file; soundfile's own errors (LibsndfileError, RuntimeError or TypeError by
    version) pass through. Opening a SoundFile costs about half of sf.info, which also gathers the text it
    prints (measured on 3000 files: 66 vs 126 us for a 4 s WAV, 92 vs 152 us for a FLAC)."""
    with sf.SoundFile(str(path)) as f:
        return AudioHeader(f.frames, f.samplerate, f.channels, f.format, f.subtype, f.seekable())


def audio_header(path: str | os.PathLike) -> AudioHeader:
    """read_header, with errors that name the file."""
    try:
        return read_header(path)
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from None


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, sample_rate, channels) of an audio file, with errors that name it."""
    header = audio_header(path)
    return header.frames, header.sample_rate, header.channels


def mono_info(path: str | os.PathLike) -> tuple[int, int]:
    """(frames, sample_rate) of a non-empty mono audio file, from its header, with errors that name it."""
    frames, rate, channels = audio_info(path)
    _check(path, frames, rate, channels, rate, resample=False)
    return frames, rate


def length_at(path: str | os.PathLike, sample_rate: int, resample: bool = False, rate_name: str = "data.sample_rate",
              rate_advice: str = TRAINING_RATE_ADVICE, *, crops: bool = False) -> int:
    """Length in samples at `sample_rate` of a non-empty mono file (its resampled length when it has another
    rate and `resample` is on), from its header, with errors that name it. `rate_name` and `rate_advice` say,
    in the error for a file at another rate, whose rate it should have and how the caller's user fixes it.
    `crops`: the file is read by read_crop (training), which seeks; evaluation reads whole files."""
    header = audio_header(path)
    _check(path, header.frames, header.sample_rate, header.channels, sample_rate, resample, rate_name, rate_advice)
    if crops:
        _check_crops(path, header)
    return resampled_length(header.frames, header.sample_rate, sample_rate)


def resampled_length(frames: int, rate: int, sample_rate: int) -> int:
    """Samples of `frames` samples at `rate` once resampled to `sample_rate` (torchaudio's length)."""
    return frames if rate == sample_rate else math.ceil(frames * sample_rate / rate)


# libsndfile's frame count when the header does not say (a FLAC encoded to a pipe): seeking then fails.
UNKNOWN_LENGTH = 2**62

# The largest product of the reduced rates (source / gcd x target / gcd) resampled on the fly. torchaudio's
# sinc filter has about that many coefficients, built in float64: measured for one 6 s read (one thread),
# ~16 bytes and ~50 ns per coefficient, so 44100 -> 16000 (441 x 160) takes 11 ms and 15 MB, 11025 (441 x 640,
# the largest of the usual rates) 15 ms, but 11127 (coprime: 11127 x 16000) 8.5 s and 2.9 GB, 15999 15 s and
# 4.2 GB, on every read of every loader worker. Rates coprime with 16000 give products of 100M and more; the
# bound still takes the NTSC-pulled rates 47952 (2997 x 1000) and 44056 (5507 x 2000: a 42 MB filter, built
# once per process in 1-2 s, then 80 ms per 2 s crop).
MAX_RESAMPLE_PRODUCT = 16_000_000

CONVERSION_ADVICE = ("e.g. ffmpeg -i IN -ar {rate} -c:a flac OUT.flac; a folder of them: speakerid prepare --root DIR "
                     "--source-ext .wav --convert-to NEW_DIR --sample-rate {rate} --out LIST")


def resample_product(source_rate: int, target_rate: int) -> int:
    """source_rate x target_rate, each divided by their gcd: about the size of torchaudio's resampling filter."""
    gcd = math.gcd(source_rate, target_rate)
    return (source_rate // gcd) * (target_rate // gcd)


def unresamplable(source_rate: int, target_rate: int) -> str | None:
    """Why a file at source_rate cannot be resampled to target_rate on the fly, or None when it can."""
    product = resample_product(source_rate, target_rate)
    if product <= MAX_RESAMPLE_PRODUCT:
        return None
    gcd = math.gcd(source_rate, target_rate)
    return (f"{source_rate} Hz cannot be resampled to {target_rate} Hz on the fly: the ratio reduces to "
            f"{source_rate // gcd}:{target_rate // gcd}, whose filter would take about {product * 16 / 1e9:.1f} GB "
            f"and {product * 50e-9:.0f} s on every read; convert the file to {target_rate} Hz first ("
            + CONVERSION_ADVICE.format(rate=target_rate) + ")")


def cannot_crop(header: AudioHeader) -> str | None:
    """Why training crops cannot be read from a file (its codec cannot seek), or None when they can.
    libsndfile cannot seek in GSM 6.10, G.721/G.723 or NMS ADPCM, and says so (seekable() false); DWVW it
    calls seekable but seeks only back to the start."""
    if header.seekable and not header.subtype.startswith("DWVW"):
        return None
    codec = sf.available_subtypes().get(header.subtype, header.subtype)
    return (f"its codec ({header.format} {codec}) cannot seek, so training crops cannot be read from it; convert "
            f"it to PCM WAV or FLAC (" + CONVERSION_ADVICE.format(rate=header.sample_rate) + ")")


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
    if sample_rate != expected_rate and (why := unresamplable(sample_rate, expected_rate)):
        raise AudioError(f"{path}: sample rate {why}")


def _check_crops(path, header: AudioHeader) -> None:
    if why := cannot_crop(header):
        raise AudioError(f"{path}: {why}")


# Subtypes whose samples libsndfile reads into an integer array without scaling them from [-1, 1].
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def wrap_pad(samples: np.ndarray, length: int) -> np.ndarray:
    """Repeat a short signal cyclically up to `length` samples (TaoRuijie's 'wrap' padding)."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)), mode="wrap")


@functools.lru_cache(maxsize=8)
def _resampler(source_rate: int, target_rate: int) -> torchaudio.transforms.Resample:
    # Built once per process and rate pair (AF.resample builds its filter on every call: 15 ms of the 16 ms
    # of resampling a crop from 11025 Hz); computed in float32 as AF.resample computes it for float32 samples,
    # so the samples are the same.
    return torchaudio.transforms.Resample(source_rate, target_rate, dtype=torch.float32)


def resample_audio(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """float32 samples at source_rate -> target_rate (torchaudio's windowed-sinc resampling), as every file
    at another rate is read. Files at a rate that `unresamplable` refuses are stopped at their header; an
    array at such a rate (given to the model directly) is resampled with a filter built for it alone, not
    kept."""
    waveform = torch.from_numpy(samples)
    if resample_product(source_rate, target_rate) > MAX_RESAMPLE_PRODUCT:
        return AF.resample(waveform, source_rate, target_rate).numpy()
    return _resampler(source_rate, target_rate)(waveform).numpy()


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
            header = AudioHeader(frames, rate, channels, f.format, f.subtype, f.seekable())
            _check_crops(path, header)  # a crop seeks
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
            # The frame count, not -1 (to the end): soundfile refuses -1 for a codec that cannot seek (GSM 6.10).
            frames = f.frames if max_samples is None else min(f.frames, math.ceil(max_samples * rate / sample_rate))
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
