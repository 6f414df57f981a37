"""Trial scoring: cosine similarity of full-utterance embeddings, TaoRuijie's multi-crop average, and
adaptive score normalisation (AS-norm) against a cohort of training-speaker embeddings.

Every score here is bilinear in one vector per side, which keeps millions of trials cheap:
- full: score = f_e . f_t, with f the L2-normalised embedding of the whole utterance;
- multicrop (TaoRuijie/ECAPA-TDNN's eval_network): score = (f_e . f_t + mean_ij c_e,i . c_t,j) / 2 with c the
  L2-normalised embeddings of N fixed-length crops; mean_ij c_e,i . c_t,j = mean(c_e) . mean(c_t), so each
  utterance is scored through [f, mean(c)] and the score is half the dot product of those vectors.
AS-norm compares each side with the cohort through the same score function, the cohort speaker standing in
for both the full utterance and every crop (score(x, s) = (f_x . s + mean(c_x) . s) / 2 in multicrop mode).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from speakerid.data.lists import Trial

CHUNK = 1 << 16  # trials scored per block: Vox1-E's 580k trials never need 580k x 256 doubles at once
# The smallest spread of top_k cohort scores AS-norm divides by. Scores of float32 embeddings carry about 1e-7
# of rounding, so a spread near that is no spread (cohort speakers with the same files): dividing by it gives
# huge or infinite scores, not normalised ones. Real cohorts spread their top scores by about 1e-2.
MIN_COHORT_STD = 1e-6
# The shortest unit embedding less the mean that still has a direction to score. Below it the embedding is the
# mean itself (a mean of this one recording, or of copies of it), and the float32 rounding of the embeddings
# (1e-7) would decide its scores; 0 would make them NaN. A mean of many recordings leaves every norm near 1.
MIN_CENTRED_NORM = 1e-4
# A mean embedding of fewer files is not the centre of any data: one file's mean is that file's own embedding.
MIN_MEAN_FILES = 2


@dataclass(frozen=True)
class Embeddings:
    """L2-normalised embeddings keyed by utterance (its path relative to the data root).

    full: [n, dim] whole-utterance embeddings; crops: [n, num_crops, dim] or None (full mode only)."""

    keys: list[str]
    full: np.ndarray
    crops: np.ndarray | None = None

    def __post_init__(self):
        if len(self.keys) != len(self.full) or (self.crops is not None and len(self.crops) != len(self.keys)):
            raise ValueError(f"{len(self.keys)} keys but {len(self.full)} embeddings")

    def __len__(self) -> int:
        return len(self.keys)

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def select(self, keys: list[str]) -> Embeddings:
        index = self.index()
        rows = np.array([index[k] for k in keys], dtype=np.int64)
        return Embeddings(list(keys), self.full[rows], None if self.crops is None else self.crops[rows])

    def centred(self, mean: np.ndarray) -> Embeddings:
        """These embeddings (and crops) with `mean` subtracted and renormalised (`subtract_mean`); a
        ValueError naming the first utterance whose embedding is the mean itself."""
        crops = None if self.crops is None else subtract_mean(self.crops, mean, self.keys, self.crops.dtype)
        return Embeddings(self.keys, subtract_mean(self.full, mean, self.keys, self.full.dtype), crops)

    def mean(self) -> np.ndarray:
        """The mean of the unit full-utterance embeddings (float64): what mean subtraction subtracts. At least
        MIN_MEAN_FILES of them."""
        if len(self) < MIN_MEAN_FILES:
            raise ValueError(f"a mean embedding needs at least {MIN_MEAN_FILES} distinct files, got {len(self)} "
                             f"({', '.join(self.keys) or 'none'}): one file's mean is its own embedding, which would "
                             f"leave that recording nothing to score and centre every score on one recording; compute "
                             f"the mean from many files (the training list)")
        total = np.zeros(self.full.shape[1], dtype=np.float64)
        for _, unit in _unit_chunks(self.full):
            total += unit.sum(axis=0)
        return total / len(self)

    def scoring_vectors(self, mode: str) -> np.ndarray:
        """The vector each utterance is scored through (see the module docstring), in float64, from the
        embeddings renormalised in float64 (float32 storage leaves norms 1 +- 1e-7)."""
        full = _unit(self.full)
        if mode == "full":
            return full
        if mode == "multicrop":
            if self.crops is None:
                raise ValueError("multicrop scoring needs crop embeddings (extract with mode=multicrop)")
            return np.concatenate([full, _unit(self.crops).mean(axis=1)], axis=1)
        raise ValueError(f"unknown scoring mode {mode!r}: full or multicrop")


def merge_embeddings(parts: list[Embeddings]) -> Embeddings:
    """One Embeddings of disjoint parts (e.g. the shares of several processes), in the parts' order."""
    crops = None if parts[0].crops is None else np.concatenate([p.crops for p in parts])
    return Embeddings([k for p in parts for k in p.keys], np.concatenate([p.full for p in parts]), crops)


