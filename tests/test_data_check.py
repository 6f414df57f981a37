"""The data check finds each kind of bad file and list problem, with the file named."""

import json
import logging
import struct

import numpy as np
import pytest
import soundfile as sf

from conftest import ARSC_DIR, requires_arsc, speakerid_cli
from speakerid.data.audio import AudioError
from speakerid.data.check import check_data, check_trial_audio, check_training_audio, wav_data_shortfall
from speakerid.data.lists import ListFormatError
from speakerid.features import samples_for_frames


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
    # duplicate, missing, lone speaker (in another speaker's folder)
    lines += ["a a/s1/0.wav", "c c/s1/missing.wav", f"d {put('b/s3/lone.wav')}"]
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


def riff_wav(samples: np.ndarray, extra_chunk: bytes = b"", data_size: int | None = None) -> bytes:
    """A 16 kHz 16-bit mono WAV written by hand: RIFF header, fmt chunk, an optional chunk, data chunk."""
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + fmt + extra_chunk + struct.pack("<4sI", b"data", len(data) if data_size is None else data_size)
    return struct.pack("<4sI", b"RIFF", len(body) + len(data)) + body + data


def test_deep_check_finds_a_wav_cut_short(tmp_path):
    # 2.0 s of 16-bit audio: a data chunk of 64000 bytes; the copy holds its first 20000 (0.625 s)
    root = tmp_path / "wav"
    (root / "a/s1").mkdir(parents=True)
    (root / "b/s1").mkdir(parents=True)
    samples = (tone(2.0) * 32767).astype(np.int16)
    odd_chunk = struct.pack("<4sI", b"junk", 3) + b"xyz\0"  # an odd-sized chunk, padded to an even size
    whole = riff_wav(samples, odd_chunk)
    header = len(whole) - 64000
    (root / "a/s1/1.wav").write_bytes(whole)
    (root / "a/s1/2.wav").write_bytes(whole[:header + 20000])
    (root / "b/s1/1.wav").write_bytes(riff_wav(samples, data_size=0xFFFFFFFF))  # a streaming writer's: size unknown
    sf.write(root / "b/s1/2.wav", tone(2.0), 16000)
    (root / "b/s1/3.wav").write_bytes((root / "b/s1/2.wav").read_bytes()[:30000])  # soundfile's, cut short
    assert sf.info(str(root / "a/s1/2.wav")).frames == 10000  # libsndfile reads it as a shorter file

    assert wav_data_shortfall(root / "a/s1/2.wav") == (64000, 20000)
    assert wav_data_shortfall(root / "a/s1/1.wav") is None and wav_data_shortfall(root / "b/s1/1.wav") is None
    train_list = tmp_path / "train.txt"
    train_list.write_text("".join(f"{r.split('/')[0]} {r}\n" for r in ("a/s1/1.wav", "a/s1/2.wav", "b/s1/1.wav",
                                                                          "b/s1/2.wav", "b/s1/3.wav")))
    report = check_data(train_list, root, deep=True, min_seconds=0.1, workers=1)
    truncated = {p.where: p for p in report.problems if p.kind == "truncated"}
    assert set(truncated) == {str(root / "a/s1/2.wav"), str(root / "b/s1/3.wav")}
    problem = truncated[str(root / "a/s1/2.wav")]
    assert problem.severity == "error"
    assert "data chunk declares 64000 bytes, the file holds 20000" in problem.detail
    assert "(0.62 s of 2.00 s)" in problem.detail
    assert len(report.errors) == 2
    # the header pass stays as it was: only --deep reads the RIFF chunks
    assert not [p for p in check_data(train_list, root, deep=False, min_seconds=0.1, workers=1).problems
                if p.kind == "truncated"]


def test_shallow_check_does_not_decode(corpus):
    tmp_path, root, train_list, _, bad = corpus
    kinds = {p.kind for p in check_data(train_list, root, deep=False, workers=2).problems}
    assert "non_finite" not in kinds and "silent" not in kinds
    assert {"missing", "unreadable", "sample_rate", "channels", "empty"} <= kinds


def test_script_writes_report_and_fails_on_errors(corpus):
    tmp_path, root, train_list, trials, _ = corpus
    out = tmp_path / "report.json"
    proc = speakerid_cli("check-data", "--list", train_list, "--root", root, "--trials", trials, "--out", out)
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


