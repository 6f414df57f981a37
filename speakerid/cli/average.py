"""Average the model weights of several checkpoints of one run into a new checkpoint, as WeSpeaker does with
the last epochs of a run before scoring. The result evaluates, embeds, verifies and exports like any
checkpoint, but cannot be resumed (it has no optimizer state).

    speakerid average --out avg.pt --last 10 runs/vox2/<date_time>   # the last 10 epochs of a finished run
    speakerid average --out avg.pt runs/vox2/<date_time>/checkpoints/step-*.pt   # or checkpoints by name
    speakerid export --model avg.pt --out model.pt         # then, for deployment

Floating-point tensors are averaged in float64 and stored in their own dtype; BatchNorm's counters come from
the newest checkpoint. Train with trainer.keep_checkpoints=N to keep the checkpoints of the last N epochs (and
no trainer.checkpoint_every_* settings, so that each of them is an epoch end).

The checkpoints must be of one run: the same config but for the run folder and trainer.resume (a resumed run
writes to a new folder), each model once: best.pt beside the step file of its epoch, or the step files of one
step in a resumed run's folder and in that of the run it resumed, are refused. A resumed run's earlier epochs
are in the folder it resumed from: --last N on its folder then prints the command that names them.
--allow-different-runs averages runs of other seeds or settings too (a "model soup"), but never models or
fbanks configured otherwise: their weights compute different things.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from speakerid.cli import usage_error
from speakerid.cli.options import add_output_arguments

HELP = "average the weights of a run's last checkpoints (WeSpeaker's model averaging)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="checkpoints of one run (two or more), or with --last its run folder")
    parser.add_argument("--last", type=int, metavar="N", help="the last N epochs of the finished run whose "
                        "folder is given (N = 1: its last epoch, without the optimizer state)")
    parser.add_argument("--allow-different-runs", action="store_true", help="average checkpoints of runs whose "
                        "configs differ (other seeds, data or training settings; the model and fbank must still "
                        "be the same); without it, only checkpoints of one run average")
    add_output_arguments(parser, "the checkpoint to write", required=True)


def refuse_out_among_inputs(out: Path, paths: list[Path]) -> None:
    """--overwrite replaces an earlier average, never a checkpoint: not one of the inputs (last.pt is a link to
    the newest step-N.pt), nor any file of a run's checkpoints/ folder, whose names training writes and
    resumes from (an averaged last.pt has no optimizer state to resume with)."""
    out = Path(out)
    for path in paths:
        if out.exists() and os.path.samefile(out, path):
            raise ValueError(f"--out {out} is the checkpoint {path} being averaged: write the average elsewhere")
        folder = Path(path).resolve().parent
        if folder.name == "checkpoints" and out.resolve().parent == folder:
            raise ValueError(f"--out {out} is in the checkpoints folder of the run it averages ({folder}), whose "
                             f"files training writes and resumes from: write it elsewhere, e.g. "
                             f"{folder.parent / 'avg.pt'}")


def run(args: argparse.Namespace) -> int:
    from speakerid.checkpoint import average_checkpoints, last_epoch_checkpoints, save_atomic
    from speakerid.io import check_new_file

    if args.last is not None and (len(args.checkpoints) != 1 or not args.checkpoints[0].is_dir()):
        return usage_error(args.command, "--last N takes one run folder (runs/<experiment>/<date_time>)")
    if args.last is None and len(args.checkpoints) < 2:
        return usage_error(args.command, "averaging needs two or more checkpoints, or --last N and a run folder")
    try:
        check_new_file(args.out, args.overwrite, what="--out")
        paths = (args.checkpoints if args.last is None else
                 last_epoch_checkpoints(args.checkpoints[0], args.last, out=args.out))
        refuse_out_among_inputs(args.out, paths)
        averaged = average_checkpoints(paths, allow_different_runs=args.allow_different_runs)
        save_atomic(averaged, args.out)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    progress = averaged["progress"]
    print(f"wrote {args.out}: the mean of {len(paths)} checkpoints (newest at epoch "
          f"{progress['epoch']}, step {progress['step']})")
    return 0
