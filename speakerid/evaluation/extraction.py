"""Embeddings of audio files: the extractor (fbank + model), batches of similar length, TaoRuijie's
multi-crop windows, and `extract_embeddings`, which reads the files and runs the model.

Batching and fidelity. Zero padding alone would change every full-utterance embedding (the fbank mean, the
convolutions at the utterance's end, the SE gates and the attentive pooling all see the padding). So:

- a model whose forward takes `lengths` (every encoder of speakerid.models) gets padded batches with each
  utterance's frame count, and masks the padding in every layer that looks across frames
  (speakerid.models.lengths): each
  embedding equals the one-at-a-time embedding of the whole utterance, up to float rounding. Batches are
  padded to a multiple of `PAD_MULTIPLE` samples on a GPU, so that a list's batches share a few shapes;
- any other model gets batches of nearly equal length, all cut to the shortest among them. `max_trim`
  bounds the cut (a fraction of each utterance); within that, the batched embedding equals the
  one-at-a-time embedding of the cut utterance. How far the cut moves an embedding depends on the model:
  README.md gives the measured numbers, and `scripts/device_eval_check.py` measures them for any
  checkpoint. max_trim=0 batches only equal lengths. (cut_batching() gives any extractor this batching.)
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from speakerid.data.audio import AudioError, length_at, read_full, wrap_pad
from speakerid.data.lists import map_files
from speakerid.evaluation.protocol import ExtractionOptions
from speakerid.features import Fbank, num_frames, samples_for_frames
from speakerid.resources import auto_loader_workers
from speakerid.scoring import Embeddings

log = logging.getLogger("speakerid")

class EmbeddingExtractor(nn.Module):
    """Waveform [batch, samples] at the model's sample rate -> embedding [batch, emb_dim] (not normalised).
    With `lengths` [batch] (samples of each waveform of a zero-padded batch; only when `takes_lengths`,
    i.e. the model's forward takes the frame counts), each gets the embedding it has alone."""

    def __init__(self, fbank: Fbank, model: nn.Module):
        super().__init__()
        self.fbank = fbank
        self.model = model
        self.takes_lengths = "lengths" in inspect.signature(model.forward).parameters

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            return self.model(self.fbank(waveform))
        return self.model(self.fbank(waveform, lengths), num_frames(lengths, self.fbank.hop_length))

    @property
    def batching(self) -> str:
        """How extract_embeddings batches utterances for this model: 'padded' (masked) or 'cut'."""
        return "padded" if self.takes_lengths else "cut"

    def samples_for_frames(self, frames: int) -> int:
        """Waveform length that gives `frames` frames with this extractor's fbank hop and window (as
        training's crops, which follow features.fbank)."""
        return samples_for_frames(frames, self.fbank.hop_length, self.fbank.win_length)


class _WithoutLengths(nn.Module):
    """A model behind a forward that takes no frame counts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)


def cut_batching(extractor: EmbeddingExtractor) -> EmbeddingExtractor:
    """The same extractor (the same weights), batched as a model that takes no frame counts is: cut to each
    batch's shortest member. For comparing the two batchings (scripts/benchmark.py, device_eval_check.py)."""
    return EmbeddingExtractor(extractor.fbank, _WithoutLengths(extractor.model)).train(extractor.training)


def plan_batches(lengths: np.ndarray, batch_size: int, max_batch_samples: int, max_trim: float) -> list[np.ndarray]:
    """Group utterance indices into batches of similar length, longest first. Every member of a batch is at
    least (1 - max_trim) times as long as its longest member, so cutting all to the shortest removes at most
    a fraction max_trim of any of them; a batch holds at most batch_size utterances and, after the cut, at
    most max_batch_samples samples (but always at least one utterance)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = lengths[order[start]]
        end = start + 1
        while (end < len(order) and end - start < batch_size and lengths[order[end]] >= longest * (1.0 - max_trim)
               and (end - start + 1) * lengths[order[end]] <= max_batch_samples):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


# A padded batch is at least this full: no member is shorter than MIN_FILL times the batch's longest, so
# padding adds at most 1 / MIN_FILL - 1 (11%) to a batch's work, next to nothing where lengths are dense.
MIN_FILL = 0.9
# On a GPU batches are padded to a multiple of 16 frames (0.16 s at 16 kHz): the batches of a list then
# have a few dozen shapes, and the kernels the device picks for a shape are picked once.
PAD_MULTIPLE = 16 * 160


def plan_padded_batches(lengths: np.ndarray, batch_size: int, max_batch_samples: int, pad_multiple: int = 1
                        ) -> list[tuple[np.ndarray, int]]:
    """Group utterance indices into padded batches, longest first: (indices, padded length), the padded
    length being the longest member's rounded up to a multiple of `pad_multiple`. A batch holds at most
    batch_size utterances and at most max_batch_samples padded samples (but always at least one
    utterance), none shorter than MIN_FILL times its longest member."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches: list[tuple[np.ndarray, int]] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        padded = -(-longest // pad_multiple) * pad_multiple
        end = start + 1
        while (end < len(order) and end - start < batch_size and lengths[order[end]] >= longest * MIN_FILL
               and (end - start + 1) * padded <= max_batch_samples):
            end += 1
        batches.append((order[start:end], padded))
        start = end
    return batches


# On a CPU a padded batch holds at most this much audio: past a few utterances, a batch's activations leave
# the caches and each utterance takes longer, not less. ECAPA-TDNN C=512, 64 utterances of 3 s, 1 thread:
# 4.06 s one at a time, 3.17 s in batches of 2, 3.32 s of 4, 3.80 s of 8, 4.69 s as one batch.
CPU_BATCH_SECONDS = 12.0


def plan_extraction(extractor: EmbeddingExtractor, lengths: np.ndarray, options: ExtractionOptions,
                    device: torch.device, sample_rate: int) -> tuple[list[np.ndarray], list[int] | None]:
    """extract_embeddings' batches of utterances with these lengths (samples): (indices per batch, padded
    length per batch) for a model that takes lengths, (indices per batch, None) for cut batches."""
    max_batch_samples = int(options.max_batch_seconds * sample_rate)
    if not extractor.takes_lengths:
        return plan_batches(lengths, options.batch_size, max_batch_samples, options.max_trim), None
    if torch.device(device).type == "cuda":
        plan = plan_padded_batches(lengths, options.batch_size, max_batch_samples, PAD_MULTIPLE)
    else:
        plan = plan_padded_batches(lengths, options.batch_size,
                                   min(max_batch_samples, int(CPU_BATCH_SECONDS * sample_rate)))
    return [b for b, _ in plan], [p for _, p in plan]


def evenly_spaced_crops(waveform: np.ndarray, length: int, count: int) -> np.ndarray:
    """TaoRuijie's test crops: `count` windows of `length` samples at evenly spaced starts (truncated to
    integers) from the first to the last possible one; a shorter file is first wrap-padded to `length`."""
    waveform = wrap_pad(waveform, length) if len(waveform) < length else waveform
    starts = np.linspace(0, len(waveform) - length, num=count)
    return np.stack([waveform[int(s):int(s) + length] for s in starts])


def file_lengths(root: Path, paths: list[str], sample_rate: int, resample: bool) -> np.ndarray:
    """Samples at `sample_rate` of each file, from the headers (read on threads), for planning batches."""
    advice = f"resample the file to {sample_rate} Hz; evaluate can do it on the fly with --resample"
    lengths = map_files(lambda path: length_at(path, sample_rate, resample, "the model's", advice), root, paths)
    return np.asarray(lengths, dtype=np.int64)


class _PlannedBatches(Dataset):
    """Item b: the waveforms of planned batch b stacked [batch, samples], either zero-padded to
    `padded[b]` samples with their lengths [batch], or (`padded` None) cut to the batch's shortest member
    with lengths None; the multi-crop windows [batch * num_crops, crop] or None; and the utterance indices
    of the batch's files that are digital silence (every sample zero). Everything but the
    model happens here, in the loader processes. A file that cannot be read comes back as its AudioError's
    message, which the main process raises as it is (a DataLoader would wrap it in a worker's traceback)."""

    def __init__(self, root: Path, keys: list[str], batches: list[np.ndarray], padded: list[int] | None,
                 sample_rate: int, resample: bool, crop_samples: int | None, num_crops: int,
                 waveforms: dict[str, np.ndarray] | None = None):
        self.root, self.keys, self.batches, self.padded, self.waveforms = root, keys, batches, padded, waveforms
        self.sample_rate, self.resample = sample_rate, resample
        self.crop_samples, self.num_crops = crop_samples, num_crops

    def __len__(self) -> int:
        return len(self.batches)

    def read(self, key: str) -> np.ndarray:
        if self.waveforms is not None:
            return self.waveforms[key]
        return read_full(self.root / key, self.sample_rate, self.resample)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[int]] | str:
        try:
            waves = [self.read(self.keys[i]) for i in self.batches[b]]
        except AudioError as e:
            return str(e)
        silent = [int(i) for i, w in zip(self.batches[b], waves) if not w.any()]
        if self.padded is None:
            shortest = min(len(w) for w in waves)
            full, lengths = torch.from_numpy(np.stack([w[:shortest] for w in waves])), None
        else:
            # A file may have grown or shrunk since its header was read: pad to what is there now.
            full = torch.zeros(len(waves), max(self.padded[b], *map(len, waves)))
            for row, w in zip(full, waves):
                row[:len(w)] = torch.from_numpy(w)
            lengths = torch.tensor([len(w) for w in waves])
        if self.crop_samples is None:
            return full, lengths, None, silent
        windows = np.concatenate([evenly_spaced_crops(w, self.crop_samples, self.num_crops) for w in waves])
        return full, lengths, torch.from_numpy(windows), silent