def test_a_byte_order_mark_is_a_warning_naming_the_list(corpus):
    tmp_path, root, train_list, trials, _ = corpus
    plain = check_data(train_list, root, trials, root, workers=2)
    assert "bom" not in {p.kind for p in plain.problems}
    train_list.write_bytes(b"\xef\xbb\xbf" + train_list.read_bytes())
    trials.write_bytes(b"\xef\xbb\xbf" + trials.read_bytes())
    report = check_data(train_list, root, trials, root, workers=2)
    boms = [p for p in report.problems if p.kind == "bom"]
    assert {(p.severity, p.where) for p in boms} == {("warning", str(train_list)), ("warning", str(trials))}
    assert "byte-order mark" in boms[0].detail and "without BOM" in boms[0].detail
    assert report.stats == {**plain.stats}  # the BOM is not a speaker, nor part of a label
    assert len(report.problems) == len(plain.problems) + 2


def test_trial_files_that_evaluation_cannot_embed_are_errors(corpus):
    tmp_path, root, _, _, bad = corpus
    (root / "c/s1").mkdir(parents=True)
    sf.write(str(root / "c/s1/blip.wav"), tone(0.015), 16000)  # below the 257 samples the fbank needs
    sf.write(str(root / "c/s1/brief.wav"), tone(0.09), 16000)
    sf.write(str(root / "c/s1/enough.wav"), tone(0.11), 16000)
    files = ["c/s1/blip.wav", "c/s1/brief.wav", "c/s1/enough.wav"] + [bad[k] for k in (
        "unreadable", "empty", "sample_rate", "channels", "non_finite", "corrupt")]
    trials = tmp_path / "hard_trials.txt"
    trials.write_text("".join(f"{i % 2} a/s1/0.wav {f}\n" for i, f in enumerate(files)))
    report = check_data(trials=trials, trials_root=root, deep=True, workers=2)
    found = {(p.kind, p.where.split("/wav/")[-1]): p for p in report.problems}
    for kind in ("unreadable", "empty", "sample_rate", "channels", "non_finite", "corrupt"):
        assert found[(kind, bad[kind])].severity == "error", kind
    assert found[("too_short", "c/s1/blip.wav")].severity == "error"
    assert found[("too_short", "c/s1/brief.wav")].detail == "0.090 s, shorter than 0.10 s (too short to embed)"
    assert not any(where == "c/s1/enough.wav" for _, where in found)
    assert not any(p.kind == "too_short" for p in check_data(trials=trials, trials_root=root, workers=2,
                                                              min_trial_seconds=0.01).problems)


@pytest.mark.parametrize("path,why", [("../outside.wav", "goes up with '..'"), ("/tmp/outside.wav", "is absolute")])
def test_script_reports_paths_outside_the_root(tmp_path, path, why):
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 a/1.wav a/2.wav\n0 a/1.wav {path}\n")
    proc = speakerid_cli("check-data", "--trials", trials, "--root", tmp_path, "--out", tmp_path / "r.json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: {trials}:2: path '{path}' {why}: paths must be relative to the root and stay inside it" \
        in proc.stderr


def test_script_reports_a_byte_order_mark_and_a_trial_file_too_short(corpus):
    tmp_path, root, _, _, _ = corpus
    sf.write(str(root / "b/s1/blip.wav"), tone(0.05), 16000)
    trials = tmp_path / "bom_trials.txt"
    trials.write_bytes("\ufeff1 a/s1/0.wav a/s1/1.wav\n0 a/s1/0.wav b/s1/blip.wav\n".encode())
    proc = speakerid_cli("check-data", "--trials", trials, "--trials-root", root, "--out", tmp_path / "r.json")
    assert proc.returncode == 1, proc.stderr
    assert "WARNING bom: 1" in proc.stdout and f"{trials}: starts with a UTF-8 byte-order mark" in proc.stdout
    assert "ERROR too_short: 1" in proc.stdout and "b/s1/blip.wav: 0.050 s, shorter than 0.10 s" in proc.stdout


def test_short_training_files_are_found_from_headers_and_logged(tmp_path, caplog):
    lengths = {"a/long.wav": 32000, "a/tenth.wav": 3224, "b/short.wav": 3223, "b/tiny.flac": 800, "b/8k.wav": 1000}
    for rel, n in lengths.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp_path / rel), tone(n / 16000), 8000 if "8k" in rel else 16000)
    paths = list(lengths) + ["b/tiny.flac"]
    crop = samples_for_frames(200)  # the 2 s training crop: 32240 samples, a tenth is 3224
    # 1000 samples at 8 kHz are 2000 at 16 kHz once resampled.
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        short = check_training_audio(tmp_path, paths, crop, 16000, resample=True, workers=2)
    assert short == [("b/short.wav", 3223), ("b/tiny.flac", 800), ("b/8k.wav", 2000)]
    [record] = caplog.records
    assert record.name == "speakerid" and record.getMessage().startswith(
        "3 of 5 training files are shorter than a tenth of the 2.0 s crop and are repeated to fill it, "
        "e.g. b/short.wav (0.201 s)")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        assert check_training_audio(tmp_path, ["a/long.wav", "a/tenth.wav"], crop, 16000) == []
    assert not caplog.records


