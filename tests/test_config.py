"""Every shipped config composes, and bad values stop the run before any data is read, naming the key."""

import math
import re
from pathlib import Path

import pytest

from conftest import CONFIGS, compose_config
from speakerid.config import ConfigError, missing_keys, validate_config

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# What a user gives on the command line: paths (`???` in the configs) and keys an experiment lists as `required`.
PATHS = {"data.train_list": "/x/train.txt", "data.train_root": "/x/wav", "data.dir": "/x", "eval.dir": "/v",
         "augment.musan_dir": "/x/musan", "augment.rir_dir": "/x/RIRS_NOISES", "trainer.init_from": "/x/avg.pt"}
EVAL_PROTOCOLS = sorted(p.stem for p in (CONFIGS / "eval").glob("*.yaml") if p.stem != "base")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"experiment={experiment}", "run_dir=/tmp/x"])
    overrides = [f"{k}={PATHS[k]}" for k in missing_keys(cfg)]
    cfg = compose_config([f"experiment={experiment}", "run_dir=/tmp/x", "trainer.precision=fp32", *overrides])
    validate_config(cfg)
    assert cfg.name == experiment
    assert cfg.head.emb_dim == cfg.model.emb_dim


def test_default_is_the_smoke_experiment_on_synthetic_data():
    cfg = compose_config(["run_dir=/tmp/x"])
    validate_config(cfg)
    assert cfg.name == "smoke"
    assert cfg.data.generate is not None
    # validation on the generated corpus's unseen speakers
    assert (cfg.eval.trials, cfg.eval.root) == (f"{cfg.data.dir}/trials.txt", f"{cfg.data.dir}/wav")
    assert cfg.model.channels == 128
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 2e-5 and cfg.scheduler.gamma == 0.97


def test_paper_defaults_of_the_groups():
    cfg = compose_config(["experiment=vox2_ecapa_c1024", "run_dir=/tmp/x"])
    assert (cfg.model.channels, cfg.model.emb_dim, cfg.head.m, cfg.head.s) == (1024, 256, 0.2, 30.0)
    assert cfg.data.crop_frames == 200
    assert compose_config(["experiment=vox2_ecapa_c512"]).model.channels == 512


@pytest.mark.parametrize("overrides,message", [
    # the README's example on the 5-epoch default: it stopped after the corpus was generated and read
    (["scheduler=warmup_exponential"], "scheduler.warm_up_epochs=6 is not allowed: a number of epochs in [0, epochs = 2]"),
    # it trained an epoch, then named head.m, a key the user never set
    (["margin_schedule=wespeaker", "margin_schedule.final_margin=1.7"],
     "margin_schedule.final_margin=1.7 is not allowed: an angular margin in radians in [0, pi/2)"),
    (["margin_schedule=wespeaker", "margin_schedule.initial_margin=-0.1"], "margin_schedule.initial_margin=-0.1"),
    (["scheduler.gamma=-1"], "scheduler.gamma=-1 is not allowed"),
])
def test_schedules_are_checked_before_anything_is_read(overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", *overrides]))


def test_a_margin_schedule_that_starts_after_the_run_is_named(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="speakerid"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "margin_schedule=wespeaker"]))
    assert [r.getMessage() for r in caplog.records] == [
        "margin_schedule.increase_start_epoch=19 is not before trainer.epochs=2: the margin stays "
        "margin_schedule.initial_margin=0.0 for the whole run"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "margin_schedule=wespeaker", "trainer.epochs=40"]))
    assert not caplog.records


@pytest.mark.parametrize("override,key", [
    ("head.m=1.6", "head.m"),
    ("head.m=-0.2", "head.m"),
    ("head.s=0", "head.s"),
    ("data.batch_size=1", "data.batch_size"),
    ("data.crop_frames=0", "data.crop_frames"),
    ("data.sample_dtype=float16", "data.sample_dtype"),
    ("optim.lr=0", "optim.lr"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("data.bad_audio=ignore", "data.bad_audio"),
    ("trainer.precision=fp16", "trainer.precision"),  # trainer.device=cpu in debug=tiny
    ("trainer.grad_clip_norm=-1", "trainer.grad_clip_norm"),
    ("trainer.log_every_steps=0", "trainer.log_every_steps"),
    ("trainer.num_threads=0", "trainer.num_threads"),
    ("data.num_workers=-1", "data.num_workers"),
    ("model.channels=-1", "model.channels"),
    ("model.channels=abc", "model.channels"),
    ("model.dilations=[2,0,4]", "model.dilations"),
    ("features.fbank.hop_length=0", "features.fbank.hop_length"),
    # torch's stft error at step 1, after the run folder was made
    ("features.fbank.win_length=600", r"features.fbank.win_length=600 is not allowed: at most features.fbank.n_fft=512"),
    # one frame more in a padded batch than in the utterance alone
    ("features.fbank.n_fft=511", "features.fbank.n_fft=511 is not allowed: an even"),
    ("features.specaugment.time_mask=-1", "features.specaugment.time_mask"),  # random_ 'from' < 'to' at step 1
    ("features.specaugment.freq_mask=200", "features.specaugment.freq_mask=200 is not allowed: an integer >= 0 and "
                                           "at most features.fbank.n_mels=80"),
])
def test_bad_values_name_the_key(override, key):
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_required_paths_are_named():
    cfg = compose_config(["experiment=arsc", "run_dir=/tmp/x"])
    with pytest.raises(ConfigError, match="data.dir"):
        validate_config(cfg)


def test_unknown_key_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="head.margin"):
        compose_config(["head.margin=0.3"])