def resolve_num_workers(value: int | str, device: torch.device, batches: int) -> int:
    """eval.embedding.num_workers for a list of `batches` batches; auto: speakerid.resources'
    rule, with no worker on a CPU, where reading between batches costs little next to the model and a
    worker would take a core from the model's threads. A single batch is read in the main process: a
    worker could not overlap it with anything."""
    workers = auto_loader_workers(device, cpu_device_limit=0) if value == "auto" else int(value)
    return min(workers, batches - 1)


@torch.no_grad()
def extract_embeddings(
    extractor: EmbeddingExtractor,
    root: str | os.PathLike,
    paths: list[str],
    device: torch.device | str = "cpu",
    options: ExtractionOptions = ExtractionOptions(),
    sample_rate: int = 16000,
    resample: bool = False,
    progress: bool = False,
    readers: int | str | None = None,
    waveforms: dict[str, np.ndarray] | None = None,
) -> Embeddings:
    """L2-normalised embeddings of each unique file, keyed by its path relative to root: the full utterance
    and, in multicrop mode, `num_crops` crops of `crop_frames`. Files are read by `options.num_workers`
    loader processes (`readers`, when given, overrides it), each preparing whole planned batches ahead of
    the model (two per process); with 0 they are read in this process between batches. Processes rather
    than threads: reading, cutting and stacking a batch then holds no lock that the thread feeding the
    device needs. cuDNN's autotuning (torch.backends.cudnn.benchmark) is off meanwhile: it would tune every
    new utterance length, which never pays off over a trial list. A file whose embedding is not finite
    (NaN samples, say) is an AudioError that names it, as is a file that cannot be read; files of digital
    silence get a warning that names them (they all embed alike, so every trial between two of them scores
    1.0, whoever the speakers). `waveforms` (1-D
    float32 at sample_rate, one per key of `paths`) stand in for the files: audio held in memory is batched
    the same, in this process."""
    root = Path(root)
    device = torch.device(device)
    keys = list(dict.fromkeys(paths))
    if not keys:
        raise ValueError("no files to embed")
    lengths = (file_lengths(root, keys, sample_rate, resample) if waveforms is None
               else np.array([len(waveforms[k]) for k in keys], dtype=np.int64))
    batches, padded = plan_extraction(extractor, lengths, options, device, sample_rate)
    crop_samples = extractor.samples_for_frames(options.crop_frames)
    crops_per_forward = max(1, int(options.max_batch_seconds * sample_rate) // crop_samples)
    # Audio in memory is not copied into loader processes: it is read in this one.
    workers = 0 if waveforms is not None else resolve_num_workers(
        options.num_workers if readers is None else readers, device, len(batches))
    dataset = _PlannedBatches(root, keys, batches, padded, sample_rate, resample,
                              crop_samples if options.mode == "multicrop" else None, options.num_crops, waveforms)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.precision == "bf16")

    def embed(waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        with autocast:
            e = extractor(waves.to(device, non_blocking=True),
                          None if lengths is None else lengths.to(device, non_blocking=True))
        return F.normalize(e.float(), dim=1)

    # Embeddings stay on the device until the end: copying each batch's back would make the host wait for
    # the device after every batch instead of queueing the next one.
    full_parts: list[torch.Tensor] = []
    crop_parts: list[torch.Tensor] = []
    silent: list[int] = []
    was_training = extractor.training
    extractor.eval()
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(keys), desc="embeddings", unit="utt", dynamic_ncols=True, disable=None)
    try:
        for batch, item in zip(batches, loader):
            if isinstance(item, str):
                raise AudioError(item)
            waves, wave_lengths, windows, batch_silent = item
            silent.extend(batch_silent)
            full_parts.append(embed(waves, wave_lengths))
            if windows is not None:
                crop_parts.append(torch.cat([embed(windows[i:i + crops_per_forward])
                                             for i in range(0, len(windows), crops_per_forward)]))
            if bar is not None:
                bar.update(len(batch))
        order = np.concatenate(batches)
        full = np.empty((len(keys), full_parts[0].shape[1]), dtype=np.float32)
        full[order] = torch.cat(full_parts).cpu().numpy()
        crops = None
        if crop_parts:
            crops = np.empty((len(keys), options.num_crops, crop_parts[0].shape[1]), dtype=np.float32)
            crops[order] = torch.cat(crop_parts).cpu().numpy().reshape(len(keys), options.num_crops, -1)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        extractor.train(was_training)
        if bar is not None:
            bar.close()
    finite = np.isfinite(full).all(axis=1)
    if crops is not None:
        finite &= np.isfinite(crops).all(axis=(1, 2))
    if not finite.all():  # raised here, so that no caller caches or scores a NaN embedding
        rows = np.flatnonzero(~finite)
        bad = [str(root / keys[i]) for i in rows]
        # Files had their samples checked as they were read (read_full); audio given in memory did not.
        if waveforms is not None and not all(np.isfinite(waveforms[keys[i]]).all() for i in rows):
            cause = "NaN or infinite samples in the audio given"
        else:
            cause = ("the samples are finite, so the model computed it: a weight that is NaN or infinite, or an "
                     "overflow, on samples far outside [-1, 1] say")
        raise AudioError(f"non-finite embedding ({cause}) for {len(bad)} of {len(keys)} files: "
                         f"{', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}")
    if silent:
        named = [str(root / keys[i]) for i in sorted(silent)]
        log.warning("%d of %d files are digital silence (every sample is zero): they all get the same embedding, "
                    "so any trial between two of them scores 1.0 whoever the speakers are. Remove them from the "
                    "list (speakerid check-data lists them): %s%s", len(named), len(keys), ", ".join(named[:10]),
                    ", ..." if len(named) > 10 else "")
    return Embeddings(keys, full, crops)
