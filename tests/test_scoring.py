"""Scoring against independent float64 references: cosine, TaoRuijie's multi-crop average (his matrix
formula, written out), per-speaker cohort means and AS-norm (WeSpeaker's recipe, with loops)."""

import numpy as np
import pytest

from speakerid.data.lists import Trial
from speakerid.scoring import Embeddings, as_norm, raw_scores, speaker_means, subtract_mean


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def setup():
    rng = np.random.default_rng(3)
    n, dim, crops = 12, 16, 5
    keys = [f"spk{i % 4}/u{i}.wav" for i in range(n)]
    emb = Embeddings(keys, unit(rng.normal(size=(n, dim))).astype(np.float32),
                     unit(rng.normal(size=(n, crops, dim))).astype(np.float32))
    trials = [Trial(int(i % 4 == j % 4), keys[i], keys[j]) for i in range(n) for j in range(n) if i < j]
    return emb, trials


def test_cosine_scores(setup):
    emb, trials = setup
    ref = {k: e.astype(np.float64) for k, e in zip(emb.keys, emb.full)}
    expected = [float(ref[t.enrol] @ ref[t.test] / np.linalg.norm(ref[t.enrol]) / np.linalg.norm(ref[t.test]))
                for t in trials]
    np.testing.assert_allclose(raw_scores(emb, trials, "full"), expected, rtol=0, atol=1e-12)


def test_multicrop_scores_follow_taoruijie(setup):
    emb, trials = setup
    index = emb.index()
    expected = []
    for t in trials:
        # ECAPAModel.eval_network: score_1 = mean(e11 @ e21.T) over full embeddings [1, d];
        # score_2 = mean(e12 @ e22.T) over the crop embeddings [5, d]; score = (score_1 + score_2) / 2
        e11, e21 = unit(emb.full[index[t.enrol]][None].astype(np.float64)), unit(emb.full[index[t.test]][None].astype(np.float64))
        e12, e22 = unit(emb.crops[index[t.enrol]].astype(np.float64)), unit(emb.crops[index[t.test]].astype(np.float64))
        expected.append((np.mean(e11 @ e21.T) + np.mean(e12 @ e22.T)) / 2)
    np.testing.assert_allclose(raw_scores(emb, trials, "multicrop"), expected, rtol=0, atol=1e-12)


def test_speaker_means_are_renormalised_means():
    rng = np.random.default_rng(0)
    full = unit(rng.normal(size=(7, 8)))
    speakers = ["b", "a", "b", "c", "a", "b", "c"]
    cohort = speaker_means(Embeddings([f"u{i}" for i in range(7)], full), speakers)
    assert cohort.speakers == ["a", "b", "c"]
    for i, s in enumerate(cohort.speakers):
        mean = full[[j for j, x in enumerate(speakers) if x == s]].mean(axis=0)
        np.testing.assert_allclose(cohort.embeddings[i], mean / np.linalg.norm(mean), atol=1e-12)


def reference_as_norm(emb, trials, cohort_vectors, top_k, mode):
    """WeSpeaker score_norm.py, per trial, in float64: the top_k cohort scores of each side, their mean and
    population standard deviation, 0.5 * ((s - m_e) / sd_e + (s - m_t) / sd_t)."""
    index = emb.index()
    full64, crops64 = unit(emb.full.astype(np.float64)), unit(emb.crops.astype(np.float64))

    def score(a, b_full, b_crops):
        i = index[a]
        full = float(full64[i] @ b_full)
        if mode == "full":
            return full
        crops = float(np.mean(crops64[i] @ np.atleast_2d(b_crops).T))
        return (full + crops) / 2

    def stats(key):
        cohort_scores = sorted((score(key, c, c) for c in cohort_vectors), reverse=True)[:top_k]
        return np.mean(cohort_scores), np.std(cohort_scores)

    out = []
    for t in trials:
        j = index[t.test]
        s = score(t.enrol, full64[j], crops64[j])
        (me, se), (mt, st) = stats(t.enrol), stats(t.test)
        out.append(0.5 * ((s - me) / se + (s - mt) / st))
    return np.array(out)


@pytest.mark.parametrize("mode", ["full", "multicrop"])
@pytest.mark.parametrize("top_k", [2, 5, 30])  # 30 > cohort size: all of it (plain s-norm)
def test_as_norm_matches_float64_reference(setup, mode, top_k):
    emb, trials = setup
    rng = np.random.default_rng(1)
    cohort_emb = Embeddings([f"c{i}" for i in range(40)], unit(rng.normal(size=(40, 16))))
    cohort = speaker_means(cohort_emb, [f"s{i % 9}" for i in range(40)])
    got = as_norm(raw_scores(emb, trials, mode), emb, trials, cohort, top_k, mode)
    expected = reference_as_norm(emb, trials, cohort.embeddings, top_k, mode)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_as_norm_rejects_a_cohort_of_another_model(setup):
    emb, trials = setup
    cohort = speaker_means(Embeddings(["a", "b"], unit(np.ones((2, 8)))), ["x", "y"])
    with pytest.raises(ValueError, match="different models"):
        as_norm(raw_scores(emb, trials), emb, trials, cohort, 2)
    with pytest.raises(ValueError, match="top_k must be >= 2"):
        as_norm(raw_scores(emb, trials), emb, trials, speaker_means(emb, emb.keys), 1)


