"""Embeddings of audio files: the extractor (fbank + model), batches of nearly equal length, TaoRuijie's
multi-crop windows, and `extract_embeddings`, which reads the files and runs the model.

Batching and fidelity. A padded batch would change every full-utterance embedding (the fbank mean, the SE
gates and the attentive pooling all average over time), so a batch holds utterances of nearly equal length
and all are cut to the shortest among them. `max_trim` bounds the cut (a fraction of each utterance);
within that, the batched embedding equals the one-at-a-time embedding of the cut utterance. How far the cut
moves an embedding depends on the model: README.md gives the measured numbers, and
`scripts/device_eval_check.py` measures them for any checkpoint. max_trim=0 batches only equal lengths.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speakerid.data.audio import AudioError, audio_info, read_full, wrap_pad
from speakerid.evaluation.protocol import ExtractionOptions
from speakerid.features import Fbank, samples_for_frames
from speakerid.scoring import Embeddings


class EmbeddingExtractor(nn.Module):
    """Waveform [batch, samples] at the model's sample rate -> embedding [batch, emb_dim] (not normalised)."""

    def __init__(self, fbank: Fbank, model: nn.Module):
        super().__init__()
        self.fbank = fbank
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.model(self.fbank(waveform))

    def samples_for_frames(self, frames: int) -> int:
        """Waveform length that gives `frames` frames with this extractor's fbank hop and window (as
        training's crops, which follow features.fbank)."""
        return samples_for_frames(frames, self.fbank.hop_length, self.fbank.win_length)


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


def evenly_spaced_crops(waveform: np.ndarray, length: int, count: int) -> np.ndarray:
    """TaoRuijie's test crops: `count` windows of `length` samples at evenly spaced starts (truncated to
    integers) from the first to the last possible one; a shorter file is first wrap-padded to `length`."""
    waveform = wrap_pad(waveform, length) if len(waveform) < length else waveform
    starts = np.linspace(0, len(waveform) - length, num=count)
    return np.stack([waveform[int(s):int(s) + length] for s in starts])


def _lengths(root: Path, paths: list[str], sample_rate: int, resample: bool) -> np.ndarray:
    def length(rel: str) -> int:
        frames, rate, channels = audio_info(root / rel)
        if frames <= 0:
            raise AudioError(f"{root / rel}: audio file is empty (0 samples)")
        if rate != sample_rate and not resample:
            raise AudioError(f"{root / rel}: sample rate is {rate} Hz but the model's is {sample_rate} Hz "
                             f"(resample the file to {sample_rate} Hz; evaluate can do it on the fly with "
                             f"--resample)")
        return frames if rate == sample_rate else math.ceil(frames * sample_rate / rate)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return np.fromiter(pool.map(length, paths), dtype=np.int64, count=len(paths))


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
    readers: int | None = None,
    waveforms: dict[str, np.ndarray] | None = None,
) -> Embeddings:
    """L2-normalised embeddings of each unique file, keyed by its path relative to root: the full utterance
    and, in multicrop mode, `num_crops` crops of `crop_frames`. Files are read by `readers` threads, two
    batches ahead of the model: by default 4 on a GPU, and none on a CPU, whose cores the model's own
    threads already occupy (files are then read in this thread, between batches). A file whose embedding
    is not finite (NaN samples, say) is an AudioError that names it. `waveforms` (1-D float32 at
    sample_rate, one per key of `paths`) stand in for the files: audio held in memory is batched the same."""
    root = Path(root)
    device = torch.device(device)
    if readers is None:
        readers = 4 if device.type == "cuda" else 0
    keys = list(dict.fromkeys(paths))
    if not keys:
        raise ValueError("no files to embed")
    lengths = (_lengths(root, keys, sample_rate, resample) if waveforms is None
               else np.array([len(waveforms[k]) for k in keys], dtype=np.int64))
    batches = plan_batches(lengths, options.batch_size, int(options.max_batch_seconds * sample_rate),
                           options.max_trim)
    crop_samples = extractor.samples_for_frames(options.crop_frames)
    crops_per_forward = max(1, int(options.max_batch_seconds * sample_rate) // crop_samples)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.precision == "bf16")

    def embed(waves: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(waves).to(device, non_blocking=True)
        with autocast:
            e = extractor(x)
        return F.normalize(e.float(), dim=1).cpu().numpy()

    full: np.ndarray | None = None
    crops: np.ndarray | None = None
    was_training = extractor.training
    extractor.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(keys), desc="embeddings", unit="utt", dynamic_ncols=True, disable=None)

    def read(i: int) -> np.ndarray:
        return read_full(root / keys[i], sample_rate, resample) if waveforms is None else waveforms[keys[i]]

    try:
        with ThreadPoolExecutor(max_workers=max(readers, 1)) as pool:
            load = (lambda batch: pool.map(read, batch)) if readers else (lambda batch: batch)
            pending: deque = deque(load(batch) for batch in batches[:2])
            for b, batch in enumerate(batches):
                loaded = pending.popleft()
                waves = list(loaded) if readers else [read(i) for i in loaded]
                if b + 2 < len(batches):
                    pending.append(load(batches[b + 2]))
                shortest = min(len(w) for w in waves)
                out = embed(np.stack([w[:shortest] for w in waves]))
                if full is None:
                    full = np.empty((len(keys), out.shape[1]), dtype=np.float32)
                full[batch] = out
                if options.mode == "multicrop":
                    windows = np.concatenate([evenly_spaced_crops(w, crop_samples, options.num_crops) for w in waves])
                    out = np.concatenate([embed(windows[i:i + crops_per_forward])
                                          for i in range(0, len(windows), crops_per_forward)])
                    if crops is None:
                        crops = np.empty((len(keys), options.num_crops, out.shape[1]), dtype=np.float32)
                    crops[batch] = out.reshape(len(batch), options.num_crops, -1)
                if bar is not None:
                    bar.update(len(batch))
    finally:
        extractor.train(was_training)
        if bar is not None:
            bar.close()
    finite = np.isfinite(full).all(axis=1)
    if crops is not None:
        finite &= np.isfinite(crops).all(axis=(1, 2))
    if not finite.all():  # raised here, so that no caller caches or scores a NaN embedding
        bad = [str(root / keys[i]) for i in np.flatnonzero(~finite)]
        raise AudioError(f"non-finite embedding (NaN or infinite samples in the file?) for {len(bad)} of "
                         f"{len(keys)} files: {', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}")
    return Embeddings(keys, full, crops)
