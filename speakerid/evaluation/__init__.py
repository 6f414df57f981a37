"""Speaker-verification evaluation: embeddings once per file, batched by similar length; cosine or
multi-crop scores, optional AS-norm; EER/minDCF. One code path for validation during training
(`speakerid.training.loop`) and for `speakerid evaluate`, configured by the `eval` config group (a `Protocol`).

What lives where (every public name is importable from `speakerid.evaluation` too):
- `protocol`: `Protocol` (one file of configs/eval/, `Protocol.from_config`), `ExtractionOptions`,
  `ASNormOptions`, `MeanSubtractionOptions`.
- `extraction`: `EmbeddingExtractor` (fbank + model), `plan_batches` (batches of nearly equal length, and
  why), `evenly_spaced_crops` (multi-crop windows), `extract_embeddings`.
- `store`: `save_embeddings` / `load_embeddings` (.npz), `file_stamps`, `file_digest`, `EmbeddingCache`.
- `run`: `Evaluation` (a protocol made ready, run() scores and measures), `EvaluationResult`,
  `write_scores`, `write_json`.
"""

from speakerid.data.lists import trial_files
from speakerid.evaluation.extraction import EmbeddingExtractor, evenly_spaced_crops, extract_embeddings, plan_batches
from speakerid.evaluation.protocol import ASNormOptions, ExtractionOptions, MeanSubtractionOptions, Protocol
from speakerid.evaluation.run import Evaluation, EvaluationResult, write_json, write_scores
from speakerid.evaluation.store import EmbeddingCache, file_digest, file_stamps, load_embeddings, save_embeddings

__all__ = [
    "ASNormOptions", "EmbeddingCache", "EmbeddingExtractor", "Evaluation", "EvaluationResult", "ExtractionOptions",
    "MeanSubtractionOptions", "Protocol", "evenly_spaced_crops", "extract_embeddings", "file_digest", "file_stamps", "load_embeddings",
    "plan_batches", "save_embeddings", "trial_files", "write_json", "write_scores",
]
