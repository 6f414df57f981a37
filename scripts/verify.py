#!/usr/bin/env python
"""Do two recordings come from the same speaker? Scores a.wav against b.wav with a checkpoint, the way an
evaluation run scored its trials (full utterance or multi-crop, AS-norm when that run used it), and
compares the score with that run's EER threshold.

    python scripts/evaluate.py --checkpoint best.pt eval=vox1_o eval.dir=/data/voxceleb1   # once
    python scripts/verify.py --checkpoint best.pt \\
        --threshold-from best_eval/vox1_o_cleaned.cosine.json a.wav b.wav
    python scripts/verify.py --checkpoint best.pt --threshold 0.35 a.wav b.wav                # cosine only

Prints the score, the threshold and the decision; exit status 0 either way (1 on an error).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from speakerid.builders import extractor_from_checkpoint
from speakerid.checkpoint import load_checkpoint
from speakerid.data.audio import AudioError
from speakerid.data.lists import Trial
from speakerid.evaluation import ExtractionOptions, extract_embeddings, file_digest, load_embeddings
from speakerid.scoring import Cohort, as_norm, raw_scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("audio", nargs=2, type=Path, help="the two recordings (wav or flac)")
    threshold = parser.add_mutually_exclusive_group(required=True)
    threshold.add_argument("--threshold-from", type=Path, help="the JSON of an evaluation run (scripts/evaluate.py) "
                           "of this checkpoint: its scoring and its EER threshold are used")
    threshold.add_argument("--threshold", type=float, help="a cosine-score threshold (full-utterance scoring)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    try:
        options, cohort, top_k, limit, source = ExtractionOptions(max_trim=0.0), None, None, args.threshold, "given"
        if args.threshold_from is not None:
            report = json.loads(args.threshold_from.read_text())
            if report.get("eer_threshold") is None:
                raise ValueError(f"{args.threshold_from}: no eer_threshold (was the evaluated list without labels?)")
            if report["checkpoint_sha256"] != file_digest(args.checkpoint):
                raise ValueError(f"{args.threshold_from} was measured with another checkpoint "
                                 f"({report['checkpoint']}): its threshold does not apply to {args.checkpoint}")
            options = ExtractionOptions(**{**report["embedding"], "max_trim": 0.0})
            if report.get("asnorm"):
                cohort_embeddings, _ = load_embeddings(report["cohort"])
                cohort, top_k = Cohort(cohort_embeddings.keys, cohort_embeddings.full.astype(np.float64)), \
                    report["asnorm"]["top_k"]
            limit = report["eer_threshold"]
            source = f"EER threshold of {report['name']}, {report['scoring']}"
        paths = [str(p.resolve()) for p in args.audio]
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"{p} does not exist")
        extractor, cfg = extractor_from_checkpoint(load_checkpoint(args.checkpoint), source=str(args.checkpoint))
        extractor.to(device)
        embeddings = extract_embeddings(extractor, "/", paths, device, options, cfg.data.sample_rate, cfg.data.resample)
    except (AudioError, FileNotFoundError, RuntimeError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    trial = [Trial(None, paths[0], paths[1])]
    score = raw_scores(embeddings, trial, options.mode)
    if cohort is not None:
        score = as_norm(score, embeddings, trial, cohort, top_k, options.mode)
    score = float(score[0])
    same = score >= limit
    print(f"score {score:.4f} {'>=' if same else '<'} threshold {limit:.4f} ({source}): "
          f"{'same speaker' if same else 'different speakers'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