def test_training_files_the_loader_cannot_read_stop_before_training_or_are_counted_with_skip(tmp_path, caplog):
    """From the headers, before the first step: each file the loader would fail on is named with why."""
    sf.write(str(tmp_path / "good.wav"), tone(1.0), 16000)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([tone(1.0)] * 2, axis=1), 16000)
    sf.write(str(tmp_path / "8k.wav"), tone(1.0), 8000)
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    (tmp_path / "._good.wav").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # a macOS AppleDouble stub
    paths = ["good.wav", "stereo.wav", "8k.wav", "empty.wav", "._good.wav", "good.wav"]
    crop = samples_for_frames(200)
    with pytest.raises(AudioError) as error:
        check_training_audio(tmp_path, paths, crop, 16000, what="train list l.txt")
    message = str(error.value)
    assert message.startswith("4 of 5 files of train list l.txt cannot be read for training:\n")
    assert f"{tmp_path / 'stereo.wav'}: expected mono audio, got 2 channels" in message
    assert f"{tmp_path / '8k.wav'}: sample rate is 8000 Hz but data.sample_rate is 16000 Hz" in message
    assert f"{tmp_path / 'empty.wav'}: audio file is empty" in message
    assert f"{tmp_path / '._good.wav'}: " in message and "good.wav:" not in message.replace("._good.wav:", "")
    assert "data.bad_audio=skip" in message
    # data.resample=true reads the 8 kHz file; data.bad_audio=skip trains without the rest, with a warning.
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        assert check_training_audio(tmp_path, paths, crop, 16000, resample=True, stop=False) == []
    [record] = caplog.records
    assert record.getMessage().startswith("3 of 5 files of train list cannot be read for training:")
    assert "8k.wav" not in record.getMessage()


def test_script_never_replaces_an_existing_file_nor_a_list_it_checks(corpus):
    tmp_path, root, train_list, trials, _ = corpus
    before = {p: p.read_bytes() for p in (train_list, trials)}
    alias = tmp_path / "alias.txt"
    alias.symlink_to(trials)
    for out in (train_list, trials, alias):
        for overwrite in ([], ["--overwrite"]):
            proc = speakerid_cli("check-data", "--list", train_list, "--root", root, "--trials", trials, "--out", out,
                                 *overwrite)
            assert proc.returncode == 2 and f"--out {out} is the list being checked" in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in (train_list, trials)} == before
    notes = tmp_path / "notes.json"
    notes.write_text("mine")
    proc = speakerid_cli("check-data", "--trials", trials, "--root", root, "--out", notes)
    assert proc.returncode == 1 and f"--out {notes} already exists; pass --overwrite" in proc.stderr
    assert notes.read_text() == "mine" and "errors" not in proc.stdout  # refused before any work
    proc = speakerid_cli("check-data", "--trials", trials, "--root", root, "--out", notes, "--overwrite")
    assert proc.returncode == 0 and json.loads(notes.read_text())["stats"]["trials"] == 3, proc.stderr