def subtract_mean(vectors: np.ndarray, mean: np.ndarray, keys: list[str] | None = None,
                  dtype: np.dtype = np.float64) -> np.ndarray:
    """WeSpeaker's embedding mean subtraction: unit embeddings less the mean unit embedding of a training
    set, renormalised (computed in float64, returned as `dtype`), so that cosine scoring measures directions
    around the data's centre. vectors: [n, dim] or [n, crops, dim]; a ValueError names (by `keys`, else by
    row) the first one that is the mean itself (less than MIN_CENTRED_NORM away from it), which no direction
    is left to score."""
    mean = np.asarray(mean, dtype=np.float64)
    if mean.shape != (vectors.shape[-1],):
        raise ValueError(f"the mean embedding is {mean.shape[0] if mean.ndim == 1 else mean.shape}-d but the "
                         f"embeddings {vectors.shape[-1]}-d: they come from different models")
    out = np.empty(vectors.shape, dtype=dtype)
    bad, least = [], np.nan  # rows that are the mean; what is left of the first
    for start, unit in _unit_chunks(vectors):
        centred = unit - mean
        norms = np.linalg.norm(centred, axis=-1, keepdims=True)
        rows = np.flatnonzero((~(norms >= MIN_CENTRED_NORM)).reshape(len(unit), -1).any(axis=1))  # NaN too
        if rows.size:
            least = np.nanmin(norms[rows[0]]) if not bad else least
            bad.extend((start + rows).tolist())
        elif not bad:
            out[start:start + len(unit)] = centred / norms
    if bad:
        name = keys[bad[0]] if keys is not None else f"embedding {bad[0]}"
        raise ValueError(f"{name}: its embedding is the mean embedding subtracted before scoring (what is left has "
                         f"length {least:.2g}; {len(bad)} of {len(vectors)} alike), so no "
                         f"direction is left to score: was the mean computed from this recording alone? Compute "
                         f"it from many recordings (the training list)")
    return out


def mean_sha256(mean: np.ndarray) -> str:
    """What identifies a mean embedding: the SHA-256 of its values as little-endian float64. Mean-subtracted
    scores, and so a calibration or threshold fitted on them, hold only for the mean they were centred on;
    evaluation JSONs, calibration files and model files name it by this."""
    return hashlib.sha256(np.ascontiguousarray(mean, dtype="<f8").tobytes()).hexdigest()


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


CHUNK_ROWS = 65536  # rows renormalised at a time where only a sum or a cast result is kept (16 MB per 32 dims)


def _unit_chunks(x: np.ndarray):
    """(start, float64 unit rows) over x in chunks: a cohort of a million embeddings (VoxCeleb2) would
    otherwise take several float64 copies of itself (4 GB) for a mean or per-speaker sums."""
    for start in range(0, len(x), CHUNK_ROWS):
        yield start, _unit(x[start:start + CHUNK_ROWS])


def _scale(mode: str) -> float:
    return 1.0 if mode == "full" else 0.5


def trial_indices(embeddings: Embeddings, trials: list[Trial]) -> tuple[np.ndarray, np.ndarray]:
    index = embeddings.index()
    enrol = np.fromiter((index[t.enrol] for t in trials), dtype=np.int64, count=len(trials))
    test = np.fromiter((index[t.test] for t in trials), dtype=np.int64, count=len(trials))
    return enrol, test


