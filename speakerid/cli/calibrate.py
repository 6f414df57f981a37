"""Fit a calibration (scores -> log-likelihood ratios) and choose a decision threshold on a labelled score
file (`enrol test score label`, as `speakerid evaluate` writes it), with bootstrap intervals over speakers.

    speakerid calibrate --scores best_eval/vox1_o_cleaned.cosine.scores.txt --out cal.json            # EER threshold
    speakerid calibrate --scores scores.txt --out cal.json --target-far 0.01        # at most 1% false acceptances
    speakerid calibrate --scores scores.txt --out cal.json --operating-point dcf --p-target 0.01
    speakerid export --model best.pt --calibration cal.json ...                      # store it in a model file

The calibration is a linear logistic regression llr = slope * score + offset (natural log; BOSARIS's
prior-weighted objective at --prior). The threshold is a raw score (accept when score >= it):
--target-far F picks the lowest threshold whose false-acceptance rate is <= F, --operating-point eer the
equal-error-rate threshold, --operating-point dcf the minimum-DCF threshold at --p-target. The JSON holds
{"calibration": {slope, offset, prior}, "threshold": {score, kind, target, far, frr, score_ci, far_ci, frr_ci,
confidence, n_bootstrap}, "source": {scores, evaluation, scoring, model_sha256, model_provenance_sha256,
embedding_mean_sha256}}: the scoring, the model (and the checkpoint it was exported from) and the mean embedding
the scores were centred on come from the evaluation JSON beside the score file, and `speakerid export` and
`model.load_calibration` refuse the file for a model that is not that one, or does not score that way, or
subtracts another mean. The intervals come from resampling the
list's speakers (see speakerid.bootstrap.speaker_of). Printed: Cllr and actual DCF at --p-target of the raw
scores and of the calibrated LLRs, and the floors minCllr and minDCF, which no calibration changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speakerid.calibration import calibration_measures, calibration_source, fit_calibration, write_calibration_file
from speakerid.cli.options import add_bootstrap_arguments, add_output_arguments, probability, warn_about_speakers
from speakerid.data.lists import ListFormatError, read_scores
from speakerid.io import check_new_file
from speakerid.thresholds import choose_threshold

HELP = "calibrate scores to log-likelihood ratios and choose a threshold (FAR target, EER or DCF)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, type=Path, help="labelled score file: enrol test score label")
    add_output_arguments(parser, "calibration JSON to write", required=True)
    point = parser.add_mutually_exclusive_group()
    point.add_argument("--target-far", type=probability, metavar="FAR",
                       help="threshold for at most this false-acceptance rate, e.g. 0.01")
    point.add_argument("--operating-point", choices=("eer", "dcf"), default="eer",
                       help="eer (default) or dcf: the minimum-DCF threshold at --p-target")
    parser.add_argument("--p-target", type=probability, default=0.01,
                        help="target prior of the DCF: for --operating-point dcf and the printed DCFs (0.01)")
    parser.add_argument("--prior", type=probability, default=0.5, help="target prior that weights the calibration fit "
                        "(0.5: targets and non-targets alike, the usual choice)")
    add_bootstrap_arguments(parser)


def run(args: argparse.Namespace) -> int:
    kind, target = ("far", args.target_far) if args.target_far is not None else (
        args.operating_point, args.p_target if args.operating_point == "dcf" else None)
    try:
        check_new_file(args.out, args.overwrite, what="--out")
        scores = read_scores(args.scores)
        labels = scores.require_labels("calibration")
        calibration = fit_calibration(scores.scores, labels, prior=args.prior)
        threshold = choose_threshold(scores.scores, labels, scores.enrol, scores.test, kind, target,
                                     args.n_bootstrap, args.confidence, args.seed)
        measures = calibration_measures(scores.scores, labels, calibration, args.p_target)
        source = calibration_source(args.scores)
    except (ListFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    known = source["scoring"] is not None or source["model_sha256"] is not None
    write_calibration_file(args.out, calibration, threshold, source if known else None)  # none: as older files
    warn_about_speakers(scores.enrol, scores.test)

    n_target = int(labels.sum())
    print(f"{args.scores}: {len(labels)} trials ({n_target} target, {len(labels) - n_target} non-target)")
    unknown = [what for key, what in (("model_sha256", "model"), ("scoring", "scoring")) if source[key] is None]
    if "meansub" in (source["scoring"] or "") and source["embedding_mean_sha256"] is None:
        unknown.append("mean embedding")
    if unknown:
        print(f"warning: no evaluation JSON beside {args.scores}: {args.out} cannot record the "
              f"{' or the '.join(unknown)} of these scores, so export and load_calibration cannot check that they "
              f"match", file=sys.stderr)
    else:
        mean = source["embedding_mean_sha256"]
        print(f"scores: {source['scoring']} of model {source['model_sha256'][:12]}"
              + ("" if mean is None else f", centred on mean embedding {mean[:12]}"))
    sign = "-" if calibration.offset < 0 else "+"
    print(f"calibration: llr = {calibration.slope:.6g} * score {sign} {abs(calibration.offset):.6g} "
          f"(prior {args.prior:g})")
    m = measures
    print(f"Cllr {m['cllr_raw']:.4f} raw scores -> {m['cllr']:.4f} calibrated (minCllr {m['min_cllr']:.4f})")
    print(f"actual DCF(p={args.p_target:g}) {m['actual_dcf_raw']:.4f} raw scores -> {m['actual_dcf']:.4f} calibrated "
          f"(minDCF {m['min_dcf']:.4f})")
    level = f"{100 * threshold.confidence:g}%"
    what = "EER" if kind == "eer" else f"FAR <= {target:g}" if kind == "far" else f"minDCF at p={target:g}"
    print(f"threshold ({what}): score >= {threshold.score:.6g}, LLR {calibration.llr(threshold.score):.4g}; "
          f"{level} interval of the threshold [{threshold.score_ci[0]:.6g}, {threshold.score_ci[1]:.6g}]")
    print(f"  at it: FAR {100 * threshold.far:.2f}% [{100 * threshold.far_ci[0]:.2f}, {100 * threshold.far_ci[1]:.2f}]"
          f", FRR {100 * threshold.frr:.2f}% [{100 * threshold.frr_ci[0]:.2f}, {100 * threshold.frr_ci[1]:.2f}] "
          f"({level} intervals over {threshold.n_bootstrap} resamples of the speakers)")
    print(f"written: {args.out}")
    return 0