def test_configs_mirror_the_package():
    groups = {p.name for p in CONFIGS.iterdir() if p.is_dir()}
    assert {"data", "model", "head", "optim", "scheduler", "trainer", "experiment"} <= groups
    assert Path(CONFIGS / "train.yaml").is_file()


def test_validation_follows_the_corpus_or_the_named_protocol():
    cfg = compose_config(["experiment=arsc", "data.dir=/corpora/arsc", "run_dir=/tmp/x"])
    assert (cfg.eval.trials, cfg.eval.root) == ("/corpora/arsc/trials.txt", "/corpora/arsc/wav")
    assert cfg.eval.asnorm.cohort_list == "/corpora/arsc/train_list.txt"
    cfg = compose_config(["experiment=vox2_ecapa_c1024", "eval.dir=/vox1", "run_dir=/tmp/x"])
    assert (cfg.eval.name, cfg.eval.trials, cfg.eval.root) == ("vox1_o_cleaned", "/vox1/veri_test2.txt", "/vox1/wav")
    assert "trials" not in cfg.data and "trials_root" not in cfg.data  # one place for the protocol
    assert "eval" not in compose_config(["~eval", "run_dir=/tmp/x"])  # train without validation


@pytest.mark.parametrize("protocol", EVAL_PROTOCOLS)
def test_every_eval_protocol_composes_into_a_valid_protocol(protocol):
    from speakerid.builders import build_eval_protocol

    cfg = compose_config([f"eval={protocol}", "eval.dir=/v", "run_dir=/tmp/x"])
    validate_config(cfg)
    p = build_eval_protocol(cfg)
    assert p.root == ("/v/wav") and p.trials.startswith("/v/") and p.name
    assert (p.embedding.mode, p.asnorm.enabled) == ("full", False)


def test_vox1_protocols_name_the_official_lists():
    lists = {p: compose_config([f"eval={p}", "eval.dir=/v"]).eval.trials.split("/")[-1]
             for p in EVAL_PROTOCOLS if p.startswith("vox1")}
    assert lists == {
        "vox1_o": "veri_test2.txt", "vox1_o_orig": "veri_test.txt",
        "vox1_e": "list_test_all2.txt", "vox1_e_orig": "list_test_all.txt",
        "vox1_h": "list_test_hard2.txt", "vox1_h_orig": "list_test_hard.txt",
    }


@pytest.mark.parametrize("override,key", [
    ("eval.embedding.mode=average", "eval.embedding.mode"),
    ("eval.embedding.num_crops=0", "eval.embedding.num_crops"),
    ("eval.embedding.max_trim=0.6", "eval.embedding.max_trim"),
    ("eval.embedding.batch_size=0", "eval.embedding.batch_size"),
    ("eval.embedding.precision=fp16", "eval.embedding.precision"),
    ("eval.embedding.num_workers=-1", "eval.embedding.num_workers"),
    ("eval.asnorm.top_k=1", "eval.asnorm.top_k"),
])
def test_bad_eval_values_name_the_key(override, key):
    from speakerid.builders import build_eval_protocol

    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "eval.asnorm.enabled=true", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_eval_protocol(cfg)


def test_vox1_protocol_without_its_folder_is_named():
    cfg = compose_config(["eval=vox1_e", "run_dir=/tmp/x"])
    with pytest.raises(ConfigError, match="eval.dir"):
        validate_config(cfg)


def test_a_sample_rate_below_twice_f_max_names_both_keys():
    """8 kHz audio with the default f_max=7600 would give empty Mel bands (only a torchaudio warning)."""
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "data.sample_rate=8000"])
    with pytest.raises(ConfigError, match=r"features\.fbank\.f_max=7600.0 is not allowed: .*4000\] Hz.*"
                                          r"data\.sample_rate=8000.*features\.fbank\.f_max=3800"):
        validate_config(cfg)
    validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "data.sample_rate=8000",
                                    "features.fbank.f_max=3800"]))


EVAL_NODE = {"name": "n", "trials": "/v/t.txt", "root": "/v/wav"}


@pytest.mark.parametrize("node,message", [
    ({"embedding": {"mode": "x"}}, "eval.embedding.mode='x' is not allowed: full or multicrop"),
    ({"embedding": {"num_crops": True}}, "eval.embedding.num_crops=True is not allowed: an integer >= 1"),
    ({"embedding": {"crop_frames": 9}},
     "eval.embedding.crop_frames=9 is not allowed: an integer >= 10 (frames of 10 ms)"),
    ({"embedding": {"max_batch_seconds": 0}},
     "eval.embedding.max_batch_seconds=0 is not allowed: a finite number of seconds > 0"),
    ({"embedding": {"max_trim": 0.5}},
     "eval.embedding.max_trim=0.5 is not allowed: a fraction in [0, 0.5) (0 = batch only equal lengths)"),
    ({"embedding": {"num_workers": "all"}}, "eval.embedding.num_workers='all' is not allowed: 'auto' or an integer "
     ">= 0 (loader processes; 0 reads in the main process)"),
    ({"root": ""}, "eval.root='' is not allowed: a non-empty string"),
    ({"name": "../x"}, "eval.name='../x' is not allowed: a plain name (no '/', not '..'): it names one folder or file"),
    ({"asnorm": {"enabled": True, "cohort_root": "/c"}},
     "eval.asnorm.cohort_list=None is not allowed: a path (AS-norm is enabled)"),
    ({"asnorm": {"enabled": True, "cohort_list": "/l", "cohort_root": "/c", "utterances_per_speaker": 0}},
     "eval.asnorm.utterances_per_speaker=0 is not allowed: null (all) or an integer >= 1"),
])
def test_validate_eval_messages_and_protocol_from_config_uses_it(node, message):
    from speakerid.config import validate_eval
    from speakerid.evaluation import Protocol

    node = {**EVAL_NODE, **node}
    for check in (validate_eval, Protocol.from_config):
        with pytest.raises(ConfigError) as info:
            check(node)
        assert str(info.value) == message, check


