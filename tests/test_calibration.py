"""Calibration: the fit against a known LLR and its own objective, Cllr / minCllr / actual DCF against direct
float64 formulas and an independent pool-adjacent-violators, and the interface stored in model files."""

import hashlib
import json
import math

import numpy as np
import pytest

from speakerid.calibration import (
    Calibration,
    actual_dcf,
    bayes_threshold,
    cllr,
    fit_calibration,
    min_cllr,
    pav_llr,
)
from speakerid.metrics import compute_min_dcf


def gaussian_trials(rng, n_target, n_nontarget, mu_target=2.0, mu_nontarget=-1.0, sigma=1.5):
    scores = np.r_[rng.normal(mu_target, sigma, n_target), rng.normal(mu_nontarget, sigma, n_nontarget)]
    return scores, np.r_[np.ones(n_target), np.zeros(n_nontarget)]


@pytest.mark.parametrize("prior", [0.5, 0.01])
def test_fit_recovers_the_llr_of_equal_variance_gaussians(prior):
    """Targets N(2, 1.5^2), non-targets N(-1, 1.5^2): log N(s; m1, sd) / N(s; m0, sd) =
    ((s - m0)^2 - (s - m1)^2) / (2 sd^2) = (m1 - m0) / sd^2 * s + (m0^2 - m1^2) / (2 sd^2),
    so slope 3 / 2.25 = 4/3 and offset (1 - 4) / 4.5 = -2/3, at any prior (the model is exact). The class
    ratio 1:4 is not the prior: an unweighted fit would be off by logit(0.2) in the offset."""
    scores, labels = gaussian_trials(np.random.default_rng(0), 20_000, 80_000)
    calibration = fit_calibration(scores, labels, prior=prior)
    # Over 10 seeds the errors had standard deviations of 0.007-0.013 (slope) and 0.010-0.017 (offset).
    assert calibration.slope == pytest.approx(4 / 3, abs=0.05)
    assert calibration.offset == pytest.approx(-2 / 3, abs=0.05)
    assert calibration.prior == prior


@pytest.mark.parametrize("prior", [0.5, 0.01, 0.9])
def test_fit_is_the_minimum_of_the_prior_weighted_objective(prior):
    """The gradient of BOSARIS's objective, written out in float64, vanishes at the fitted slope and offset."""
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0.6, 0.15, 300), rng.normal(0.1, 0.12, 3000)]  # cosine-like scores
    labels = np.r_[np.ones(300), np.zeros(3000)].astype(bool)
    c = fit_calibration(scores, labels, prior=prior)
    log_odds = c.slope * scores + c.offset + math.log(prior / (1 - prior))
    posterior = 1 / (1 + np.exp(-log_odds))
    # d objective / d log_odds per trial: -prior/N_t * (1 - posterior) for targets, (1-prior)/N_n * posterior
    d = np.where(labels, -prior / labels.sum() * (1 - posterior), (1 - prior) / (~labels).sum() * posterior)
    assert abs(np.sum(d * scores)) < 1e-9 and abs(np.sum(d)) < 1e-9
    assert c.slope > 0


