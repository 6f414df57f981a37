"""Augmentation checked against independent float64 re-derivations: the SNR of the added noise, the
noise segments themselves, reverberation as a direct convolution, the frequencies of the choices, speed
perturbation's change of duration; and the banks are read from disk once."""

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import stats

from conftest import ARSC_DIR, requires_arsc
from speakerid import augment as aug
from speakerid.augment import (
    BankTooLargeError,
    NoiseBank,
    NoiseCategory,
    SpeedPerturb,
    build_noise_reverb,
    change_speed,
    fft_size,
)
from speakerid.config import ConfigError
from speakerid.data.synthetic_noise import NoiseSpec, ensure_noise_corpus

CROP = 4000
TAORUIJIE_CHOICES = {"none": (1, []), "reverb": (1, ["reverb"]), "babble": (1, ["speech"]),
                     "music": (1, ["music"]), "noise": (1, ["noise"]), "tv": (1, ["speech", "music"])}
TAORUIJIE_CATEGORIES = {"noise": NoiseCategory((0, 15), (1, 1)),
                        "speech": NoiseCategory((13, 20), (3, 8), snr_per_file=True),
                        "music": NoiseCategory((5, 15), (1, 1))}
# The same with one SNR for the sum of the babble talkers (a config's snr_per_file: false).
SUM_SNR_CATEGORIES = {**TAORUIJIE_CATEGORIES, "speech": NoiseCategory((13, 20), (3, 8))}


@pytest.fixture(scope="module")
def noise_dirs(tmp_path_factory):
    # Files from 0.15 s to 1 s: some shorter than the crop (wrapped), most longer (random offsets).
    return ensure_noise_corpus(tmp_path_factory.mktemp("noise"), NoiseSpec(seconds=1.0, min_seconds=0.15, rirs=8))


@pytest.fixture(scope="module")
def module(noise_dirs):
    return build_noise_reverb(TAORUIJIE_CHOICES, TAORUIJIE_CATEGORIES, noise_dirs["musan_dir"],
                              noise_dirs["rir_dir"], CROP, bank_dtype="float32")


@pytest.fixture(scope="module")
def module_sum_snr(noise_dirs):
    return build_noise_reverb(TAORUIJIE_CHOICES, SUM_SNR_CATEGORIES, noise_dirs["musan_dir"],
                              noise_dirs["rir_dir"], CROP, bank_dtype="float32")


def speech_like(batch, rng):
    """Signals whose power differs by 40 dB across the batch, so the SNR scaling is really exercised."""
    x = rng.standard_normal((batch, CROP)) * np.sin(np.linspace(0, 20, CROP)) ** 2
    return torch.from_numpy((x * 10 ** rng.uniform(-2, 0, (batch, 1))).astype(np.float32))


def test_fft_size_is_the_smallest_5_smooth_number_at_least_n():
    def smooth(k):
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        return k == 1

    for n in list(range(1, 600)) + [32240 + 15999]:
        expected = next(k for k in range(n, 2 * n + 2) if smooth(k))
        assert fft_size(n) == expected, n


def test_added_noise_has_the_drawn_snr(module_sum_snr):
    """With one SNR per category the whole added noise has it (per-file SNRs: the re-derivation below)."""
    module = module_sum_snr
    torch.manual_seed(0)
    x = speech_like(400, np.random.default_rng(0))
    plan = module.draw(len(x))
    out = module.apply(x, plan).double()
    x64 = x.double()
    checked = {"noise": 0, "speech": 0, "music": 0}
    for b in range(len(x)):
        applied = [c for c, used in zip(module.components, plan.uses[b].tolist()) if used]
        if len(applied) != 1 or applied[0] == "reverb":
            continue
        category = applied[0]
        snr = 10 * math.log10(x64[b].square().mean() / (out[b] - x64[b]).square().mean())
        assert snr == pytest.approx(plan.snr_db[category][b, 0].item(), abs=0.1)
        lo, hi = TAORUIJIE_CATEGORIES[category].snr_db
        assert lo <= plan.snr_db[category][b, 0].item() <= hi
        checked[category] += 1
    assert min(checked.values()) >= 30, checked


