"""EER and minDCF: hand-worked examples (ties included) and a brute-force reference over every threshold."""

import numpy as np
import pytest

from speakerid.metrics import compute_eer, compute_min_dcf, det_curve, verification_metrics


def brute_force(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Count errors directly at every threshold (accept when score >= t), most strict first."""
    scores = np.asarray(scores, float)
    labels = np.asarray(labels).astype(bool)
    thresholds = [np.inf] + sorted(set(scores.tolist()), reverse=True)
    far = [np.mean(scores[~labels] >= t) for t in thresholds]
    frr = [np.mean(scores[labels] < t) for t in thresholds]
    eer = None
    for i in range(1, len(thresholds)):
        g0, g1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
        if g0 > 0 >= g1:
            eer = far[i] if g1 == 0 else far[i - 1] + g0 / (g0 - g1) * (far[i] - far[i - 1])
            break
    dcf = min(c_miss * r * p_target + c_fa * a * (1 - p_target) for a, r in zip(far, frr))
    return eer, dcf / min(c_miss * p_target, c_fa * (1 - p_target))


def trials(targets, nontargets):
    return np.r_[targets, nontargets], np.r_[np.ones(len(targets)), np.zeros(len(nontargets))]


def test_hand_worked_crossing_at_an_operating_point():
    # sorted: .9T .8N .7T .4T .3N .2N -> after .7: FAR 1/3, FRR 1/3
    s, y = trials([0.9, 0.7, 0.4], [0.8, 0.3, 0.2])
    assert compute_eer(s, y) == pytest.approx(1 / 3)
    eer, threshold = compute_eer(s, y, return_threshold=True)
    assert threshold == 0.7
    # p=0.5: DCF = FAR + FRR; best at threshold 0.4 (FAR 1/3, FRR 0)
    assert compute_min_dcf(s, y, p_target=0.5) == pytest.approx(1 / 3)
    # p=0.01: DCF = FRR + 99 FAR; best at threshold 0.9 (FAR 0, FRR 2/3)
    assert compute_min_dcf(s, y, p_target=0.01) == pytest.approx(2 / 3)


def test_hand_worked_crossing_between_points():
    # points (0,1) (0,.5) (1/3,.5) (1/3,0): the vertical segment at FAR 1/3 crosses the diagonal
    s, y = trials([0.9, 0.5], [0.8, 0.1, 0.05])
    assert compute_eer(s, y) == pytest.approx(1 / 3)


def test_tied_scores_move_together():
    # .9T then the tie {.5T, .5N}: points (0,.5) -> (.5,0); the segment crosses at .25
    s, y = trials([0.9, 0.5], [0.5, 0.1])
    assert compute_eer(s, y) == pytest.approx(0.25)
    # A threshold can't split a tie: at p=0.5 the best cost is min(0+.5, .5+0, 0+1, 1+0) = 0.5
    assert compute_min_dcf(s, y, p_target=0.5) == pytest.approx(0.5)


def test_all_equal_scores_give_chance():
    s, y = trials([0.3, 0.3, 0.3], [0.3, 0.3])
    assert compute_eer(s, y) == pytest.approx(0.5)
    assert compute_min_dcf(s, y, p_target=0.01) == pytest.approx(1.0)


def test_single_target():
    s, y = trials([0.3], [0.9, 0.2, 0.1, 0.0])
    assert compute_eer(s, y) == pytest.approx(0.25)


def test_perfect_and_inverted_separation():
    s, y = trials([2.0, 3.0], [0.0, 1.0])
    assert compute_eer(s, y) == 0.0
    assert compute_min_dcf(s, y) == 0.0
    assert compute_eer(-s, y) == 1.0


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_random_and_tied_scores(seed):
    rng = np.random.default_rng(seed)
    n_t, n_n = rng.integers(1, 40), rng.integers(1, 60)
    s, y = trials(rng.normal(1.0, 1.0, n_t), rng.normal(0.0, 1.0, n_n))
    if seed % 3 == 0:
        s = np.round(s, 1)  # many ties
    if seed % 4 == 1:
        s = np.round(s)     # few distinct values
    order = rng.permutation(len(s))
    s, y = s[order], y[order]
    for p in (0.01, 0.05, 0.5):
        eer, dcf = brute_force(s, y, p_target=p, c_miss=1.0, c_fa=1.0)
        assert abs(compute_eer(s, y) - eer) < 1e-12
        assert abs(compute_min_dcf(s, y, p_target=p) - dcf) < 1e-12
    eer, dcf = brute_force(s, y, p_target=0.05, c_miss=10.0, c_fa=1.0)
    assert abs(compute_min_dcf(s, y, p_target=0.05, c_miss=10.0, c_fa=1.0) - dcf) < 1e-12


def test_named_metrics_for_logging():
    s, y = trials([0.9, 0.7, 0.4], [0.8, 0.3, 0.2])
    m = verification_metrics(s, y)
    assert set(m) == {"eer", "min_dcf_p0.01", "min_dcf_p0.05"}


@pytest.mark.parametrize("scores,labels,match", [
    ([0.1, 0.2], [1, 1], "at least one target and one non-target"),
    ([0.1, 0.2], [1, 2], "labels must be 0"),
    ([0.1, np.nan], [1, 0], "non-finite"),
    ([0.1], [1, 0], "differ in length"),
])
def test_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_eer(scores, labels)


def adversarial_sets():
    """Score sets that break careless implementations: ties everywhere, one target or one non-target,
    targets all below non-targets, huge and tiny magnitudes."""
    rng = np.random.default_rng(7)
    yield "all equal", *trials([0.5] * 7, [0.5] * 13)
    yield "single target", *trials([0.2], rng.normal(0, 1, 50))
    yield "single non-target", *trials(rng.normal(0, 1, 50), [0.1])
    yield "single each, tied", *trials([1.0], [1.0])
    yield "target below all", *trials([-5.0], rng.normal(0, 1, 30))
    yield "two values", *trials(rng.integers(0, 2, 40).astype(float), rng.integers(0, 2, 60).astype(float))
    yield "ties across classes", *trials(np.repeat([0.1, 0.2, 0.3], 5), np.repeat([0.2, 0.3, 0.4], 7))
    yield "tiny gaps", *trials(1.0 + rng.integers(0, 5, 30) * 1e-15, 1.0 + rng.integers(0, 5, 30) * 1e-15)
    yield "large", *trials(rng.normal(1e6, 1.0, 25), rng.normal(1e6 - 1, 1.0, 25))
    for seed in range(6):
        r = np.random.default_rng(100 + seed)
        n_t, n_n = r.integers(1, 300), r.integers(1, 300)
        yield f"random {seed}", *trials(r.normal(0.5, 1, n_t).round(seed % 3), r.normal(0, 1, n_n).round(seed % 3))


@pytest.mark.parametrize("name,scores,labels", list(adversarial_sets()), ids=lambda v: v if isinstance(v, str) else "")
def test_equals_brute_force_to_1e9_on_adversarial_sets(name, scores, labels):
    order = np.random.default_rng(0).permutation(len(scores))  # input order must not matter
    scores, labels = scores[order], labels[order]
    metrics = verification_metrics(scores, labels, p_targets=(0.01, 0.05, 0.5), with_thresholds=True)
    for p in (0.01, 0.05, 0.5):
        eer, dcf = brute_force(scores, labels, p_target=p)
        assert abs(metrics["eer"] - eer) <= 1e-9
        assert abs(metrics[f"min_dcf_p{p:g}"] - dcf) <= 1e-9
        assert abs(compute_min_dcf(scores, labels, p_target=p) - dcf) <= 1e-9
    assert compute_eer(scores, labels) == metrics["eer"]
    # At the returned threshold (accept when score >= it), FRR <= EER <= FAR: the EER's operating point.
    t = metrics["eer_threshold"]
    far = np.mean(scores[labels == 0] >= t)
    frr = np.mean(scores[labels == 1] < t)
    assert frr - 1e-12 <= metrics["eer"] <= far + 1e-12
    # minDCF's threshold reproduces its cost.
    t = metrics["min_dcf_p0.01_threshold"]
    cost = 0.01 * np.mean(scores[labels == 1] < t) + 0.99 * np.mean(scores[labels == 0] >= t)
    assert cost / 0.01 == pytest.approx(metrics["min_dcf_p0.01"], abs=1e-9)


def test_hand_worked_threshold_and_min_dcf_at_p005():
    # sorted: .9T .8N .7T .4T .3N .2N; thresholds .9 .8 .7 .4 .3 .2 give (FAR, FRR):
    # (0, 2/3) (1/3, 2/3) (1/3, 1/3) (1/3, 0) (2/3, 0) (1, 0)
    s, y = trials([0.9, 0.7, 0.4], [0.8, 0.3, 0.2])
    # p=0.05: cost = 0.05 FRR + 0.95 FAR -> best 0.05 * 2/3 at .9; normalised by 0.05 -> 2/3
    assert compute_min_dcf(s, y, p_target=0.05, return_threshold=True) == (pytest.approx(2 / 3), 0.9)
    # p=0.9: cost = 0.9 FRR + 0.1 FAR -> best 0.1/3 at .4; normalised by min(0.9, 0.1) -> 1/3
    assert compute_min_dcf(s, y, p_target=0.9) == pytest.approx(1 / 3)


def test_det_curve_points():
    s, y = trials([0.9, 0.7, 0.4], [0.8, 0.3, 0.2])
    far, frr = det_curve(s, y)
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(frr, [1, 2 / 3, 2 / 3, 1 / 3, 0, 0, 0])


def test_weights_count_trials_as_repeated_copies():
    """Weighted operating points equal those of the list with each trial repeated `weight` times (0: left
    out), whatever the ties; one SortedTrials serves every weighting."""
    from speakerid.metrics import SortedTrials, eer_at, min_dcf_at

    rng = np.random.default_rng(3)
    scores = np.round(np.r_[rng.normal(1, 1, 60), rng.normal(0, 1, 90)], 1)  # many ties
    labels = np.r_[np.ones(60), np.zeros(90)]
    sorted_trials = SortedTrials(scores, labels)
    for _ in range(20):
        weights = rng.integers(0, 3, size=scores.size)
        repeated_scores, repeated_labels = np.repeat(scores, weights), np.repeat(labels, weights)
        points = sorted_trials.points(weights)
        assert eer_at(points)[0] == pytest.approx(compute_eer(repeated_scores, repeated_labels), abs=1e-12)
        assert eer_at(points)[1] == compute_eer(repeated_scores, repeated_labels, return_threshold=True)[1]
        dcf, threshold = compute_min_dcf(repeated_scores, repeated_labels, p_target=0.05, return_threshold=True)
        assert min_dcf_at(points, 0.05, 1.0, 1.0) == pytest.approx((dcf, threshold), abs=1e-12)
    with pytest.raises(ValueError, match="non-negative integers"):
        sorted_trials.points(np.full(scores.size, 0.5))
    with pytest.raises(ValueError, match="at least one target"):
        sorted_trials.points(np.r_[np.zeros(60, int), np.ones(90, int)])
