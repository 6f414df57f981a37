#!/usr/bin/env python
"""Average the model weights of several checkpoints of one run into a new checkpoint, as WeSpeaker does with
the last epochs of a run before scoring. The result evaluates, embeds, verifies and exports like any
checkpoint, but cannot be resumed (it has no optimizer state).

    python scripts/average_checkpoints.py --out avg.pt runs/vox2/<date_time>/checkpoints/step-*.pt

Train with trainer.keep_checkpoints=N to keep the checkpoints of the last N epochs (and no
trainer.checkpoint_every_* settings, so that each of them is an epoch end).
"""

import argparse
import sys

from speakerid.checkpoint import average_checkpoints, save_atomic


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoints of one run (two or more)")
    parser.add_argument("--out", required=True, help="checkpoint to write")
    args = parser.parse_args(argv)
    try:
        averaged = average_checkpoints(args.checkpoints)
        save_atomic(averaged, args.out)
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    progress = averaged["progress"]
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints (newest at epoch "
          f"{progress['epoch']}, step {progress['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
