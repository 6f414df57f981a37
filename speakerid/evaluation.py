"""Speaker-verification evaluation: embeddings once per file, batched by similar length; cosine or
multi-crop scores, optional AS-norm; EER/minDCF. One code path for validation during training
(`Trainer.validate`) and for `scripts/evaluate.py`, configured by the `eval` config group (a `Protocol`).

Batching and fidelity. A padded batch would change every full-utterance embedding (the fbank mean, the SE
gates and the attentive pooling all average over time), so a batch holds utterances of nearly equal length
and all are cut to the shortest among them. `max_trim` bounds the cut (a fraction of each utterance);
within that, the batched embedding equals the one-at-a-time embedding of the cut utterance. How far the cut
moves an embedding depends on the model: README.md gives the measured numbers, and
`scripts/device_eval_check.py` measures them for any checkpoint. max_trim=0 batches only equal lengths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from speakerid.config import ConfigError
from speakerid.data.audio import AudioError, audio_info, read_full, wrap_pad
from speakerid.data.lists import (
    ListFormatError,
    Trial,
    check_files_exist,
    has_labels,
    read_train_list,
    read_trials,
    trial_files,
)
from speakerid.distributed import DistEnv, all_gather_objects
from speakerid.features import samples_for_frames
from speakerid.io import atomic_write, write_json_atomic, write_text_atomic
from speakerid.metrics import verification_metrics
from speakerid.scoring import Cohort, Embeddings, as_norm, merge_embeddings, raw_scores, speaker_means

log = logging.getLogger("speakerid")

__all__ = [
    "ASNormOptions", "EmbeddingExtractor", "Evaluation", "EvaluationResult", "ExtractionOptions", "Protocol",
    "extract_embeddings", "load_embeddings", "plan_batches", "save_embeddings", "trial_files", "write_scores",
]


class EmbeddingExtractor(nn.Module):
    """Waveform [batch, samples] at the model's sample rate -> embedding [batch, emb_dim] (not normalised)."""

    def __init__(self, fbank: nn.Module, model: nn.Module):
        super().__init__()
        self.fbank = fbank
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.model(self.fbank(waveform))


# ------------------------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class ExtractionOptions:
    mode: str = "full"              # full, or multicrop (TaoRuijie: full utterance + num_crops crops)
    num_crops: int = 5
    crop_frames: int = 300          # 300 frames = 3 s (TaoRuijie: 300 * 160 + 240 samples)
    batch_size: int = 64            # utterances per batch
    max_batch_seconds: float = 640.0  # audio per batch, so that long files do not exhaust memory
    max_trim: float = 0.0025        # at most this fraction of an utterance is cut to batch it with others
    precision: str = "fp32"         # fp32, or bf16 autocast (CUDA)

    def cache_fields(self) -> dict[str, Any]:
        """What changes an embedding, hence the embedding cache's key (batch sizes do not)."""
        fields = {"mode": self.mode, "max_trim": self.max_trim, "precision": self.precision}
        if self.mode == "multicrop":
            fields.update(num_crops=self.num_crops, crop_frames=self.crop_frames)
        return fields


@dataclass(frozen=True)
class ASNormOptions:
    enabled: bool = False
    top_k: int = 300
    cohort_list: str | None = None  # train list `speaker path`; the cohort is one mean embedding per speaker
    cohort_root: str | None = None
    utterances_per_speaker: int | None = None  # evenly spaced subset per speaker; None = all


