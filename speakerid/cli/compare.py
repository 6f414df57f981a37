"""Compare systems: their DET curves on one figure and a table of their EER and minDCF.

    speakerid compare a_eval/vox1_o_cleaned.cosine.json b_eval/vox1_o_cleaned.cosine.json --out det.png
    speakerid compare base.json augmented.json --names baseline "with MUSAN+RIR" --title "Vox1-O" --out det.png
    speakerid compare a.scores.txt b.scores.txt --out det.png                  # score files work too

Each system is an evaluation JSON of `speakerid evaluate` (its curve is drawn from the score file the JSON
names) or a labelled score file (`enrol test score label`). The metrics are measured on the score files,
so the table and the figure always agree. Systems scored on different trials are compared with a warning:
their differences then mix the systems with the lists. For differences between runs of one setup, see
`speakerid summarize`; for intervals, `speakerid report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from speakerid.data.lists import ListFormatError, read_scores
from speakerid.cli.options import add_output_arguments
from speakerid.io import atomic_write, check_new_file
from speakerid.metrics import verification_metrics
from speakerid.plots import PALETTE, det_comparison_image
from speakerid.summary import comparison_table, read_evaluation, short_names

HELP = "DET curves of several systems on one figure, and a table of their metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("systems", nargs="+", type=Path, help="evaluation JSONs or labelled score files")
    add_output_arguments(parser, "the figure to write (PNG)", required=True)
    parser.add_argument("--names", nargs="+", help="a name per system for the legend and table "
                        "(default: the paths, less their common folders)")
    parser.add_argument("--title", default="", help="title of the figure")


def score_file_of(path: Path) -> Path:
    """The score file of a system: the one an evaluation JSON names, or the path itself."""
    if path.suffix != ".json":
        return path
    result = read_evaluation(path)
    if result.scores is None:
        raise ValueError(f"{path}: names no score file")
    return result.scores


def run(args: argparse.Namespace) -> int:
    if args.names is not None and len(args.names) != len(args.systems):
        print(f"error: {len(args.names)} --names for {len(args.systems)} systems", file=sys.stderr)
        return 1
    if len(args.systems) > len(PALETTE):
        print(f"error: at most {len(PALETTE)} systems fit one figure, got {len(args.systems)}", file=sys.stderr)
        return 1
    try:
        check_new_file(args.out, args.overwrite, what="--out")
        score_lists = []
        for path in args.systems:
            scores = read_scores(score_file_of(path))
            scores.require_labels("a DET curve")
            score_lists.append(scores)
    except (ListFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = args.names or short_names(args.systems)
    metrics = [verification_metrics(s.scores, s.labels) for s in score_lists]
    image = det_comparison_image([(n, s.scores, s.labels) for n, s in zip(names, score_lists)], args.title)
    with atomic_write(args.out, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
    print(comparison_table(names, metrics, [len(s.trials) for s in score_lists]))
    trial_sets = {frozenset((t.enrol, t.test) for t in s.trials) for s in score_lists}
    if len(trial_sets) > 1:
        print("warning: the systems were scored on different trials; their differences mix systems and lists",
              file=sys.stderr)
    print(f"written: {args.out}")
    return 0

