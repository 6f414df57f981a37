"""The shared pooling layers against float64 re-derivations and hand-worked numbers, and the ECAPA-TDNN
state-dict layout that existing checkpoints rely on."""

import math
import warnings

import pytest
import torch

from speakerid.models import ECAPATDNN
from speakerid.models.pooling import TemporalStatsPooling, segment_means


def test_tstp_hand_worked_example():
    # frames 1, 2, 3, 4: mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5 / 3.
    out = TemporalStatsPooling()(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(2.5)
    assert out[0, 1].item() == pytest.approx(math.sqrt(5 / 3 + 1e-7), rel=1e-6)


def test_tstp_matches_float64_loop_and_flattens_channel_major():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 7) * 3 + 1  # [batch, channels, freq, frames]
    out = TemporalStatsPooling()(x)
    assert out.shape == (2, 2 * 3 * 4)
    x64 = x.double()
    for b in range(2):
        for c in range(3):
            for f in range(4):
                frames = x64[b, c, f].tolist()
                mean = sum(frames) / len(frames)
                var = sum((v - mean) ** 2 for v in frames) / (len(frames) - 1)
                i = c * 4 + f
                assert out[b, i].item() == pytest.approx(mean, abs=1e-5)
                assert out[b, 12 + i].item() == pytest.approx(math.sqrt(var + 1e-7), rel=1e-5)


def test_tstp_constant_channel_has_finite_gradient():
    x = torch.ones(1, 2, 5, requires_grad=True)
    out = TemporalStatsPooling()(x)
    assert out[0, 2].item() == pytest.approx(math.sqrt(1e-7))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_tstp_keeps_float32_under_bf16_autocast_and_float64_inputs():
    x = torch.randn(2, 3, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert TemporalStatsPooling()(x.bfloat16()).dtype == torch.float32
    assert TemporalStatsPooling()(x.double()).dtype == torch.float64


@pytest.mark.parametrize("frames,segment", [(250, 100), (37, 100), (300, 100), (11, 4)])
def test_segment_means_match_a_loop(frames, segment):
    torch.manual_seed(1)
    x = torch.randn(2, 3, frames)
    out = segment_means(x, segment)
    assert out.shape == x.shape
    x64 = x.double()
    expected = torch.empty_like(x64)
    for start in range(0, frames, segment):
        stop = min(start + segment, frames)  # the last segment may be short: the mean of what it has
        expected[..., start:stop] = x64[..., start:stop].mean(dim=-1, keepdim=True)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_segment_means_gradient_is_the_same_compiled():
    # torch.compile's avg_pool1d(ceil_mode=True) backward divides the short last window by the full one
    # (pytorch/pytorch#198119): 130 frames = one segment of 100 and one of 30.
    x = torch.randn(2, 3, 130, requires_grad=True)
    weights = torch.randn(2, 3, 130)

    def loss(t):
        return (segment_means(t, 100) * weights).sum()

    (eager,) = torch.autograd.grad(loss(x), x)
    (compiled,) = torch.autograd.grad(torch.compile(loss, dynamic=False)(x), x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    # d/dx of the 30-frame segment's mean is its weight sum / 30, per channel.
    torch.testing.assert_close(eager[..., 100:], weights[..., 100:].sum(-1, keepdim=True).expand(-1, -1, 30) / 30)


# The keys of ECAPATDNN(channels=16, emb_dim=8, mfa_channels=48, se_bottleneck=8, attention_channels=8)'s
# pooling, read from the model before AttentiveStatsPooling moved to pooling.py: checkpoints store these.
ECAPA_POOLING_KEYS = [
    ("pooling.attention.0.weight", (8, 144, 1)), ("pooling.attention.0.bias", (8,)),
    ("pooling.attention.2.weight", (8,)), ("pooling.attention.2.bias", (8,)),
    ("pooling.attention.2.running_mean", (8,)), ("pooling.attention.2.running_var", (8,)),
    ("pooling.attention.2.num_batches_tracked", ()),
    ("pooling.attention.4.weight", (48, 8, 1)), ("pooling.attention.4.bias", (48,)),
    ("pool_bn.weight", (96,)), ("pool_bn.bias", (96,)), ("pool_bn.running_mean", (96,)),
    ("pool_bn.running_var", (96,)), ("pool_bn.num_batches_tracked", ()),
]


def test_ecapa_pooling_state_dict_keys_unchanged():
    model = ECAPATDNN(channels=16, emb_dim=8, mfa_channels=48, se_bottleneck=8, attention_channels=8)
    pooling = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if k.startswith("pool")]
    assert pooling == ECAPA_POOLING_KEYS


@pytest.mark.parametrize("unbiased", [False, True])
def test_attentive_pooling_matches_a_float64_loop(unbiased):
    """ECAPA-TDNN's attentive statistics, re-derived frame by frame: the attention sees each frame with the
    global mean and std over the T frames (divisor T, or T - 1 as TaoRuijie's torch.var; variance clamped at
    1e-4), softmax over time per channel, then the weighted mean and std (variance clamped at 1e-4)."""
    from speakerid.models.pooling import AttentiveStatsPooling

    torch.manual_seed(0)
    channels, frames = 3, 6
    pooling = AttentiveStatsPooling(channels, bottleneck=4, unbiased_context_std=unbiased).double().eval()
    for p in pooling.parameters():
        p.data.uniform_(-0.5, 0.5)
    bn = pooling.attention[2]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, channels, frames, dtype=torch.float64) * 2
    x[1, 2] = 0.7 + 0.001 * torch.arange(frames)  # a near-constant channel: its variance sits under the clamp
    out = pooling(x)

    conv1, conv2 = pooling.attention[0], pooling.attention[4]
    for b in range(2):
        context = []
        for c in range(channels):
            v = x[b, c].tolist()
            mean = sum(v) / frames
            var = sum((t - mean) ** 2 for t in v) / (frames - 1 if unbiased else frames)
            context.append((mean, math.sqrt(max(var, 1e-4))))
        scores = [[0.0] * frames for _ in range(channels)]
        for t in range(frames):
            inputs = [x[b, c, t].item() for c in range(channels)] + [m for m, _ in context] + [s for _, s in context]
            hidden = []
            for h in range(4):
                z = conv1.bias[h].item() + sum(conv1.weight[h, i, 0].item() * inputs[i] for i in range(3 * channels))
                z = max(z, 0.0)
                z = (z - bn.running_mean[h].item()) / math.sqrt(bn.running_var[h].item() + bn.eps)
                hidden.append(math.tanh(z * bn.weight[h].item() + bn.bias[h].item()))
            for c in range(channels):
                scores[c][t] = conv2.bias[c].item() + sum(conv2.weight[c, h, 0].item() * hidden[h] for h in range(4))
        for c in range(channels):
            e = [math.exp(s - max(scores[c])) for s in scores[c]]
            w = [v / sum(e) for v in e]
            v = x[b, c].tolist()
            mean = sum(wi * vi for wi, vi in zip(w, v))
            var = sum(wi * vi * vi for wi, vi in zip(w, v)) - mean * mean
            assert out[b, c].item() == pytest.approx(mean, rel=1e-9, abs=1e-12)
            assert out[b, channels + c].item() == pytest.approx(math.sqrt(max(var, 1e-4)), rel=1e-9)


