"""Speaker-verification evaluation: full-utterance embeddings once per file, cosine scoring, EER/minDCF."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speakerid.data.audio import read_full
from speakerid.data.lists import Trial, check_files_exist
from speakerid.metrics import verification_metrics


class EmbeddingExtractor(nn.Module):
    """Waveform [batch, samples] at the model's sample rate -> embedding [batch, emb_dim]."""

    def __init__(self, fbank: nn.Module, model: nn.Module):
        super().__init__()
        self.fbank = fbank
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.model(self.fbank(waveform))


def trial_files(trials: list[Trial]) -> list[str]:
    """Unique files named by a trial list, in first-seen order."""
    return list(dict.fromkeys(p for t in trials for p in (t.enrol, t.test)))


@torch.no_grad()
def extract_embeddings(
    extractor: EmbeddingExtractor,
    root: str | os.PathLike,
    paths: list[str],
    device: torch.device | str = "cpu",
    sample_rate: int = 16000,
    resample: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Full-utterance embeddings, L2-normalised, keyed by relative path; each file is read once."""
    was_training = extractor.training
    extractor.eval()
    unique = list(dict.fromkeys(paths))
    iterator = unique
    if progress:
        from tqdm import tqdm

        iterator = tqdm(unique, desc="embeddings", unit="utt", dynamic_ncols=True)
    embeddings = {}
    try:
        for rel in iterator:
            waveform = torch.from_numpy(read_full(Path(root) / rel, sample_rate, resample)).to(device)
            embeddings[rel] = F.normalize(extractor(waveform.unsqueeze(0)).float(), dim=1)[0].cpu()
    finally:
        extractor.train(was_training)
    return embeddings


def cosine_scores(embeddings: dict[str, torch.Tensor], trials: list[Trial]) -> np.ndarray:
    enrol = torch.stack([embeddings[t.enrol] for t in trials])
    test = torch.stack([embeddings[t.test] for t in trials])
    return F.cosine_similarity(enrol.double(), test.double(), dim=1).numpy()


def evaluate_trials(
    extractor: EmbeddingExtractor,
    root: str | os.PathLike,
    trials: list[Trial],
    device: torch.device | str = "cpu",
    sample_rate: int = 16000,
    resample: bool = False,
    progress: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """(metrics, scores) for a parsed trial list; every file is checked to exist before any is read."""
    files = trial_files(trials)
    check_files_exist(root, files, what="trial list")
    embeddings = extract_embeddings(extractor, root, files, device, sample_rate, resample, progress)
    scores = cosine_scores(embeddings, trials)
    labels = np.array([t.label for t in trials])
    return verification_metrics(scores, labels), scores


def write_scores(path: str | os.PathLike, trials: list[Trial], scores: np.ndarray) -> None:
    """Score file `enrol test score label`, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for trial, score in zip(trials, scores):
            f.write(f"{trial.enrol} {trial.test} {score:.6f} {trial.label}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
