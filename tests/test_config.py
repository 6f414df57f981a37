"""Every shipped config composes, and bad values stop the run before any data is read, naming the key."""

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
    ("model.channels=-1", "model.channels"),
    ("model.channels=abc", "model.channels"),
    ("model.dilations=[2,0,4]", "model.dilations"),
    ("features.fbank.hop_length=0", "features.fbank.hop_length"),
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
     "eval.embedding.max_batch_seconds=0 is not allowed: a number of seconds > 0"),
    ({"embedding": {"max_trim": 0.5}},
     "eval.embedding.max_trim=0.5 is not allowed: a fraction in [0, 0.5) (0 = batch only equal lengths)"),
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
