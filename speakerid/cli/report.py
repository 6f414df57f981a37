"""Stratified report of a labelled score file (`enrol test score label`, as `speakerid evaluate` writes it):
EER and minDCF with bootstrap intervals over speakers, for all trials and by groups of trials: bins of
enrolment and test duration (with --root, read from the audio files' headers) and the values of any trial
attribute in an --attributes file. Printed as a table; --out also writes it as JSON.

    speakerid report --scores best_eval/vox1_o_cleaned.cosine.scores.txt --root /data/voxceleb1/wav
    speakerid report --scores scores.txt --root /data/wav --bins enrol_duration=3,6,12 --bins test_duration=3,6,12
    speakerid report --scores scores.txt --attributes conditions.tsv --bins snr_db=0,10,20 --out report.json
    speakerid report --scores held_out.scores.txt --calibration cal.json     # a calibration on other trials

Duration bins default to <2, 2-4, 4-6, 6-10, 10-20 and >=20 s. The attribute file is tab-separated with a
header, `enrol test name...`, one line per trial (the paths as in the score file); its columns group
trials by value, or by bins with --bins NAME=EDGES (a binned column must hold finite numbers; duration bins
need --root). With --calibration (a file of `speakerid calibrate`), the report adds Cllr and actual DCF (at
the first --p-target) of the raw and the calibrated scores, their floors minCllr and minDCF, and the FAR and
FRR that the stored threshold reaches on these trials.

An interval is the spread over --n-bootstrap resamples of the speakers (speaker/session/file: the first folder
of a relative path, the third component from the end of an absolute one), restricted to a group's trials:
two groups differ when their intervals do not overlap much, not when their point values differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speakerid.calibration import read_calibration_file
from speakerid.cli.options import add_bootstrap_arguments, add_output_arguments, probability, warn_about_speakers
from speakerid.data.audio import AudioError
from speakerid.data.lists import ListFormatError, read_scores, trial_files
from speakerid.io import check_new_file, write_json_atomic
from speakerid.report import (
    DURATIONS,
    P_TARGETS,
    calibration_check,
    file_durations,
    parse_bins_option,
    read_attributes,
    report_table,
    stratified_report,
    trial_groups,
    with_default_bins,
)

HELP = "EER and minDCF with confidence intervals, overall and by duration and trial attributes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, type=Path, help="labelled score file: enrol test score label")
    parser.add_argument("--root", type=Path, help="folder the trial paths are relative to; gives duration groups")
    parser.add_argument("--attributes", type=Path, help="tab-separated file with a header: enrol test name...")
    parser.add_argument("--bins", action="append", default=[], metavar="NAME=EDGES",
                        help="bin edges of enrol_duration, test_duration (seconds) or a numeric attribute, "
                             "e.g. enrol_duration=2,4,8 (repeatable)")
    parser.add_argument("--p-target", type=probability, nargs="+", default=list(P_TARGETS),
                        help="target priors of the minDCF columns (0.01 0.05)")
    parser.add_argument("--calibration", type=Path, help="a calibration file of `speakerid calibrate` to check here")
    add_bootstrap_arguments(parser)
    add_output_arguments(parser, "also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        if args.out is not None:
            check_new_file(args.out, args.overwrite, what="--out")
        args.p_target = list(dict.fromkeys(args.p_target))  # a repeated prior would repeat its column
        given = dict(parse_bins_option(text) for text in args.bins)
        durations_binned = sorted(set(given) & set(DURATIONS))
        if durations_binned and args.root is None:  # durations come from the audio files, under --root
            raise ValueError(f"--bins {', '.join(durations_binned)} needs --root: durations are read from the audio "
                             f"files")
        bins = with_default_bins(given)
        calibration = read_calibration_file(args.calibration) if args.calibration else None
        scores = read_scores(args.scores)
        labels = scores.require_labels("a report")
        attributes = read_attributes(args.attributes) if args.attributes else None
        durations = file_durations(args.root, trial_files(scores.trials)) if args.root else None
        groups = trial_groups(scores.enrol, scores.test, durations, attributes, bins, source=str(args.scores),
                              lines=scores.lines)
        rows = stratified_report(scores.scores, labels, scores.enrol, scores.test, groups, bins, args.p_target,
                                 args.n_bootstrap, args.confidence, args.seed)
        checked = None if calibration is None else calibration_check(
            scores.scores, labels, scores.enrol, scores.test, *calibration, args.p_target[0], args.n_bootstrap,
            args.confidence, args.seed)
    except (ListFormatError, ValueError, OSError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    report = {"scores": str(args.scores.resolve()), "root": str(args.root.resolve()) if args.root else None,
              "attributes": str(args.attributes.resolve()) if args.attributes else None,
              "n_trials": len(labels), "p_targets": args.p_target, "confidence": args.confidence,
              "n_bootstrap": args.n_bootstrap, "seed": args.seed,
              "bins": {name: list(b.edges) for name, b in bins.items() if name in groups},
              "rows": rows}
    print(report_table(rows, args.p_target, args.confidence))
    warn_about_speakers(scores.enrol, scores.test)
    if checked is not None:
        report["calibration"] = {"file": str(args.calibration.resolve()), **checked}
        t = checked["threshold"]
        print(f"\ncalibration {args.calibration}: Cllr {checked['cllr_raw']:.4f} raw -> {checked['cllr']:.4f} "
              f"calibrated (minCllr {checked['min_cllr']:.4f}); actual DCF(p={checked['p_target']:g}) "
              f"{checked['actual_dcf_raw']:.4f} raw -> {checked['actual_dcf']:.4f} (minDCF {checked['min_dcf']:.4f})")
        rule = t["kind"] if t["target"] is None else f"{t['kind']} {t['target']:g}"
        print(f"threshold {t['score']:.6g} ({rule}): FAR {100 * t['far']:.2f}% [{100 * t['far_ci'][0]:.2f}, "
              f"{100 * t['far_ci'][1]:.2f}], FRR {100 * t['frr']:.2f}% [{100 * t['frr_ci'][0]:.2f}, "
              f"{100 * t['frr_ci'][1]:.2f}]")
    if args.out is not None:
        write_json_atomic(args.out, report)
        print(f"written: {args.out}")
    return 0