@dataclass(frozen=True)
class Protocol:
    """A trial list and how to score it (one file of configs/eval/)."""

    name: str
    trials: str
    root: str
    strip_prefix: str | None = None
    embedding: ExtractionOptions = field(default_factory=ExtractionOptions)
    asnorm: ASNormOptions = field(default_factory=ASNormOptions)

    @property
    def scoring(self) -> str:
        """Short name of the scoring, used in reports and output file names: cosine, multicrop5_asnorm300..."""
        e = self.embedding
        name = "cosine" if e.mode == "full" else f"multicrop{e.num_crops}"
        return f"{name}_asnorm{self.asnorm.top_k}" if self.asnorm.enabled else name

    @classmethod
    def from_config(cls, node: Any, key: str = "eval") -> Protocol:
        """From the `eval` config node (a DictConfig or dict), with errors that name the key."""
        d = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
        emb = dict(d.get("embedding") or {})
        asn = dict(d.get("asnorm") or {})
        unknown = (set(d) - {"name", "trials", "root", "strip_prefix", "embedding", "asnorm", "dir"}) | \
            {f"embedding.{k}" for k in set(emb) - set(ExtractionOptions.__dataclass_fields__)} | \
            {f"asnorm.{k}" for k in set(asn) - set(ASNormOptions.__dataclass_fields__)}
        if unknown:
            raise ConfigError(f"unknown {key} keys: {', '.join(f'{key}.{k}' for k in sorted(unknown))}")

        def require(ok: bool, name: str, allowed: str, value) -> None:
            if not ok:
                raise ConfigError(f"{key}.{name}={value!r} is not allowed: {allowed}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("name", "trials", "root"):
            require(isinstance(d.get(name), str) and d[name] != "", name, "a non-empty string", d.get(name))
        options = ExtractionOptions(**emb)
        require(options.mode in ("full", "multicrop"), "embedding.mode", "full or multicrop", options.mode)
        require(is_int(options.num_crops) and options.num_crops >= 1, "embedding.num_crops", "an integer >= 1",
                options.num_crops)
        require(is_int(options.crop_frames) and options.crop_frames >= 10, "embedding.crop_frames",
                "an integer >= 10 (frames of 10 ms)", options.crop_frames)
        require(is_int(options.batch_size) and options.batch_size >= 1, "embedding.batch_size", "an integer >= 1",
                options.batch_size)
        require(isinstance(options.max_batch_seconds, (int, float)) and options.max_batch_seconds > 0,
                "embedding.max_batch_seconds", "a number of seconds > 0", options.max_batch_seconds)
        require(isinstance(options.max_trim, (int, float)) and 0 <= options.max_trim < 0.5, "embedding.max_trim",
                "a fraction in [0, 0.5) (0 = batch only equal lengths)", options.max_trim)
        require(options.precision in ("fp32", "bf16"), "embedding.precision", "fp32 or bf16", options.precision)
        norm = ASNormOptions(**asn)
        if norm.enabled:
            require(is_int(norm.top_k) and norm.top_k >= 2, "asnorm.top_k", "an integer >= 2", norm.top_k)
            for name in ("cohort_list", "cohort_root"):
                value = getattr(norm, name)
                require(isinstance(value, str) and value != "", f"asnorm.{name}", "a path (AS-norm is enabled)", value)
            require(norm.utterances_per_speaker is None or (is_int(norm.utterances_per_speaker)
                                                            and norm.utterances_per_speaker >= 1),
                    "asnorm.utterances_per_speaker", "null (all) or an integer >= 1", norm.utterances_per_speaker)
        return cls(name=d["name"], trials=d["trials"], root=d["root"], strip_prefix=d.get("strip_prefix") or None,
                   embedding=options, asnorm=norm)


# ------------------------------------------------------------------------------------------- batching
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
                             f"(set data.resample=true to resample on the fly)")
        return frames if rate == sample_rate else math.ceil(frames * sample_rate / rate)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return np.fromiter(pool.map(length, paths), dtype=np.int64, count=len(paths))


