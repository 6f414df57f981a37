"""On a CUDA device (skipped elsewhere): every encoder and head trains under bf16 autocast, eager and with
torch.compile, from the real configs scaled down; the loss falls on a repeated batch."""

import pytest
import torch

from speakerid.training import setup_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MODELS = ["ecapa_tdnn_tiny", "resnet34_tiny", "campplus_tiny"]
HEADS = ["aam_softmax", "am_softmax", "sub_center_aam"]


def losses(run, steps=8):
    waves, labels = next(iter(run.loader.loader))
    out = []
    for _ in range(steps):
        result = run.step(waves, labels)
        assert result.finite.item()
        out.append(result.loss.item())
    return out


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("head", HEADS)
def test_bf16_eager(tiny_cfg, tmp_path, model, head):
    run = setup_run(tiny_cfg(f"model={model}", f"head={head}", "trainer.device=cuda", "trainer.precision=bf16",
                             "optim.lr=0.01", run_dir=tmp_path / "run"))
    values = losses(run)
    assert min(values[-3:]) < values[0], values


@pytest.mark.parametrize("model", MODELS)
def test_bf16_compiled(tiny_cfg, tmp_path, model):
    args = [f"model={model}", "trainer.device=cuda", "trainer.precision=bf16", "optim.lr=0.01"]
    compiled = setup_run(tiny_cfg(*args, "trainer.compile=true", run_dir=tmp_path / "compiled"))
    values = losses(compiled)
    assert min(values[-3:]) < values[0], values


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_padded_extraction_on_the_gpu_matches_one_at_a_time_on_the_cpu(tmp_path, precision):
    """Padded batches on CUDA (rounded up to PAD_MULTIPLE samples, so padding is always there) give each
    file the embedding the CPU computes for it alone in float32; bf16 within its own rounding (loosely: a
    padding that counted would move these embeddings far more)."""
    import numpy as np
    import soundfile as sf
    import torch.nn.functional as F

    from conftest import small_extractor
    from speakerid.evaluation import ExtractionOptions, extract_embeddings

    rng = np.random.default_rng(0)
    lengths = [64000, 63000, 61111, 60000, 40000, 39500, 16000]
    paths = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (110 + 20 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(str(tmp_path / f"{i}.wav"), wave.astype(np.float32), 16000, subtype="FLOAT")
        paths.append(f"{i}.wav")
    extractor = small_extractor(channels=64, emb_dim=32)
    with torch.no_grad():
        alone = [F.normalize(extractor(torch.from_numpy(sf.read(str(tmp_path / p), dtype="float32")[0])[None]),
                             dim=1)[0].numpy() for p in paths]
    gpu = extract_embeddings(extractor.cuda(), tmp_path, paths, "cuda", ExtractionOptions(precision=precision))
    cosine = np.einsum("ij,ij->i", gpu.full.astype(np.float64), np.array(alone, dtype=np.float64))
    assert cosine.min() > (1 - 1e-5 if precision == "fp32" else 0.99), cosine