def test_fit_refuses_separated_or_reversed_scores():
    with pytest.raises(ValueError, match="no overlap"):
        fit_calibration([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0])
    with pytest.raises(ValueError, match="labels .* the right way round"):
        fit_calibration([0.0, 1.0, 2.0, 0.5, 3.0, 4.0], [1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="prior must be in"):
        fit_calibration([0.0, 1.0, 2.0, 0.5], [1, 1, 0, 0], prior=1.0)


def reference_cllr(llr, labels):
    target = [math.log(1 + math.exp(-x)) for x, y in zip(llr, labels) if y]
    nontarget = [math.log(1 + math.exp(x)) for x, y in zip(llr, labels) if not y]
    return (sum(target) / len(target) + sum(nontarget) / len(nontarget)) / (2 * math.log(2))


def reference_actual_dcf(llr, labels, p_target, c_miss, c_fa):
    threshold = math.log(c_fa * (1 - p_target) / (c_miss * p_target))  # -logit(effective prior)
    targets = [x for x, y in zip(llr, labels) if y]
    nontargets = [x for x, y in zip(llr, labels) if not y]
    p_miss = sum(x < threshold for x in targets) / len(targets)
    p_fa = sum(x >= threshold for x in nontargets) / len(nontargets)
    return (c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa) / min(c_miss * p_target, c_fa * (1 - p_target))


def test_cllr_and_actual_dcf_equal_direct_formulas():
    rng = np.random.default_rng(2)
    scores, labels = gaussian_trials(rng, 400, 1200)
    for llr in (scores, 1.3 * scores - 0.4, 0.2 * scores + 3.0):
        assert cllr(llr, labels) == pytest.approx(reference_cllr(llr, labels), rel=1e-12)
        for p_target, c_miss, c_fa in [(0.01, 1, 1), (0.05, 1, 1), (0.5, 1, 1), (0.01, 10, 1), (0.2, 1, 3)]:
            assert actual_dcf(llr, labels, p_target, c_miss, c_fa) == pytest.approx(
                reference_actual_dcf(llr, labels, p_target, c_miss, c_fa), rel=1e-12)
            # the threshold chosen by the LLRs can only be as good as the best one
            assert actual_dcf(llr, labels, p_target, c_miss, c_fa) >= compute_min_dcf(
                llr, labels, p_target, c_miss, c_fa) - 1e-12


def test_cllr_and_actual_dcf_by_hand():
    # LLRs of 0 carry no information: Cllr is exactly 1 bit; at p_target 0.5 they accept every trial.
    assert cllr([0.0, 0.0, 0.0], [1, 0, 0]) == 1.0
    assert actual_dcf([0.0, 0.0, 0.0], [1, 0, 0], p_target=0.5) == 1.0  # P_fa = 1, P_miss = 0
    # An LLR at the threshold is accepted (speakerid.metrics: accept when >=): P_miss 0, P_fa 2/3
    assert actual_dcf([0.0, 0.0, -1.0, 0.0], [1, 0, 0, 0], p_target=0.5) == pytest.approx(2 / 3)
    # Targets at +-ln 3, non-targets at -ln 3: log2(1 + 1/3) + log2(1 + 3) over 2 targets, log2(4/3) over one
    llr = np.log([3.0, 1 / 3, 1 / 3])
    assert cllr(llr, [1, 1, 0]) == pytest.approx((math.log2(4 / 3) + 2) / 2 / 2 + math.log2(4 / 3) / 2)
    # p_target 0.01: threshold ln 99; no trial reaches it: P_miss 1, P_fa 0, cost 0.01 / 0.01 = 1
    assert actual_dcf(llr, [1, 1, 0], p_target=0.01) == 1.0
    assert bayes_threshold(0.01) == pytest.approx(math.log(99))
    assert bayes_threshold(0.01, c_miss=10, c_fa=1) == pytest.approx(math.log(9.9))


def reference_pav(scores, labels):
    """Pool adjacent violators written out: sort by score with targets first among ties (BOSARIS's
    opt_loglr order, which makes ties pool), merge blocks while their means decrease."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], -labels[i]))
    blocks = []  # [sum, count, members]
    for i in order:
        blocks.append([float(labels[i]), 1, [i]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, count, members = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][2] += members
    posterior = np.empty(len(scores))
    for total, count, members in blocks:
        posterior[members] = total / count
    prior_log_odds = math.log(sum(labels) / (len(labels) - sum(labels)))
    with np.errstate(divide="ignore"):
        return np.log(posterior) - np.log(1 - posterior) - prior_log_odds


def test_pav_llr_equals_an_independent_pav_with_ties_and_infinite_ends():
    rng = np.random.default_rng(3)
    scores, labels = gaussian_trials(rng, 150, 450)
    scores = np.round(scores, 1)  # many ties, some of them mixed
    labels = labels.astype(int)
    expected = reference_pav(scores.tolist(), labels.tolist())
    got = pav_llr(scores, labels)
    assert np.isneginf(got[scores == scores.min()]).all() and np.isposinf(got[scores == scores.max()]).all()
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12, atol=1e-12)
    for value in np.unique(scores):  # tied scores share one LLR
        assert len(np.unique(got[scores == value])) == 1


def test_min_cllr_is_the_cllr_of_pav_and_a_floor():
    rng = np.random.default_rng(4)
    scores, labels = gaussian_trials(rng, 300, 900)
    floor = min_cllr(scores, labels)
    assert floor == pytest.approx(reference_cllr(reference_pav(scores.tolist(), labels.tolist()), labels), rel=1e-12)
    assert math.isfinite(floor)
    fitted = fit_calibration(scores, labels)
    for llr in (scores, fitted.llr(scores), 0.5 * scores, 3 * scores - 2):
        assert floor <= cllr(llr, labels) + 1e-12
    # For Gaussians the linear fit is close to the floor (PAV, fitted to these very trials, overfits a little)
    assert cllr(fitted.llr(scores), labels) - floor < 0.05
    # Perfectly separated scores: PAV gives -inf / +inf, which cost nothing
    assert min_cllr([0.0, 1.0, 2.0, 3.0], [0, 0, 1, 1]) == 0.0


def test_calibration_dict_round_trip_and_errors():
    c = Calibration(slope=12.5, offset=-3.25, prior=0.01)
    assert c.to_dict() == {"slope": 12.5, "offset": -3.25, "prior": 0.01}
    assert Calibration.from_dict(c.to_dict()) == c
    assert Calibration.from_dict({"slope": 2, "offset": 1}) == Calibration(2.0, 1.0, 0.5)  # files without prior
    np.testing.assert_allclose(c.llr([0.0, 1.0]), [-3.25, 9.25])
    with pytest.raises(ValueError, match="lacks offset"):
        Calibration.from_dict({"slope": 1.0})
    with pytest.raises(ValueError, match="slope must be a number, got 'steep'"):
        Calibration.from_dict({"slope": "steep", "offset": 0})
    with pytest.raises(ValueError, match="offset must be finite"):
        Calibration.from_dict({"slope": 1, "offset": float("nan")})
    with pytest.raises(ValueError, match="prior must be in"):
        Calibration.from_dict({"slope": 1, "offset": 0, "prior": 1.5})


def test_fit_says_what_is_wrong_with_tied_scores():
    """Ties are not separation: all-equal scores carry no information, and scores that meet only in a tie
    still leave the slope unbounded; the message says which."""
    with pytest.raises(ValueError, match="all 4 scores are 0.5: equal scores do not tell targets") as info:
        fit_calibration([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert ">=" not in str(info.value) and "no overlap" not in str(info.value)
    with pytest.raises(ValueError, match="meet only at 0.5 .*infinite slope"):
        fit_calibration([0.5, 0.7, 0.3, 0.5], [1, 1, 0, 0])
    with pytest.raises(ValueError, match="every target score is above every non-target score"):
        fit_calibration([0.6, 0.7, 0.3, 0.5], [1, 1, 0, 0])


def test_a_calibration_file_refuses_scores_of_another_scoring_or_model(tmp_path):
    """calibrate records where its scores came from (the evaluation JSON beside the score file); a model that
    scores otherwise, or another model, is refused; a file without the record is accepted with a warning."""
    from speakerid.calibration import (
        calibration_source,
        check_calibration_source,
        read_calibration_file,
        read_calibration_source,
        write_calibration_file,
    )
    from speakerid.thresholds import Threshold

    scores = tmp_path / "vox.cosine_meansub.scores.txt"
    scores.write_text("a/1.wav b/1.wav 0.1 0\n")
    assert calibration_source(scores) == {"scores": str(scores), "evaluation": None, "scoring": "cosine_meansub",
                                          "model_sha256": None, "model_provenance_sha256": None,
                                          "embedding_mean_sha256": None}  # from the name alone
    (tmp_path / "vox.cosine_meansub.json").write_text(json.dumps({"scoring": "cosine_meansub",
                                                                  "checkpoint_sha256": "abc",
                                                                  "embedding_mean_sha256": "m1"}))
    source = calibration_source(scores)
    assert source == {"scores": str(scores), "evaluation": str(tmp_path / "vox.cosine_meansub.json"),
                      "scoring": "cosine_meansub", "model_sha256": "abc", "model_provenance_sha256": None,
                      "embedding_mean_sha256": "m1"}
    assert calibration_source(tmp_path / "half_a.txt")["scoring"] is None

    threshold = Threshold(0.3, "eer", None, 0.1, 0.1, (0.2, 0.4), (0.0, 0.2), (0.0, 0.2), 0.95, 10)
    path = tmp_path / "cal.json"
    write_calibration_file(path, Calibration(2.0, -1.0), threshold, source)
    assert read_calibration_file(path)[1] == threshold and read_calibration_source(path) == source
    assert check_calibration_source(path, source, "cosine_meansub", {"abc", "def"}, "m1") is None
    with pytest.raises(ValueError, match="fitted on cosine_meansub scores .* computes cosine scores"):
        check_calibration_source(path, source, "cosine", {"abc"})
    with pytest.raises(ValueError, match="fitted on scores of another model \\(SHA-256 abc"):
        check_calibration_source(path, source, "cosine_meansub", {"def"}, "m1")
    assert "does not record which scores" in check_calibration_source(path, None, "cosine", {"abc"})
    assert "the model of the scores" in check_calibration_source(path, {**source, "model_sha256": None},
                                                                 "cosine_meansub", {"abc"}, "m1")
    path.write_text(json.dumps({**json.loads(path.read_text()), "source": {"scoring": 3}}))
    with pytest.raises(ValueError, match="cal.json: source must hold scores, evaluation, scoring, model_sha256"):
        read_calibration_source(path)


def test_a_calibration_of_mean_subtracted_scores_holds_only_for_their_mean(tmp_path):
    """The name check alone took a calibration of scores centred on one mean (a train list's) for a model
    subtracting another (a 3-file --mean-from): the source now names the mean by the SHA-256 of its float64
    values, taken from the evaluation JSON, or, for an older evaluation, from the .mean.npz it names."""
    from speakerid.calibration import calibration_source, check_calibration_source
    from speakerid.scoring import mean_sha256

    mean = np.linspace(-0.1, 0.1, 8)
    assert mean_sha256(mean) == hashlib.sha256(mean.astype("<f8").tobytes()).hexdigest()
    assert mean_sha256(mean.tolist()) == mean_sha256(mean)  # a model file keeps it as a list of floats
    assert mean_sha256(mean + 1e-12) != mean_sha256(mean)
    scores = tmp_path / "vox.cosine_meansub.scores.txt"
    scores.write_text("a/1.wav b/1.wav 0.1 0\n")
    np.savez(tmp_path / "vox.cosine_meansub.mean.npz", keys=np.array(["mean"]), full=mean[None])
    (tmp_path / "vox.cosine_meansub.json").write_text(json.dumps({  # an older evaluate: no digest, the mean's file
        "scoring": "cosine_meansub", "checkpoint_sha256": "abc",
        "embedding_mean": str(tmp_path / "vox.cosine_meansub.mean.npz")}))
    source = calibration_source(scores)
    assert source["embedding_mean_sha256"] == mean_sha256(mean)
    assert check_calibration_source("cal.json", source, "cosine_meansub", {"abc"}, mean_sha256(mean)) is None
    with pytest.raises(ValueError, match="cal.json was fitted on scores centred on another mean embedding "
                                         f"\\(SHA-256 {mean_sha256(mean)[:12]}.*--mean-from <its .mean.npz>"):
        check_calibration_source("cal.json", source, "cosine_meansub", {"abc"}, mean_sha256(mean[::-1]))
    # raw cosine scores have no mean to compare; a source that does not know its mean is taken with a warning
    assert check_calibration_source("cal.json", {**source, "scoring": "cosine", "embedding_mean_sha256": None},
                                    "cosine", {"abc"}) is None
    warning = check_calibration_source("cal.json", {**source, "embedding_mean_sha256": None}, "cosine_meansub",
                                       {"abc"}, mean_sha256(mean))
    assert "the mean embedding of the scores" in warning and "is unknown" in warning


def test_a_calibration_of_a_model_file_holds_for_its_checkpoint_and_back(tmp_path):
    """A model file is the same model as the checkpoint it was exported from: a calibration of the model
    file's scores was refused for the checkpoint. Its source records the checkpoint too (from the evaluation
    JSON's provenance_sha256), and either SHA-256 matches either of the model's."""
    from speakerid.calibration import calibration_source, check_calibration_source, read_calibration_source

    scores = tmp_path / "vox.cosine.scores.txt"
    scores.write_text("a/1.wav b/1.wav 0.1 0\n")
    (tmp_path / "vox.cosine.json").write_text(json.dumps({"scoring": "cosine", "checkpoint_sha256": "file",
                                                          "provenance_sha256": "ckpt"}))
    source = calibration_source(scores)
    assert (source["model_sha256"], source["model_provenance_sha256"]) == ("file", "ckpt")
    assert check_calibration_source("c", source, "cosine", {"ckpt"}) is None            # the checkpoint itself
    assert check_calibration_source("c", source, "cosine", {"other", "ckpt"}) is None   # another file of it
    with pytest.raises(ValueError, match="another model"):
        check_calibration_source("c", source, "cosine", {"other", "ckpt2"})
    # a calibration file of an older speakerid (four source keys) still reads, the new ones unknown
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"calibration": {"slope": 1.0, "offset": 0.0},
                               "threshold": {"score": 0.5, "kind": "eer", "target": None},
                               "source": {k: source[k] for k in ("scores", "evaluation", "scoring", "model_sha256")}}))
    assert read_calibration_source(old) == {**source, "model_provenance_sha256": None}