def raw_scores(embeddings: Embeddings, trials: list[Trial], mode: str = "full") -> np.ndarray:
    """Cosine (full) or TaoRuijie multi-crop scores of every trial, float64."""
    vectors = embeddings.scoring_vectors(mode)
    enrol, test = trial_indices(embeddings, trials)
    scores = np.empty(len(trials), dtype=np.float64)
    for start in range(0, len(trials), CHUNK):
        e, t = enrol[start:start + CHUNK], test[start:start + CHUNK]
        scores[start:start + CHUNK] = np.einsum("ij,ij->i", vectors[e], vectors[t])
    return scores * _scale(mode)


@dataclass(frozen=True)
class Cohort:
    """Per-speaker mean embeddings (L2-normalised) of a training list, for AS-norm."""

    speakers: list[str]
    embeddings: np.ndarray  # [n_speakers, dim]


def speaker_means(embeddings: Embeddings, speakers: list[str]) -> Cohort:
    """The cohort of WeSpeaker's AS-norm recipe: one mean embedding per speaker (of its utterances' unit
    full-utterance embeddings), renormalised. speakers[i] is the speaker of embeddings.keys[i]."""
    if len(speakers) != len(embeddings):
        raise ValueError(f"{len(speakers)} speakers for {len(embeddings)} embeddings")
    ids = sorted(set(speakers))
    position = {s: i for i, s in enumerate(ids)}
    rows = np.fromiter((position[s] for s in speakers), dtype=np.int64, count=len(speakers))
    sums = np.zeros((len(ids), embeddings.full.shape[1]), dtype=np.float64)
    for start, unit in _unit_chunks(embeddings.full):
        np.add.at(sums, rows[start:start + len(unit)], unit)
    means = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    return Cohort(ids, means)


def cohort_statistics(vectors: np.ndarray, cohort: Cohort, top_k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of each utterance's top_k highest cohort scores."""
    if top_k < 2:
        raise ValueError(f"AS-norm top_k must be >= 2 (a standard deviation of one score is 0), got {top_k}")
    top_k = min(top_k, len(cohort.speakers))
    speakers = cohort.embeddings
    if mode == "multicrop":
        # The cohort speaker stands in for the full utterance and for every crop: [s, s] . [f, mean(c)] / 2.
        speakers = np.concatenate([speakers, speakers], axis=1)
    means = np.empty(len(vectors))
    stds = np.empty(len(vectors))
    for start in range(0, len(vectors), 4096):
        scores = vectors[start:start + 4096] @ speakers.T * _scale(mode)
        top = np.partition(scores, scores.shape[1] - top_k, axis=1)[:, -top_k:]
        means[start:start + 4096] = top.mean(axis=1)
        stds[start:start + 4096] = top.std(axis=1)
    return means, stds


def as_norm(scores: np.ndarray, embeddings: Embeddings, trials: list[Trial], cohort: Cohort, top_k: int,
            mode: str = "full") -> np.ndarray:
    """Adaptive s-norm: 0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t), where mu and sigma are the mean
    and standard deviation of the top_k cohort scores of the enrolment and of the test utterance."""
    vectors = embeddings.scoring_vectors(mode)
    if vectors.shape[1] != (1 if mode == "full" else 2) * cohort.embeddings.shape[1]:
        raise ValueError(f"cohort embeddings are {cohort.embeddings.shape[1]}-d but the trial embeddings "
                         f"{embeddings.full.shape[1]}-d: they come from different models")
    means, stds = cohort_statistics(vectors, cohort, top_k, mode)
    enrol, test = trial_indices(embeddings, trials)
    used = np.union1d(enrol, test)
    flat = used[~(stds[used] >= MIN_COHORT_STD)]  # NaN too
    if flat.size:
        k = min(top_k, len(cohort.speakers))
        raise ValueError(f"AS-norm: the top {k} cohort scores of {embeddings.keys[flat[0]]} are (almost) all equal "
                         f"(standard deviation {stds[flat[0]]:.3g}; {flat.size} of {used.size} utterances alike), "
                         f"so normalising by their spread is meaningless; use a larger cohort of distinct speakers or "
                         f"a larger top_k (now {top_k})")
    return 0.5 * ((scores - means[enrol]) / stds[enrol] + (scores - means[test]) / stds[test])
