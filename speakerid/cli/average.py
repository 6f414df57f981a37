"""Average the model weights of several checkpoints of one run into a new checkpoint, as WeSpeaker does with
the last epochs of a run before scoring. The result evaluates, embeds, verifies and exports like any
checkpoint, but cannot be resumed (it has no optimizer state).

    speakerid average --out avg.pt runs/vox2/<date_time>/checkpoints/step-*.pt
    speakerid export --model avg.pt --out model.pt         # then, for deployment

Floating-point tensors are averaged in float64 and stored in their own dtype; BatchNorm's counters come from
the newest checkpoint. Train with trainer.keep_checkpoints=N to keep the checkpoints of the last N epochs (and
no trainer.checkpoint_every_* settings, so that each of them is an epoch end).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speakerid.cli.options import add_output_arguments

HELP = "average the weights of a run's last checkpoints (WeSpeaker's model averaging)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints of one run (two or more)")
    add_output_arguments(parser, "the checkpoint to write", required=True)


def run(args: argparse.Namespace) -> int:
    from speakerid.checkpoint import average_checkpoints, save_atomic
    from speakerid.io import check_new_file

    try:
        check_new_file(args.out, args.overwrite, what="--out")
        averaged = average_checkpoints(args.checkpoints)
        save_atomic(averaged, args.out)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    progress = averaged["progress"]
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints (newest at epoch "
          f"{progress['epoch']}, step {progress['step']})")
    return 0