def test_validate_eval_names_the_given_key_and_accepts_defaults():
    from speakerid.config import validate_eval
    from speakerid.evaluation import ExtractionOptions, Protocol

    validate_eval(EVAL_NODE)  # every option left at its default
    validate_eval({**EVAL_NODE, "asnorm": {"enabled": False, "top_k": 0}})  # AS-norm off: its options unused
    with pytest.raises(ConfigError, match=r"^valid\.embedding\.precision='fp16' is not allowed: fp32 or bf16$"):
        validate_eval({**EVAL_NODE, "embedding": {"precision": "fp16"}}, key="valid")
    p = Protocol.from_config({**EVAL_NODE, "embedding": {"mode": "multicrop", "num_crops": 3}})
    assert p.embedding == ExtractionOptions(mode="multicrop", num_crops=3) and p.scoring == "multicrop3"


# --------------------------------------------------------------------------------------------- published recipes
# The values below were read from the authors' files, not from our configs, and the tests compare the composed
# experiments with them (and our schedules with the authors' per-iteration formulas re-derived here):
# wenet-e2e/wespeaker examples/voxceleb/v2/conf/{resnet,resnet_lm,ecapa_tdnn,ecapa_tdnn_lm}.yaml and run.sh
# (gpus "[0,1]", num_avg 10, top_n 300), wespeaker/bin/train.py (scale_ratio = world_size * batch_size / 64),
# wespeaker/dataset/processor.py (aug_prob: reverb or noise, 1/2 each; MUSAN SNRs by folder); modelscope/
# 3D-Speaker egs/voxceleb/sv-cam++/conf/cam++.yaml and run.sh (4 GPUs; batch_size is global in train.py),
# speakerlab/process/processor.py (aug_prob: noise, reverb or both, 1/3 each).
WESPEAKER = {"gpus": 2, "batch_per_gpu": 128, "initial_lr": 0.1, "final_lr": 5e-5, "warm_up_epoch": 6,
             "num_epochs": 150, "scale": 32.0, "initial_margin": 0.0, "final_margin": 0.2,
             "increase_start_epoch": 20, "fix_start_epoch": 40, "num_frms": 200, "aug_prob": 0.6, "num_avg": 10}
WESPEAKER_LM = {**WESPEAKER, "batch_per_gpu": 64, "initial_lr": 1e-4, "final_lr": 2.5e-5, "warm_up_epoch": 1,
                "num_epochs": 5, "initial_margin": 0.5, "final_margin": 0.5, "increase_start_epoch": 1,
                "fix_start_epoch": 1, "num_frms": 600}
CAMPPLUS = {"batch_size": 256, "lr": 0.1, "min_lr": 1e-4, "warmup_epoch": 5, "num_epoch": 60, "scale": 32.0,
            "margin": 0.2, "increase_start_epoch": 15, "fix_epoch": 25, "wav_len": 3.0, "aug_prob": 0.2,
            "embedding_size": 512}
MUSAN_FILES = {"noise": 930, "speech": 426, "music": 660}  # MUSAN as distributed; WeSpeaker draws any file alike
WESPEAKER_SNR = {"noise": [0, 15], "speech": [10, 30], "music": [5, 15]}
WESPEAKER_EXPERIMENTS = ["vox2_resnet34", "vox2_ecapa_c1024_wespeaker"]
WESPEAKER_LM_EXPERIMENTS = ["vox2_resnet34_lm", "vox2_ecapa_c1024_wespeaker_lm"]


def recipe_config(experiment, leave_out=()):
    """The experiment with what a user must give filled in, except the keys in leave_out."""
    cfg = compose_config([f"experiment={experiment}", "run_dir=/tmp/x"])
    return compose_config([f"experiment={experiment}", "run_dir=/tmp/x",
                           *[f"{k}={PATHS[k]}" for k in missing_keys(cfg) if k not in leave_out]])


def choice_probabilities(cfg) -> dict[tuple[str, ...], float]:
    total = sum(c.weight for c in cfg.augment.choices.values())
    return {tuple(c.apply): c.weight / total for c in cfg.augment.choices.values()}


def wespeaker_lr(ref, iteration, epoch_iter):
    """ExponentialDecrease(warm_from_zero=True) with train.py's scale_ratio, per iteration, in float64."""
    scale = ref["gpus"] * ref["batch_per_gpu"] / 64
    warm_up, total = ref["warm_up_epoch"] * epoch_iter, ref["num_epochs"] * epoch_iter
    coeff = scale * iteration / warm_up if iteration < warm_up else scale
    return coeff * ref["initial_lr"] * math.exp(iteration / total * math.log(ref["final_lr"] / ref["initial_lr"]))


