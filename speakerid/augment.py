"""Waveform augmentation done in batch on the training device: additive noise by MUSAN category,
reverberation with room impulse responses, and speed perturbation.

The anchors (TaoRuijie/ECAPA-TDNN, voxceleb_trainer) read one to eight MUSAN files and convolve a RIR with
scipy for every utterance inside the loader workers, which starves fast GPUs. Here the noise and RIR files
are read once into memory-resident banks (tensors that move to the training device with the module);
for every batch the draws are a few random tensors, the noise segments are slices of the bank, and
reverberation is one batched FFT convolution. The same code runs on the CPU.

Definitions (what the tests check):
- SNR is 10*log10(P_speech / P_noise), both powers the mean square over the crop. The speech power is
  that of the signal the noise is added to (after reverberation when a choice does both).
- With a power floor f (TaoRuijie's 1e-4; default 0), the SNR that sets the noise's gain is
  10*log10((P_speech + f) / (P_noise + f)), P_noise measured at the file's own level: quiet noise comes out
  softer than drawn (by 3 dB at a mean square of f), as in TaoRuijie's dataLoader.add_noise.
- A category with several files per utterance (speech babble) either scales each segment to an SNR of its
  own and sums them (snr_per_file, as TaoRuijie and voxceleb_trainer: n talkers at 13-20 dB each make
  babble about 10*log10(n) dB louder), or sums the segments at unit power and scales the sum to one drawn
  SNR. Choices with two categories (TV = babble + music) add each at its own drawn SNR.
- Reverberation: RIR normalised to unit energy (divided by sqrt(sum(rir**2))), full convolution with
  the crop, truncated to the crop length (no alignment to the direct path), as TaoRuijie and WeSpeaker do.
- Randomness comes from torch's default generator of the training device, which checkpoints save and
  restore, so a resumed run draws the same augmentation.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

from speakerid.config import (
    BANK_DTYPES,
    check_choice_weights,
    check_one_of,
    check_power_floor,
    check_speed_factors,
)
from speakerid.data.audio import AudioError, mono_info, read_full

log = logging.getLogger("speakerid")

AUDIO_SUFFIXES = (".wav", ".flac")
REVERB = "reverb"


class AugmentConfigError(ValueError):
    """The augment config, or the noise / RIR folders it names, cannot be used; the message says why."""


class BankTooLargeError(AugmentConfigError):
    """The noise and RIR banks would take more memory than augment.max_bank_mb allows."""


# --------------------------------------------------------------------------------------------- files
def list_audio_files(folder: str | os.PathLike) -> list[Path]:
    """All .wav / .flac files under folder, recursively, sorted (so draws do not depend on the file system).
    Linked folders are followed (a subset linked into place is common), each real folder once, so a link
    loop ends; names starting with '.' (macOS `._x.wav` stubs, which are not audio) are skipped."""
    found, walked = [], set()
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            dirs.clear()
            continue
        walked.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(dirpath) / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_SUFFIXES]
    return sorted(p for p in found if p.is_file())


def musan_categories(musan_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """MUSAN as distributed: `<musan_dir>/<category>/<subset>/*.wav` (category noise, speech, music).
    Returns {category: files}; a category folder without audio files is left out."""
    musan_dir = Path(musan_dir)
    if not musan_dir.is_dir():
        raise AugmentConfigError(f"augment.musan_dir={musan_dir} is not a directory")
    found = {}
    for sub in sorted(p for p in musan_dir.iterdir() if p.is_dir()):
        files = list_audio_files(sub)
        if files:
            found[sub.name] = files
    if not found:
        raise AugmentConfigError(f"augment.musan_dir={musan_dir} has no category folders with .wav/.flac files "
                                 f"(expected <musan_dir>/{{noise,speech,music}}/<subset>/*.wav)")
    return found


def rir_files(rir_dir: str | os.PathLike) -> list[Path]:
    """RIR files under rir_dir, recursively. Given RIRS_NOISES as distributed (which also holds point-source
    noises), only its simulated_rirs folder is used, as in TaoRuijie's recipe."""
    rir_dir = Path(rir_dir)
    if not rir_dir.is_dir():
        raise AugmentConfigError(f"augment.rir_dir={rir_dir} is not a directory")
    if (rir_dir / "simulated_rirs").is_dir():
        rir_dir = rir_dir / "simulated_rirs"
    files = list_audio_files(rir_dir)
    if not files:
        raise AugmentConfigError(f"augment.rir_dir: no .wav/.flac files under {rir_dir}")
    return files


