"""An evaluation run: a protocol made ready (lists parsed, files checked), its embeddings extracted or
taken from the cache, scored (cosine or multi-crop, optional mean subtraction and AS-norm) and measured (EER, minDCF); and the
score and report files it writes."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from speakerid.data.check import check_trial_audio
from speakerid.data.lists import (
    ListFormatError,
    Trial,
    check_files_exist,
    has_labels,
    read_train_list,
    read_trials,
    trial_files,
    warn_duplicate_trials,
)
from speakerid.distributed import DistEnv, all_gather_objects
from speakerid.evaluation.extraction import EmbeddingExtractor, extract_embeddings
from speakerid.evaluation.protocol import ExtractionOptions, Protocol
from speakerid.evaluation.store import EmbeddingCache
from speakerid.io import write_json_atomic, write_text_atomic
from speakerid.metrics import verification_metrics
from speakerid.scoring import (
    Cohort,
    Embeddings,
    as_norm,
    mean_sha256,
    merge_embeddings,
    raw_scores,
    speaker_means,
)

log = logging.getLogger("speakerid")


class EvaluationError(RuntimeError):
    """Valid lists that cannot be scored meaningfully (an AS-norm cohort without spread, non-finite scores)."""


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
    mean: np.ndarray | None = None     # the subtracted mean embedding (mean subtraction on)
    replaced_mean: np.ndarray | None = None  # the model's own mean, which the protocol's list mean replaced

    @property
    def scoring(self) -> str:
        """The protocol's scoring name, `_meansub` included when a mean came with the model instead."""
        return self.protocol.scoring_with(mean_subtraction=self.mean is not None)

    def _replaced(self) -> dict[str, str]:
        if self.replaced_mean is None:
            return {}
        return {"replaced": f"the model's own mean embedding (SHA-256 {mean_sha256(self.replaced_mean)})"}

    def report(self) -> dict[str, Any]:
        """The JSON written beside a score file."""
        p = self.protocol
        return {
            "name": p.name, "trials": str(p.trials), "root": str(p.root), "scoring": self.scoring,
            "embedding": asdict(p.embedding),
            "asnorm": {**asdict(p.asnorm), "cohort_speakers": len(self.cohort.speakers)}
            if self.cohort is not None else None,
            "mean_subtraction": (None if self.mean is None else {**asdict(p.mean_subtraction), **self._replaced()}
                                 if p.mean_subtraction.enabled else {"enabled": True, "given": "with the model"}),
            # which mean the scores were centred on: a calibration of them holds only for a model with this one
            "embedding_mean_sha256": None if self.mean is None else mean_sha256(self.mean),
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
        warn_duplicate_trials(protocol.trials, self.trials)
        if require_labels and not has_labels(self.trials):
            raise ListFormatError(f"{protocol.trials}: the trial list has no labels (`enrol test` lines), so EER "
                                  f"cannot be measured; validation needs `label enrol test`")
        self.files = trial_files(self.trials)
        self.cohort_paths: list[str] = []
        self.cohort_speakers: list[str] = []
        if protocol.asnorm.enabled:
            norm = protocol.asnorm
            self.cohort_paths, self.cohort_speakers, n_speakers = train_subset(
                norm.cohort_list, norm.cohort_root, norm.utterances_per_speaker)
            if norm.top_k > n_speakers:
                log.warning("AS-norm top_k=%d but the cohort %s has %d speakers: all of them are used (s-norm)",
                            norm.top_k, norm.cohort_list, n_speakers)
        self.mean_paths: list[str] = []
        if protocol.mean_subtraction.enabled:
            mean = protocol.mean_subtraction
            self.mean_paths, _, _ = train_subset(mean.list, mean.root, mean.utterances_per_speaker)
        if check_files:
            self.check_files()

    def check_files(self) -> None:
        """Stop with the list of missing files when a trial or cohort file does not exist."""
        p = self.protocol
        check_files_exist(p.root, self.files, what=f"trial list {p.trials}", show=10)
        if self.cohort_paths:
            check_files_exist(p.asnorm.cohort_root, self.cohort_paths, what=f"AS-norm cohort list "
                              f"{p.asnorm.cohort_list}", show=10)
        if self.mean_paths:
            check_files_exist(p.mean_subtraction.root, self.mean_paths, what=f"mean-subtraction list "
                              f"{p.mean_subtraction.list}", show=10)

    def check_audio(self, sample_rate: int, resample: bool, advice: str = "data.resample=true") -> None:
        """Stop, naming them, when trial files cannot be embedded (headers only: rate, channels, length);
        `advice` is how the caller's user turns resampling on."""
        check_trial_audio(self.protocol.root, self.files, sample_rate, resample,
                          what=f"trial list {self.protocol.trials}", resample_advice=advice)

    def run(self, extractor: EmbeddingExtractor, device: torch.device | str = "cpu", sample_rate: int = 16000,
            resample: bool = False, cache_dir: str | os.PathLike | None = None, model_id: str | None = None,
            progress: bool = False, dist: DistEnv = DistEnv(),
            mean: np.ndarray | None = None) -> EvaluationResult:
        """With several processes (torchrun) each embeds its share of the files and all of them get every
        embedding, so every rank computes the same scores and metrics. `mean`: a mean embedding to subtract
        (a model file's); the protocol's mean subtraction, when on, replaces it with a warning (the result
        records both)."""
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
            cache = EmbeddingCache(cache_dir, model_id or "unnamed", root, opts, sample_rate, resample,
                                   extractor.batching)
            embeddings, new = cache.get(paths, extract)
            extracted += new
            return embeddings

        start = time.perf_counter()
        embeddings = embeddings_of(protocol.root, self.files, options)
        full_only = ExtractionOptions(**{**asdict(options), "mode": "full"})
        replaced = None
        if protocol.mean_subtraction.enabled:
            if mean is not None:
                replaced = mean
                log.warning("warning: eval.mean_subtraction.enabled=true: the mean embedding of %s replaces the "
                            "model's own (SHA-256 %s), so these are not the scores the model gives: a calibration "
                            "or threshold fitted on them does not apply to it (turn it off to score as the model "
                            "does)", protocol.mean_subtraction.list, mean_sha256(mean)[:12])
            mean = embeddings_of(protocol.mean_subtraction.root, self.mean_paths, full_only).mean()
        try:
            if mean is not None:
                embeddings = embeddings.centred(mean)
            cohort = None
            if protocol.asnorm.enabled:
                cohort_embeddings = embeddings_of(protocol.asnorm.cohort_root, self.cohort_paths, full_only)
                if mean is not None:  # the cohort must live in the same centred space as the trials
                    cohort_embeddings = cohort_embeddings.centred(mean)
                cohort = speaker_means(cohort_embeddings, self.cohort_speakers)
        except ValueError as e:  # a file whose embedding is the mean: nothing is left to score
            raise EvaluationError(f"mean subtraction: {e}") from None
        seconds = time.perf_counter() - start

        scores = raw_scores(embeddings, self.trials, options.mode)
        if cohort is not None:
            try:
                scores = as_norm(scores, embeddings, self.trials, cohort, protocol.asnorm.top_k, options.mode)
            except ValueError as e:
                raise EvaluationError(f"cohort {protocol.asnorm.cohort_list}: {e}") from None
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:  # never written as scores nor measured
            t = self.trials[bad[0]]
            raise EvaluationError(f"{protocol.trials}: {bad.size} of {len(scores)} trials scored {scores[bad[0]]} "
                                  f"(the first: {t.enrol} {t.test}); the model's embeddings are not finite")
        labels = metrics = None
        if has_labels(self.trials):
            labels = np.fromiter((t.label for t in self.trials), dtype=np.int64, count=len(self.trials))
            metrics = verification_metrics(scores, labels, with_thresholds=True)
        return EvaluationResult(protocol, self.trials, scores, labels, metrics, len(self.files), extracted, seconds,
                                cohort, mean, replaced)


def train_subset(list_path: str, root: str, per_speaker: int | None) -> tuple[list[str], list[str], int]:
    """Paths (each once) and speakers of a train list (`speaker path`), `per_speaker` evenly spaced utterances
    of each speaker when given (all when None), and the number of speakers: what AS-norm's cohort and the
    subtracted mean are computed from."""
    train = read_train_list(list_path, root)
    # A file is embedded once (embeddings are keyed by path), so a repeated line counts once (a file under
    # two speakers is read_train_list's error).
    by_speaker: dict[str, list[str]] = {}
    for path, speaker in dict(zip(train.paths, train.speakers)).items():
        by_speaker.setdefault(speaker, []).append(path)
    paths: list[str] = []
    speakers: list[str] = []
    for speaker in train.speaker_ids:
        mine = by_speaker[speaker]
        if per_speaker is not None and per_speaker < len(mine):
            mine = [mine[int(i)] for i in np.linspace(0, len(mine) - 1, num=per_speaker).round()]
        paths += mine
        speakers += [speaker] * len(mine)
    return paths, speakers, len(train.speaker_ids)


def write_scores(path: str | os.PathLike, trials: list[Trial], scores: np.ndarray) -> None:
    """Score file `enrol test score label` (`enrol test score` for a list without labels), written atomically."""
    if not np.isfinite(scores).all():
        raise ValueError(f"{path}: {np.count_nonzero(~np.isfinite(scores))} scores are not finite; not written")
    lines = [f"{t.enrol} {t.test} {s:.6f}" + ("" if t.label is None else f" {t.label}") for t, s in zip(trials, scores)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    write_json_atomic(path, record)