def wespeaker_margin(ref, iteration, epoch_iter):
    """MarginScheduler: 1-based epochs ((epoch - 1) * epoch_iter), exp rise with 1e-3 / (1 + 1e-6)."""
    start, fix = (ref["increase_start_epoch"] - 1) * epoch_iter, (ref["fix_start_epoch"] - 1) * epoch_iter
    if iteration >= fix:
        return ref["final_margin"]
    if iteration < start:
        return ref["initial_margin"]
    ratio = 1.0 - math.exp((iteration - start) / (fix - start) * math.log(1e-3 / (1.0 + 1e-6)))
    return ref["initial_margin"] + (ref["final_margin"] - ref["initial_margin"]) * ratio


def assert_wespeaker_augmentation(cfg):
    probs = choice_probabilities(cfg)
    assert probs[()] == pytest.approx(1 - WESPEAKER["aug_prob"])
    assert probs[("reverb",)] == pytest.approx(WESPEAKER["aug_prob"] / 2)
    for category, files in MUSAN_FILES.items():  # every MUSAN file as likely as in their one-LMDB draw
        assert probs[(category,)] == pytest.approx(WESPEAKER["aug_prob"] / 2 * files / sum(MUSAN_FILES.values()))
        assert list(cfg.augment.categories[category].snr_db) == WESPEAKER_SNR[category]
        assert list(cfg.augment.categories[category].files) == [1, 1]
    assert len(probs) == 5  # nothing else: no babble, no reverb + noise
    assert sorted(cfg.augment.speed.factors) == [0.9, 1.0, 1.1] and cfg.augment.speed.speakers_as_new is True


@pytest.mark.parametrize("experiment", WESPEAKER_EXPERIMENTS)
def test_wespeaker_recipes_hold_their_values(experiment):
    from speakerid.features import samples_for_frames

    cfg, ref = recipe_config(experiment), WESPEAKER
    scale = ref["gpus"] * ref["batch_per_gpu"] / 64
    assert cfg.data.batch_size == ref["gpus"] * ref["batch_per_gpu"]
    assert cfg.optim._target_ == "torch.optim.SGD"
    assert (cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.9, True, 1e-4)
    assert cfg.optim.lr == pytest.approx(ref["initial_lr"] * scale)
    assert cfg.scheduler._target_ == "speakerid.schedules.WarmupExponential"
    assert cfg.scheduler.final_lr == pytest.approx(ref["final_lr"] * scale)
    assert (cfg.scheduler.warm_up_epochs, cfg.trainer.epochs) == (ref["warm_up_epoch"], ref["num_epochs"])
    assert cfg.head._target_ == "speakerid.losses.AAMSoftmax" and (cfg.head.s, cfg.head.m) == (32.0, 0.2)
    ms = cfg.margin_schedule  # WeSpeaker's 1-based epochs are epochs done - 1 here
    assert (ms.increase_start_epoch, ms.fix_start_epoch) == (ref["increase_start_epoch"] - 1, ref["fix_start_epoch"] - 1)
    assert (ms.initial_margin, ms.final_margin, ms.increase_type) == (0.0, ref["final_margin"], "exp")
    # their chunk: (num_frms - 1) * frame_shift + frame_length samples (wespeaker/dataset/dataset.py)
    assert samples_for_frames(cfg.data.crop_frames) == (ref["num_frms"] - 1) * 160 + 400
    assert cfg.features.specaugment.enabled is False and cfg.features.fbank.f_max == 8000.0
    assert_wespeaker_augmentation(cfg)
    assert (cfg.trainer.keep_checkpoints, cfg.trainer.precision, cfg.seed) == (ref["num_avg"], "fp32", 42)
    assert cfg.eval.name == "vox1_o_cleaned"


@pytest.mark.parametrize("experiment", WESPEAKER_LM_EXPERIMENTS)
def test_wespeaker_large_margin_recipes_hold_their_values(experiment):
    from speakerid.features import samples_for_frames

    cfg, ref = recipe_config(experiment), WESPEAKER_LM
    base = recipe_config(experiment.removesuffix("_lm"))
    scale = ref["gpus"] * ref["batch_per_gpu"] / 64
    assert cfg.data.batch_size == ref["gpus"] * ref["batch_per_gpu"]
    assert cfg.optim.lr == pytest.approx(ref["initial_lr"] * scale)
    assert cfg.scheduler.final_lr == pytest.approx(ref["final_lr"] * scale)
    assert (cfg.scheduler.warm_up_epochs, cfg.trainer.epochs) == (ref["warm_up_epoch"], ref["num_epochs"])
    assert cfg.get("margin_schedule") is None and cfg.head.m == ref["final_margin"] == ref["initial_margin"]
    assert samples_for_frames(cfg.data.crop_frames) == (ref["num_frms"] - 1) * 160 + 400
    assert cfg.model == base.model and cfg.optim._target_ == base.optim._target_  # what is not LM stays as trained
    assert cfg.augment == base.augment and cfg.features == base.features and cfg.head.s == base.head.s
    assert cfg.trainer.init_head is True and cfg.trainer.init_from == PATHS["trainer.init_from"]
    with pytest.raises(ConfigError, match=r"^required config values are not set: trainer\.init_from \("):
        validate_config(recipe_config(experiment, leave_out=["trainer.init_from"]))


