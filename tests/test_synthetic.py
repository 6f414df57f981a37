"""The synthetic smoke corpus: deterministic, VoxCeleb layout, unseen trial speakers, voices that differ."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from speakerid.data import synthetic
from speakerid.data.lists import read_train_list, read_trials
from speakerid.data.synthetic import MARKER, CorpusSpec, ForeignFolderError, draw_voice, ensure_corpus, synthesize

SMALL = CorpusSpec(train_speakers=4, test_speakers=3, sessions=2, utterances_per_session=2,
                   min_seconds=1.0, max_seconds=1.5)


def digest(folder):
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MARKER:
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
    marker = tmp_path / MARKER
    stamp = marker.stat().st_mtime_ns
    ensure_corpus(tmp_path, SMALL, workers=1)
    assert marker.stat().st_mtime_ns == stamp
    bigger = CorpusSpec(**{**SMALL.__dict__, "train_speakers": 5})
    paths = ensure_corpus(tmp_path, bigger, workers=1)
    assert len(read_train_list(paths["train_list"], paths["root"]).speaker_ids) == 5
    smaller = CorpusSpec(**{**SMALL.__dict__, "train_speakers": 2})
    ensure_corpus(tmp_path, smaller, workers=1)
    assert sorted(p.name for p in (tmp_path / "wav").iterdir()) == [f"syn0000{i}" for i in range(5)]  # 2 + 3


def snapshot(folder):
    """Every file and folder under `folder` with its bytes, to compare before and after."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def real_corpus(tmp_path):
    """A small corpus of the user's own, in the layout data=folder reads."""
    root = tmp_path / "real"
    lines = []
    for speaker in ("alice", "bob"):
        for u in range(2):
            rel = f"{speaker}/s1/{u}.wav"
            (root / "wav" / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(root / "wav" / rel), np.full(1600, 0.01 * (u + 1), np.float32), 16000)
            lines.append(f"{speaker} {rel}")
    (root / "train_list.txt").write_text("\n".join(lines) + "\n")
    (root / "trials.txt").write_text("1 alice/s1/0.wav alice/s1/1.wav\n0 alice/s1/0.wav bob/s1/0.wav\n")
    return root


def test_a_real_corpus_is_refused_and_left_byte_identical(real_corpus):
    before = snapshot(real_corpus)
    with pytest.raises(ForeignFolderError) as e:
        ensure_corpus(real_corpus, SMALL, workers=1)
    message = str(e.value)
    assert f"data.dir={real_corpus} holds files that speakerid did not generate (train_list.txt, trials.txt, wav)" \
        in message
    assert "data=folder" in message and "data.generate=null" in message
    assert snapshot(real_corpus) == before


def test_a_real_corpus_with_its_own_corpus_json_is_refused(real_corpus):
    (real_corpus / "corpus.json").write_text(json.dumps({"fingerprint": "abc", "spec": {"name": "mine"}}))
    before = snapshot(real_corpus)
    with pytest.raises(ForeignFolderError, match=r"\(corpus.json, train_list.txt, trials.txt, wav\)"):
        ensure_corpus(real_corpus, SMALL, workers=1)
    assert snapshot(real_corpus) == before


def test_a_generated_folder_with_files_added_names_them_and_is_kept(tmp_path):
    ensure_corpus(tmp_path, SMALL, workers=1)
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    bigger = CorpusSpec(**{**SMALL.__dict__, "train_speakers": 5})
    with pytest.raises(ForeignFolderError, match=r"did not generate \(notes.txt\)"):
        ensure_corpus(tmp_path, bigger, workers=1)
    assert snapshot(tmp_path) == before


def test_empty_and_missing_folders_are_generated_into_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing" / "deeper"):
        paths = ensure_corpus(folder, SMALL, workers=1)
        assert len(read_train_list(paths["train_list"], paths["root"])) == 16
        assert json.loads((folder / MARKER).read_text())["complete"] is True
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        ensure_corpus(tmp_path / "file", SMALL, workers=1)


def test_a_corpus_generated_before_the_marker_is_recognised(tmp_path):
    """Folders generated by earlier versions carry corpus.json ({fingerprint, spec}, written last)."""
    ensure_corpus(tmp_path, SMALL, workers=1)
    (tmp_path / MARKER).unlink()
    (tmp_path / "corpus.json").write_text(json.dumps({"fingerprint": SMALL.fingerprint(), "spec": SMALL.__dict__}))
    wav = next((tmp_path / "wav").rglob("*.wav"))
    stamp = wav.stat().st_mtime_ns
    ensure_corpus(tmp_path, SMALL, workers=1)
    assert wav.stat().st_mtime_ns == stamp  # reused, not regenerated
    assert not (tmp_path / "corpus.json").exists() and json.loads((tmp_path / MARKER).read_text())["complete"]


def test_an_interrupted_generation_is_redone(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    ensure_corpus(reference, SMALL, workers=1)
    corpus = tmp_path / "corpus"
    ensure_corpus(corpus, SMALL, workers=1)
    write_speaker = synthetic._write_speaker

    def dies_at_speaker_3(job):
        if job[2] == 3:
            raise KeyboardInterrupt
        return write_speaker(job)

    # Regenerating for another spec dies halfway, after speakers 0-2 were rewritten with other voices.
    monkeypatch.setattr(synthetic, "_write_speaker", dies_at_speaker_3)
    with pytest.raises(KeyboardInterrupt):
        ensure_corpus(corpus, CorpusSpec(**{**SMALL.__dict__, "seed": 99}), workers=1)
    monkeypatch.setattr(synthetic, "_write_speaker", write_speaker)
    assert json.loads((corpus / MARKER).read_text())["complete"] is False
    ensure_corpus(corpus, SMALL, workers=1)  # the old spec again: must not count as complete
    assert digest(corpus) == digest(reference)


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


def test_a_generated_noise_folder_inside_is_accepted(tmp_path):
    """scripts/benchmark.py generates its noise corpus in <corpus>/noise (marked by noise_corpus.json)."""
    ensure_corpus(tmp_path, SMALL, workers=1)
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "noise_corpus.json").write_text('{"spec": {}}')
    paths = ensure_corpus(tmp_path, CorpusSpec(**{**SMALL.__dict__, "train_speakers": 5}), workers=1)
    assert len(read_train_list(paths["train_list"], paths["root"]).speaker_ids) == 5
    assert (tmp_path / "noise" / "noise_corpus.json").is_file()