def test_tv_adds_babble_and_music_each_at_its_own_snr(module_sum_snr):
    module = module_sum_snr
    torch.manual_seed(1)
    x = speech_like(200, np.random.default_rng(1))
    plan = module.draw(len(x))
    out = module.apply(x, plan)
    power = x.square().mean(dim=1, keepdim=True)
    babble, music = module.noise("speech", plan, power), module.noise("music", plan, power)
    tv = [b for b in range(len(x)) if module.choice_names[plan.choice[b]] == "tv"]
    assert len(tv) > 15
    for b in tv:
        torch.testing.assert_close(out[b], x[b] + babble[b] + music[b])
        for noise, category in ((babble, "speech"), (music, "music")):
            snr = 10 * math.log10(power[b].item() / noise[b].double().square().mean().item())
            assert snr == pytest.approx(plan.snr_db[category][b, 0].item(), abs=0.1)


@pytest.mark.parametrize("snr_per_file", [True, False])
def test_noise_segments_match_a_float64_rederivation_from_the_files(request, noise_dirs, snr_per_file):
    """Independently of the bank: read the files, find each drawn segment (wrapping short files), give each
    unit power, then either scale each to its own SNR and sum them (TaoRuijie's dataLoader.add_noise), or
    sum them and scale the sum to one SNR."""
    module = request.getfixturevalue("module" if snr_per_file else "module_sum_snr")

    files = {c: sorted((Path(noise_dirs["musan_dir"]) / c).rglob("*.wav")) for c in ("speech", "noise")}
    clips = {c: [sf.read(str(p), dtype="float64")[0] for p in ps] for c, ps in files.items()}
    lengths_seen = [len(c) for cs in clips.values() for c in cs]
    assert min(lengths_seen) < CROP < max(lengths_seen)  # both wrapped and randomly offset segments
    torch.manual_seed(2)
    x = speech_like(32, np.random.default_rng(2))
    plan = module.draw(len(x))
    power = x.double().square().mean(dim=1)
    for category in ("speech", "noise"):
        got = module.noise(category, plan, x.square().mean(dim=1, keepdim=True)).double().numpy()
        lengths = [max(len(c), CROP) for c in clips[category]]
        bank_starts = np.cumsum([0] + lengths[:-1])
        counts = plan.counts[category]
        low, high = TAORUIJIE_CATEGORIES[category].files
        assert counts.min() >= low and counts.max() <= high
        for b in range(len(x)):
            mix = np.zeros(CROP)
            used_files = []
            per_file = snr_per_file and category == "speech"
            for k in range(counts[b].item()):
                start = plan.starts[category][b, k].item()
                f = int(np.searchsorted(bank_starts, start, side="right") - 1)
                offset = start - bank_starts[f]
                assert 0 <= offset <= lengths[f] - CROP
                clip = clips[category][f]
                segment = clip[(offset + np.arange(CROP)) % len(clip)]  # short files wrap
                segment = segment / np.sqrt(np.mean(segment ** 2))
                snr = plan.snr_db[category][b, k].item()
                assert TAORUIJIE_CATEGORIES[category].snr_db[0] <= snr <= TAORUIJIE_CATEGORIES[category].snr_db[1]
                mix += segment * np.sqrt(power[b].item() / 10 ** (snr / 10)) if per_file else segment
                used_files.append(f)
            assert len(set(used_files)) == len(used_files)  # distinct files within one babble
            snr = plan.snr_db[category][b, 0].item()
            expected = mix if per_file else mix * np.sqrt(power[b].item() / (np.mean(mix ** 2) * 10 ** (snr / 10)))
            np.testing.assert_allclose(got[b], expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_babble_of_two_orthogonal_talkers_at_10_and_20_db_worked_by_hand():
    """Two 'talkers' are sinusoids with whole numbers of periods in the crop, so their powers add exactly.
    Each at its own SNR: noise power = P (10^-1 + 10^-2) = 0.11 P, an SNR of 10 log10(1 / 0.11) = 9.586 dB.
    One SNR for the sum (the first draw, 10 dB): noise power 0.1 P."""
    t = np.arange(CROP)
    talkers = [np.sin(2 * np.pi * 5 * t / CROP), 3.0 * np.sin(2 * np.pi * 17 * t / CROP)]
    bank = NoiseBank(talkers, CROP, dtype=torch.float32)
    speech = torch.full((1, CROP), 0.5)  # power P = 0.25
    for per_file, expected_noise_power in ((True, 0.25 * 0.11), (False, 0.25 * 0.1)):
        module = aug.NoiseReverb({"babble": (1, ["speech"])},
                                 {"speech": NoiseCategory((10, 20), (2, 2), snr_per_file=per_file)},
                                 {"speech": bank}, None, CROP)
        plan = aug.AugmentPlan(choice=torch.tensor([0]), uses=torch.tensor([[False, True]]),
                               starts={"speech": torch.tensor([[0, CROP]])}, counts={"speech": torch.tensor([2])},
                               snr_db={"speech": torch.tensor([[10.0, 20.0]])})
        noise = (module.apply(speech, plan) - speech).double()
        assert noise.square().mean().item() == pytest.approx(expected_noise_power, rel=1e-4)
        if per_file:  # each talker keeps its own level: 0.1 P and 0.01 P
            first = torch.from_numpy(talkers[0]) * math.sqrt(0.25 * 0.1 / 0.5)
            torch.testing.assert_close(noise[0], first + torch.from_numpy(talkers[1]) * math.sqrt(0.25 * 0.01 / 4.5),
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16])
def test_power_floor_worked_by_hand(dtype):
    """TaoRuijie's add_noise: gain^2 = (P_speech + f) / (P_noise + f) * 10^(-SNR / 10), P_noise at the file's own
    level. A sinusoid of amplitude sqrt(2e-4) has P_noise = 1e-4 = f; speech 0.5 has P = 0.25; at 10 dB the
    added noise has power 1e-4 * 0.2501 / 2e-4 * 0.1 = 0.012505 (without the floor 0.025). The int16 bank is
    peak-normalised, so this also checks that the file's level is restored."""
    t = np.arange(3 * CROP)
    file = math.sqrt(2e-4) * np.sin(2 * np.pi * 7 * t / CROP)  # whole periods in any crop-long window
    speech = torch.full((1, CROP), 0.5)
    plan = aug.AugmentPlan(choice=torch.tensor([0]), uses=torch.tensor([[False, True]]),
                           starts={"noise": torch.tensor([[CROP // 3]])}, counts={"noise": torch.tensor([1])},
                           snr_db={"noise": torch.tensor([[10.0]])})
    for floor, expected in ((1e-4, 0.012505), (0.0, 0.025)):
        module = aug.NoiseReverb({"noise": (1, ["noise"])}, {"noise": NoiseCategory((0, 15), (1, 1))},
                                 {"noise": NoiseBank([file], CROP, dtype)}, None, CROP, power_floor=floor)
        noise = (module.apply(speech, plan) - speech).double()
        assert noise.square().mean().item() == pytest.approx(expected, rel=2e-4)


def test_power_floor_matches_a_float64_rederivation_from_the_files(noise_dirs):
    """Per talker, from the files at their own level (an int16 bank, so their peaks are restored): each segment
    gets gain sqrt((P_speech + f) / (P_segment + f) * 10^(-SNR / 10)). A large floor, so that it matters for
    every file."""
    floor = 1e-2
    module = build_noise_reverb(TAORUIJIE_CHOICES, TAORUIJIE_CATEGORIES, noise_dirs["musan_dir"],
                                noise_dirs["rir_dir"], CROP, power_floor=floor)
    files = sorted((Path(noise_dirs["musan_dir"]) / "speech").rglob("*.wav"))
    clips = [sf.read(str(p), dtype="float64")[0] for p in files]
    bank_starts = np.cumsum([0] + [max(len(c), CROP) for c in clips[:-1]])
    torch.manual_seed(8)
    x = speech_like(24, np.random.default_rng(8))
    plan = module.draw(len(x))
    got = module.noise("speech", plan, x.square().mean(dim=1, keepdim=True)).double().numpy()
    power = x.double().square().mean(dim=1).numpy()
    softer = 0
    for b in range(len(x)):
        expected = np.zeros(CROP)
        for k in range(plan.counts["speech"][b].item()):
            start = plan.starts["speech"][b, k].item()
            f = int(np.searchsorted(bank_starts, start, side="right") - 1)
            clip = clips[f]
            segment = clip[(start - bank_starts[f] + np.arange(CROP)) % len(clip)]
            snr = plan.snr_db["speech"][b, k].item()
            gain2 = (power[b] + floor) / (np.mean(segment ** 2) + floor) * 10 ** (-snr / 10)
            expected += np.sqrt(gain2) * segment
            softer += gain2 * np.mean(segment ** 2) < 0.9 * power[b] * 10 ** (-snr / 10)
        np.testing.assert_allclose(got[b], expected, rtol=0, atol=2e-4 * np.abs(expected).max())
    assert softer > 10  # the floor really changed the gains


def test_power_floor_needs_an_snr_per_file_for_a_sum_of_files(noise_dirs):
    with pytest.raises(ConfigError, match=r"augment.power_floor=0.0001 .* augment.categories.speech "
                                                     r"\(up to 8 files summed\) needs snr_per_file: true"):
        build_noise_reverb(TAORUIJIE_CHOICES, SUM_SNR_CATEGORIES, noise_dirs["musan_dir"], noise_dirs["rir_dir"],
                           CROP, power_floor=1e-4)


def test_reverberation_equals_a_float64_direct_convolution(module, noise_dirs):
    from pathlib import Path

    rir_paths = sorted((Path(noise_dirs["rir_dir"]) / "simulated_rirs").rglob("*.wav"))
    torch.manual_seed(3)
    x = speech_like(48, np.random.default_rng(3))
    plan = module.draw(len(x))
    out = module.apply(x, plan).double().numpy()
    reverb = [b for b in range(len(x)) if module.choice_names[plan.choice[b]] == "reverb"]
    assert len(reverb) >= 4
    for b in reverb:
        rir = sf.read(str(rir_paths[plan.rir[b].item()]), dtype="float64")[0]
        rir = rir / np.sqrt(np.sum(rir ** 2))
        expected = np.convolve(x[b].double().numpy(), rir)[:CROP]
        np.testing.assert_allclose(out[b], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        assert not np.allclose(out[b], x[b].numpy(), atol=1e-3 * np.abs(expected).max())


def test_choice_frequencies_match_the_configured_weights(noise_dirs):
    choices = {"none": (4, []), "reverb": (3, ["reverb"]), "noise": (2, ["noise"]), "tv": (1, ["speech", "music"])}
    module = build_noise_reverb(choices, TAORUIJIE_CATEGORIES, noise_dirs["musan_dir"], noise_dirs["rir_dir"],
                                CROP)
    torch.manual_seed(4)
    draws = torch.cat([module.draw(500).choice for _ in range(40)])  # 20,000 utterances
    counts = torch.bincount(draws, minlength=4).numpy()
    expected = np.array([0.4, 0.3, 0.2, 0.1]) * len(draws)
    # Goodness of fit at the 0.1% level, and each count within 4 binomial standard deviations.
    assert stats.chisquare(counts, expected).pvalue > 1e-3, counts
    sd = np.sqrt(len(draws) * np.array([0.4, 0.3, 0.2, 0.1]) * np.array([0.6, 0.7, 0.8, 0.9]))
    assert np.all(np.abs(counts - expected) < 4 * sd), counts
    plan = module.draw(2000)
    for name, (_, apply) in choices.items():
        rows = plan.uses[plan.choice == module.choice_names.index(name)]
        assert rows.shape[0] > 0
        assert (rows == torch.tensor([c in apply for c in module.components])).all()
    # The babble size is uniform over [3, 8] too.
    files = torch.bincount(plan.counts["speech"], minlength=9)[3:].numpy()
    assert stats.chisquare(files).pvalue > 1e-3 and files.sum() == 2000


def test_missing_category_is_skipped_with_one_warning(noise_dirs, tmp_path, caplog):
    import shutil

    musan = tmp_path / "musan"
    shutil.copytree(noise_dirs["musan_dir"], musan)
    shutil.rmtree(musan / "music")
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        module = build_noise_reverb(TAORUIJIE_CHOICES, TAORUIJIE_CATEGORIES, musan, noise_dirs["rir_dir"], CROP)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no music folder" in warnings[0].getMessage()
    # "music" could do nothing and is dropped; "tv" keeps its babble; the rest share the weight.
    assert module.choice_names == ["none", "reverb", "babble", "noise", "tv"]
    torch.testing.assert_close(module.probabilities, torch.full((5,), 0.2))
    assert module.choice_table[4].tolist() == [c == "speech" for c in module.components]
    out = module(speech_like(8, np.random.default_rng(5)))
    assert out.shape == (8, CROP) and torch.isfinite(out).all()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_bank_size_cap_stops_before_reading_files(noise_dirs, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("files were read before the size check")

    monkeypatch.setattr(aug, "_read_all", no_reading)
    with pytest.raises(BankTooLargeError, match=r"would take \d+ MB .* > augment.max_bank_mb=0.1"):
        build_noise_reverb(TAORUIJIE_CHOICES, TAORUIJIE_CATEGORIES, noise_dirs["musan_dir"], noise_dirs["rir_dir"],
                           CROP, max_bank_mb=0.1)


def test_no_file_is_read_while_augmenting(module, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("an augmentation file was read per batch")

    monkeypatch.setattr(sf, "read", no_reading)
    monkeypatch.setattr(sf, "SoundFile", no_reading)
    monkeypatch.setattr(sf, "info", no_reading)
    out = module(speech_like(16, np.random.default_rng(6)))
    assert out.shape == (16, CROP)


def test_int16_bank_keeps_segments_within_quantisation(noise_dirs):
    """The default int16 bank gives the same noise as a float32 one up to 16-bit rounding."""
    rng = np.random.default_rng(7)
    clips = [rng.standard_normal(n) * 0.01 for n in (CROP // 2, 3 * CROP)]
    exact, quantised = NoiseBank(clips, CROP, torch.float32), NoiseBank(clips, CROP, torch.int16)
    starts = torch.tensor([0, CROP, CROP + 10, 3 * CROP])  # file 0 (wrap-padded to CROP), file 1
    a, b = exact.segments(starts), quantised.segments(starts)
    for row in range(len(starts)):
        scale = (a[row] * b[row]).sum() / (b[row] * b[row]).sum()  # peak normalisation differs per file
        torch.testing.assert_close(b[row] * scale, a[row], rtol=0, atol=float(a[row].abs().max()) * 2e-4)


def test_bad_choice_configs_name_the_choice(noise_dirs):
    with pytest.raises(aug.AugmentConfigError, match="babble.*'music'.*no bank|augment.noise does not define"):
        build_noise_reverb({"babble": (1, ["speach"])}, TAORUIJIE_CATEGORIES, noise_dirs["musan_dir"],
                           noise_dirs["rir_dir"], CROP)
    with pytest.raises(aug.AugmentConfigError, match="rir_dir is not set"):
        build_noise_reverb({"r": (1, ["reverb"])}, {}, None, None, CROP)
    assert build_noise_reverb({"none": (1, [])}, {}, None, None, CROP) is None


@pytest.mark.parametrize("name,write,message", [
    ("stereo.wav", lambda p: sf.write(str(p), np.zeros((800, 2), np.float32), 16000),
     "expected mono audio, got 2 channels"),
    ("empty.wav", lambda p: sf.write(str(p), np.zeros(0, np.float32), 16000), "audio file is empty"),
    ("garbage.wav", lambda p: p.write_bytes(b"RIFF" + bytes(100)), "cannot read audio"),
    # One NaN: an int16 bank became all zeros (a silent category), a float32 one NaN crops, a RIR NaN reverb.
    ("nan.wav", lambda p: sf.write(str(p), np.where(np.arange(8000) == 7, np.nan, 0.1).astype(np.float32), 16000,
                                   subtype="FLOAT"), "contains NaN or infinite samples"),
    # The header reads, the samples do not: found when the bank is read, after the size check.
    ("truncated.flac", lambda p: p.write_bytes(_flac_bytes(p)[:3000]), "cannot read audio|no samples could be read"),
])
@pytest.mark.parametrize("folder", ["noise", "rir"])
def test_unusable_noise_or_rir_file_is_an_augment_error_naming_it(tmp_path, folder, name, write, message):
    rng = np.random.default_rng(0)
    musan, rirs = tmp_path / "musan" / "noise" / "x", tmp_path / "rirs"
    musan.mkdir(parents=True)
    rirs.mkdir()
    sf.write(str(musan / "a.wav"), 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
    sf.write(str(rirs / "a.wav"), np.exp(-np.arange(400) / 50.0).astype(np.float32), 16000)
    bad = (musan if folder == "noise" else rirs) / name
    write(bad)
    with pytest.raises(aug.AugmentConfigError, match=f"{bad}: ({message})"):
        build_noise_reverb({"noise": (1, ["noise"]), "reverb": (1, ["reverb"])}, TAORUIJIE_CATEGORIES,
                           tmp_path / "musan", rirs, CROP)


def test_linked_subset_folders_are_followed_and_hidden_stubs_skipped(tmp_path):
    """A MUSAN subset linked into place was skipped (the category dropped, 'has no speech folder'); macOS
    `._x.wav` stubs are not audio; a link loop ends."""
    real = tmp_path / "elsewhere" / "talkers"
    real.mkdir(parents=True)
    for i in range(3):
        sf.write(str(real / f"t{i}.wav"), np.full(800, 0.1, np.float32), 16000)
    (real / "._t0.wav").write_bytes(b"\0\5\x16\7")
    musan = tmp_path / "musan"
    (musan / "speech").mkdir(parents=True)
    (musan / "speech" / "sub").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(musan, target_is_directory=True)  # speech/sub/loop/speech/sub/... once only
    assert aug.musan_categories(musan) == {"speech": [musan / "speech" / "sub" / f"t{i}.wav" for i in range(3)]}


def _flac_bytes(path):
    """A 3 s flac file's bytes (written beside path, then removed)."""
    tmp = path.with_suffix(".full.flac")
    sf.write(str(tmp), np.sin(np.arange(48000) / 7.0).astype(np.float32) * 0.3, 16000)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


# --------------------------------------------------------------------------------------------- speed
def tone_and_click(n, frequency=1000.0, click=6000, sample_rate=16000):
    t = np.arange(n) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * frequency * t)
    x[click] += 1.0
    return torch.from_numpy(x.astype(np.float32))


def dominant_frequency(x, sample_rate=16000):
    x = x.double().numpy()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sample_rate)[np.argmax(spectrum)]


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration_by_the_factor(factor):
    n, click = 32000, 6000
    impulse = torch.zeros(n)
    impulse[click] = 1.0
    y = change_speed(impulse, factor)
    assert abs(len(y) - n / factor) <= 1                                # duration / factor
    assert abs(int(torch.argmax(y.abs())) - click / factor) <= 1        # an event at t moves to t / factor
    tone = change_speed(tone_and_click(n, 1000.0, click=0) - tone_and_click(n, 0.0, click=0), factor)
    assert dominant_frequency(tone) == pytest.approx(1000.0 * factor, abs=1.0)  # pitch x factor


def test_speed_perturb_keeps_the_crop_and_relabels_new_speakers():
    crop, n_speakers = 8000, 5
    module = SpeedPerturb([1.1, 1.0, 0.9], crop, n_speakers, speakers_as_new=True)
    assert module.factors == [1.0, 0.9, 1.1] and module.read_samples == math.ceil(crop * 1.1)
    assert module.num_classes == 15
    x = torch.stack([tone_and_click(module.read_samples, 500.0 + 100 * b, click=3000) for b in range(60)])
    labels = torch.arange(60) % n_speakers
    torch.manual_seed(8)
    out, new_labels = module(x, labels)
    assert out.shape == (60, crop)
    offsets = (new_labels - labels) // n_speakers
    assert set(offsets.tolist()) == {0, 1, 2}
    for b in range(60):
        factor = module.factors[offsets[b]]
        expected = change_speed(x[b, :math.ceil(crop * factor)], factor)[:crop]
        torch.testing.assert_close(out[b], expected)
        assert dominant_frequency(out[b]) == pytest.approx((500.0 + 100 * b) * factor, abs=2.5)
    same, _ = SpeedPerturb([0.9, 1.0, 1.1], crop, n_speakers)(x, labels)
    assert same.shape == (60, crop)


@pytest.mark.parametrize("sample_rate,crop,factors", [
    (22050, 48240, [0.95, 1.0, 1.05]),   # 22050 x 0.95 = 20947.5 Hz, resampled from 20948
    (16000, 32240, [0.5021, 1.0, 1.9997]),  # rates that are not whole Hz at 16 kHz too
    (11025, 24000, [0.9, 1.0, 1.1]),
])
def test_speed_perturb_reads_enough_for_a_rate_rounded_to_whole_hz(sample_rate, crop, factors):
    """The resampler runs at round(sample_rate * factor) Hz: the input it needs for a whole crop follows
    from that rate, not from the factor (one sample short stopped training at step 1)."""
    module = SpeedPerturb(factors, crop, 3, sample_rate=sample_rate)
    for factor, needed, resample in zip(module.factors, module.source_samples, module.resamplers):
        rate = round(sample_rate * factor)
        assert needed == math.ceil(crop * rate / sample_rate)  # the least input that gives crop samples out
        if factor != 1.0:  # torchaudio's resampler at that rate (building another costs seconds at 22.05 kHz)
            assert (resample.orig_freq, resample.new_freq) == (rate, sample_rate)
            assert resample(torch.zeros(needed)).shape[-1] >= crop
    assert module.read_samples == max(module.source_samples)
    out, _ = module(torch.randn(6, module.read_samples), torch.arange(6) % 3)
    assert out.shape == (6, crop) and torch.isfinite(out).all()


def test_speed_labels_unchanged_without_new_speakers():
    module = SpeedPerturb([0.9, 1.0, 1.1], 1000, 4, speakers_as_new=False)
    labels = torch.tensor([0, 1, 2, 3])
    _, out = module(torch.zeros(4, module.read_samples), labels)
    assert torch.equal(out, labels) and module.num_classes == 4


# --------------------------------------------------------------------------------------------- arsc
@requires_arsc()
def test_arsc_banks_as_distributed(caplog):
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        module = build_noise_reverb(TAORUIJIE_CHOICES, TAORUIJIE_CATEGORIES, ARSC_DIR / "musan",
                                    ARSC_DIR / "RIRS_NOISES", 32240)
    assert "no music folder" in caplog.text
    assert set(module.banks) == {"noise", "speech"} and module.rirs.shape[0] == 40
    torch.testing.assert_close(module.rirs.double().square().sum(dim=1), torch.ones(40, dtype=torch.float64))
    out = module(torch.randn(8, 32240) * 0.05)
    assert torch.isfinite(out).all()


def test_babble_larger_than_the_folder_is_capped_with_a_warning(noise_dirs, caplog):
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        module = build_noise_reverb({"babble": (1, ["speech"])}, {"speech": NoiseCategory((13, 20), (3, 50))},
                                    noise_dirs["musan_dir"], None, CROP)
    assert "has 10 files but augment.categories.speech.files asks for up to 50" in caplog.text
    counts = module.draw(500).counts["speech"]
    assert counts.min() == 3 and counts.max() == 10


def test_a_zero_weight_choice_is_never_drawn(noise_dirs):
    module = build_noise_reverb({"none": (1, []), "never": (0, ["noise"]), "noise": (1, ["noise"])},
                                TAORUIJIE_CATEGORIES, noise_dirs["musan_dir"], None, CROP)
    counts = torch.bincount(module.draw(5000).choice, minlength=3)
    assert counts[1] == 0 and counts[0] > 2000 and counts[2] > 2000
    last_zero = build_noise_reverb({"none": (1, []), "noise": (2, ["noise"]), "never": (0, ["noise"])},
                                   TAORUIJIE_CATEGORIES, noise_dirs["musan_dir"], None, CROP)
    last_zero.cumulative[-1] = 0.9999  # as if rounding left the total short of 1
    torch.manual_seed(9)
    assert last_zero.draw(20000).choice.max() == 1


def test_synthetic_noise_banks_are_written_only_into_their_own_folder(tmp_path):
    from speakerid.data.synthetic import ForeignFolderError

    spec = NoiseSpec(seconds=0.3, noise_files=1, speech_files=1, music_files=1, rirs=1)
    user = tmp_path / "user"
    (user / "musan").mkdir(parents=True)
    (user / "musan" / "mine.wav").write_bytes(b"a user's file")
    with pytest.raises(ForeignFolderError, match="musan"):
        ensure_noise_corpus(user, spec)
    assert [p.relative_to(user) for p in sorted(user.rglob("*"))] == [Path("musan"), Path("musan/mine.wav")]

    own = tmp_path / "own"
    paths = ensure_noise_corpus(own, spec)
    assert len(list(Path(paths["musan_dir"]).rglob("*.wav"))) == 3 and len(list(own.rglob("*.wav"))) == 4
    # another spec replaces the banks whole (no file of the old one left), an interrupted one is redone
    ensure_noise_corpus(own, NoiseSpec(seconds=0.3, noise_files=2, speech_files=1, music_files=0, rirs=1))
    assert len(list((own / "musan" / "noise").rglob("*.wav"))) == 2 and not list((own / "musan").glob("music/*/*"))
    marker = own / "noise_corpus.json"
    marker.write_text(marker.read_text().replace('"complete": true', '"complete": false'))
    (own / "musan" / "noise" / "synthetic" / "noise-000.wav").unlink()
    ensure_noise_corpus(own, NoiseSpec(seconds=0.3, noise_files=2, speech_files=1, music_files=0, rirs=1))
    assert len(list((own / "musan" / "noise").rglob("*.wav"))) == 2


@pytest.mark.parametrize("override, per_file, floor", [
    ([], True, 1e-4),
    (["augment.categories.speech.snr_per_file=false", "augment.power_floor=0"], False, 0.0),
])
def test_musan_rir_config_builds_babble_with_an_snr_per_talker(noise_dirs, override, per_file, floor):
    from conftest import compose_config
    from speakerid import builders

    cfg = compose_config(["debug=tiny", "data.dir=/x", "run_dir=/tmp/x", "augment=musan_rir",
                          f"augment.musan_dir={noise_dirs['musan_dir']}", f"augment.rir_dir={noise_dirs['rir_dir']}",
                          *override])
    module = builders.build_noise_reverb(cfg, CROP)
    assert module.categories["speech"].snr_per_file is per_file
    assert module.power_floor == floor
    assert module.categories["noise"].snr_per_file is False  # one file: either way the same
