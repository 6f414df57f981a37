import pytest
import torch

from conftest import draw_batchnorm_statistics, padded_and_alone
from speakerid.models import ECAPATDNN


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("channels,paper", [(512, 6.2e6), (1024, 14.7e6)])
def test_parameter_count_matches_paper(channels, paper):
    n = count(ECAPATDNN(channels=channels, emb_dim=192))
    assert abs(n - paper) / paper < 0.10, n


def test_taoruijie_attention_bottleneck_adds_his_extra_parameters():
    # REFERENCE.md: TaoRuijie's C=1024 model has 15.44M parameters (256 attention bottleneck, 192-d).
    n = count(ECAPATDNN(channels=1024, emb_dim=192, attention_channels=256))
    assert n == pytest.approx(15.44e6, rel=0.01)


@pytest.mark.parametrize("frames", [50, 202, 317])
def test_output_shape_any_length(frames):
    model = ECAPATDNN(channels=64, emb_dim=256, mfa_channels=192).eval()
    out = model(torch.randn(3, 80, frames))
    assert out.shape == (3, 256)
    assert torch.isfinite(out).all()


def test_default_is_c1024_256d():
    model = ECAPATDNN()
    assert model.emb_dim == 256
    assert model.stem[0].out_channels == 1024


def test_every_parameter_receives_gradient():
    model = ECAPATDNN(channels=32, emb_dim=16, mfa_channels=96, se_bottleneck=8, attention_channels=8)
    model(torch.randn(4, 80, 40)).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_embedding_does_not_depend_on_batch_companions():
    model = ECAPATDNN(channels=32, emb_dim=16, mfa_channels=96).eval()
    x = torch.randn(3, 80, 60)
    together = model(x)
    alone = model(x[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)


def test_wrong_feature_shape_is_explained():
    with pytest.raises(ValueError, match=r"\[batch, 80, frames\]"):
        ECAPATDNN(channels=32, mfa_channels=96)(torch.randn(2, 40, 100))


def test_taoruijie_model_config_builds_his_layer_sizes():
    """model=ecapa_tdnn_taoruijie is the paper's model with his attention bottleneck: at C=1024 and 192-d it
    has his 15.44M parameters, and differs from ecapa_tdnn only in the attention layers, by
    (4608 + 1 + 2 + 1536) x (256 - 128) = 786,816 weights (two 1x1 convolutions and a BatchNorm)."""
    from hydra.utils import instantiate

    from speakerid.configs import compose

    def built(model):
        cfg = compose("train", [f"model={model}", "model.channels=1024", "model.emb_dim=192"])
        return instantiate(cfg.model)

    theirs, paper = built("ecapa_tdnn_taoruijie"), built("ecapa_tdnn")
    assert count(theirs) == pytest.approx(15.44e6, rel=0.01)
    assert count(theirs) - count(paper) == (4608 + 1 + 2 + 1536) * (256 - 128)
    assert theirs.pooling.attention[0].out_channels == 256


@pytest.mark.parametrize("unbiased_context_std", [False, True])
def test_a_padded_batch_with_lengths_gives_each_utterance_its_own_embedding(unbiased_context_std):
    """Frame counts mask the padding in every layer that looks across frames (the k > 1 convolutions, the
    SE means, the attention's context and softmax): in float64 each padded row equals the utterance alone,
    down to a single frame, and the padding's values do not matter."""
    torch.manual_seed(0)
    model = draw_batchnorm_statistics(ECAPATDNN(channels=64, mfa_channels=192, emb_dim=32, attention_channels=16,
                                                se_bottleneck=16, unbiased_context_std=unbiased_context_std))
    model = model.double().eval()
    batched, alone, plain, features = padded_and_alone(model, [301, 57, 300, 2, 1])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)
    assert (plain[1] - alone[1]).abs().max() > 1e-2  # without the lengths the padding counts
    torch.testing.assert_close(model(features[:1], torch.tensor([301])), plain[:1], rtol=0, atol=1e-12)
