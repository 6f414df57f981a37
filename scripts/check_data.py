#!/usr/bin/env python
"""Check a train list and a trial list before training: existence, readability, sample rate, channels,
duration (short training files, trial files too short to embed), duplicates, speakers with too few
utterances, overlap between train and trial speakers, a UTF-8 byte-order mark. A malformed list line or a
path that is absolute or goes up with `..` stops the check with the file and line.
Prints a summary, writes a JSON report, exits 1 when there are errors.

    python scripts/check_data.py --train-list L --train-root R --trials T --trials-root R2 --report check.json
    python scripts/check_data.py ... --deep     # also decode every file (NaN, truncation, silence)
"""

import argparse
import sys
import time

from speakerid.data.check import MIN_TRIAL_SECONDS, check_data
from speakerid.data.lists import ListFormatError
from speakerid.io import check_writable


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-list")
    parser.add_argument("--train-root")
    parser.add_argument("--trials")
    parser.add_argument("--trials-root")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="warn about training files shorter than this")
    parser.add_argument("--min-trial-seconds", type=float, default=MIN_TRIAL_SECONDS,
                        help="trial files shorter than this are an error (too short to embed)")
    parser.add_argument("--min-utterances", type=int, default=2, help="warn about speakers with fewer utterances")
    parser.add_argument("--deep", action="store_true", help="decode every file (slower)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--report", default="data_check.json", help="JSON report to write")
    args = parser.parse_args(argv)
    if bool(args.train_list) != bool(args.train_root) or bool(args.trials) != bool(args.trials_root):
        parser.error("give --train-list with --train-root, and --trials with --trials-root")
    if not args.train_list and not args.trials:
        parser.error("nothing to check: give a train list and/or a trial list")
    start = time.perf_counter()
    try:
        check_writable(args.report, what="--report")
        report = check_data(args.train_list, args.train_root, args.trials, args.trials_root, args.sample_rate,
                            args.min_seconds, args.min_utterances, args.deep, args.workers,
                            min_trial_seconds=args.min_trial_seconds)
    except (ListFormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report.stats["seconds"] = round(time.perf_counter() - start, 2)
    report.write_json(args.report)
    print(report.summary())
    print(f"report: {args.report}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