def test_reversed_and_self_trials_are_reported_and_contradictions_stop_the_check(corpus):
    tmp_path, root, train_list, trials, _ = corpus
    lines = ["1 a/s1/0.wav a/s1/1.wav", "0 a/s1/0.wav b/s1/0.flac", "1 a/s1/1.wav a/s1/0.wav",
             "1 a/s1/2.wav a/s1/2.wav"]
    trials.write_text("\n".join(lines) + "\n")
    report = check_data(trials=trials, trials_root=root, workers=2)
    assert [(p.severity, p.kind, p.detail) for p in report.problems] == [
        ("warning", "duplicate", "trial 1 a/s1/0.wav a/s1/1.wav appears 2 times, in either order (first on line 1)"),
        ("warning", "self_trial", "line 4: 1 a/s1/2.wav a/s1/2.wav pairs a file with itself (it scores 1 whatever "
                                  "the model)")]
    trials.write_text("\n".join(lines + ["1 b/s1/0.flac a/s1/0.wav"]) + "\n")
    proc = speakerid_cli("check-data", "--trials", trials, "--root", root, "--out", tmp_path / "r.json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"error: {trials}:5: the pair b/s1/0.flac a/s1/0.wav is labelled 1, but line 2 labels it 0 "
            f"('0 a/s1/0.wav b/s1/0.flac')") in proc.stderr
    train_list.write_text(train_list.read_text() + "b a/s1/1.wav\n")
    proc = speakerid_cli("check-data", "--list", train_list, "--root", root, "--out", tmp_path / "r2.json")
    assert proc.returncode == 1 and (f"error: {train_list}:{len(train_list.read_text().splitlines())}: a/s1/1.wav is "
                                     f"listed for speaker b, but line 2 lists it for speaker a") in proc.stderr


def test_strip_prefix_lets_the_overlap_check_compare_speakers(corpus):
    """`1 wav/a/...` with the trial root one level up: every file is found, but the first folder is `wav`."""
    tmp_path, root, train_list, _, _ = corpus
    prefixed = tmp_path / "prefixed.txt"
    prefixed.write_text("1 wav/a/s1/0.wav wav/a/s1/1.wav\n0 wav/a/s1/0.wav wav/b/s1/0.flac\n")
    kinds = {p.kind: p for p in check_data(train_list, root, prefixed, tmp_path, workers=2).problems}
    assert "speaker_overlap" not in kinds and "--strip-prefix wav/" in kinds["trial_speakers"].detail
    out = tmp_path / "r.json"
    proc = speakerid_cli("check-data", "--list", train_list, "--root", root, "--trials", prefixed, "--strip-prefix",
                         "wav/", "--out", out)
    assert proc.returncode == 1, proc.stderr
    problems = json.loads(out.read_text())["problems"]
    [overlap] = [p for p in problems if p["kind"] == "speaker_overlap"]
    assert overlap["severity"] == "error" and "2 trial speakers" in overlap["detail"] and "a, b" in overlap["detail"]
    assert not any(p["kind"] == "missing" and "/s1/0.wav" in p["where"] for p in problems)


def test_a_resumed_run_reads_again_only_the_headers_of_files_changed_since(tmp_path, monkeypatch, caplog):
    """The header pass of a million files takes minutes at every requeue. A run records the lengths of the files
    it found good with their size and modification time; the run resuming it reads only the others."""
    import os

    from speakerid.data import check

    for i in range(4):
        sf.write(str(tmp_path / f"{i}.wav"), tone(1.0 + i), 16000)
    paths = [f"{i}.wav" for i in range(4)]
    crop = samples_for_frames(200)
    read = []
    real_length_at = check.length_at
    monkeypatch.setattr(check, "length_at", lambda p, *a, **k: read.append(p.name) or real_length_at(p, *a, **k))
    first = tmp_path / "run1.npz"
    check_training_audio(tmp_path, paths, crop, 16000, record=first)
    assert sorted(read) == paths
    with np.load(first, allow_pickle=False) as f:  # data only, no pickle
        assert f["paths"].tolist() == paths and f["lengths"].tolist() == [16000 * (1 + i) for i in range(4)]

    read.clear()
    sf.write(str(tmp_path / "2.wav"), tone(0.1), 16000)  # replaced since: too short now, and read again
    os.utime(tmp_path / "2.wav", ns=(1, 1))
    second = tmp_path / "run2.npz"
    with caplog.at_level(logging.INFO, logger="speakerid"):
        short = check_training_audio(tmp_path, paths, crop, 16000, record=second, previous=first)
    assert read == ["2.wav"] and short == [("2.wav", 1600)]
    assert "3 of 4 files unchanged since" in caplog.text
    with np.load(second, allow_pickle=False) as f:
        assert f["lengths"].tolist() == [16000, 32000, 1600, 64000]

    read.clear()  # another rate, or another root: the record does not apply
    check_training_audio(tmp_path, paths, crop, 16000, resample=True, previous=second)
    assert sorted(read) == paths
    read.clear()
    (tmp_path / "broken.npz").write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        check_training_audio(tmp_path, paths, crop, 16000, previous=tmp_path / "broken.npz")
    assert sorted(read) == paths and "broken.npz cannot be read" in caplog.text


