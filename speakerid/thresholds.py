"""Decision thresholds for deployment, each with bootstrap confidence intervals over speakers.

A threshold is a raw score: a trial is accepted when its score is >= the threshold (speakerid.metrics'
convention). It is chosen on a labelled trial list by one of three rules:

- `far`: the lowest threshold whose false-acceptance rate on the list is <= a target FAR (accept as much
  as possible while false acceptances stay within the target);
- `eer`: the equal-error-rate threshold of speakerid.metrics.compute_eer;
- `dcf`: the threshold of the minimum detection cost at a target prior p_target (c_miss = c_fa = 1).

The intervals come from resampling the list's speakers (speakerid.bootstrap): `score_ci` is the spread of
the threshold the same rule picks on other speaker samples; `far_ci` and `frr_ci` are the spread of the
error rates that this one threshold gives on them, i.e. what to expect of it on new speakers like these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from speakerid.bootstrap import SpeakerResampler, percentile_interval
from speakerid.metrics import OperatingPoints, SortedTrials, eer_at, min_dcf_at, validate_scores

KINDS = ("far", "eer", "dcf")


@dataclass(frozen=True)
class Threshold:
    score: float                   # accept when score >= this
    kind: str                      # far, eer or dcf
    target: float | None           # the target FAR (far), p_target (dcf) or None (eer)
    far: float                     # error rates at `score` on the list it was chosen on
    frr: float
    score_ci: tuple[float, float]  # bootstrap intervals over speakers, at `confidence`
    far_ci: tuple[float, float]
    frr_ci: tuple[float, float]
    confidence: float
    n_bootstrap: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; an unbounded interval end (a resample where no threshold met the rule) is None."""

        def number(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"score": float(self.score), "kind": self.kind, "target": self.target,
                "far": float(self.far), "frr": float(self.frr),
                "score_ci": [number(x) for x in self.score_ci], "far_ci": [number(x) for x in self.far_ci],
                "frr_ci": [number(x) for x in self.frr_ci], "confidence": float(self.confidence),
                "n_bootstrap": int(self.n_bootstrap)}

    @classmethod
    def from_dict(cls, data: dict) -> Threshold:
        missing = {"score", "kind"} - set(data)
        if missing:
            raise ValueError(f"threshold lacks {', '.join(sorted(missing))}")
        if data["kind"] not in KINDS:
            raise ValueError(f"threshold kind must be one of {', '.join(KINDS)}, got {data['kind']!r}")

        def number(key: str, value: Any) -> float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError(f"threshold {key} must be a number, got {value!r}") from None

        def interval(key: str) -> tuple[float, float]:
            lo, hi = data.get(key) or (None, None)
            return (-math.inf if lo is None else number(key, lo), math.inf if hi is None else number(key, hi))

        score = number("score", data["score"])
        if not math.isfinite(score):
            raise ValueError(f"threshold score must be finite, got {data['score']!r}")
        target = data.get("target")
        nan = float("nan")
        return cls(score=score, kind=data["kind"], target=None if target is None else number("target", target),
                   far=number("far", data.get("far", nan)), frr=number("frr", data.get("frr", nan)),
                   score_ci=interval("score_ci"), far_ci=interval("far_ci"), frr_ci=interval("frr_ci"),
                   confidence=number("confidence", data.get("confidence", nan)),
                   n_bootstrap=int(number("n_bootstrap", data.get("n_bootstrap", 0))))