def test_unbiased_context_std_changes_the_output_not_the_parameters():
    """The switch changes the model's output (it is not a no-op) and not its parameters: checkpoints of either
    setting load into the other."""
    torch.manual_seed(0)
    base = ECAPATDNN(channels=16, emb_dim=8, mfa_channels=48, se_bottleneck=8, attention_channels=8).eval()
    other = ECAPATDNN(channels=16, emb_dim=8, mfa_channels=48, se_bottleneck=8, attention_channels=8,
                      unbiased_context_std=True).eval()
    other.load_state_dict(base.state_dict())
    features = torch.randn(2, 80, 30)
    assert not torch.allclose(base(features), other(features))


@pytest.mark.parametrize("unbiased", [False, True])
def test_a_single_frame_pools_to_finite_statistics(unbiased):
    """One frame has no unbiased variance; its global std is the clamp's sqrt(1e-4), as with divisor T."""
    from speakerid.models.pooling import AttentiveStatsPooling

    pooling = AttentiveStatsPooling(4, bottleneck=2, unbiased_context_std=unbiased).eval()
    x = torch.randn(2, 4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # var_mean's "degrees of freedom <= 0" warning at every such utterance
        mean, std = pooling._context(x)
        assert torch.isfinite(pooling(x)).all()
    torch.testing.assert_close(mean, x[:, :, 0])
    torch.testing.assert_close(std, torch.full((2, 4), 0.01))