def _bank_file(read, path: Path, *args):
    """read(path, *args), with a file that cannot be used reported as a problem of the augment folders."""
    try:
        return read(path, *args)
    except AudioError as e:
        raise AugmentConfigError(str(e)) from None


def _read_all(paths: Sequence[Path], sample_rate: int, max_samples: int | None) -> list[np.ndarray]:
    """Each file as float32 at sample_rate (resampled as needed), at most max_samples long."""
    with ThreadPoolExecutor(max_workers=8) as pool:  # libsndfile decodes outside the GIL
        return list(pool.map(lambda p: _bank_file(read_full, p, sample_rate, True, max_samples), paths))


# --------------------------------------------------------------------------------------------- banks
def _bank_samples(paths: Sequence[Path], sample_rate: int, max_samples: int | None, min_samples: int,
                  longest: bool = False) -> int:
    """Samples the files will take in a bank (their total, or the longest), from their headers only."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        infos = list(pool.map(lambda p: _bank_file(mono_info, p), paths))
    sizes = []
    for frames, rate in infos:
        n = math.ceil(frames * sample_rate / rate)
        if max_samples is not None:
            n = min(n, max_samples)
        sizes.append(max(n, min_samples))
    return max(sizes) if longest else sum(sizes)


class NoiseBank(nn.Module):
    """The clips of one noise category, concatenated into one 1-D tensor. Clips shorter than the crop are
    repeated cyclically up to it (TaoRuijie's wrap padding), so every segment is a contiguous slice and a
    batch of segments is one indexing of a sliding-window view: no per-utterance work, no index tensors
    of crop size."""

    def __init__(self, clips: Sequence[np.ndarray], crop_samples: int, dtype: torch.dtype = torch.int16):
        super().__init__()
        pieces, lengths, gains = [], [], []
        for clip in clips:
            clip = np.asarray(clip, dtype=np.float32)
            if len(clip) < crop_samples:
                clip = np.pad(clip, (0, crop_samples - len(clip)), mode="wrap")
            gain = 1.0
            if dtype == torch.int16:
                # Peak-normalised before quantising, so quiet recordings keep their resolution (every
                # segment is rescaled to its SNR anyway; `gains` keeps the file's own level).
                peak = float(np.abs(clip).max())
                if peak > 0:
                    clip, gain = np.round(clip / peak * 32767.0).astype(np.int16), peak / 32767.0
                else:
                    clip = clip.astype(np.int16)
            pieces.append(torch.from_numpy(np.ascontiguousarray(clip)).to(dtype))
            lengths.append(len(clip))
            gains.append(gain)
        self.crop_samples = crop_samples
        self.register_buffer("data", torch.cat(pieces), persistent=False)
        self.register_buffer("gains", torch.tensor(gains, dtype=torch.float32), persistent=False)
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        self.register_buffer("lengths", lengths_t, persistent=False)
        self.register_buffer("starts", torch.cumsum(lengths_t, 0) - lengths_t, persistent=False)

    @property
    def num_files(self) -> int:
        return len(self.lengths)

    def draw_starts(self, files: torch.Tensor) -> torch.Tensor:
        """Absolute bank positions of one random crop-long segment inside each of `files`."""
        span = (self.lengths[files] - self.crop_samples + 1).to(torch.float64)
        offset = (torch.rand(files.shape, device=files.device, dtype=torch.float64) * span).long()
        return self.starts[files] + offset

    def segments(self, starts: torch.Tensor) -> torch.Tensor:
        """float32 [*starts.shape, crop] slices of the bank beginning at `starts` (at the bank's level)."""
        return self.data.unfold(0, self.crop_samples, 1)[starts].float()

    def file_gains(self, starts: torch.Tensor) -> torch.Tensor:
        """The factor that brings the segment at each of `starts` back to its file's own level."""
        return self.gains[torch.searchsorted(self.starts, starts.contiguous(), right=True) - 1]


def fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT libraries are fastest at such sizes."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def fft_convolve(signals: torch.Tensor, kernels: torch.Tensor, length: int) -> torch.Tensor:
    """First `length` samples of the full linear convolution of each row of signals [B, L] with the row of
    kernels [B, R], by FFT (float32 in, float32 out)."""
    n = fft_size(signals.shape[-1] + kernels.shape[-1] - 1)
    spectrum = torch.fft.rfft(signals.float(), n=n) * torch.fft.rfft(kernels.float(), n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :length]


# --------------------------------------------------------------------------------------------- noise + reverb
@dataclass(frozen=True)
class NoiseCategory:
    snr_db: tuple[float, float]   # SNR drawn uniformly in [lo, hi] dB
    files: tuple[int, int]        # number of files summed, drawn uniformly in [lo, hi]
    snr_per_file: bool = False    # each file at its own SNR (True), or their sum at one SNR (False)


@dataclass
class AugmentPlan:
    """The random draws for one batch; `NoiseReverb.apply` is a deterministic function of (waves, plan)."""

    choice: torch.Tensor                                              # [B] index into NoiseReverb.choice_names
    uses: torch.Tensor                                                # [B, components] bool
    starts: dict[str, torch.Tensor] = field(default_factory=dict)     # category -> [B, max files] bank positions
    counts: dict[str, torch.Tensor] = field(default_factory=dict)     # category -> [B] files summed
    snr_db: dict[str, torch.Tensor] = field(default_factory=dict)     # category -> [B, max files]; column 0
                                                                      # only, unless snr_per_file
    rir: torch.Tensor | None = None                                   # [B] index into the RIR bank


class NoiseReverb(nn.Module):
    """Per utterance, one choice drawn with probability weight / sum(weights); a choice applies a list of
    components: "reverb" and/or noise categories (e.g. tv = [speech, music]). Reverberation comes first,
    then the noises are added. waves [B, crop] float -> [B, crop] float32."""

    def __init__(
        self,
        choices: Mapping[str, tuple[float, Sequence[str]]],
        categories: Mapping[str, NoiseCategory],
        banks: Mapping[str, NoiseBank],
        rirs: torch.Tensor | None,
        crop_samples: int,
        power_floor: float = 0.0,
    ):
        super().__init__()
        self.crop_samples = crop_samples
        self.categories = dict(categories)
        self.power_floor = check_power_floor(
            power_floor, {c: (cat.files[1], cat.snr_per_file) for c, cat in self.categories.items()})
        self.banks = nn.ModuleDict(banks)
        self.components = [REVERB] + list(self.categories)
        for name, (weight, apply) in choices.items():
            for component in apply:
                if component not in self.components:
                    raise AugmentConfigError(f"augment.choices.{name}.apply: unknown component {component!r} "
                                             f"(known: {', '.join(self.components)})")
                if component == REVERB and rirs is None:
                    raise AugmentConfigError(f"augment.choices.{name} applies reverb but there is no RIR bank")
                if component != REVERB and component not in banks:
                    raise AugmentConfigError(f"augment.choices.{name} applies {component!r} but there is no "
                                             f"bank of that category")
        self.choice_names = list(choices)
        check_choice_weights({name: weight for name, (weight, _) in choices.items()})
        weights = torch.tensor([float(w) for w, _ in choices.values()], dtype=torch.float64)
        table = torch.tensor([[c in apply for c in self.components] for _, apply in choices.values()])
        probabilities = weights / weights.sum()
        self.register_buffer("probabilities", probabilities.float(), persistent=False)
        self.register_buffer("cumulative", torch.cumsum(probabilities, 0).float(), persistent=False)
        self.register_buffer("choice_table", table, persistent=False)
        # u at or past the rounded total maps to the last choice that can be drawn, never a zero weight.
        self.last_choice = int(torch.nonzero(weights > 0).max())
        self.register_buffer("rirs", rirs, persistent=False)
        self.max_files = {c: min(cat.files[1], banks[c].num_files) for c, cat in self.categories.items()}

    def extra_repr(self) -> str:
        probs = ", ".join(f"{n} {p:.3f}" for n, p in zip(self.choice_names, self.probabilities.tolist()))
        sizes = ", ".join(f"{c} {b.num_files} files" for c, b in self.banks.items())
        rirs = 0 if self.rirs is None else len(self.rirs)
        floor = f"; power floor {self.power_floor:g}" if self.power_floor else ""
        return f"choices: {probs}; banks: {sizes}, {rirs} RIRs{floor}"

    def draw(self, batch: int) -> AugmentPlan:
        device = self.probabilities.device
        # Inverse-CDF draw (a zero weight is an empty interval): no host sync on a GPU.
        u = torch.rand(batch, device=device)
        choice = torch.searchsorted(self.cumulative, u, right=True).clamp_(max=self.last_choice)
        plan = AugmentPlan(choice=choice, uses=self.choice_table[choice])
        for name, category in self.categories.items():
            bank = self.banks[name]
            low, high = min(category.files[0], self.max_files[name]), self.max_files[name]
            # Distinct files within an utterance (several babble speakers are different people).
            files = torch.rand(batch, bank.num_files, device=device).argsort(dim=1)[:, :high]
            plan.starts[name] = bank.draw_starts(files)
            plan.counts[name] = torch.randint(low, high + 1, (batch,), device=device)
            lo, hi = category.snr_db
            plan.snr_db[name] = lo + (hi - lo) * torch.rand(batch, high, device=device)
        if self.rirs is not None:
            plan.rir = torch.randint(0, len(self.rirs), (batch,), device=device)
        return plan

    def noise(self, category: str, plan: AugmentPlan, speech_power: torch.Tensor) -> torch.Tensor:
        """The noise of `category` for every utterance, scaled to its drawn SNR against speech_power [B, 1]."""
        bank = self.banks[category]
        starts, counts, snr_db = plan.starts[category], plan.counts[category], plan.snr_db[category]
        floor = self.power_floor
        # With a floor each file is scaled on its own (check_power_floor: one file, or snr_per_file).
        per_file = self.categories[category].snr_per_file or floor > 0
        mix = None
        for k in range(starts.shape[1]):  # at most files[1] (8 for babble) vectorised steps
            segment = bank.segments(starts[:, k])
            if floor:
                segment = segment * bank.file_gains(starts[:, k]).unsqueeze(1)
            power = segment.square().mean(dim=1, keepdim=True) + floor
            segment = segment * torch.rsqrt(power.clamp_min(1e-20))
            if per_file:
                segment = segment * torch.pow(10.0, -snr_db[:, k:k + 1] / 20.0)
            segment = segment * (k < counts).unsqueeze(1)
            mix = segment if mix is None else mix + segment
        if per_file:
            return mix * torch.sqrt(speech_power + floor)
        noise_power = mix.square().mean(dim=1, keepdim=True)
        target_power = speech_power * torch.pow(10.0, -snr_db[:, :1] / 10.0)
        return mix * torch.sqrt(target_power / noise_power.clamp_min(1e-20))

    def apply(self, waves: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
        if waves.dim() != 2 or waves.shape[1] != self.crop_samples:
            raise ValueError(f"NoiseReverb expects waves [batch, {self.crop_samples}], got {tuple(waves.shape)}")
        x = waves.float()
        # Every utterance is computed and the result picked by mask: static shapes and no host sync,
        # which matters more on a GPU than the few wasted FLOPs.
        if plan.rir is not None:
            reverberant = fft_convolve(x, self.rirs[plan.rir], self.crop_samples)
            x = torch.where(plan.uses[:, :1], reverberant, x)
        speech_power = x.square().mean(dim=1, keepdim=True)
        out = x
        for i, name in enumerate(self.categories, start=1):
            out = out + self.noise(name, plan, speech_power) * plan.uses[:, i:i + 1]
        return out

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.apply(waves, self.draw(waves.shape[0]))


def load_rir_bank(paths: Sequence[Path], sample_rate: int, max_seconds: float | None) -> torch.Tensor:
    """[N, R] float32: each RIR cut to max_seconds, normalised to unit energy, zero-padded to the longest."""
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))
    clips = _read_all(paths, sample_rate, max_samples)
    length = max(len(c) for c in clips)
    bank = torch.zeros(len(clips), length)
    for i, (path, clip) in enumerate(zip(paths, clips)):
        energy = float(np.sqrt(np.sum(clip.astype(np.float64) ** 2)))
        if energy == 0:
            raise AugmentConfigError(f"{path}: the impulse response is all zeros")
        bank[i, :len(clip)] = torch.from_numpy(clip / energy)
    return bank


def build_noise_reverb(
    choices: Mapping[str, tuple[float, Sequence[str]]],
    categories: Mapping[str, NoiseCategory],
    musan_dir: str | os.PathLike | None,
    rir_dir: str | os.PathLike | None,
    crop_samples: int,
    sample_rate: int = 16000,
    max_file_seconds: float | None = None,
    rir_max_seconds: float | None = None,
    bank_dtype: str = "int16",
    max_bank_mb: float = 4096,
    power_floor: float = 0.0,
) -> NoiseReverb | None:
    """Scan the folders, drop what is not there (with one warning), check the size cap, then read every
    file once. Returns None when no choice applies anything."""
    needed = {c for _, apply in choices.values() for c in apply}
    noise_needed = needed - {REVERB}
    unknown = noise_needed - set(categories)
    if unknown:
        raise AugmentConfigError(f"augment.choices apply {sorted(unknown)}, which augment.noise does not define "
                                 f"(defined: {sorted(categories)})")
    found: dict[str, list[Path]] = {}
    if noise_needed:
        if musan_dir is None:
            raise AugmentConfigError(f"augment.musan_dir is not set but augment.choices add {sorted(noise_needed)}")
        found = musan_categories(musan_dir)
    rirs: list[Path] = []
    if REVERB in needed:
        if rir_dir is None:
            raise AugmentConfigError("augment.rir_dir is not set but augment.choices apply reverb")
        rirs = rir_files(rir_dir)

    missing = sorted(noise_needed - set(found))
    choices = dict(choices)
    if missing:
        kept = {}
        for name, (weight, apply) in choices.items():
            left = [c for c in apply if c not in missing]
            if apply and not left:
                continue  # nothing of this choice can be done: drop it rather than turn it into "none"
            kept[name] = (weight, left)
        total = sum(w for w, _ in kept.values())
        summary = ", ".join(f"{n} {'+'.join(a) or 'clean'} {w / total:.3f}" for n, (w, a) in kept.items())
        log.warning("augment: %s has no %s folder; skipping that category. Choices now: %s",
                    musan_dir, "/".join(missing), summary)
        choices = kept
    if not any(apply for _, apply in choices.values()):
        return None

    used = sorted({c for _, apply in choices.values() for c in apply} - {REVERB})
    check_one_of(bank_dtype, BANK_DTYPES, "augment.bank_dtype")
    dtype = {"int16": torch.int16, "float32": torch.float32}[bank_dtype]
    max_samples = None if max_file_seconds is None else int(round(max_file_seconds * sample_rate))
    rir_max = None if rir_max_seconds is None else int(round(rir_max_seconds * sample_rate))
    noise_samples = {c: _bank_samples(found[c], sample_rate, max_samples, crop_samples) for c in used}
    rir_longest = _bank_samples(rirs, sample_rate, rir_max, 0, longest=True) if rirs else 0
    mb = (sum(noise_samples.values()) * dtype.itemsize + len(rirs) * rir_longest * 4) / 2**20
    if mb > max_bank_mb:
        hours = sum(noise_samples.values()) / sample_rate / 3600
        raise BankTooLargeError(
            f"the augmentation banks would take {mb:.0f} MB ({hours:.1f} h of noise in "
            f"{sum(len(found[c]) for c in used)} files, {len(rirs)} RIRs) > augment.max_bank_mb={max_bank_mb}; "
            f"raise the cap, cut files with augment.max_file_seconds, or point augment.musan_dir at a subset")

    for c in used:
        if len(found[c]) < categories[c].files[1]:
            log.warning("augment: %s has %d files but augment.categories.%s.files asks for up to %d per "
                        "utterance; using at most %d", Path(musan_dir) / c, len(found[c]), c,
                        categories[c].files[1], len(found[c]))
    banks = {c: NoiseBank(_read_all(found[c], sample_rate, max_samples), crop_samples, dtype) for c in used}
    rir_bank = load_rir_bank(rirs, sample_rate, rir_max_seconds) if rirs else None
    module = NoiseReverb(choices, {c: categories[c] for c in used}, banks, rir_bank, crop_samples, power_floor)
    log.info("augment: %.0f MB of banks in memory; %s", mb, module.extra_repr())
    return module


# --------------------------------------------------------------------------------------------- speed
def _speed_rate(factor: float, sample_rate: int) -> int:
    # Playing `factor` times faster = treating the samples as recorded at sample_rate * factor, rounded to
    # whole Hz: the factor applied is this rate / sample_rate.
    return int(round(sample_rate * factor))


def _speed_resampler(factor: float, sample_rate: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(_speed_rate(factor, sample_rate), sample_rate)


def change_speed(waveform: torch.Tensor, factor: float, sample_rate: int = 16000) -> torch.Tensor:
    """The whole waveform [..., n] played `factor` times faster (duration / factor, pitch x factor, as
    sox `speed`); length about n / factor."""
    if factor == 1.0:
        return waveform
    return _speed_resampler(factor, sample_rate).to(waveform.device)(waveform)


class SpeedPerturb(nn.Module):
    """Speed perturbation of a batch of crops (WeSpeaker: 0.9 / 1.0 / 1.1, one factor per utterance).

    The loader reads `read_samples` per utterance (crop_samples * max factor), and every utterance leaves
    as `crop_samples` samples, so the model always sees the same crop length. With speakers_as_new, the speed-changed
    copies of a speaker are classes of their own: label + num_speakers * (position of the factor, 1.0
    first), so the head needs num_speakers * len(factors) classes.
    """

    def __init__(self, factors: Sequence[float], crop_samples: int, num_speakers: int,
                 speakers_as_new: bool = False, sample_rate: int = 16000):
        super().__init__()
        check_speed_factors(list(factors))
        factors = [float(f) for f in factors]
        # 1.0 first, so the original speakers keep their class indices.
        self.factors = sorted(factors, key=lambda f: (f != 1.0, f))
        self.crop_samples = crop_samples
        self.num_speakers = num_speakers
        self.speakers_as_new = speakers_as_new
        # The input each factor needs for crop_samples out, at the rounded rate it is resampled from (at 22.05 kHz,
        # 0.95 is 20948 / 22050, and a crop of 48240 needs 45829 samples where crop * 0.95 gives 45828).
        self.source_samples = [math.ceil(crop_samples * _speed_rate(f, sample_rate) / sample_rate)
                               for f in self.factors]
        self.read_samples = max(self.source_samples)
        self.resamplers = nn.ModuleList(_speed_resampler(f, sample_rate) if f != 1.0 else nn.Identity()
                                        for f in self.factors)

    @property
    def num_classes(self) -> int:
        return self.num_speakers * (len(self.factors) if self.speakers_as_new else 1)

    def perturb(self, waves: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """waves [B, read_samples] -> [B, crop_samples]; utterance b changed by factors[choice[b]]."""
        out = None
        for i, (needed, resample) in enumerate(zip(self.source_samples, self.resamplers)):
            changed = resample(waves[:, :needed])[:, :self.crop_samples]
            out = changed if out is None else torch.where((choice == i).unsqueeze(1), changed, out)
        return out

    def forward(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if waves.dim() != 2 or waves.shape[1] != self.read_samples:
            raise ValueError(f"SpeedPerturb expects waves [batch, {self.read_samples}], got {tuple(waves.shape)}")
        choice = torch.randint(0, len(self.factors), (waves.shape[0],), device=waves.device)
        waves = self.perturb(waves.float(), choice)
        if self.speakers_as_new:
            labels = labels + self.num_speakers * choice
        return waves, labels