def check_target(kind: str, target: float | None) -> None:
    """A target FAR for `far`, a p_target for `dcf`, none for `eer`."""
    if kind not in KINDS:
        raise ValueError(f"threshold kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "eer":
        if target is not None:
            raise ValueError("the eer threshold takes no target")
    elif target is None or not 0.0 < target < 1.0:
        what = "target FAR" if kind == "far" else "p_target"
        raise ValueError(f"the {kind} threshold needs a {what} in (0, 1), got {target}")


def threshold_at(points: OperatingPoints, kind: str, target: float | None) -> float:
    """The threshold the rule `kind` picks among operating points (+inf: accept nothing)."""
    if kind == "far":
        # Integers against the count the target allows; the tolerance keeps 3 of 300 at a 1% target.
        within = points.false_accepts <= target * points.n_nontarget * (1.0 + 1e-12)
        return float(points.thresholds[np.flatnonzero(within)[-1]])
    if kind == "eer":
        return eer_at(points)[1]
    return min_dcf_at(points, target, 1.0, 1.0)[1]


def error_rates(scores, labels, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) of accepting trials with score >= threshold."""
    scores, labels = validate_scores(scores, labels)
    accepted = scores >= threshold
    return float(accepted[~labels].mean()), float((~accepted[labels]).mean())


@dataclass(frozen=True)
class Rates:
    """The error rates of one threshold on a list, with bootstrap intervals over its speakers."""

    far: float
    frr: float
    far_ci: tuple[float, float]
    frr_ci: tuple[float, float]


def rates_at(scores, labels, resampler: SpeakerResampler, threshold: float, n_bootstrap: int = 1000,
             confidence: float = 0.95, seed: int = 0) -> Rates:
    """FAR and FRR of accepting score >= threshold, and their spread over speaker resamples: what to expect
    of this threshold on new speakers like the list's."""
    scores, labels = validate_scores(scores, labels)
    if len(resampler.enrol_index) != scores.size:
        raise ValueError(f"{scores.size} scores but {len(resampler.enrol_index)} trials")
    rates, _ = _bootstrap(scores, labels, resampler, threshold, n_bootstrap, confidence, seed)
    return rates


Rule = tuple[SortedTrials, str, "float | None"]  # a threshold rule on a list: its sorted trials, kind, target


def _bootstrap(scores: np.ndarray, labels: np.ndarray, resampler: SpeakerResampler, threshold: float,
               n_bootstrap: int, confidence: float, seed: int, rule: Rule | None = None) -> tuple[Rates, list[float]]:
    """The rates of `threshold` with their intervals and, given a `rule` (sorted trials, kind, target), the
    threshold the rule picks on each resample: one draw of the resamples serves both."""
    far, frr = error_rates(scores, labels, threshold)
    accepted = scores >= threshold
    false_accept = (accepted & ~labels).astype(np.int64)
    miss = (~accepted & labels).astype(np.int64)
    is_target = labels.astype(np.int64)
    boot_far, boot_frr, boot_thresholds = [], [], []
    for weights in resampler.resamples(n_bootstrap, seed, labels):
        targets = int(weights @ is_target)
        boot_far.append((weights @ false_accept) / (int(weights.sum()) - targets))
        boot_frr.append((weights @ miss) / targets)
        if rule is not None:
            sorted_trials, kind, target = rule
            boot_thresholds.append(threshold_at(sorted_trials.points(weights), kind, target))
    return (Rates(far, frr, percentile_interval(boot_far, confidence), percentile_interval(boot_frr, confidence)),
            boot_thresholds)


def choose_threshold(scores, labels, enrol: Sequence[str], test: Sequence[str], kind: str = "eer",
                     target: float | None = None, n_bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> Threshold:
    """The threshold of rule `kind` (with its `target`) on a labelled trial list, with bootstrap intervals
    over the speakers of the trials' `enrol` and `test` paths (module docstring)."""
    check_target(kind, target)
    scores, labels = validate_scores(scores, labels)
    sorted_trials = SortedTrials(scores, labels)
    score = threshold_at(sorted_trials.points(), kind, target)
    if not math.isfinite(score):
        raise ValueError(f"on these trials the {kind} rule{'' if target is None else f' at {target:g}'} accepts no "
                         f"trial at all: the highest-scoring trials are non-targets; a smaller target needs more "
                         f"non-target trials ({int(labels.size - labels.sum())} here)")
    resampler = SpeakerResampler(enrol, test)
    rates, boot_scores = _bootstrap(scores, labels, resampler, score, n_bootstrap, confidence, seed,
                                    rule=(sorted_trials, kind, target))
    return Threshold(score=score, kind=kind, target=target, far=rates.far, frr=rates.frr,
                     score_ci=percentile_interval(boot_scores, confidence), far_ci=rates.far_ci,
                     frr_ci=rates.frr_ci, confidence=confidence, n_bootstrap=n_bootstrap)
