"""The augment group and the loader / speed switches compose, and bad values stop the run naming the key."""

import pytest

from conftest import compose_config
from speakerid.config import ConfigError, validate_config


def cfg_with(*overrides):
    return compose_config(["debug=tiny", "data.dir=/x", "run_dir=/tmp/x", *overrides])


def test_default_has_no_augmentation_and_the_loader_switches():
    cfg = cfg_with()
    validate_config(cfg)
    assert list(cfg.augment.choices) == ["none"] and list(cfg.augment.speed.factors) == [1.0]
    assert cfg.data.pin_memory is True and cfg.data.persistent_workers is True and cfg.data.prefetch_factor == 4
    assert cfg.trainer.compile is False


def test_musan_rir_is_taoruijies_recipe_and_needs_its_folders():
    cfg = cfg_with("augment=musan_rir")
    with pytest.raises(ConfigError, match="augment.musan_dir, augment.rir_dir"):
        validate_config(cfg)
    cfg = cfg_with("augment=musan_rir", "augment.musan_dir=/m", "augment.rir_dir=/r")
    validate_config(cfg)
    assert {n: list(c.apply) for n, c in cfg.augment.choices.items()} == {
        "none": [], "reverb": ["reverb"], "babble": ["speech"], "music": ["music"], "noise": ["noise"],
        "tv": ["speech", "music"]}
    assert all(c.weight == 1 for c in cfg.augment.choices.values())
    assert list(cfg.augment.categories.speech.snr_db) == [13, 20] and list(cfg.augment.categories.speech.files) == [3, 8]
    assert list(cfg.augment.categories.noise.snr_db) == [0, 15] and list(cfg.augment.categories.music.snr_db) == [5, 15]
    # dataLoader.add_noise scales every babble talker to an SNR of its own before summing them, and adds 1e-4 to
    # the speech and the noise mean squares of each SNR.
    assert cfg.augment.categories.speech.snr_per_file is True
    assert cfg.augment.power_floor == 1e-4


@pytest.mark.parametrize("override, message", [
    ("augment.choices.babble.weight=-1", r"augment.choices.babble.weight=-1 is not allowed"),
    ("augment.categories.speech.snr_db=[20,13]", r"augment.categories.speech.snr_db=\[20, 13\] is not allowed"),
    ("augment.categories.speech.files=[0,8]", r"augment.categories.speech.files=\[0, 8\] is not allowed"),
    ("augment.categories.speech.snr_per_file=sometimes",
     r"augment.categories.speech.snr_per_file='sometimes' is not allowed"),
    ("+augment.categories.noise.snr_per_fille=true", r"augment.categories.noise=\{'snr_db': \[0, 15\], "),
    ("augment.speed.factors=[0.9,0.9]", r"augment.speed.factors=\[0.9, 0.9\] is not allowed"),
    ("augment.bank_dtype=float16", r"augment.bank_dtype='float16' is not allowed"),
    ("augment.max_bank_mb=0", r"augment.max_bank_mb=0 is not allowed"),
    ("augment.power_floor=-1e-4", r"augment.power_floor=-0.0001 is not allowed"),
    # A floor needs each file's own level: one SNR for a sum of talkers has none.
    ("augment.categories.speech.snr_per_file=false",
     r"augment.power_floor=0.0001 is not allowed: .*augment.categories.speech \(up to 8 files summed\) needs "
     r"snr_per_file: true"),
])
def test_bad_augment_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg_with("augment=musan_rir", "augment.musan_dir=/m", "augment.rir_dir=/r", override))


@pytest.mark.parametrize("override, message", [
    ("data.prefetch_factor=0", "data.prefetch_factor=0 is not allowed"),
    ("data.pin_memory=maybe", "data.pin_memory='maybe' is not allowed"),
    ("trainer.compile=1", "trainer.compile=1 is not allowed"),
])
def test_bad_loader_and_speed_switches_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg_with(override))


def test_a_choice_with_a_misspelt_key_is_named():
    with pytest.raises(ConfigError, match=r"augment.choices.babble=\{'weight': 1, 'aply'"):
        validate_config(cfg_with("augment=musan_rir", "augment.musan_dir=/m", "augment.rir_dir=/r",
                                 "~augment.choices.babble", "+augment.choices.babble={weight:1,aply:[speech]}"))


def test_train_py_names_a_missing_noise_folder_without_a_traceback(tiny_corpus_dir, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "debug=tiny", f"data.dir={tiny_corpus_dir}", "augment=musan_rir",
         f"augment.musan_dir={tmp_path / 'nope'}", f"augment.rir_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1
    assert f"augment.musan_dir={tmp_path / 'nope'} is not a directory" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_the_reference_augmentations_carry_their_power_floors():
    """WeSpeaker's add_reverb_noise adds 1e-4 to both mean squares, 3D-Speaker's addnoise 1e-6 (audio in
    [-1, 1]); arsc_augment keeps its measured setting, none, and the exact TaoRuijie variant has his."""
    assert cfg_with("augment=wespeaker").augment.power_floor == 1e-4
    assert cfg_with("augment=campplus").augment.power_floor == 1e-6
    assert cfg_with("augment=none").augment.power_floor == 0
    arsc = compose_config(["experiment=arsc_augment", "data.dir=/x", "run_dir=/tmp/x"])
    validate_config(arsc)
    assert arsc.augment.power_floor == 0 and arsc.augment.categories.speech.snr_per_file is False


@pytest.mark.parametrize("experiment, paths, channels, batch, epochs", [
    ("arsc_augment_taoruijie", ["data.dir=/x"], 512, 32, 12),
    ("vox2_ecapa_c1024", ["data.train_list=/l", "data.train_root=/w", "eval.dir=/v", "augment.musan_dir=/m",
                          "augment.rir_dir=/r"], 1024, 400, 80),
])
def test_taoruijie_experiments_are_his_trainer_exactly(experiment, paths, channels, batch, epochs):
    cfg = compose_config([f"experiment={experiment}", "run_dir=/tmp/x", *paths])
    validate_config(cfg)
    assert cfg.model.attention_channels == 256 and cfg.model.unbiased_context_std is True
    assert cfg.model.channels == channels and cfg.model.emb_dim == 256
    assert {n: list(c.apply) for n, c in cfg.augment.choices.items()} == {
        "none": [], "reverb": ["reverb"], "babble": ["speech"], "music": ["music"], "noise": ["noise"],
        "tv": ["speech", "music"]}
    assert cfg.augment.power_floor == 1e-4 and cfg.augment.categories.speech.snr_per_file is True
    # torch.randint(0, 8) and (0, 10) in his FbankAug: widths 0-7 and 0-9; ours include the bound.
    assert cfg.features.specaugment.freq_mask == 7 and cfg.features.specaugment.time_mask == 9
    assert (cfg.data.batch_size, cfg.data.crop_frames, cfg.trainer.epochs) == (batch, 200, epochs)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.scheduler.gamma) == (1e-3, 2e-5, 0.97)
    assert (cfg.head.m, cfg.head.s) == (0.2, 30.0)
