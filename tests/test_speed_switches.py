"""Speed switches give the fp32 results within tolerance: torch.compile (trainer.compile) and bf16
autocast. cudnn.benchmark only exists on CUDA (checked there; skipped on a CPU). channels-last is not
offered: PyTorch defines it for 4-D tensors only, and ECAPA-TDNN's Conv1d weights and activations are 3-D."""

import copy

import pytest
import torch

from speakerid.training import Trainer


def one_step(trainer, waves, labels):
    torch.manual_seed(0)
    result = trainer._train_step(waves, labels)
    assert result.finite.item()
    return result.loss.item(), {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tiny_cfg, tmp_path):
    # SGD, not Adam: Adam divides by the gradient's own size, so parameters whose true gradient is zero
    # (biases before a BatchNorm or a softmax over time) move by +-lr on rounding noise in either mode.
    eager = Trainer(tiny_cfg("optim=sgd", run_dir=tmp_path / "eager"))
    compiled = Trainer(tiny_cfg("optim=sgd", "trainer.compile=true", run_dir=tmp_path / "compiled"))
    compiled.model.load_state_dict(eager.model.state_dict())
    compiled.head.load_state_dict(eager.head.state_dict())
    assert compiled.train_model is not compiled.model  # the step really goes through torch.compile
    waves, labels = next(iter(eager.loader))
    for _ in range(2):  # the second step runs the compiled graph with updated weights and optimizer state
        loss_e, params_e = one_step(eager, waves, labels)
        loss_c, params_c = one_step(compiled, waves, labels)
        assert loss_c == pytest.approx(loss_e, rel=1e-4, abs=1e-5)
        for name, value in params_e.items():
            torch.testing.assert_close(params_c[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())  # no _orig_mod. in checkpoints


def test_bf16_autocast_forward_matches_fp32(tiny_cfg, tmp_path):
    """The mechanism of trainer.precision=bf16 (autocast around model and head; the fbank and the margin
    arithmetic stay in float32), run on the CPU's bf16 autocast: same loss and embeddings within bf16's
    precision."""
    trainer = Trainer(tiny_cfg(run_dir=tmp_path / "run"))
    trainer.model.eval()  # batch statistics aside, the same function
    waves, labels = next(iter(trainer.loader))
    features = trainer.fbank(waves.float())
    with torch.no_grad():
        emb32 = trainer.model(features)
        loss32, _ = trainer.head(emb32, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features16 = trainer.fbank(waves.float())
            emb16 = trainer.model(features16)
            loss16, _ = trainer.head(emb16, labels)
    assert features16.dtype == torch.float32
    torch.testing.assert_close(features16, features)
    assert emb16.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(emb16.float(), emb32, dim=1)
    assert cosine.min() > 0.99
    assert loss16.dtype == torch.float32 and loss16.item() == pytest.approx(loss32.item(), rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cudnn.benchmark only applies on CUDA")
def test_cudnn_benchmark_matches_default_algorithms(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg("trainer.device=cuda", run_dir=tmp_path / "run"))
    trainer.model.eval()
    features = torch.randn(8, 80, 200, device="cuda")
    outputs = []
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        with torch.no_grad():
            outputs.append(copy.deepcopy(trainer.model)(features))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