@torch.no_grad()
def extract_embeddings(
    extractor: nn.Module,
    root: str | os.PathLike,
    paths: list[str],
    device: torch.device | str = "cpu",
    options: ExtractionOptions = ExtractionOptions(),
    sample_rate: int = 16000,
    resample: bool = False,
    progress: bool = False,
    readers: int | None = None,
) -> Embeddings:
    """L2-normalised embeddings of each unique file, keyed by its path relative to root: the full utterance
    and, in multicrop mode, `num_crops` crops of `crop_frames`. Files are read by `readers` threads, two
    batches ahead of the model: by default 4 on a GPU, and none on a CPU, whose cores the model's own
    threads already occupy (files are then read in this thread, between batches)."""
    root = Path(root)
    device = torch.device(device)
    if readers is None:
        readers = 4 if device.type == "cuda" else 0
    keys = list(dict.fromkeys(paths))
    if not keys:
        raise ValueError("no files to embed")
    lengths = _lengths(root, keys, sample_rate, resample)
    batches = plan_batches(lengths, options.batch_size, int(options.max_batch_seconds * sample_rate),
                           options.max_trim)
    crop_len = samples_for_frames(options.crop_frames)
    crops_per_forward = max(1, int(options.max_batch_seconds * sample_rate) // crop_len)
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
        return read_full(root / keys[i], sample_rate, resample)

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
                    windows = np.concatenate([evenly_spaced_crops(w, crop_len, options.num_crops) for w in waves])
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
    return Embeddings(keys, full, crops)


# ------------------------------------------------------------------------------------------- storage
def save_embeddings(path: str | os.PathLike, embeddings: Embeddings, meta: dict[str, Any] | None = None,
                    extra: dict[str, np.ndarray] | None = None) -> None:
    """An .npz with `keys` (utterance paths), `full` [n, dim], `crops` [n, num_crops, dim] when present,
    `meta` (JSON) and any `extra` arrays, readable with numpy alone (np.load(path) without pickle).
    Written atomically."""
    arrays = {**(extra or {}), "keys": np.array(embeddings.keys, dtype=str), "full": embeddings.full,
              "meta": np.array(json.dumps(meta or {}, sort_keys=True))}
    if embeddings.crops is not None:
        arrays["crops"] = embeddings.crops
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def load_embeddings(path: str | os.PathLike) -> tuple[Embeddings, dict[str, Any]]:
    embeddings, meta, _ = _load_embedding_file(path)
    return embeddings, meta


def _load_embedding_file(path: str | os.PathLike) -> tuple[Embeddings, dict[str, Any], dict[str, np.ndarray]]:
    """(embeddings, meta, the other arrays of the file)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            embeddings = Embeddings([str(k) for k in data["keys"]], data["full"],
                                    data["crops"] if "crops" in data.files else None)
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
            extra = {k: data[k] for k in data.files if k not in ("keys", "full", "crops", "meta")}
    except FileNotFoundError:
        raise FileNotFoundError(f"embedding file {path} does not exist") from None
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{path}: not an embedding file written by speakerid ({e})") from None
    return embeddings, meta, extra


def file_stamps(root: str | os.PathLike, paths: list[str]) -> np.ndarray:
    """[n, 2] int64: (size in bytes, modification time in ns) of each file under root."""
    stamps = np.empty((len(paths), 2), dtype=np.int64)
    for i, p in enumerate(paths):
        st = os.stat(Path(root) / p)
        stamps[i] = (st.st_size, st.st_mtime_ns)
    return stamps


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings of one model under one data root and extraction protocol, in one .npz; files already
    there are not extracted again, new ones are added. `model_id` names the model (the checkpoint's
    SHA-256): a cache of another model under the same name is replaced, never mixed in. Each entry keeps
    its file's size and modification time: a file changed since it was embedded is embedded again."""

    def __init__(self, folder: str | os.PathLike, model_id: str, root: str | os.PathLike, options: ExtractionOptions,
                 sample_rate: int, resample: bool):
        self.root = Path(root)
        self.meta = {"model": model_id, "root": str(self.root.resolve()), "sample_rate": sample_rate,
                     "resample": bool(resample), **options.cache_fields()}
        key = {k: v for k, v in self.meta.items() if k != "model"}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / f"{self.root.name}-{options.mode}-{digest}.npz"

    def _load(self) -> tuple[Embeddings, np.ndarray] | None:
        if not self.path.is_file():
            return None
        cached, meta, extra = _load_embedding_file(self.path)
        if meta != self.meta or extra.get("stamps", np.empty((0, 2))).shape != (len(cached), 2):
            log.info("embedding cache %s belongs to another model or protocol: replacing it", self.path)
            return None
        return cached, extra["stamps"]

    def get(self, paths: list[str], extract) -> tuple[Embeddings, int]:
        """(embeddings of `paths`, how many were extracted now); extract(missing_paths) -> Embeddings."""
        unique = list(dict.fromkeys(paths))
        now = dict(zip(unique, map(tuple, file_stamps(self.root, unique).tolist())))
        loaded = self._load()
        if loaded is None:
            cached, stamps = Embeddings([], np.empty((0, 0), np.float32)), {}
        else:
            cached, stamp_rows = loaded
            stamps = dict(zip(cached.keys, map(tuple, stamp_rows.tolist())))
            changed = [k for k in cached.keys if k in now and now[k] != stamps[k]]
            if changed:
                log.info("embedding cache %s: %d files changed since they were embedded (%s%s); embedding "
                         "them again", self.path, len(changed), changed[0], ", ..." if len(changed) > 1 else "")
                kept = [k for k in cached.keys if k not in set(changed)]
                cached, stamps = cached.select(kept), {k: stamps[k] for k in kept}
        missing = [p for p in unique if p not in stamps]
        if missing:
            new = extract(missing)
            if len(cached):
                new = Embeddings(cached.keys + new.keys, np.concatenate([cached.full, new.full]),
                                 None if new.crops is None else np.concatenate([cached.crops, new.crops]))
            stamps.update({p: now[p] for p in missing})
            cached = new
            save_embeddings(self.path, cached, self.meta,
                            {"stamps": np.array([stamps[k] for k in cached.keys], dtype=np.int64)})
        return cached.select(unique), len(missing)


# ------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationResult:
    protocol: Protocol
    trials: list[Trial]
    scores: np.ndarray                 # final scores (AS-normed when enabled)
    labels: np.ndarray | None          # None for a list without labels
    metrics: dict[str, float] | None   # eer, min_dcf_p0.01, min_dcf_p0.05 and their thresholds
    n_files: int
    n_extracted: int                   # files embedded by this run (the others came from the cache)
    extraction_seconds: float
    cohort: Cohort | None = None

    def report(self) -> dict[str, Any]:
        """The JSON written beside a score file."""
        p = self.protocol
        return {
            "name": p.name, "trials": str(p.trials), "root": str(p.root), "scoring": p.scoring,
            "embedding": asdict(p.embedding),
            "asnorm": {**asdict(p.asnorm), "cohort_speakers": len(self.cohort.speakers)}
            if self.cohort is not None else None,
            "n_trials": len(self.trials), "n_files": self.n_files, "labelled": self.labels is not None,
            **(self.metrics or {}),
            "n_extracted": self.n_extracted, "extraction_seconds": self.extraction_seconds,
            "utterances_per_s": self.n_extracted / self.extraction_seconds if self.n_extracted else None,
        }


class Evaluation:
    """A protocol made ready: lists parsed and every named file checked to exist (so that mistakes stop a
    run before any audio is read); run() extracts, scores and measures."""

    def __init__(self, protocol: Protocol, check_files: bool = True, require_labels: bool = False):
        self.protocol = protocol
        self.trials = read_trials(protocol.trials, protocol.strip_prefix)
        if require_labels and not has_labels(self.trials):
            raise ListFormatError(f"{protocol.trials}: the trial list has no labels (`enrol test` lines), so EER "
                                  f"cannot be measured; validation needs `label enrol test`")
        self.files = trial_files(self.trials)
        self.cohort_paths: list[str] = []
        self.cohort_speakers: list[str] = []
        if protocol.asnorm.enabled:
            norm = protocol.asnorm
            train = read_train_list(norm.cohort_list, norm.cohort_root)
            by_speaker: dict[str, list[str]] = {}
            for speaker, path in zip(train.speakers, train.paths):
                by_speaker.setdefault(speaker, []).append(path)
            for speaker in train.speaker_ids:
                paths = by_speaker[speaker]
                n = norm.utterances_per_speaker
                if n is not None and n < len(paths):
                    paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, num=n).round()]
                self.cohort_paths += paths
                self.cohort_speakers += [speaker] * len(paths)
            if norm.top_k > len(train.speaker_ids):
                log.warning("AS-norm top_k=%d but the cohort %s has %d speakers: all of them are used (s-norm)",
                            norm.top_k, norm.cohort_list, len(train.speaker_ids))
        if check_files:
            self.check_files()

    def check_files(self) -> None:
        """Stop with the list of missing files when a trial or cohort file does not exist."""
        p = self.protocol
        check_files_exist(p.root, self.files, what=f"trial list {p.trials}", show=10)
        if self.cohort_paths:
            check_files_exist(p.asnorm.cohort_root, self.cohort_paths, what=f"AS-norm cohort list "
                              f"{p.asnorm.cohort_list}", show=10)

    def run(self, extractor: nn.Module, device: torch.device | str = "cpu", sample_rate: int = 16000,
            resample: bool = False, cache_dir: str | os.PathLike | None = None, model_id: str | None = None,
            progress: bool = False, dist: DistEnv = DistEnv()) -> EvaluationResult:
        """With several processes (torchrun) each embeds its share of the files and all of them get every
        embedding, so every rank computes the same scores and metrics."""
        protocol = self.protocol
        options = protocol.embedding
        extracted = 0

        def embeddings_of(root: str, paths: list[str], opts: ExtractionOptions) -> Embeddings:
            nonlocal extracted

            def extract(missing: list[str]) -> Embeddings:
                if not dist.enabled:
                    return extract_embeddings(extractor, root, missing, device, opts, sample_rate, resample,
                                              progress)
                mine = missing[dist.rank::dist.world_size]
                part = (extract_embeddings(extractor, root, mine, device, opts, sample_rate, resample, progress)
                        if mine else None)
                return merge_embeddings([p for p in all_gather_objects(part, dist) if p is not None]).select(missing)

            if cache_dir is None:
                extracted += len(paths)
                return extract(paths)
            cache = EmbeddingCache(cache_dir, model_id or "unnamed", root, opts, sample_rate, resample)
            embeddings, new = cache.get(paths, extract)
            extracted += new
            return embeddings

        start = time.perf_counter()
        embeddings = embeddings_of(protocol.root, self.files, options)
        cohort = None
        if protocol.asnorm.enabled:
            full_only = ExtractionOptions(**{**asdict(options), "mode": "full"})
            cohort_embeddings = embeddings_of(protocol.asnorm.cohort_root, self.cohort_paths, full_only)
            cohort = speaker_means(cohort_embeddings, self.cohort_speakers)
        seconds = time.perf_counter() - start

        scores = raw_scores(embeddings, self.trials, options.mode)
        if cohort is not None:
            scores = as_norm(scores, embeddings, self.trials, cohort, protocol.asnorm.top_k, options.mode)
        labels = metrics = None
        if has_labels(self.trials):
            labels = np.fromiter((t.label for t in self.trials), dtype=np.int64, count=len(self.trials))
            metrics = verification_metrics(scores, labels, with_thresholds=True)
        return EvaluationResult(protocol, self.trials, scores, labels, metrics, len(self.files), extracted, seconds,
                                cohort)


# ------------------------------------------------------------------------------------------- outputs
def write_scores(path: str | os.PathLike, trials: list[Trial], scores: np.ndarray) -> None:
    """Score file `enrol test score label` (`enrol test score` for a list without labels), written atomically."""
    lines = [f"{t.enrol} {t.test} {s:.6f}" + ("" if t.label is None else f" {t.label}") for t, s in zip(trials, scores)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    write_json_atomic(path, record)
