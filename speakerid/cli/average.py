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

HELP = "average the weights of a run's last checkpoints (WeSpeaker's model averaging)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints of one run (two or more)")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint to write")


def run(args: argparse.Namespace) -> int:
    from speakerid.checkpoint import average_checkpoints, save_atomic
    from speakerid.io import check_writable

    try:
        check_writable(args.out, what="--out")
        averaged = average_checkpoints(args.checkpoints)
        save_atomic(averaged, args.out)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    progress = averaged["progress"]
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints (newest at epoch "
          f"{progress['epoch']}, step {progress['step']})")
    return 0
