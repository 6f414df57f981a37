"""Verification metrics: EER and minimum detection cost, in O(n log n).

Operating points are taken at every distinct score: a trial is accepted when its score is >= the
threshold, so tied scores move together. The ROC runs through these points from 'accept nothing'
(FAR 0, FRR 1) to 'accept everything' (FAR 1, FRR 0). The EER is where the straight segments between
consecutive points cross FAR = FRR (for a group of ties this is the error of a random tie-break), so a
set of all-equal scores gives 50%. minDCF is the normalised detection cost at the best of these points.
Trials may be counted with integer weights (a bootstrap resample counts a trial as often as it was drawn);
`SortedTrials` sorts once for many such weightings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OperatingPoints:
    """Error counts at every threshold, most strict first. Counts stay integers so that comparisons such as
    FAR == FRR are exact (1 - 2/3 != 1/3 in floating point)."""

    thresholds: np.ndarray        # descending; +inf first ('accept nothing')
    false_accepts: np.ndarray     # non-targets with score >= threshold, non-decreasing
    misses: np.ndarray            # targets with score < threshold, non-increasing
    n_target: int
    n_nontarget: int

    @property
    def far(self) -> np.ndarray:
        return self.false_accepts / self.n_nontarget

    @property
    def frr(self) -> np.ndarray:
        return self.misses / self.n_target


def validate_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Scores as finite float64 and labels as bool, one each per trial, with both classes present."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores contain {np.count_nonzero(~np.isfinite(scores))} non-finite values")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 (non-target) or 1 (target)")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("need at least one target and one non-target trial")
    return scores, labels


class SortedTrials:
    """Scores sorted once, with their groups of ties, so that the operating points of many weightings of
    the same trials (bootstrap resamples) cost O(n) each instead of a sort each."""

    def __init__(self, scores, labels):
        scores, labels = validate_scores(scores, labels)
        self.order = np.argsort(-scores, kind="stable")
        sorted_scores = scores[self.order]
        self.sorted_labels = labels[self.order]
        # The last index of each group of equal scores: thresholds are taken between groups, never inside one.
        ends = np.flatnonzero(np.diff(sorted_scores)) if sorted_scores.size > 1 else np.array([], dtype=int)
        self.group_ends = np.append(ends, sorted_scores.size - 1)
        self.thresholds = np.concatenate(([np.inf], sorted_scores[self.group_ends]))

    def points(self, weights=None) -> OperatingPoints:
        """Operating points with each trial counted `weights` times (non-negative integers; None: once)."""
        if weights is None:
            accepted = np.arange(1, self.sorted_labels.size + 1, dtype=np.int64)
            accepted_targets = np.cumsum(self.sorted_labels, dtype=np.int64)
        else:
            weights = np.asarray(weights)
            if weights.shape != self.order.shape or not np.issubdtype(weights.dtype, np.integer) or np.any(weights < 0):
                raise ValueError(f"weights must be {self.order.size} non-negative integers (trial counts)")
            sorted_weights = weights[self.order].astype(np.int64)
            accepted = np.cumsum(sorted_weights)
            accepted_targets = np.cumsum(np.where(self.sorted_labels, sorted_weights, 0))
        accepted, accepted_targets = accepted[self.group_ends], accepted_targets[self.group_ends]
        accepted_nontargets = accepted - accepted_targets
        n_target, n_nontarget = int(accepted_targets[-1]), int(accepted_nontargets[-1])
        if n_target == 0 or n_nontarget == 0:
            raise ValueError("EER and minDCF need at least one target and one non-target trial")
        return OperatingPoints(
            thresholds=self.thresholds,
            false_accepts=np.concatenate(([0], accepted_nontargets)),
            misses=np.concatenate(([n_target], n_target - accepted_targets)),
            n_target=n_target,
            n_nontarget=n_nontarget,
        )


def operating_points(scores, labels, weights=None) -> OperatingPoints:
    """Error counts at every distinct score; `weights` (integers) counts trials more than once, or not at
    all: a group of ties whose trials all have weight 0 repeats the counts of the point before it."""
    return SortedTrials(scores, labels).points(weights)


def eer_at(points: OperatingPoints) -> tuple[float, float]:
    """(EER, threshold) of operating points; compute_eer says what the threshold is."""
    # (FRR - FAR) * n_target * n_nontarget, exactly, as integers: decreasing from + to - (strictly, unless
    # weights of 0 repeat a point; then the first of the repeats is taken).
    gap = points.misses * points.n_nontarget - points.false_accepts * points.n_target
    i = int(np.argmax(gap <= 0))
    far = points.far
    if gap[i] == 0:
        eer = far[i]
    else:
        fraction = gap[i - 1] / (gap[i - 1] - gap[i])
        eer = far[i - 1] + fraction * (far[i] - far[i - 1])
    return float(eer), float(points.thresholds[i])


def min_dcf_at(points: OperatingPoints, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    """(minDCF, threshold) of operating points, normalised as compute_min_dcf says."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be > 0, got {c_miss}, {c_fa}")
    cost = c_miss * points.frr * p_target + c_fa * points.far * (1.0 - p_target)
    i = int(np.argmin(cost))
    return float(cost[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(points.thresholds[i])


def compute_eer(scores, labels, return_threshold: bool = False):
    """Equal error rate as a fraction in [0, 1] (multiply by 100 for %).

    With return_threshold, also a threshold to use for decisions (accept when score >= threshold): that of
    the most strict operating point where FRR <= FAR, so there FRR <= EER <= FAR."""
    eer, threshold = eer_at(operating_points(scores, labels))
    return (eer, threshold) if return_threshold else eer


def compute_min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0,
                    return_threshold: bool = False):
    """Minimum normalised detection cost: min over thresholds of
    c_miss*P_miss*p_target + c_fa*P_fa*(1-p_target), divided by min(c_miss*p_target, c_fa*(1-p_target))."""
    min_dcf, threshold = min_dcf_at(operating_points(scores, labels), p_target, c_miss, c_fa)
    return (min_dcf, threshold) if return_threshold else min_dcf


def verification_metrics(scores, labels, p_targets=(0.01, 0.05), with_thresholds: bool = False) -> dict[str, float]:
    """EER and minDCF at each p_target, keyed as they are logged: eer, min_dcf_p0.01, min_dcf_p0.05. The
    scores are sorted once for all of them. with_thresholds adds eer_threshold, min_dcf_p0.01_threshold, ..."""
    points = operating_points(scores, labels)
    eer, threshold = eer_at(points)
    metrics = {"eer": eer}
    thresholds = {"eer_threshold": threshold}
    for p in p_targets:
        metrics[f"min_dcf_p{p:g}"], thresholds[f"min_dcf_p{p:g}_threshold"] = min_dcf_at(points, p, 1.0, 1.0)
    return {**metrics, **thresholds} if with_thresholds else metrics


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at every operating point, FAR rising: the points a DET plot draws."""
    points = operating_points(scores, labels)
    return points.far, points.frr


def format_eer(eer: float) -> str:
    """An EER (a fraction) as every log line and command shows it: a percentage with two decimals, '7.34%'."""
    return f"{100 * eer:.2f}%"
