"""The data check finds each kind of bad file and list problem, with the file named."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import ARSC_DIR, REPO, requires_arsc
from speakerid.data.check import check_data
from speakerid.data.lists import ListFormatError


def tone(seconds=2.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "wav"

    def put(rel, data=None, rate=16000, subtype=None, raw=None):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            p.write_bytes(raw)
        else:
            sf.write(str(p), tone() if data is None else data, rate, subtype=subtype)
        return rel

    good = [put(f"a/s1/{i}.wav") for i in range(3)] + [put(f"b/s1/{i}.flac") for i in range(3)]
    bad = {
        "unreadable": put("a/s2/garbage.wav", raw=b"not audio" * 50),
        "empty": put("a/s2/empty.wav", data=np.zeros(0, np.float32)),
        "sample_rate": put("a/s2/r8k.wav", rate=8000),
        "channels": put("b/s2/stereo.wav", data=np.stack([tone(), tone()], 1)),
        "non_finite": put("b/s2/nan.wav", data=np.r_[tone(), [np.nan]].astype(np.float32), subtype="FLOAT"),
        "silent": put("b/s2/silent.wav", data=np.zeros(40000, np.float32)),
        "short": put("b/s2/short.wav", data=tone(0.5)),
    }
    full = (root / "a/s1/0.wav").read_bytes()
    sf.write(str(root / "b/s1/long.flac"), tone(6.0), 16000)
    bad["corrupt"] = "b/s1/truncated.flac"
    (root / bad["corrupt"]).write_bytes((root / "b/s1/long.flac").read_bytes()[:6000])
    assert full
    lines = [f"{r.split('/')[0]} {r}" for r in good + list(bad.values())]
    lines += ["a a/s1/0.wav", "c c/s1/missing.wav", "d b/s1/0.flac"]  # duplicate, missing, lone speaker
    train_list = tmp_path / "train.txt"
    train_list.write_text("\n".join(lines) + "\n")
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/s1/0.wav a/s1/1.wav\n0 a/s1/0.wav b/s1/0.flac\n0 a/s1/0.wav b/s1/0.flac\n")
    return tmp_path, root, train_list, trials, bad


def test_each_problem_is_found_and_named(corpus):
    tmp_path, root, train_list, trials, bad = corpus
    report = check_data(train_list, root, trials, root, min_utterances=2, deep=True, workers=4)
    found = {(p.kind, p.where.split("/wav/")[-1]) for p in report.problems}
    for kind, rel in bad.items():
        assert (kind, rel) in found, (kind, rel, sorted(found))
    assert ("missing", "c/s1/missing.wav") in found
    kinds = {p.kind: p for p in report.problems}
    assert kinds["duplicate"].severity == "warning" and "a/s1/0.wav is listed 2 times" in str(
        [p.detail for p in report.problems if p.kind == "duplicate"])
    assert any(p.kind == "few_utterances" and "speaker c" in p.detail for p in report.problems)
    assert kinds["speaker_overlap"].severity == "error" and "a, b" in kinds["speaker_overlap"].detail
    assert any(p.kind == "speaker_folder" for p in report.problems)
    assert report.stats["trials"] == 3 and report.stats["train_speakers"] == 4
    assert "ERROR missing: 1" in report.summary()


def test_shallow_check_does_not_decode(corpus):
    tmp_path, root, train_list, _, bad = corpus
    kinds = {p.kind for p in check_data(train_list, root, deep=False, workers=2).problems}
    assert "non_finite" not in kinds and "silent" not in kinds
    assert {"missing", "unreadable", "sample_rate", "channels", "empty"} <= kinds


def test_script_writes_report_and_fails_on_errors(corpus):
    tmp_path, root, train_list, trials, _ = corpus
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "scripts/check_data.py", "--train-list", train_list, "--train-root", root,
                           "--trials", trials, "--trials-root", root, "--report", out],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "errors" in proc.stdout and out.is_file()
    assert {p["kind"] for p in json.loads(out.read_text())["problems"]} >= {"missing", "speaker_overlap"}


def test_malformed_list_line_stops_with_line_number(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("a a/1.wav\nb\n")
    with pytest.raises(ListFormatError, match="l.txt:2"):
        check_data(lst, tmp_path)


@requires_arsc()
def test_arsc_is_clean():
    report = check_data(ARSC_DIR / "train_list.txt", ARSC_DIR / "wav", ARSC_DIR / "trials.txt", ARSC_DIR / "wav",
                        min_seconds=1.5, workers=4)
    assert not report.errors, report.summary()
    assert report.stats["train_speakers"] == 18


def test_trial_list_without_labels_is_checked(corpus):
    tmp_path, root, _, _, _ = corpus
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a/s1/0.wav a/s1/1.wav\na/s1/0.wav b/s1/0.flac\na/s1/0.wav b/s1/0.flac\n")
    report = check_data(trials=pairs, trials_root=root, workers=2)
    assert report.stats["trials"] == 3 and report.stats["target_trials"] is None
    assert any(p.kind == "duplicate" and "trial a/s1/0.wav b/s1/0.flac appears 2 times" in p.detail
               for p in report.problems)
