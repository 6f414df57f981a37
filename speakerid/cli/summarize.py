"""Summarise runs of one setup with different seeds as mean and standard deviation per metric, so that a
reported gain can be told from run-to-run noise.

    python train.py -m experiment=arsc data.dir=/data/arsc seed=1,2,3             # a sweep: one run folder per job
    speakerid summarize runs/arsc/2026-11-27_10-00-00_job*                        # final and best validation
    speakerid summarize runs/arsc/*/checkpoints/best_eval/trials.cosine.json      # `speakerid evaluate` results
    speakerid summarize runs/arsc/*_job* --out seeds.json

Each argument is a training run folder (metrics.jsonl: the last validation's val/eer, val/min_dcf_p0.01,
val/min_dcf_p0.05 and the run's best val/eer as best/eer) or an evaluation JSON of `speakerid evaluate`
(eer, min_dcf_p0.01, min_dcf_p0.05). The seed of each comes from its run's config.yaml. The standard
deviation is the sample one (n - 1); with n runs, the standard error of the mean is std / sqrt(n).

Results measured on other trials or scored otherwise, the same checkpoint or run folder twice, or a run
folder beside the one that resumed it are refused (exit 1, naming the files); equal seeds get a warning. A
non-finite value (a diverged run's NaN) is shown as `-` and left out of the mean, with a warning.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from speakerid.cli.options import add_output_arguments
from speakerid.io import check_new_file, write_json_atomic
from speakerid.summary import check_summarizable, read_result, short_names, summarize, summary_table

HELP = "mean and standard deviation per metric over runs with different seeds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, help="run folders or evaluation JSONs")
    add_output_arguments(parser, "also write the summary as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        if args.out is not None:
            check_new_file(args.out, args.overwrite, what="--out")
        results = [read_result(path) for path in args.results]
        warnings = check_summarizable(results)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = short_names([r.source for r in results])
    summary = summarize(results)
    for metric, stats in summary.items():
        if stats["left_out"]:
            runs = [str(r.source) for r in results if metric in r.metrics and not math.isfinite(r.metrics[metric])]
            warnings.append(f"{metric}: left out of the mean, not finite in {', '.join(runs)}")
    print(summary_table(results, names, summary))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if len(results) < 2:
        print("one result: no standard deviation")
    if args.out is not None:
        write_json_atomic(args.out, {
            "runs": [{"source": str(r.source.resolve()), "name": name, "seed": r.seed, "metrics": r.metrics}
                     for name, r in zip(names, results)],
            "summary": summary})
        print(f"written: {args.out}")
    return 0

