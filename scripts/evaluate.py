#!/usr/bin/env python
"""Evaluate a checkpoint on a VoxCeleb-style trial list: full-utterance embeddings (each file once),
cosine scores, EER and minDCF (p_target 0.01 and 0.05). Writes a score file `enrol test score label`
and the metrics as JSON beside it.

    python scripts/evaluate.py --checkpoint runs/smoke/<date>/checkpoints/best.pt \\
        --root data/synthetic/wav --trials data/synthetic/trials.txt --out scores.txt
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from speakerid.builders import extractor_from_checkpoint
from speakerid.checkpoint import load_checkpoint
from speakerid.data.audio import AudioError
from speakerid.data.lists import ListFormatError, MissingFilesError, read_trials
from speakerid.evaluation import evaluate_trials, trial_files, write_scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py (last.pt, best.pt)")
    parser.add_argument("--root", required=True, help="folder the trial-list paths are relative to")
    parser.add_argument("--trials", required=True, help="trial list: `label enrol test` per line")
    parser.add_argument("--out", help="score file to write (default: <trials name>.scores.txt beside the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--resample", action="store_true", help="resample files whose rate differs from the model's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    try:
        trials = read_trials(args.trials)
        checkpoint = load_checkpoint(args.checkpoint)
        extractor, cfg = extractor_from_checkpoint(checkpoint)
        extractor.to(device)
        start = time.perf_counter()
        metrics, scores = evaluate_trials(extractor, args.root, trials, device, cfg.data.sample_rate,
                                          args.resample or cfg.data.resample, progress=True)
        seconds = time.perf_counter() - start
    except (ListFormatError, MissingFilesError, AudioError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"{Path(args.trials).stem}.scores.txt"
    write_scores(out, trials, scores)
    n_files = len(trial_files(trials))
    report = {
        "trials": str(args.trials),
        "checkpoint": str(args.checkpoint),
        "n_trials": len(trials),
        "n_files": n_files,
        "eer": metrics["eer"],
        "min_dcf_p0.01": metrics["min_dcf_p0.01"],
        "min_dcf_p0.05": metrics["min_dcf_p0.05"],
        "seconds": seconds,
    }
    json_path = out.with_suffix(".json")
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(json_path)
    print(f"{Path(args.trials).name}: {len(trials)} trials, {n_files} files ({n_files / seconds:.1f} utt/s on {device})")
    print(f"EER {100 * metrics['eer']:.2f}%  minDCF(p=0.01) {metrics['min_dcf_p0.01']:.4f}  "
          f"minDCF(p=0.05) {metrics['min_dcf_p0.05']:.4f}")
    print(f"scores: {out}\nmetrics: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
