"""The synthetic smoke corpus: deterministic, VoxCeleb layout, unseen trial speakers, voices that differ."""

import hashlib

import numpy as np
import soundfile as sf

from speakerid.data.lists import read_train_list, read_trials
from speakerid.data.synthetic import CorpusSpec, draw_voice, ensure_corpus, synthesize

SMALL = CorpusSpec(train_speakers=4, test_speakers=3, sessions=2, utterances_per_session=2,
                   min_seconds=1.0, max_seconds=1.5)


def digest(folder):
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "corpus.json":
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_layout_is_voxceleb(tmp_path):
    a = ensure_corpus(tmp_path / "a", SMALL, workers=1)
    ensure_corpus(tmp_path / "b", SMALL, workers=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")

    train = read_train_list(a["train_list"], a["root"])
    assert len(train.speaker_ids) == 4 and len(train) == 4 * 2 * 2
    for speaker, rel in zip(train.speakers, train.paths):
        parts = rel.split("/")
        assert len(parts) == 3 and parts[0] == speaker and rel.endswith(".wav")
        info = sf.info(str(tmp_path / "a" / "wav" / rel))
        assert info.samplerate == 16000 and info.channels == 1 and 1.0 <= info.duration <= 1.5

    trials = read_trials(a["trials"])
    trial_speakers = {p.split("/")[0] for t in trials for p in (t.enrol, t.test)}
    assert not trial_speakers & set(train.speaker_ids)
    targets = [t for t in trials if t.label == 1]
    assert len(targets) == len(trials) - len(targets)
    assert all(t.enrol.split("/")[1] != t.test.split("/")[1] for t in targets)  # across sessions
    assert all(t.enrol.split("/")[0] != t.test.split("/")[0] for t in trials if t.label == 0)


def test_existing_corpus_is_reused_and_a_changed_spec_regenerates(tmp_path):
    ensure_corpus(tmp_path, SMALL, workers=1)
    marker = tmp_path / "corpus.json"
    stamp = marker.stat().st_mtime_ns
    ensure_corpus(tmp_path, SMALL, workers=1)
    assert marker.stat().st_mtime_ns == stamp
    bigger = CorpusSpec(**{**SMALL.__dict__, "train_speakers": 5})
    paths = ensure_corpus(tmp_path, bigger, workers=1)
    assert len(read_train_list(paths["train_list"], paths["root"]).speaker_ids) == 5


def spectral_stats(x):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    centroid = (spec * freqs).sum() / spec.sum()
    # pitch from the autocorrelation peak between 60 and 400 Hz
    ac = np.correlate(x[:8000], x[:8000], mode="full")[7999:]
    lag = np.argmax(ac[40:267]) + 40
    return centroid, 16000 / lag


def test_voices_differ_in_pitch():
    rng = np.random.default_rng(5)
    voices = [draw_voice(rng) for _ in range(40)]
    low = min(voices, key=lambda v: v.f0)
    high = max(voices, key=lambda v: v.f0)
    _, pitch_low = spectral_stats(synthesize(low, 1, 2, 2.0))
    _, pitch_high = spectral_stats(synthesize(high, 1, 2, 2.0))
    assert high.f0 / low.f0 > 2.0
    assert pitch_high > 1.5 * pitch_low
    audio = synthesize(low, 1, 2, 2.0)
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0 and len(audio) == 32000
