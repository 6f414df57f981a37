"""Options and checks that several subcommands share, so that each has one name and one meaning."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speakerid.bootstrap import SpeakerResampler


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    """The bootstrap options that calibrate and report share."""
    parser.add_argument("--n-bootstrap", type=positive_int, default=1000,
                        help="speaker resamples for the intervals (1000)")
    parser.add_argument("--confidence", type=probability, default=0.95, help="level of the intervals (0.95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling (0)")


def warn_about_speakers(enrol: list[str], test: list[str]) -> None:
    """Say so when the trials' speakers are too few (or unknown) for trustworthy intervals."""
    caution = SpeakerResampler(enrol, test).caution()
    if caution:
        print(f"warning: {caution}", file=sys.stderr)


def add_output_arguments(parser: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """--out (one file) and --overwrite: no subcommand replaces an existing file unless told to."""
    parser.add_argument("--out", required=required, type=Path, help=help)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
