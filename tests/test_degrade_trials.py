"""scripts/degrade_trials.py: a degraded copy of a trial set at the SNRs asked for, reproducible, with
reverberation as a float64 direct convolution."""

import importlib.util
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO

spec = importlib.util.spec_from_file_location("degrade_trials", REPO / "scripts" / "degrade_trials.py")
degrade_trials = importlib.util.module_from_spec(spec)
spec.loader.exec_module(degrade_trials)

SR = 16000


@pytest.fixture
def trial_set(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "wav"
    files = ["s1/a/1.flac", "s1/b/2.flac", "s2/a/1.wav"]
    for i, rel in enumerate(files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(SR + 4000 * i) / SR
        sf.write(str(root / rel), (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t)).astype(np.float32), SR,
                 subtype="PCM_16")
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {files[0]} {files[1]}\n0 {files[0]} {files[2]}\n")
    musan = tmp_path / "musan"
    for cat, n in (("noise", 2), ("speech", 1)):
        (musan / cat / "x").mkdir(parents=True)
        for k in range(n):
            sf.write(str(musan / cat / "x" / f"{k}.wav"), rng.standard_normal(SR // 2).astype(np.float32) * 0.1, SR)
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    rir = np.exp(-np.arange(800) / 150.0) * rng.standard_normal(800)
    sf.write(str(rirs / "r.wav"), rir.astype(np.float32), SR, subtype="FLOAT")
    return root, trials, files, musan, rirs


def snr_db(clean, degraded):
    noise = degraded - clean
    return 10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2))


def test_noise_only_copy_has_the_drawn_snrs_and_is_reproducible(trial_set, tmp_path):
    root, trials, files, musan, _ = trial_set
    common = ["--trials", str(trials), "--root", str(root), "--musan-dir", str(musan), "--categories", "noise",
              "--snr", "5", "8", "--reverb-prob", "0", "--seed", "3"]
    assert degrade_trials.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert degrade_trials.main([*common, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "trials.txt").read_text() == trials.read_text()
    report = json.loads((tmp_path / "a" / "degrade.json").read_text())
    assert report["files"] == 3 and report["noise_files"] == 2 and report["rirs"] == 0
    for rel in files:
        clean, _ = sf.read(str(root / rel), dtype="float64")
        out, rate = sf.read(str(tmp_path / "a" / "wav" / rel), dtype="float64")
        assert rate == SR and len(out) == len(clean)
        # Peak normalisation scales speech and noise together; 16-bit rounding is far below 8 dB.
        gain = np.dot(out, clean) / np.dot(clean, clean)  # the noise is independent of the tone
        assert 5.0 - 0.3 < snr_db(gain * clean, out) < 8.0 + 0.3
        np.testing.assert_array_equal(sf.read(str(tmp_path / "b" / "wav" / rel))[0], out)  # same seed, same copy


def test_reverberation_and_snr_against_float64_reference():
    rng = np.random.default_rng(1)
    speech = rng.standard_normal(3000)
    rir = np.exp(-np.arange(400) / 60.0) * rng.standard_normal(400)
    noise = rng.standard_normal(1000)  # shorter than the speech: repeated
    out = degrade_trials.degrade(speech, noise, 12.0, rir, np.random.default_rng(0))
    # float64 re-derivation: unit-energy RIR, direct full convolution cut to the length, then the noise
    # repeated to the length and scaled so that P(reverberant) / P(noise) = 10^(12/10).
    reverberant = np.convolve(speech, rir / np.sqrt(np.sum(rir ** 2)))[:3000]
    repeated = np.resize(noise, 3000)
    expected = reverberant + repeated * np.sqrt(np.mean(reverberant ** 2) / np.mean(repeated ** 2) / 10 ** 1.2)
    np.testing.assert_allclose(out, expected, atol=1e-5 * np.abs(expected).max())
    assert snr_db(reverberant, out) == pytest.approx(12.0, abs=0.01)


def test_missing_category_is_an_error(trial_set, tmp_path, capsys):
    root, trials, _, musan, _ = trial_set
    code = degrade_trials.main(["--trials", str(trials), "--root", str(root), "--out", str(tmp_path / "o"),
                                "--musan-dir", str(musan), "--categories", "music", "--reverb-prob", "0"])
    assert code == 1 and "none of the categories ['music']" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["parent of root", "inside root", "foreign folder"])
def test_the_copy_is_never_written_over_or_among_the_source_audio(trial_set, tmp_path, where, capsys):
    """--out at the corpus folder above --root wrote every degraded copy over its source file (exit 0)."""
    root, trials, files, musan, _ = trial_set
    out = {"parent of root": tmp_path, "inside root": root / "noisy", "foreign folder": tmp_path / "mine"}[where]
    if where == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = {rel: (root / rel).read_bytes() for rel in files}
    with pytest.raises(SystemExit) as exit_:
        degrade_trials.main(["--trials", str(trials), "--root", str(root), "--out", str(out), "--musan-dir",
                             str(musan), "--categories", "noise", "--reverb-prob", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert ("overlaps --root" in err) if where != "foreign folder" else ("did not write (no degrade.json)" in err)
    assert {rel: (root / rel).read_bytes() for rel in files} == before and not (root / "noisy").exists()
    # a rerun into a folder the script wrote is fine
    common = ["--trials", str(trials), "--root", str(root), "--musan-dir", str(musan), "--categories", "noise",
              "--reverb-prob", "0", "--out", str(tmp_path / "again")]
    assert degrade_trials.main(common) == 0 and degrade_trials.main(common) == 0


@pytest.mark.parametrize("snr", [["nan", "nan"], ["5", "inf"], ["10", "0"]])
def test_snrs_must_be_two_finite_numbers_in_order(trial_set, tmp_path, snr, capsys):
    root, trials, _, musan, _ = trial_set
    with pytest.raises(SystemExit):
        degrade_trials.main(["--trials", str(trials), "--root", str(root), "--out", str(tmp_path / "o"),
                             "--musan-dir", str(musan), "--snr", *snr, "--reverb-prob", "0"])
    assert "--snr takes two finite numbers LO <= HI" in capsys.readouterr().err