@pytest.mark.parametrize("experiment,ref", [("vox2_resnet34", WESPEAKER), ("vox2_resnet34_lm", WESPEAKER_LM)])
def test_wespeaker_schedules_follow_their_per_iteration_formulas(experiment, ref):
    from hydra.utils import instantiate

    from speakerid.schedules import MarginSchedule

    cfg = recipe_config(experiment)
    lr = instantiate(cfg.scheduler)
    margin = instantiate(cfg.margin_schedule) if cfg.get("margin_schedule") else MarginSchedule(0, 0, cfg.head.m,
                                                                                                 cfg.head.m)
    epoch_iter = 4265  # 1,092,009 utterances // 2 GPUs // 128
    for epoch in (0, 0.3, 1, 5.9, 6, 19, 19.4, 25, 38.99, 39, 75.5, 149.99):
        if epoch >= ref["num_epochs"]:
            continue
        iteration = round(epoch * epoch_iter)
        assert lr.lr_at(iteration / epoch_iter) == pytest.approx(wespeaker_lr(ref, iteration, epoch_iter), rel=1e-6)
        assert margin.margin_at(iteration / epoch_iter) == pytest.approx(wespeaker_margin(ref, iteration, epoch_iter),
                                                                        abs=1e-6)


def test_wespeaker_ecapa_has_their_sizes():
    from hydra.utils import instantiate

    cfg = recipe_config("vox2_ecapa_c1024_wespeaker")
    model = instantiate(cfg.model)
    # ECAPA_TDNN_GLOB_c1024(80, 192) has 14,657,088 parameters (counted from wespeaker/models/ecapa_tdnn.py);
    # ours adds BatchNorms they lack: 2 x 128 in the attention, 2 x 192 after the embedding.
    assert sum(p.numel() for p in model.parameters()) == 14_657_088 + 2 * 128 + 2 * 192
    assert (cfg.model.channels, cfg.model.emb_dim, cfg.head.emb_dim) == (1024, 192, 192)


def test_campplus_recipe_holds_its_values():
    from hydra.utils import instantiate

    from speakerid.features import samples_for_frames

    cfg, ref = recipe_config("vox2_campplus"), CAMPPLUS
    assert cfg.model._target_ == "speakerid.models.CAMPPlus" and cfg.model.emb_dim == ref["embedding_size"]
    assert cfg.data.batch_size == ref["batch_size"] and cfg.trainer.epochs == ref["num_epoch"]
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == ref["lr"]  # not scaled by 3D-Speaker
    assert (cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.9, True, 1e-4)
    assert cfg.head._target_ == "speakerid.losses.AAMSoftmax" and (cfg.head.s, cfg.head.m) == (32.0, 0.2)
    ms = cfg.margin_schedule  # 3D-Speaker counts iterations done: its epochs carry over
    assert (ms.increase_start_epoch, ms.fix_start_epoch, ms.initial_margin, ms.final_margin, ms.increase_type) == \
        (ref["increase_start_epoch"], ref["fix_epoch"], 0.0, ref["margin"], "exp")
    assert abs(samples_for_frames(cfg.data.crop_frames) - ref["wav_len"] * 16000) <= 0.01 * ref["wav_len"] * 16000
    assert cfg.features.specaugment.enabled is False and cfg.features.fbank.f_max == 8000.0
    probs = choice_probabilities(cfg)
    assert probs == pytest.approx({(): 1 - ref["aug_prob"], ("free-sound",): ref["aug_prob"] / 3,
                                   ("reverb",): ref["aug_prob"] / 3, ("reverb", "free-sound"): ref["aug_prob"] / 3})
    assert dict(cfg.augment.categories) == {"free-sound": {"snr_db": [0, 15], "files": [1, 1]}}
    assert sorted(cfg.augment.speed.factors) == [0.9, 1.0, 1.1] and cfg.augment.speed.speakers_as_new is True
    lr = instantiate(cfg.scheduler)  # WarmupCosineScheduler.clr with their values, per iteration
    spe = 1000
    for step in (0, 1234, 4999, 5000, 5001, 20000, 45678, 59999, 60000, 61000):
        warm, fix = ref["warmup_epoch"] * spe, ref["num_epoch"] * spe
        if step < warm:
            expected = ref["min_lr"] + (ref["lr"] - ref["min_lr"]) * step / warm
        elif step < fix:
            expected = ref["min_lr"] + 0.5 * (ref["lr"] - ref["min_lr"]) * (1 + math.cos(math.pi * (step - warm) / (fix - warm)))
        else:
            expected = ref["min_lr"]
        assert lr.lr_at(step / spe) == pytest.approx(expected, rel=1e-9)


def test_an_experiments_required_keys_must_be_given():
    """`required` names keys that '???' cannot mark once a group has set them (the merge keeps the group's value)."""
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "+required=[trainer.init_from]"])
    with pytest.raises(ConfigError, match=r"^required config values are not set: trainer\.init_from \(give them"):
        validate_config(cfg)
    validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "+required=[trainer.init_from]",
                                    "trainer.init_from=/x/avg.pt"]))
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "+required=trainer.init_from"])
    with pytest.raises(ConfigError, match=r"^required='trainer.init_from' is not allowed: a list of dotted"):
        validate_config(cfg)


# ------------------------------------------------------------------------------- types, unknown and empty values
def test_every_switch_of_the_configs_is_checked():
    """SWITCHES lists every key whose default is true or false (a new switch in a group file must join it)."""
    import yaml

    from speakerid.config import SWITCHES

    found = set()

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and not prefix.endswith(("choices.", "categories.")):  # names users pick
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, bool) and not key.startswith("_"):
                found.add(f"{prefix}{key}")

    for group in ("data", "trainer", "features", "augment", "model", "head", "optim"):
        for path in (CONFIGS / group).glob("*.yaml"):
            walk(yaml.safe_load(path.read_text()), f"{group}.")
    found.remove("trainer.resume")  # true, false or a checkpoint path: a rule of its own
    assert found and found <= set(SWITCHES), found - set(SWITCHES)


