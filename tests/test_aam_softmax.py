"""AAMSoftmax against an independent float64 NumPy re-derivation of TaoRuijie's formula."""

import math

import numpy as np
import pytest
import torch

from speakerid.losses import AAMSoftmax


def reference_logits(x, w, labels, m, s):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = xn @ wn.T
    sin = np.sqrt(np.clip(1.0 - cos ** 2, 0.0, 1.0))
    phi = cos * math.cos(m) - sin * math.sin(m)
    phi = np.where(cos - math.cos(math.pi - m) > 0, phi, cos - math.sin(math.pi - m) * m)
    onehot = np.eye(w.shape[0])[labels]
    return s * (onehot * phi + (1 - onehot) * cos)


def reference_loss(x, w, labels, m, s):
    z = reference_logits(x, w, labels, m, s)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def numeric_grad(f, a, h=1e-6):
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        orig = a[idx]
        a[idx] = orig + h
        up = f()
        a[idx] = orig - h
        down = f()
        a[idx] = orig
        g[idx] = (up - down) / (2 * h)
    return g


def head_from(w, m, s):
    head = AAMSoftmax(num_classes=w.shape[0], emb_dim=w.shape[1], m=m, s=s).double()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
    return head


def check_against_reference(x, w, labels, m, s):
    head = head_from(w, m, s)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    loss, top1 = head(xt, torch.from_numpy(labels))
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss(x, w, labels, m, s), rel=1e-12, abs=1e-12)
    ref_logits = reference_logits(x, w, labels, m, s)
    assert top1.item() == pytest.approx(np.mean(ref_logits.argmax(1) == labels))
    gx = numeric_grad(lambda: reference_loss(x, w, labels, m, s), x)
    gw = numeric_grad(lambda: reference_loss(x, w, labels, m, s), w)
    np.testing.assert_allclose(xt.grad.numpy(), gx, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(head.weight.grad.numpy(), gw, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("m,s", [(0.2, 30.0), (0.0, 30.0), (0.5, 64.0), (1.2, 10.0)])
def test_loss_gradient_top1_match_float64_reference(m, s):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 7))
    w = rng.standard_normal((5, 7))
    labels = rng.integers(0, 5, size=6)
    check_against_reference(x, w, labels, m, s)


def embedding_at_angle(w_row, theta, rng):
    """A vector at angle theta from w_row."""
    u = w_row / np.linalg.norm(w_row)
    v = rng.standard_normal(u.shape)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return 3.0 * (math.cos(theta) * u + math.sin(theta) * v)


@pytest.mark.parametrize("side", [-1, 1])
def test_margin_near_fallback_threshold(side):
    """Just before theta = pi - m the target logit is s*cos(theta + m); just past it, the linear fallback
    s*(cos(theta) - m*sin(pi - m)). Both sides match the reference in value and gradient."""
    m, s = 0.3, 30.0
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 8))
    theta = math.pi - m + side * 1e-3
    x = np.stack([embedding_at_angle(w[2], theta, rng)])
    labels = np.array([2])
    head = head_from(w, m, s)
    target = head.logits(torch.from_numpy(x), torch.from_numpy(labels))[0, 2].item()
    expected = s * math.cos(theta + m) if side < 0 else s * (math.cos(theta) - m * math.sin(math.pi - m))
    assert target == pytest.approx(expected, rel=1e-9)
    check_against_reference(x, w, labels, m, s)


def test_top1_counts_the_margin():
    """Angle 0.5 to the true class and 0.6 to another: argmax of cosines is right, but with m = 0.2 the
    true logit cos(0.7) falls below cos(0.6), so top-1 (computed on margin logits, as the reference) is 0."""
    w = np.array([[1.0, 0.0, 0.0], [math.cos(1.1), math.sin(1.1), 0.0]])
    x = np.array([[math.cos(0.5), math.sin(0.5), 0.0]])
    head = head_from(w, m=0.2, s=30.0)
    _, top1 = head(torch.from_numpy(x), torch.tensor([0]))
    assert top1.item() == 0.0
    head.m = 0.05
    _, top1 = head(torch.from_numpy(x), torch.tensor([0]))
    assert top1.item() == 1.0


def test_xavier_normal_init_and_embedding_size():
    head = AAMSoftmax(num_classes=3000, emb_dim=512)
    assert head.weight.shape == (3000, 512)
    std = math.sqrt(2.0 / (3000 + 512))
    assert head.weight.std().item() == pytest.approx(std, rel=0.02)
    assert abs(head.weight.mean().item()) < 0.01 * std
    with pytest.raises(ValueError, match=r"\[batch, 512\]"):
        head(torch.randn(4, 256), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("kwargs,key", [
    ({"m": -0.1}, "head.m"), ({"m": math.pi / 2}, "head.m"), ({"m": 2.0}, "head.m"),
    ({"s": 0.0}, "head.s"), ({"s": -5.0}, "head.s"),
])
def test_bad_margin_or_scale_is_an_error_at_build_time(kwargs, key):
    with pytest.raises(ValueError, match=key):
        AAMSoftmax(num_classes=10, emb_dim=16, **kwargs)


def test_bf16_autocast_keeps_angular_math_in_float32():
    head = AAMSoftmax(num_classes=10, emb_dim=16)
    x = torch.randn(8, 16)
    labels = torch.randint(0, 10, (8,))
    reference, _ = head(x, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = head(x.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)
