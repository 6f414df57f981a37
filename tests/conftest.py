"""Shared fixtures: the real Hydra configs composed and scaled down (debug=tiny), and a tiny corpus."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "speakerid" / "configs"
ARSC_DIR = Path(os.environ.get("SPEAKERID_ARSC_DIR", REPO.parent / "shared" / "data" / "arsc"))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    from speakerid.configs import compose

    return compose("train", overrides or [])


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """The debug=tiny synthetic corpus, generated once per test session."""
    from speakerid.data.synthetic import CorpusSpec, ensure_corpus
    from omegaconf import OmegaConf

    cfg = compose_config(["debug=tiny"])
    root = tmp_path_factory.mktemp("tiny_corpus")
    ensure_corpus(root, CorpusSpec(**OmegaConf.to_container(cfg.data.generate)), workers=1)
    return root


@pytest.fixture
def tiny_cfg(tiny_corpus_dir, tmp_path):
    """A factory: the real configs with debug=tiny, the shared tiny corpus and a fresh run folder."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_config([
            "debug=tiny",
            f"data.dir={tiny_corpus_dir}",
            f"run_dir={run_dir or tmp_path / 'run'}",
            *overrides,
        ])

    return make


def draw_batchnorm_statistics(model):
    """Running statistics drawn at random, so that a model's eval mode is not an identity; returns the model."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def padded_and_alone(model, lengths: list[int], in_dim: int = 80):
    """A float64 model on random features of these frame counts, padded loudly (1e3 times noise), run as one
    batch with `lengths`, on each utterance alone, and as one batch without lengths:
    (batched, alone, plain, features)."""
    import torch

    features = torch.randn(len(lengths), in_dim, max(lengths), dtype=torch.float64)
    for row, n in enumerate(lengths):
        features[row, :, n:] = 1e3 * torch.randn(in_dim, max(lengths) - n, dtype=torch.float64)
    with torch.no_grad():
        batched = model(features, torch.tensor(lengths))
        alone = torch.cat([model(features[row:row + 1, :, :n]) for row, n in enumerate(lengths)])
        plain = model(features)
    return batched, alone, plain, features


def small_extractor(channels: int, emb_dim: int, **model_options):
    """A small random ECAPA-TDNN extractor in eval mode with non-trivial BatchNorm statistics (so that eval
    mode is not an identity), for tests that compare two ways of computing the same embeddings."""
    import torch

    from speakerid.evaluation import EmbeddingExtractor
    from speakerid.features import Fbank
    from speakerid.models import ECAPATDNN

    torch.manual_seed(0)
    model = draw_batchnorm_statistics(ECAPATDNN(channels=channels, mfa_channels=3 * channels, emb_dim=emb_dim,
                                                se_bottleneck=channels // 4, attention_channels=channels // 4,
                                                **model_options))
    return EmbeddingExtractor(Fbank(), model).eval()


def untrained_checkpoint(path: Path, data_dir: Path, speakers: list[str], progress: dict) -> Path:
    """A checkpoint as train.py writes one (experiment=arsc with the tiny encoder, its data.dir `data_dir`), of
    an untrained ECAPA-TDNN whose BatchNorm statistics are drawn so that eval mode is no identity."""
    import torch
    from omegaconf import OmegaConf

    from speakerid.builders import build_model
    from speakerid.checkpoint import FORMAT_VERSION

    cfg = compose_config(["experiment=arsc", f"data.dir={data_dir}", "model=ecapa_tdnn_tiny"])
    torch.manual_seed(0)
    model = draw_batchnorm_statistics(build_model(cfg))
    torch.save({"format_version": FORMAT_VERSION, "config": OmegaConf.to_container(cfg, resolve=True),
                "model": model.state_dict(), "head": {}, "speakers": speakers, "progress": progress}, path)
    return path


def requires_arsc():
    return pytest.mark.skipif(
        not (ARSC_DIR / "train_list.txt").is_file(),
        reason=f"the arsc real-speech corpus is not at {ARSC_DIR} (set SPEAKERID_ARSC_DIR to its folder)",
    )


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def speakerid_cli(*args) -> CliRun:
    """`speakerid ARGS` run in this process, as `subprocess.run` would report it: the exit status, what went to
    stdout, and stderr with the log lines (the commands log to stderr). An interpreter start with torch costs
    about 10 s on a 2-core CI machine; tests/test_api.py and tests/test_install.py start the real command."""
    from speakerid.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capture = logging.StreamHandler(err)
    capture.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse (--help, usage errors) and sys.exit("message"), as Python ends them
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if isinstance(e.code, str):
                    print(e.code, file=err)
    finally:
        root.handlers[:] = handlers  # a command's logging.basicConfig must not outlive it
        root.setLevel(level)
    return CliRun(code, out.getvalue(), err.getvalue())