@pytest.mark.parametrize("spread", [0.0, 1e-9])
def test_as_norm_refuses_a_cohort_without_spread(setup, spread):
    """Two cohort speakers with the same files (up to rounding) and top_k=2: every utterance's two top cohort
    scores are equal, and dividing by their standard deviation gave inf (or 1e8-sized) scores."""
    emb, trials = setup
    speaker = unit(np.random.default_rng(4).normal(size=16))
    twin = unit(speaker + spread * np.eye(16)[0])
    cohort = speaker_means(Embeddings(["x/1.wav", "y/1.wav"], np.stack([speaker, twin])), ["x", "y"])
    with pytest.raises(ValueError, match=r"top 2 cohort scores of spk0/u0.wav are \(almost\) all equal .*larger "
                                         r"top_k \(now 2\)"):
        as_norm(raw_scores(emb, trials), emb, trials, cohort, 2)
    # with a third, distinct speaker the spread is real again (an independent reference checks the values)
    third = unit(np.random.default_rng(5).normal(size=16))
    cohort = speaker_means(Embeddings(["x/1.wav", "y/1.wav", "z/1.wav"], np.stack([speaker, twin, third])),
                           ["x", "y", "z"])
    got = as_norm(raw_scores(emb, trials), emb, trials, cohort, 3)
    np.testing.assert_allclose(got, reference_as_norm(emb, trials, cohort.embeddings, 3, "full"), rtol=0, atol=1e-9)


def test_an_embedding_that_is_the_mean_is_named_instead_of_scoring_nan():
    """Centred on a mean of itself, an embedding is a zero vector and every score of it NaN (verify called that
    'different speakers'): subtract_mean names it; a mean of fewer than 2 files is refused where it is taken."""
    rng = np.random.default_rng(0)
    full = rng.standard_normal((3, 8)).astype(np.float32)
    one = Embeddings(["a.wav"], full[:1])
    with pytest.raises(ValueError, match=r"needs at least 2 distinct files, got 1 \(a\.wav\)"):
        one.mean()
    found = Embeddings(["a.wav", "b.wav", "c.wav"], full)
    mean = found.full[1].astype(np.float64) / np.linalg.norm(found.full[1].astype(np.float64))
    with pytest.raises(ValueError, match=r"^b\.wav: its embedding is the mean embedding .*1 of 3 alike"):
        found.centred(mean)
    with pytest.raises(ValueError, match=r"^embedding 1: its embedding is the mean"):
        subtract_mean(found.full, mean)
    # a mean of two leaves each of them half their difference: scored, as an independent float64 sum gives it
    pair = Embeddings(["a.wav", "b.wav"], full[:2])
    centred = pair.centred(pair.mean()).full.astype(np.float64)
    u = full[:2].astype(np.float64) / np.linalg.norm(full[:2].astype(np.float64), axis=1, keepdims=True)
    half = (u[0] - u[1]) / np.linalg.norm(u[0] - u[1])
    np.testing.assert_allclose(centred, np.stack([half, -half]), rtol=0, atol=1e-6)


def test_mean_centring_and_cohort_sums_in_chunks_equal_a_float64_pass_over_everything(monkeypatch):
    """A million-embedding cohort (VoxCeleb2) took several float64 copies of itself (4 GB) for a mean, the
    centring or per-speaker sums: they now run over chunks of rows. 5-row chunks here, against one float64
    pass over all 23 rows, crops too; a row that is the mean is still named when it lies in a later chunk."""
    import speakerid.scoring as scoring

    monkeypatch.setattr(scoring, "CHUNK_ROWS", 5)
    rng = np.random.default_rng(4)
    full = rng.standard_normal((23, 8)).astype(np.float32)
    crops = rng.standard_normal((23, 3, 8)).astype(np.float32)
    emb = Embeddings([f"s{i % 4}/u{i}.wav" for i in range(23)], full, crops)
    u = full.astype(np.float64) / np.linalg.norm(full.astype(np.float64), axis=1, keepdims=True)
    mean = emb.mean()
    np.testing.assert_allclose(mean, u.mean(axis=0), rtol=0, atol=1e-15)
    centred = emb.centred(mean)
    expected = (u - u.mean(axis=0)) / np.linalg.norm(u - u.mean(axis=0), axis=1, keepdims=True)
    assert centred.full.dtype == np.float32
    np.testing.assert_allclose(centred.full, expected, rtol=0, atol=1e-7)
    uc = crops.astype(np.float64) / np.linalg.norm(crops.astype(np.float64), axis=2, keepdims=True) - mean
    np.testing.assert_allclose(centred.crops, uc / np.linalg.norm(uc, axis=2, keepdims=True), rtol=0, atol=1e-7)
    speakers = [f"s{i % 4}" for i in range(23)]
    cohort = speaker_means(emb, speakers)
    for i, s in enumerate(cohort.speakers):
        total = u[[j for j, x in enumerate(speakers) if x == s]].sum(axis=0)
        np.testing.assert_allclose(cohort.embeddings[i], total / np.linalg.norm(total), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"^s1/u17\.wav: its embedding is the mean .*1 of 23 alike"):
        emb.centred(u[17])
