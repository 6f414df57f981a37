"""Do two recordings come from the same speaker? Prints the score, the calibrated log-likelihood ratio when
the model file has a calibration (with --threshold-from, when that evaluation scored as the model does), the
threshold and the decision; exits 0 for the same speaker, 1 for
different speakers, 2 on any error (so a shell can branch on it).

    speakerid verify --model model.pt a.wav b.wav                # threshold stored in the model file
    speakerid verify --model best.pt --threshold 0.35 a.wav b.wav
    speakerid evaluate --model best.pt eval=vox1_o eval.dir=/data/voxceleb1           # once, then:
    speakerid verify --model best.pt --threshold-from best_eval/vox1_o_cleaned.cosine.json a.wav b.wav

The threshold is --threshold, else the EER threshold of --threshold-from (an evaluation of this model, of the
checkpoint a model file was exported from, or of a model file exported from this checkpoint: the pair is then
scored as that evaluation scored its trials,
full utterance or multi-crop, with its mean subtraction and AS-norm), else the model file's own (`speakerid export
--calibration`). Otherwise scores are cosine similarities, less the model file's mean embedding if it has one.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from speakerid.data.audio import AudioError
from speakerid.data.lists import Trial

HELP = "same speaker or not: score, LLR, threshold and decision (exit 0 same, 1 different, 2 error)"

SAME, DIFFERENT, ERROR = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--checkpoint", dest="model", required=True,
                        help="a model file, a checkpoint or an averaged checkpoint")
    parser.add_argument("audio", nargs=2, type=Path, help="the two recordings (wav or flac)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=finite_number, help="a score threshold (instead of the model file's)")
    threshold.add_argument("--threshold-from", type=Path,
                           help="the JSON of a `speakerid evaluate` run of this model: its scoring and its EER "
                                "threshold are used")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def finite_number(text: str) -> float:
    """argparse type: a finite number (`nan` would reject every pair, `inf` too)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from speakerid.speaker_model import Verification, load

    try:
        for path in args.audio:
            if path.is_dir():
                raise IsADirectoryError(f"{path} is a folder, not an audio file: give one recording (to embed a "
                                        f"folder's files, use speakerid embed --folder)")
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
        model = load(args.model, args.device)
        if args.threshold_from is not None:
            from speakerid.io import read_json

            report = read_json(args.threshold_from, "evaluation report")
            score, threshold, source = score_as_evaluated(model, args.audio, report, args.threshold_from, args.model)
            result = Verification(score, llr_as_evaluated(model, score, report), score >= threshold, threshold)
        else:
            result = model.verify(*args.audio, threshold=args.threshold)
            if result.threshold is None:
                raise ValueError(f"{args.model} stores no threshold: give --threshold or --threshold-from, or "
                                 f"export a model file with one (speakerid export --calibration cal.json)")
            source = "given" if args.threshold is not None else _describe(model.threshold)
        if not math.isfinite(result.score):  # `score >= threshold` is False for NaN: never "different speakers"
            raise ValueError(f"the score of {args.audio[0]} and {args.audio[1]} is {result.score}, not a number "
                             f"that can decide")
    except (AudioError, OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ERROR
    except Exception as e:  # exit 1 means "different speakers": no failure may end with it
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return ERROR
    print(f"score {result.score:.4f}")
    if result.llr is not None:
        print(f"LLR {result.llr:.4f} (calibrated log-likelihood ratio, natural log: above 0 favours the same "
              f"speaker)")
    print(f"threshold {result.threshold:.4f} ({source})")
    print("same speaker" if result.same else "different speakers")
    return SAME if result.same else DIFFERENT


def _describe(threshold: dict) -> str:
    target = threshold.get("target")
    return f"model file: {threshold['kind']}" + (f" at {target:g}" if target is not None else "")


def llr_as_evaluated(model, score: float, report: dict) -> float | None:
    """The model's calibrated LLR of a score of the evaluation's scoring, when that is the scoring the
    calibration holds for (the model's own: cosine, or cosine_meansub around the model's mean); else None."""
    if model.calibration is None:
        return None
    same_mean = report.get("embedding_mean_sha256") == model.mean_sha256 or report.get("embedding_mean_sha256") is None
    if report.get("scoring") != model.scoring or not same_mean:
        return None
    return float(model.calibration.llr(score))


def score_as_evaluated(model, audio: list[Path], report: dict, report_path: Path, model_path: str
                       ) -> tuple[float, float, str]:
    """(score, EER threshold, where the threshold comes from): the pair scored as the evaluation run whose JSON
    (`report`, read from `report_path`) scored its trials."""
    from speakerid.evaluation import ExtractionOptions, load_embeddings
    from speakerid.evaluation.store import read_mean_file
    from speakerid.model_file import evaluated_model_identities
    from speakerid.scoring import Cohort, as_norm, mean_sha256, raw_scores

    if not isinstance(report, dict):
        raise ValueError(f"{report_path}: not an evaluation report (a JSON object)")
    if report.get("eer_threshold") is None:
        raise ValueError(f"{report_path}: no eer_threshold (was the evaluated list without labels?)")
    value = report["eer_threshold"]
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{report_path}: eer_threshold {value!r} is not a finite number")
    # a model file is the same model as the checkpoint it was exported from, either way round
    if not evaluated_model_identities(report, model.loaded.identities) & model.loaded.identities:
        raise ValueError(f"{report_path} was measured with another model ({report.get('checkpoint')}): its threshold "
                         f"does not apply to {model_path}")
    options = ExtractionOptions(**report["embedding"])
    paths = [str(p.resolve()) for p in audio]
    embeddings = model.embed_files(paths, "/", options)
    if report.get("embedding_mean"):  # the mean that evaluation subtracted (the AS-norm cohort is stored centred)
        mean = read_mean_file(report["embedding_mean"])
        recorded = report.get("embedding_mean_sha256")
        if recorded is not None and mean_sha256(mean) != recorded:
            raise ValueError(f"{report['embedding_mean']} is not the mean embedding {report_path} subtracted (SHA-256 "
                             f"{mean_sha256(mean)[:12]}, recorded {recorded[:12]}): it was replaced since; evaluate "
                             f"again")
        embeddings = embeddings.centred(mean)
    trial = [Trial(None, paths[0], paths[1])]
    score = raw_scores(embeddings, trial, options.mode)
    if report.get("asnorm"):
        cohort, _ = load_embeddings(report["cohort"])
        score = as_norm(score, embeddings, trial, Cohort(cohort.keys, cohort.full.astype(np.float64)),
                        report["asnorm"]["top_k"], options.mode)
    return float(score[0]), float(report["eer_threshold"]), f"EER threshold of {report['name']}, {report['scoring']}"
