#!/usr/bin/env python
"""Embedding-extraction throughput and batching fidelity of a checkpoint on one device (made for a GPU;
runs on a CPU too). On the files of a trial list it times:

  one-at-a-time    batch 1, no trimming: the reference embeddings
  batched fp32     the evaluation default (padded batches for a model that takes lengths, as ECAPA-TDNN;
                   else batches of similar length cut to the shortest, max_trim 0.25%)
  batched bf16     the same under bf16 autocast (CUDA only)
  cut fp32         for a model that takes lengths, also its batches cut to the shortest member at max_trim
                   0.25% (how every model was batched before padded batches)
  multicrop fp32   TaoRuijie's protocol: full utterance + 5 crops of 3 s

and for each batched run the cosine similarity of its full-utterance embeddings to the reference
(minimum and mean over files) and the EER of the list with both (when every file of the list is used).

    python scripts/device_eval_check.py --model best.pt \\
        --root ../shared/data/arsc/wav --trials ../shared/data/arsc/trials.txt [--device cuda] [--limit N]
"""

import argparse
import json
import time

import numpy as np
import torch

from speakerid.data.lists import check_files_exist, has_labels, read_trials, trial_files
from speakerid.evaluation import EmbeddingExtractor, ExtractionOptions, extract_embeddings
from speakerid.evaluation.extraction import cut_batching
from speakerid.metrics import compute_eer
from speakerid.model_file import load_extractor
from speakerid.scoring import raw_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "--checkpoint", dest="model", required=True,
                        help="a checkpoint, an averaged checkpoint or a model file")
    parser.add_argument("--root", required=True)
    parser.add_argument("--trials", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N files of the list (0: all)")
    parser.add_argument("--batch-size", type=int, default=ExtractionOptions.batch_size)
    parser.add_argument("--no-multicrop", action="store_true", help="skip the multi-crop run (6x the compute)")
    args = parser.parse_args()

    device = torch.device(args.device)
    loaded = load_extractor(args.model)
    extractor = loaded.extractor.to(device).eval()
    trials = read_trials(args.trials)
    files = trial_files(trials)
    whole_list = not args.limit or args.limit >= len(files)
    files = files if whole_list else files[:args.limit]
    check_files_exist(args.root, files, what=args.trials)
    rate, resample = loaded.sample_rate, loaded.resample
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}: {sum(p.numel() for p in extractor.parameters()) / 1e6:.2f}M parameters, "
          f"{len(files)} files, on {name}")

    cut_extractor = cut_batching(extractor)

    def timed(options: ExtractionOptions, model: EmbeddingExtractor):
        extract_embeddings(model, args.root, files[:8], device, options, rate, resample)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        embeddings = extract_embeddings(model, args.root, files, device, options, rate, resample)
        return embeddings, time.perf_counter() - start

    runs = {
        "one-at-a-time": ExtractionOptions(batch_size=1, max_trim=0.0),
        "batched fp32": ExtractionOptions(batch_size=args.batch_size),
    }
    if extractor.takes_lengths:
        runs["cut fp32"] = ExtractionOptions(batch_size=args.batch_size)
    if not args.no_multicrop:
        runs["multicrop fp32"] = ExtractionOptions(batch_size=args.batch_size, mode="multicrop")
    if device.type == "cuda":
        runs["batched bf16"] = ExtractionOptions(batch_size=args.batch_size, precision="bf16")
    reference = None
    labels = np.array([t.label for t in trials]) if whole_list and has_labels(trials) else None
    for label, options in runs.items():
        embeddings, seconds = timed(options, cut_extractor if label == "cut fp32" else extractor)
        record = {"run": label, "files": len(files), "seconds": round(seconds, 3),
                  "utterances_per_s": round(len(files) / seconds, 1)}
        if reference is None:
            reference = embeddings
        else:
            cosine = np.einsum("ij,ij->i", embeddings.full.astype(np.float64), reference.full.astype(np.float64))
            record.update(min_cosine_to_reference=float(cosine.min()), mean_cosine_to_reference=float(cosine.mean()))
        if labels is not None:
            record["eer"] = compute_eer(raw_scores(embeddings, trials, options.mode), labels)
        print(json.dumps(record))


if __name__ == "__main__":
    main()
