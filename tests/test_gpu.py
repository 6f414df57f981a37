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