@pytest.mark.parametrize("override,value", [
    ("trainer.init_head=no", "'no'"), ("data.resample=no", "'no'"), ("trainer.deterministic=off", "'off'"),
    ("data.check_files=0", "0"), ("features.specaugment.enabled=off", "'off'"),
    ("augment.speed.speakers_as_new=yes", "'yes'"), ("model.unbiased_context_std=null", "None"),
])
def test_a_switch_must_be_true_or_false(override, value):
    """Hydra reads no/off/yes as strings, which count as true where the code tests them."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}={re.escape(value)} is not allowed: true or false$"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", override]))


def test_an_eval_switch_must_be_true_or_false():
    from speakerid.config import validate_eval

    with pytest.raises(ConfigError, match=r"^eval\.asnorm\.enabled='no' is not allowed: true or false$"):
        validate_eval({**EVAL_NODE, "asnorm": {"enabled": "no"}})


@pytest.mark.parametrize("override,message", [
    ("+trainer.epoch=5", "trainer.epoch is not a config key: did you mean trainer.epochs?"),
    ("+data.crop_seconds=3", "data.crop_seconds is not a config key: did you mean data.crop_frames?"),
    ("+data.generate.speakers=4", "data.generate.speakers is not a config key: did you mean "
                                  "data.generate.test_speakers?"),
    ("+augment.speed.factor=[1.0]", "augment.speed.factor is not a config key: did you mean augment.speed.factors?"),
    ("+model.channel=8", "model.channel is not a parameter of speakerid.models.ECAPATDNN: did you mean "
                         "model.channels?"),
    ("+optim.momentum=0.9", "optim.momentum is not a parameter of torch.optim.Adam"),
    ("+head.easy_margin=true", "head.easy_margin is not a parameter of speakerid.losses.AAMSoftmax"),
    # top-level keys: the same name in a group is what was meant
    ("+epochs=5", "epochs is not a config key: did you mean trainer.epochs?"),
    ("+lr=0.01", "lr is not a config key: did you mean optim.lr?"),
    ("+nmae=x", "nmae is not a config key: did you mean name?"),
    ("+features.mean_norm=false", "features.mean_norm is not a config key (known: fbank, specaugment)"),
])
def test_a_key_added_with_plus_must_exist(override, message):
    """`+key=value` adds a key Hydra would have refused: a typo would run with the default silently."""
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", override]))


def test_keys_added_with_plus_that_exist_are_taken():
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "+optim.betas=[0.8,0.99]", "augment=musan_rir",
                          "augment.musan_dir=/m", "augment.rir_dir=/r", "+augment.choices.both={weight:1,apply:[reverb]}"])
    validate_config(cfg)
    assert list(cfg.optim.betas) == [0.8, 0.99] and "both" in cfg.augment.choices


@pytest.mark.parametrize("override", ["trainer.init_from=", "trainer.init_from='  '", "trainer.resume="])
def test_an_empty_checkpoint_path_is_an_error(override):
    """`trainer.init_from=$CKPT` with CKPT unset would train from scratch."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}='\s*' is not allowed: .*empty"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", override]))


def test_a_required_key_given_empty_is_an_error():
    cfg = recipe_config("vox2_resnet34_lm", leave_out=["trainer.init_from"])
    cfg.trainer.init_from = ""  # an experiment's `required` checked only for null
    with pytest.raises(ConfigError, match=r"^trainer\.init_from='' is not allowed: .*empty"):
        validate_config(cfg)


@pytest.mark.parametrize("seed", ["abc", "1.5", "-1", "true", "null"])
def test_the_seed_must_be_an_integer(seed):
    with pytest.raises(ConfigError, match=r"^seed=.* is not allowed: an integer in \[0, 2\*\*63\)"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", f"seed={seed}"]))
    validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "seed=0"]))


@pytest.mark.parametrize("override", ["optim.lr=inf", "optim.lr=nan", "optim.lr=true", "optim.weight_decay=inf",
                                      "trainer.grad_clip_norm=inf", "trainer.checkpoint_every_minutes=inf",
                                      "augment.max_bank_mb=inf", "augment.rir_max_seconds=inf"])
def test_infinite_hyperparameters_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=\S+ is not allowed: .*finite"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", override]))


def test_a_numeric_run_name_is_its_digits_and_others_must_be_quoted():
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "name=123"])
    validate_config(cfg)
    assert cfg.name == "123"
    for value, typed in (("nan", "float"), ("1.5", "float"), ("true", "bool")):
        with pytest.raises(ConfigError, match=rf"^name=\S+ is not allowed: a string \(Hydra reads the value typed as "
                                              rf"a {typed}: quote it, e\.g\. name=\"'"):
            validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", f"name={value}"]))
    validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "name='nan'"]))


