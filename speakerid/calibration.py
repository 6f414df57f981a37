"""Score calibration: scores -> log-likelihood ratios, and the measures of how good such ratios are.

`Calibration` is the linear map llr = slope * score + offset (natural log), fitted by logistic regression
on the scores of a labelled trial list (the NIST SRE / BOSARIS tradition, `fit_calibration`). It is stored
in a model file as the plain dict of `to_dict()`, so the file stays loadable with
`torch.load(weights_only=True)`. A calibration file (`speakerid calibrate --out cal.json`) holds the keys
`calibration` (Calibration.to_dict()) and `threshold` (speakerid.thresholds.Threshold.to_dict()), which is
what a model file stores, and `source`: the scores it was fitted on (`calibration_source`). A slope, offset
and threshold hold only for scores of the same model (a model file and its checkpoint are one), scoring and
mean embedding, so `check_calibration_source` refuses the file for any other (files written before `source`
existed get a warning).

Measures (all on natural-log LLRs, BOSARIS's definitions):
- `cllr`: the log-likelihood-ratio cost in bits, 0 for perfect LLRs, 1 for LLRs that are always 0 (no
  information); large when confident LLRs are wrong.
- `min_cllr`: the Cllr of the best monotonic calibration of the same scores (PAV, `pav_llr`); Cllr - minCllr
  is the loss due to calibration alone.
- `actual_dcf`: the detection cost of the Bayes decisions these LLRs make at a prior and costs, normalised
  as speakerid.metrics' minDCF; minDCF is its floor, reached when the decision threshold is the best one.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from speakerid.io import read_json, write_json_atomic
from speakerid.metrics import compute_min_dcf, validate_scores
from speakerid.thresholds import Threshold


@dataclass(frozen=True)
class Calibration:
    slope: float
    offset: float
    prior: float = 0.5   # the target prior the fit weighted its classes with (0.5: both classes alike)

    def llr(self, scores) -> np.ndarray:
        """Natural-log likelihood ratios of `scores` (any shape)."""
        return self.slope * np.asarray(scores, dtype=np.float64) + self.offset

    def to_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        missing = {"slope", "offset"} - set(data)
        if missing:
            raise ValueError(f"calibration lacks {', '.join(sorted(missing))}")
        values = {}
        for key in ("slope", "offset", "prior"):
            if key in data:
                try:
                    values[key] = float(data[key])
                except (TypeError, ValueError):
                    raise ValueError(f"calibration {key} must be a number, got {data[key]!r}") from None
                if not math.isfinite(values[key]):
                    raise ValueError(f"calibration {key} must be finite, got {data[key]!r}")
        if not 0.0 < values.get("prior", 0.5) < 1.0:
            raise ValueError(f"calibration prior must be in (0, 1), got {values['prior']}")
        return cls(**values)


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _check_prior(name: str, p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {p}")


def fit_calibration(scores, labels, prior: float = 0.5) -> Calibration:
    """Linear logistic regression of scores to LLRs (BOSARIS's prior-weighted objective): minimises

        prior * mean_targets log(1 + e^-(llr + logit(prior)))
        + (1 - prior) * mean_nontargets log(1 + e^(llr + logit(prior)))

    over llr = slope * score + offset, so that llr + logit(prior) is the posterior log-odds at that prior.
    The weights make the fit independent of how many target and non-target trials the list happens to hold.
    """
    scores, labels = validate_scores(scores, labels)
    _check_prior("prior", prior)
    n_target, n_nontarget = int(labels.sum()), int((~labels).sum())
    if scores.min() == scores.max():
        raise ValueError(f"all {scores.size} scores are {scores[0]:g}: equal scores do not tell targets from "
                         f"non-targets, so there is nothing to calibrate")
    lowest_target, highest_nontarget = scores[labels].min(), scores[~labels].max()
    if lowest_target >= highest_nontarget:  # ties at one score count as no overlap: the slope still runs off
        how = ("every target score is above every non-target score" if lowest_target > highest_nontarget else
               f"target and non-target scores meet only at {lowest_target:g} (ties), and do not overlap otherwise")
        raise ValueError(f"{how}: with no overlap the best linear calibration has an infinite slope; calibrate on a "
                         f"larger or harder trial list")
    # Each class weighs its prior in total; the weights average 1 so the solver's tolerances mean the same
    # for any list size.
    weights = np.where(labels, prior / n_target, (1.0 - prior) / n_nontarget) * scores.size
    mean, std = scores.mean(), scores.std()  # standardised for the solver's conditioning, mapped back below
    regression = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            regression.fit(((scores - mean) / std)[:, None], labels, sample_weight=weights)
        except ConvergenceWarning as e:
            raise ValueError(f"the calibration fit did not converge ({e})") from None
    w, c = float(regression.coef_[0, 0]), float(regression.intercept_[0])
    slope, offset = w / std, c - w * mean / std - logit(prior)
    if slope <= 0:
        raise ValueError(f"the fitted calibration slope is {slope:.4g} <= 0: higher scores mean different "
                         f"speakers in these scores; are the labels (1 = same speaker) the right way round?")
    return Calibration(slope=float(slope), offset=float(offset), prior=float(prior))


def _llr_and_labels(llr, labels) -> tuple[np.ndarray, np.ndarray]:
    """Like validate_scores, but LLRs may be +-inf (PAV gives them at the ends)."""
    llr = np.asarray(llr, dtype=np.float64).ravel()
    if np.isnan(llr).any():
        raise ValueError(f"LLRs contain {np.count_nonzero(np.isnan(llr))} NaN values")
    _, labels = validate_scores(np.zeros_like(llr), labels)
    return llr, labels


def cllr(llr, labels) -> float:
    """Log-likelihood-ratio cost in bits: the mean of log2(1 + e^-llr) over targets and of log2(1 + e^llr)
    over non-targets, averaged over the two classes."""
    llr, labels = _llr_and_labels(llr, labels)
    target_cost = np.mean(np.logaddexp(0.0, -llr[labels]))
    nontarget_cost = np.mean(np.logaddexp(0.0, llr[~labels]))
    return float((target_cost + nontarget_cost) / (2.0 * math.log(2.0)))


def pav_llr(scores, labels) -> np.ndarray:
    """LLRs of the optimal monotonic (non-decreasing) calibration of these very scores: the PAV posterior
    of the trials' labels (isotonic regression), as log-odds, less the log-odds of the list's own target
    proportion. Tied scores get one LLR (the PAV pools them, as BOSARIS's opt_loglr does); the lowest
    block is -inf when it holds only non-targets and the highest +inf when it holds only targets."""
    scores, labels = validate_scores(scores, labels)
    posterior = IsotonicRegression(increasing=True).fit(scores, labels.astype(np.float64)).predict(scores)
    with np.errstate(divide="ignore"):
        log_odds = np.log(posterior) - np.log1p(-posterior)
    return log_odds - math.log(labels.sum() / (~labels).sum())


def min_cllr(scores, labels) -> float:
    """Cllr after the optimal monotonic calibration (PAV): the part of Cllr no calibration can remove."""
    return cllr(pav_llr(scores, labels), labels)


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR at and above which a Bayes decision accepts: -logit(effective prior) =
    log(c_fa * (1 - p_target) / (c_miss * p_target))."""
    _check_prior("p_target", p_target)
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be > 0, got {c_miss}, {c_fa}")
    return math.log(c_fa * (1.0 - p_target)) - math.log(c_miss * p_target)


def actual_dcf(llr, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised detection cost of accepting trials with llr >= bayes_threshold(p_target, c_miss, c_fa):
    (c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target)) / min(c_miss * p_target, c_fa * (1 - p_target)),
    the normalisation of speakerid.metrics.compute_min_dcf, so actual DCF >= minDCF on the same trials."""
    threshold = bayes_threshold(p_target, c_miss, c_fa)
    llr, labels = _llr_and_labels(llr, labels)
    p_miss = np.mean(llr[labels] < threshold)
    p_fa = np.mean(llr[~labels] >= threshold)
    cost = c_miss * p_miss * p_target + c_fa * p_fa * (1.0 - p_target)
    return float(cost / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def calibration_measures(scores, labels, calibration: Calibration, p_target: float = 0.01) -> dict[str, float]:
    """What calibration changes and what it cannot: Cllr and actual DCF (at p_target) of the raw scores read
    as LLRs (`_raw`) and of the calibrated LLRs, next to their floors minCllr and minDCF, which depend on
    the ranking of the scores alone."""
    llr = calibration.llr(scores)
    return {"p_target": p_target,
            "cllr_raw": cllr(scores, labels), "cllr": cllr(llr, labels), "min_cllr": min_cllr(scores, labels),
            "actual_dcf_raw": actual_dcf(scores, labels, p_target), "actual_dcf": actual_dcf(llr, labels, p_target),
            "min_dcf": compute_min_dcf(scores, labels, p_target)}


CALIBRATION_FILE_KEYS = ("calibration", "threshold")
SOURCE_KEYS = ("scores", "evaluation", "scoring", "model_sha256", "model_provenance_sha256", "embedding_mean_sha256")
# what a calibration file of an older speakerid records: the other source keys read as unknown (None)
_REQUIRED_SOURCE_KEYS = SOURCE_KEYS[:4]
# `speakerid evaluate`'s score file names: <name>.<scoring>.scores.txt beside <name>.<scoring>.json
_SCORING_NAME = re.compile(r"^(cosine|multicrop\d+)(_meansub)?(_asnorm\d+)?$")


def calibration_source(scores_path: str | os.PathLike) -> dict[str, str | None]:
    """What a calibration fitted on `scores_path` applies to, from the evaluation JSON beside the score file
    (`<name>.<scoring>.scores.txt` -> `<name>.<scoring>.json`): the scoring, the evaluated model's SHA-256 and
    that of the checkpoint it was exported from (`provenance_sha256`), and the SHA-256 of the mean embedding
    its scores were centred on (`speakerid.scoring.mean_sha256`). Without the JSON, the scoring the file's
    name gives, and no model. None where unknown."""
    scores_path = Path(scores_path).resolve()
    source: dict[str, str | None] = dict.fromkeys(SOURCE_KEYS)
    source["scores"] = str(scores_path)
    if not scores_path.name.endswith(".scores.txt"):
        return source
    stem = scores_path.name[:-len(".scores.txt")]
    report_path = scores_path.with_name(f"{stem}.json")
    if report_path.is_file():
        report = read_json(report_path, "evaluation JSON")
        if isinstance(report, dict) and isinstance(report.get("scoring"), str):
            from speakerid.model_file import evaluated_model_identities

            model = report.get("checkpoint_sha256")
            exported_from = sorted(evaluated_model_identities(report) - {model})
            return {**source, "evaluation": str(report_path), "scoring": report["scoring"], "model_sha256": model,
                    "model_provenance_sha256": exported_from[0] if exported_from else None,
                    "embedding_mean_sha256": _evaluated_mean_sha256(report, report_path)}
    scoring = stem.rpartition(".")[2]
    return {**source, "scoring": scoring if _SCORING_NAME.match(scoring) else None}


def _evaluated_mean_sha256(report: dict[str, Any], report_path: Path) -> str | None:
    """The SHA-256 of the mean an evaluation subtracted: recorded in its JSON, or (an evaluation of an older
    speakerid) that of the mean file it names, while that file is there."""
    if report.get("embedding_mean_sha256") is not None or not report.get("embedding_mean"):
        return report.get("embedding_mean_sha256")
    from speakerid.evaluation.store import read_mean_file
    from speakerid.scoring import mean_sha256

    try:
        return mean_sha256(read_mean_file(report["embedding_mean"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # unknown: load_calibration warns that the mean cannot be checked


def _exported_from(source: dict[str, str | None]) -> set[str]:
    """The identities of the model a calibration's evaluation JSON names (model_file.evaluated_model_identities),
    for a calibration file that does not record the checkpoint that model was exported from."""
    from speakerid.model_file import evaluated_model_identities

    try:
        report = read_json(source["evaluation"], "evaluation JSON") if source.get("evaluation") else None
    except (OSError, ValueError):
        return set()
    return evaluated_model_identities(report) if isinstance(report, dict) else set()


def check_calibration_source(path: str | os.PathLike, source: dict[str, str | None] | None, scoring: str,
                             models: set[str], mean_sha256: str | None = None) -> str | None:
    """Refuse (ValueError) a calibration file whose scores came from another scoring than `scoring` (what the
    model it goes with computes: `cosine`, or `cosine_meansub` with a mean embedding), from another model than
    `models` (the SHA-256s the model is known by: its own and its checkpoint's), or, mean-subtracted, centred on
    another mean than the model's (`mean_sha256`). A warning to show where the file does not say."""
    if source is None:
        return (f"{path} does not record which scores it was fitted on (written by an older speakerid): its "
                f"threshold holds only if they were {scoring} scores of this model")
    if source["scoring"] is not None and source["scoring"] != scoring:
        raise ValueError(f"{path} was fitted on {source['scoring']} scores ({source['scores']}), but this model "
                         f"computes {scoring} scores: its threshold and LLRs do not apply to them; calibrate "
                         f"{scoring} scores of this model" + (" (or export with the same --mean-from)"
                                                              if "meansub" in source["scoring"] else ""))
    # a model file is the same model as the checkpoint it was exported from, either way round
    theirs = {source.get("model_sha256"), source.get("model_provenance_sha256")} - {None}
    if theirs and not theirs & models and source.get("model_provenance_sha256") is None:
        theirs |= _exported_from(source)  # a file of an older speakerid: its evaluation may tell
    if theirs and not theirs & models:
        raise ValueError(f"{path} was fitted on scores of another model (SHA-256 {source['model_sha256']}, "
                         f"{source['evaluation']}): its threshold and LLRs do not apply to this one")
    centred = "meansub" in scoring
    fitted_mean = source.get("embedding_mean_sha256")
    if centred and fitted_mean is not None and fitted_mean != mean_sha256:
        raise ValueError(f"{path} was fitted on scores centred on another mean embedding (SHA-256 {fitted_mean[:12]}, "
                         f"{source['evaluation']}) than this model subtracts (SHA-256 {str(mean_sha256)[:12]}): its "
                         f"threshold and LLRs do not apply to its scores; calibrate scores of this model with its own "
                         f"mean (evaluate the model file), or take the mean that evaluation subtracted (export "
                         f"--mean-from <its .mean.npz>)")
    unknown = [what for key, what in (("scoring", "scoring"), ("model_sha256", "model")) if source[key] is None]
    if centred and fitted_mean is None:
        unknown.append("mean embedding")
    if unknown:
        return (f"{path}: the {' and '.join(unknown)} of the scores it was fitted on ({source['scores']}) "
                f"{'is' if len(unknown) == 1 else 'are'} unknown (no evaluation JSON beside them, or one of an older "
                f"speakerid): its threshold holds only for {scoring} scores of this model")
    return None


def write_calibration_file(path: str | os.PathLike, calibration: Calibration, threshold: Threshold,
                           source: dict[str, str | None] | None = None) -> None:
    """The JSON `speakerid calibrate` writes: {"calibration": ..., "threshold": ...} (what a model file stores)
    and, when given, "source" (calibration_source)."""
    record = {"calibration": calibration.to_dict(), "threshold": threshold.to_dict()}
    write_json_atomic(path, record if source is None else {**record, "source": source})


def _read_calibration_json(path: Path) -> dict[str, Any]:
    data = read_json(path, "calibration file")
    keys = set(data) if isinstance(data, dict) else set()
    if not isinstance(data, dict) or not set(CALIBRATION_FILE_KEYS) <= keys <= {*CALIBRATION_FILE_KEYS, "source"}:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: a calibration file has exactly the keys calibration and threshold, and "
                         f"optionally source (as `speakerid calibrate` writes it), got {got}")
    return data


def read_calibration_file(path: str | os.PathLike) -> tuple[Calibration, Threshold]:
    """Read a calibration file, with errors that name it and the key at fault."""
    path = Path(path)
    data = _read_calibration_json(path)
    try:
        return Calibration.from_dict(data["calibration"]), Threshold.from_dict(data["threshold"])
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: {e}") from None


def read_calibration_source(path: str | os.PathLike) -> dict[str, str | None] | None:
    """The `source` of a calibration file (calibration_source), or None for a file written without one."""
    path = Path(path)
    source = _read_calibration_json(path).get("source")
    if source is None:
        return None
    if not (isinstance(source, dict) and set(_REQUIRED_SOURCE_KEYS) <= set(source) <= set(SOURCE_KEYS)
            and all(v is None or isinstance(v, str) for v in source.values())):
        raise ValueError(f"{path}: source must hold {', '.join(SOURCE_KEYS)} (strings or null; the last "
                         f"{len(SOURCE_KEYS) - len(_REQUIRED_SOURCE_KEYS)} may be missing), got {source!r}")
    return {**dict.fromkeys(SOURCE_KEYS), **source}
