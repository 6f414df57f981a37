"""Check a train list and a trial list before training: existence, readability, sample rate, channels,
duration (short training files, trial files too short to embed), duplicates (a trial in either order),
trials of a file against itself, speakers with too few utterances, overlap between train and trial speakers
(after --strip-prefix, as eval.strip_prefix), a UTF-8 byte-order mark. A malformed list line, a path that is
absolute or goes up with `..`, a file listed under two speakers or a pair of trial files labelled both 1 and
0 stops the check with the file and line.
Prints a summary, writes a JSON report, exits 1 when there are errors.

    speakerid check-data --list train_list.txt --root /data/vox2/dev/wav
    speakerid check-data --trials veri_test2.txt --root /data/voxceleb1/wav
    speakerid check-data --list L --root R --trials T --trials-root R2 --out check.json
    speakerid check-data --list L --root R --deep        # also decode every file (NaN, truncation, silence)
    speakerid check-data --list L --root R --trials T --trials-root R2 --strip-prefix wav/  # `1 wav/id1/a.wav ...`

An existing report is replaced only with --overwrite, and never a list being checked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from speakerid.cli import usage_error
from speakerid.data.check import MIN_TRIAL_SECONDS, check_data
from speakerid.data.lists import ListFormatError
from speakerid.io import check_new_file

HELP = "check a train list and/or a trial list (files, audio, duplicates, speakers) before training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", help="train list to check (`speaker relative/path` lines)")
    parser.add_argument("--root", help="folder the list's paths are relative to (and the trials', unless "
                                       "--trials-root is given)")
    parser.add_argument("--trials", help="trial list to check (`label enrol test` or `enrol test` lines)")
    parser.add_argument("--trials-root", help="folder the trial paths are relative to (default: --root)")
    parser.add_argument("--strip-prefix", help="leading part of every trial path that --trials-root already "
                                               "includes (as eval.strip_prefix, e.g. wav/), removed before the "
                                               "files are checked and their speakers compared")
    parser.add_argument("--out", default="data_check.json", help="JSON report to write (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="warn about training files shorter than this")
    parser.add_argument("--min-trial-seconds", type=float, default=MIN_TRIAL_SECONDS,
                        help="trial files shorter than this are an error (too short to embed)")
    parser.add_argument("--min-utterances", type=int, default=2, help="warn about speakers with fewer utterances")
    parser.add_argument("--deep", action="store_true", help="decode every file (slower)")
    parser.add_argument("--workers", type=int, default=16)


def run(args: argparse.Namespace) -> int:
    trials_root = args.trials_root or args.root
    if not args.list and not args.trials:
        return usage_error(args.command, "nothing to check: give a train list (--list) and/or a trial list "
                                         "(--trials)")
    if args.list and not args.root:
        return usage_error(args.command, "--list needs --root, the folder its paths are relative to")
    if args.trials and not trials_root:
        return usage_error(args.command, "--trials needs --root (or --trials-root), the folder its paths are "
                                         "relative to")
    for given in (args.list, args.trials):  # even --overwrite must not turn a user's list into the report
        if given and os.path.exists(args.out) and os.path.exists(given) and os.path.samefile(args.out, given):
            return usage_error(args.command, f"--out {args.out} is the list being checked ({given}); give "
                                             f"another file for the report")
    start = time.perf_counter()
    try:
        check_new_file(args.out, args.overwrite, what="--out")
        report = check_data(args.list, args.root if args.list else None, args.trials, trials_root, args.sample_rate,
                            args.min_seconds, args.min_utterances, args.deep, args.workers,
                            min_trial_seconds=args.min_trial_seconds, strip_prefix=args.strip_prefix)
    except (ListFormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report.stats["seconds"] = round(time.perf_counter() - start, 2)
    report.write_json(args.out)
    print(report.summary())
    print(f"report: {args.out}")
    return 1 if report.errors else 0