@pytest.mark.slow
def test_each_sweep_keeps_its_own_record_and_jobs_stay_beside_single_runs(tmp_path):
    """Hydra writes multirun.yaml into the sweep dir: it was runs/<name>/, so each sweep replaced the last's."""
    import subprocess
    import sys

    from conftest import REPO

    for seed in (1, 2):  # head.m=2.0 stops each job at its config check: the folders are what is tested
        proc = subprocess.run([sys.executable, "train.py", "-m", "debug=tiny", f"runs_root={tmp_path}",
                               f"seed={seed}", "head.m=2.0"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "head.m=2.0 is not allowed" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    import yaml

    records = sorted((tmp_path / ".multirun" / "debug").glob("*/multirun.yaml"))
    assert [yaml.safe_load(r.read_text())["seed"] for r in records] == [1, 2], records
    jobs = sorted(p.name for p in (tmp_path / "debug").iterdir())
    assert len(jobs) == 2 and all(re.fullmatch(r"[\d_-]{19}_job0(_\d+)?", j) for j in jobs), jobs


# ------------------------------------------------------------- before any data is read: parts, nodes, corpus sizes
def setup_run_refuses(tmp_path, overrides: list[str], message: str) -> None:
    """setup_run stops on the config with `message` before it makes the run folder or touches the corpus folder
    (debug=tiny generates its corpus there as the first data step)."""
    from speakerid.training.run import setup_run

    corpus, run = tmp_path / "corpus", tmp_path / "run"
    cfg = compose_config(["debug=tiny", f"data.dir={corpus}", f"run_dir={run}", *overrides])
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        setup_run(cfg)
    assert not corpus.exists() and not run.exists()


@pytest.mark.parametrize("overrides,message", [
    # each was found only after every file of the train list was checked (minutes on VoxCeleb2)
    (["head=sub_center_aam", "head.sub_centers=0"], "head.sub_centers=0 is not allowed: an integer >= 1"),
    (["head=sub_center_aam", "head.top_k=-1"], "head.top_k=-1 is not allowed: an integer >= 0"),
    (["model.channels=500"], "model (speakerid.models.ECAPATDNN) cannot be built: model.channels (500) must be "
                             "divisible by model.scale (8)"),
    (["model=resnet34_tiny", "model.depth=50"],
     "model (speakerid.models.ResNet) cannot be built: model.depth must be one of [34, 221, 293], got 50"),
    (["model=campplus_tiny", "model.block_layers=[]"], "model (speakerid.models.CAMPPlus) cannot be built: "
     "model.block_layers must be a non-empty list of positive integers, got []"),
    # torch's message names no key: the optim values are listed
    (["optim=sgd", "optim.momentum=0"], "optim (torch.optim.SGD) cannot be built: Nesterov momentum requires a "
     "momentum and zero dampening (given optim.lr=0.1, optim.momentum=0, optim.nesterov=True, "
     "optim.weight_decay=0.0001)"),
    # found at the first step, after the run folder was made
    (["model.in_dim=64"], "model.in_dim=64 is not allowed: the fbank's bands, features.fbank.n_mels=80 (the model "
                          "configs take it from there: leave model.in_dim out)"),
    (["head.emb_dim=64"], "head.emb_dim=64 is not allowed: the model's embedding size, model.emb_dim=32 (the head "
                          "configs take it from there: leave head.emb_dim out)"),
])
def test_values_the_model_head_and_optimizer_refuse_stop_before_any_data_is_read(tmp_path, overrides, message):
    setup_run_refuses(tmp_path, overrides, message)


def test_only_the_top_k_against_the_speakers_waits_for_the_train_list():
    """head.top_k must be below the number of speakers, which the train list gives: debug=tiny has 6."""
    validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "head=sub_center_aam", "head.top_k=100"]))


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")))
def test_every_encoder_is_built_on_the_meta_device_for_the_checks(model):
    """validate_config builds the model on the meta device: every encoder must build there, at full size."""
    import torch

    from speakerid.builders import build_model

    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", f"model={model}"])
    validate_config(cfg)
    with torch.device("meta"):
        on_meta = build_model(cfg)
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    if model.endswith("_tiny"):  # the same parameters as the real build
        real = build_model(cfg)
        assert [(n, p.shape) for n, p in on_meta.named_parameters()] == \
            [(n, p.shape) for n, p in real.named_parameters()]


@pytest.mark.parametrize("override,message", [
    ("augment.speed=null", "augment.speed=None is not allowed: a config node of keys factors, speakers_as_new"),
    ("augment.speed.factors=null",
     "augment.speed.factors=None is not allowed: a list, e.g. augment.speed.factors=[0.9,1.0,1.1]"),
    ("augment.speed.factors=0.9",
     "augment.speed.factors=0.9 is not allowed: a list, e.g. augment.speed.factors=[0.9,1.0,1.1]"),
    ("augment.choices=null", "augment.choices=None is not allowed: a config node of named entries"),
    ("augment.categories=null", "augment.categories=None is not allowed: a config node of named entries"),
    ("+augment.choices.x=null", "augment.choices.x=None is not allowed: {weight: w, apply: [...]}"),
    ("augment.choices.none.apply=reverb", "augment.choices.none.apply='reverb' is not allowed: a list of what to "
                                          "apply: reverb and noise category names, e.g. [reverb, noise] ([] for nothing)"),
    ("features.fbank=null", "features.fbank=None is not allowed: a config node of keys sample_rate, n_mels, n_fft, "
                            "win_length, hop_length, f_min, f_max, preemphasis, mean_norm"),
    ("data.generate=7", "data.generate=7 is not allowed: a config node of keys seed, train_speakers, test_speakers, "
                        "sessions, utterances_per_session, min_seconds, max_seconds, or null (off)"),
    # removed keys: omegaconf's ConfigAttributeError through Hydra
    ("~augment.speed", "augment.speed is not in the config (removed with '~augment.speed'?): a run needs it; give it "
                       "a value instead"),
    ("~data.crop_frames", "data.crop_frames is not in the config (removed with '~data.crop_frames'?): a run needs "
                          "it; give it a value instead"),
    # it passed, then the run stopped after the train list was checked
    ("~scheduler", "scheduler is not set (removed with '~scheduler' or scheduler=null?): every run needs one, e.g. "
                   "scheduler=step (configs/scheduler/: step, warmup_cosine, warmup_exponential); for a constant "
                   "learning rate: scheduler=step scheduler.gamma=1"),
    ("~optim", "optim is not set (removed with '~optim' or optim=null?): every run needs one, e.g. optim=adam "
               "(configs/optim/: adam, sgd)"),
])
def test_a_node_set_to_null_a_scalar_or_removed_is_named(override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", override]))


def test_the_nodes_that_may_be_null_are_taken():
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "features.specaugment=null", "data.generate=null",
                          "data.dir=/x"])
    validate_config(cfg)
    assert cfg.features.specaugment is None and cfg.data.generate is None


