"""Embeddings on disk: the .npz format (readable with numpy alone), file fingerprints, and the cache that
keeps the embeddings of one model so that files already embedded are not embedded again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from speakerid.evaluation.protocol import ExtractionOptions
from speakerid.io import atomic_write
from speakerid.scoring import Embeddings

log = logging.getLogger("speakerid")


def save_embeddings(path: str | os.PathLike, embeddings: Embeddings, meta: dict[str, Any] | None = None,
                    extra: dict[str, np.ndarray] | None = None, overwrite: bool = True) -> None:
    """An .npz with `keys` (utterance paths), `full` [n, dim], `crops` [n, num_crops, dim] when present,
    `meta` (JSON) and any `extra` arrays, readable with numpy alone (np.load(path) without pickle).
    Written atomically; with overwrite=False an existing `path`, even one that appeared while it was written,
    is a FileExistsError (io.atomic_path)."""
    arrays = {**(extra or {}), "keys": np.array(embeddings.keys, dtype=str), "full": embeddings.full,
              "meta": np.array(json.dumps(meta or {}, sort_keys=True))}
    if embeddings.crops is not None:
        arrays["crops"] = embeddings.crops
    with atomic_write(path, "wb", overwrite=overwrite) as f:
        np.savez(f, **arrays)


def load_embeddings(path: str | os.PathLike) -> tuple[Embeddings, dict[str, Any]]:
    embeddings, meta, _ = _load_embedding_file(path)
    return embeddings, meta


def read_mean_file(path: str | os.PathLike) -> np.ndarray:
    """The mean embedding of an evaluation's `<name>.<scoring>.mean.npz` (one row, key `mean`), float64 [dim]."""
    return load_mean_file(path)[0]


def load_mean_file(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """(the mean embedding, as read_mean_file, and the file's meta): evaluate records in it `model`, the SHA-256
    of the model file or checkpoint whose embeddings were averaged, `provenance_sha256`, that of the checkpoint
    a model file was exported from (None for a checkpoint), and `mean_list`."""
    embeddings, meta = load_embeddings(path)
    if embeddings.keys != ["mean"]:
        shown = ", ".join(embeddings.keys[:3]) + (", ..." if len(embeddings) > 3 else "")
        raise ValueError(f"{path}: not a mean-embedding file (evaluate writes <name>.<scoring>.mean.npz, one row "
                         f"named mean), its rows are {shown or 'none'}")
    return embeddings.full[0].astype(np.float64), meta


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
                 sample_rate: int, resample: bool, batching: str = "cut"):
        self.root = Path(root)
        # batching (EmbeddingExtractor.batching): padded batches give other embeddings than cut ones.
        self.meta = {"model": model_id, "root": str(self.root.resolve()), "sample_rate": sample_rate,
                     "resample": bool(resample), "batching": batching, **options.cache_fields()}
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
                stale = set(changed)  # once: rebuilt per key, 145k changed files took a quarter of an hour
                kept = [k for k in cached.keys if k not in stale]
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