def test_a_codec_that_cannot_seek_is_an_error_for_training_files_only(tmp_path):
    """A GSM 6.10 WAV passed check-data --deep and training's header pass, then stopped training at the first
    crop drawn from it (crops seek; libsndfile cannot seek in it). Training files now get an error naming the
    codec; trial files do not, as evaluation reads whole files."""
    root = tmp_path / "wav"
    for rel in ("a/s1/0.wav", "a/s1/1.wav", "b/s1/0.wav", "c/s1/0.wav"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), tone(), 16000)
    sf.write(str(root / "a/s1/gsm.wav"), tone(), 16000, subtype="GSM610")
    train_list = tmp_path / "train.txt"
    train_list.write_text("a a/s1/0.wav\na a/s1/1.wav\na a/s1/gsm.wav\nb b/s1/0.wav\n")
    report = check_data(train_list, root, deep=True, workers=1, min_utterances=1)
    [problem] = report.problems
    assert (problem.severity, problem.kind, problem.where) == ("error", "unseekable", str(root / "a/s1/gsm.wav"))
    assert problem.detail.startswith("its codec (WAV GSM 6.10) cannot seek, so training crops cannot be read")
    with pytest.raises(AudioError, match=r"1 of 3 files of train list cannot be read for training:\n  .*gsm\.wav: "
                                         r"its codec \(WAV GSM 6\.10\) cannot seek"):
        check_training_audio(root, ["a/s1/0.wav", "a/s1/1.wav", "a/s1/gsm.wav"], samples_for_frames(200), 16000)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/s1/0.wav a/s1/gsm.wav\n0 b/s1/0.wav c/s1/0.wav\n")
    assert check_data(trials=trials, trials_root=root, deep=True, workers=1).problems == []
    check_trial_audio(root, ["a/s1/0.wav", "a/s1/gsm.wav"], 16000)  # no error: evaluation reads it whole


def test_a_rate_too_odd_to_resample_is_an_error_even_with_resampling(tmp_path):
    """At 11127 Hz (coprime with 16000) every read took 10 s and 3 GB with data.resample=true / --resample:
    the header passes refuse it, naming the file and the rate, and do not advise resampling."""
    sf.write(str(tmp_path / "ok.wav"), tone(), 16000)
    sf.write(str(tmp_path / "8k.wav"), tone(rate=8000), 8000)
    sf.write(str(tmp_path / "mac.wav"), tone(rate=11127), 11127)
    paths = ["ok.wav", "8k.wav", "mac.wav"]
    with pytest.raises(AudioError) as error:
        check_training_audio(tmp_path, paths, samples_for_frames(200), 16000, resample=True)
    assert str(error.value).startswith(f"1 of 3 files of train list cannot be read for training:\n  "
                                       f"{tmp_path / 'mac.wav'}: sample rate 11127 Hz cannot be resampled to 16000 Hz")
    with pytest.raises(AudioError) as error:
        check_trial_audio(tmp_path, paths, 16000, resample=True, resample_advice="--resample")
    message = str(error.value)
    assert message.startswith("1 files of trial list cannot be embedded; speakerid check-data lists every problem")
    assert f"{tmp_path / 'mac.wav'}: 11127 Hz cannot be resampled to 16000 Hz" in message
    assert "--resample" not in message  # resampling is no cure for it
    train_list = tmp_path / "train.txt"
    train_list.write_text("".join(f"s{i % 2} {p}\n" for i, p in enumerate(paths)))
    kinds = {p.where: p.kind for p in check_data(train_list, tmp_path, workers=1).problems if p.severity == "error"}
    assert kinds == {str(tmp_path / "8k.wav"): "sample_rate", str(tmp_path / "mac.wav"): "unresamplable_rate"}