@pytest.mark.parametrize("value", ["", "' '"])
def test_an_empty_run_dir_is_an_error(value):
    """run_dir=$RUN_DIR with RUN_DIR unset trained into the current folder."""
    with pytest.raises(ConfigError, match=r"^run_dir='\s*' is not allowed: the run's folder, not an empty string"):
        validate_config(compose_config(["debug=tiny", f"run_dir={value}"]))
    cfg = compose_config(["debug=tiny", "run_dir=2024"])  # a number, as for name: its digits
    validate_config(cfg)
    assert cfg.run_dir == "2024"


def test_the_fbank_must_read_at_the_data_sample_rate():
    """A 1 kHz tone read by an fbank told 8 kHz peaks in the band of 500 Hz: every frequency read at half."""
    with pytest.raises(ConfigError, match=r"^features\.fbank\.sample_rate=8000 is not allowed: data\.sample_rate=16000, "
                                          r"the rate the audio is read at"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "features.fbank.sample_rate=8000"]))
    cfg = compose_config(["debug=tiny", "run_dir=/tmp/x", "data.sample_rate=8000", "features.fbank.f_max=3800"])
    validate_config(cfg)  # the fbank config takes the rate from data.sample_rate
    assert cfg.features.fbank.sample_rate == 8000


@pytest.mark.parametrize("overrides,message", [
    # the generator's "ValueError: high - low < 0", after the corpus folder was marked incomplete
    (["data.generate.min_seconds=2.0"],
     "data.generate.max_seconds=1.6 is not allowed: a finite duration >= data.generate.min_seconds=2.0 s"),
    (["data.generate.min_seconds=0"], "data.generate.min_seconds=0 is not allowed: a duration >= 0.1 s (the "
                                      "shortest trial file an embedding is made of)"),
    # "the list has no entries", "no target trials": no key named
    (["data.generate.train_speakers=0"],
     "data.generate.train_speakers=0 is not allowed: an integer >= 2 (the speakers the head tells apart)"),
    (["data.generate.test_speakers=1"], "data.generate.test_speakers=1 is not allowed: an integer >= 2 (the "
                                        "validation trials' speakers: a non-target trial pairs two)"),
    (["data.generate.sessions=0"], "data.generate.sessions=0 is not allowed: an integer >= 1"),
    (["data.generate.sessions=1", "data.generate.utterances_per_session=1"],
     "data.generate.utterances_per_session=1 is not allowed: at least 2 utterances per speaker with "
     "data.generate.sessions=1 (a target trial pairs two of a speaker's utterances)"),
    (["data.generate.seed=-1"], "data.generate.seed=-1 is not allowed: an integer >= 0 (the corpus's random seed)"),
])
def test_the_generated_corpus_sizes_are_checked_before_its_folder_is_touched(tmp_path, overrides, message):
    setup_run_refuses(tmp_path, overrides, message)


def test_a_numeric_strip_prefix_is_its_digits(tmp_path):
    """eval.strip_prefix=2024 (a year folder) is read by Hydra as a number: it crashed reading the trials."""
    from speakerid.builders import build_eval_protocol
    from speakerid.data.lists import read_trials
    from speakerid.evaluation import Protocol

    trials = tmp_path / "trials.txt"
    trials.write_text("1 2024/id1/a.wav 2024/id1/b.wav\n0 2024/id1/a.wav 2024/id2/c.wav\n")
    protocol = build_eval_protocol(compose_config(["debug=tiny", "run_dir=/tmp/x", f"eval.trials={trials}",
                                                   "eval.strip_prefix=2024"]))
    assert protocol.strip_prefix == "2024"
    assert [(t.label, t.enrol, t.test) for t in read_trials(protocol.trials, protocol.strip_prefix)] == [
        (1, "id1/a.wav", "id1/b.wav"), (0, "id1/a.wav", "id2/c.wav")]
    node = {"name": "n", "trials": str(trials), "root": "/v"}
    assert Protocol.from_config({**node, "strip_prefix": ""}).strip_prefix is None
    with pytest.raises(ConfigError, match=r"^eval\.strip_prefix=1\.5 is not allowed: null or the leading folder of "
                                          r"every trial path, e\.g\. wav/ \(Hydra reads the value typed as a float"):
        Protocol.from_config({**node, "strip_prefix": 1.5})


def test_an_unknown_device_is_named():
    with pytest.raises(ConfigError, match=r"^trainer\.device='gpu' is not allowed: auto, cpu, cuda or cuda:<index>"):
        validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "trainer.device=gpu"]))
    validate_config(compose_config(["debug=tiny", "run_dir=/tmp/x", "trainer.device=cuda:1"]))  # found at the start
