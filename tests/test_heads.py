"""AMSoftmax and SubCenterAAM against float64 re-derivations written here with angles (acos, then cos of the
shifted angle), one logit at a time; loss, gradients (torch.autograd on the re-derivation), top-1."""

import math

import pytest
import torch
import torch.nn.functional as F

from speakerid.losses import AAMSoftmax, AMSoftmax, SubCenterAAM


def nearest_center_cosines(x, w, sub_centers):
    """[B, C]: cosine of each embedding to the nearest of its class's sub-centres (rows c*K .. c*K+K-1)."""
    xn = x / x.norm(dim=1, keepdim=True)
    wn = w / w.norm(dim=1, keepdim=True)
    per_row = xn @ wn.T
    classes = w.shape[0] // sub_centers
    return torch.stack([per_row[:, c * sub_centers:(c + 1) * sub_centers].max(dim=1).values
                        for c in range(classes)], dim=1)


def am_reference_logits(x, w, labels, m, s):
    cos = nearest_center_cosines(x, w, 1)
    return torch.stack([torch.stack([s * (cos[b, j] - m) if j == y else s * cos[b, j] for j in range(cos.shape[1])])
                        for b, y in enumerate(labels.tolist())])


def sub_center_reference_logits(x, w, labels, m, s, sub_centers, top_k, top_k_margin, easy_margin):
    cos = nearest_center_cosines(x, w, sub_centers)
    theta = torch.acos(cos)
    penalty = top_k_margin * m / 0.2 if m > 0.001 else 0.0
    rows = []
    for b, y in enumerate(labels.tolist()):
        negatives = sorted((j for j in range(cos.shape[1]) if j != y), key=lambda j: cos[b, j].item(), reverse=True)
        hardest = set(negatives[:top_k])
        row = []
        for j in range(cos.shape[1]):
            if j == y and easy_margin:
                row.append(torch.cos(theta[b, j] + m) if cos[b, j] > 0 else cos[b, j])
            elif j == y:
                row.append(torch.cos(theta[b, j] + m) if theta[b, j] < math.pi - m
                           else cos[b, j] - (1 - math.cos(m)))
            elif j in hardest:
                row.append(torch.cos(theta[b, j] - penalty))
            else:
                row.append(cos[b, j])
        rows.append(s * torch.stack(row))
    return torch.stack(rows)


def cross_entropy_written_out(z, labels):
    zmax = z.max(dim=1, keepdim=True).values
    lse = zmax[:, 0] + torch.log(torch.exp(z - zmax).sum(dim=1))
    return (lse - z[torch.arange(len(labels)), labels]).mean()


def check_head(head, x, labels, reference_logits):
    """Loss, top-1 and both gradients of a float64 head against `reference_logits(x, w)`."""
    head = head.double()
    w = head.weight.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    z = reference_logits(xr, w)
    ref_loss = cross_entropy_written_out(z, labels)
    ref_gx, ref_gw = torch.autograd.grad(ref_loss, [xr, w])

    xh = x.clone().requires_grad_(True)
    loss, top1 = head(xh, labels)
    loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert top1.item() == pytest.approx((z.argmax(dim=1) == labels).double().mean().item())
    torch.testing.assert_close(xh.grad, ref_gx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, ref_gw, rtol=1e-9, atol=1e-12)
    return z


def random_batch(batch, classes, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return x, labels


@pytest.mark.parametrize("m,s", [(0.2, 30.0), (0.35, 64.0), (0.0, 30.0), (0.9, 10.0)])
def test_am_softmax_matches_reference(m, s):
    x, labels = random_batch(8, 6, 7, seed=0)
    head = AMSoftmax(num_classes=6, emb_dim=7, m=0.0, s=s)
    head.m = m  # as a schedule would
    check_head(head, x, labels, lambda xr, w: am_reference_logits(xr, w, labels, m, s))


@pytest.mark.parametrize("m,sub_centers,top_k,top_k_margin,easy_margin", [
    (0.2, 3, 5, 0.06, False),   # WeSpeaker's defaults at its final margin
    (0.1, 3, 5, 0.06, False),   # mid-schedule: penalty 0.03
    (0.0005, 3, 5, 0.06, False),  # penalty off below margin 0.001
    (0.35, 2, 3, 0.1, True),
    (1.2, 3, 2, 0.06, False),   # large margin: some true classes past pi - m
    (1.2, 2, 4, 0.06, True),
    (0.3, 1, 0, 0.06, False),   # plain AAM with WeSpeaker's continuation
])
def test_sub_center_aam_matches_reference(m, sub_centers, top_k, top_k_margin, easy_margin):
    classes, dim, s = 9, 7, 32.0
    x, labels = random_batch(12, classes, dim, seed=1)
    head = SubCenterAAM(num_classes=classes, emb_dim=dim, m=0.0, s=s, sub_centers=sub_centers, top_k=top_k,
                        top_k_margin=top_k_margin, easy_margin=easy_margin)
    head.m = m
    gen = torch.Generator().manual_seed(4)
    rows = torch.randn(classes, sub_centers, dim, generator=gen)
    for b in (0, 1):  # two embeddings pointing away from all their class's sub-centres
        away = torch.randn(dim, generator=gen)
        rows[labels[b]] = away + 0.05 * torch.randn(sub_centers, dim, generator=gen)
        x[b] = -away
    with torch.no_grad():
        head.weight.copy_(rows.view(classes * sub_centers, dim))
    z = check_head(head, x, labels, lambda xr, w: sub_center_reference_logits(
        xr, w, labels, m, s, sub_centers, top_k, top_k_margin, easy_margin))
    if m == 1.2:  # both branches of the true-class logit were exercised
        cos_y = nearest_center_cosines(x, head.weight.detach(), sub_centers)[torch.arange(12), labels]
        bound = 0.0 if easy_margin else math.cos(math.pi - m)
        assert (cos_y < bound).any() and (cos_y > bound).any()
    assert torch.isfinite(z).all()


def test_sub_center_uses_the_nearest_sub_centre_and_only_it_gets_gradient():
    """Class 1's third sub-centre is nearest: the true logit is s*cos(angle to it + m), and of class 1's rows
    only that one receives a gradient."""
    classes, k, dim, m, s = 4, 3, 6, 0.2, 32.0
    head = SubCenterAAM(num_classes=classes, emb_dim=dim, m=m, s=s, sub_centers=k, top_k=0).double()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        head.weight.copy_(torch.randn(classes * k, dim, generator=gen, dtype=torch.float64))
    best_row = 1 * k + 2
    x = (head.weight[best_row].detach() + 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64))[None]
    labels = torch.tensor([1])
    row_cos = F.cosine_similarity(x, head.weight.detach())
    assert row_cos[3:6].argmax().item() == 2  # the setup: not the first sub-centre
    z = check_head(head, x, labels, lambda xr, w: sub_center_reference_logits(xr, w, labels, m, s, k, 0, 0.06, False))
    assert z[0, 1].item() == pytest.approx(s * math.cos(math.acos(row_cos[best_row].item()) + m), rel=1e-12)
    grad_rows = head.weight.grad.abs().sum(dim=1)
    assert grad_rows[best_row] > 0
    assert grad_rows[3] == 0 and grad_rows[4] == 0
    assert (grad_rows.view(classes, k) > 0).sum(dim=1).tolist() == [1, 1, 1, 1]  # one sub-centre per class


def embedding_with_cosines(cosines):
    """Class weights e_0 .. e_{C-1} and an embedding whose cosine to class j is cosines[j] (a unit vector with
    the remaining length along an extra axis)."""
    cosines = torch.tensor(cosines, dtype=torch.float64)
    classes = len(cosines)
    w = torch.eye(classes + 1, dtype=torch.float64)[:classes]
    x = torch.cat([cosines, torch.sqrt(1 - (cosines ** 2).sum())[None]])[None]
    return x, w


@pytest.mark.parametrize("m,penalty", [(0.2, 0.06), (0.1, 0.03), (0.3, 0.09), (0.001, 0.0)])
def test_top_k_penalty_hits_exactly_the_k_hardest_negatives(m, penalty):
    cosines = [0.10, 0.45, 0.05, 0.40, -0.20, 0.30, 0.35, 0.20]
    label, k, s = 3, 3, 32.0
    x, w = embedding_with_cosines(cosines)
    head = SubCenterAAM(num_classes=8, emb_dim=9, m=m, s=s, sub_centers=1, top_k=k).double()
    with torch.no_grad():
        head.weight.copy_(w)
    assert head.current_top_k_margin == pytest.approx(penalty, rel=1e-12)
    z = head.logits(x, torch.tensor([label]))[0]
    hardest = {1, 6, 5}  # 0.45 (above the target's 0.40), 0.35, 0.30
    for j, c in enumerate(cosines):
        if j == label:
            expected = s * math.cos(math.acos(c) + m)
        elif j in hardest:
            expected = s * math.cos(math.acos(c) - penalty)
        else:
            expected = s * c
        assert z[j].item() == pytest.approx(expected, rel=1e-12, abs=1e-12), j
    changed = {j for j in range(8) if j != label and not math.isclose(z[j].item(), s * cosines[j], rel_tol=1e-14)}
    assert changed == (hardest if penalty > 0 else set())


def test_top1_counts_the_margin_and_the_top_k_penalty():
    """Target cosine 0.62 against a negative's 0.60: plain argmax is right. AM-softmax with m = 0.1 pulls the
    target below it; SubCenterAAM's top-k penalty alone (m = 0.01, so m' = 0.6 * 0.01 / 0.2 = 0.03) lifts the
    negative over it."""
    x, w = embedding_with_cosines([0.62, 0.60, 0.1])
    label = torch.tensor([0])
    am = AMSoftmax(num_classes=3, emb_dim=4, m=0.1).double()
    sub = SubCenterAAM(num_classes=3, emb_dim=4, m=0.01, sub_centers=1, top_k=1, top_k_margin=0.6).double()
    for head in (am, sub):
        with torch.no_grad():
            head.weight.copy_(w)
    assert am(x, label)[1].item() == 0.0
    am.m = 0.01
    assert am(x, label)[1].item() == 1.0
    assert sub(x, label)[1].item() == 0.0
    sub.top_k = 0
    assert sub(x, label)[1].item() == 1.0


@pytest.mark.parametrize("make", [
    lambda: AMSoftmax(num_classes=6, emb_dim=5, m=0.0, s=30.0),
    lambda: AAMSoftmax(num_classes=6, emb_dim=5, m=0.0, s=30.0),
    lambda: SubCenterAAM(num_classes=6, emb_dim=5, m=0.0, s=30.0, sub_centers=3, top_k=4),
    lambda: SubCenterAAM(num_classes=6, emb_dim=5, m=0.0, s=30.0, sub_centers=2, top_k=2, easy_margin=True),
])
def test_zero_margin_is_plain_normalised_softmax(make):
    head = make().double()
    k = head.weight.shape[0] // 6
    x, labels = random_batch(10, 6, 5, seed=3)
    loss, top1 = head(x, labels)
    cos = nearest_center_cosines(x, head.weight.detach(), k)
    assert loss.item() == pytest.approx(F.cross_entropy(30.0 * cos, labels).item(), rel=1e-12)
    assert top1.item() == pytest.approx((cos.argmax(dim=1) == labels).double().mean().item())


@pytest.mark.parametrize("make", [
    lambda: AMSoftmax(num_classes=10, emb_dim=16, m=0.3),
    lambda: SubCenterAAM(num_classes=10, emb_dim=16, m=0.2),
])
def test_bf16_autocast_keeps_margin_math_in_float32(make):
    """Under CPU bf16 autocast the loss and the weight gradient stay float32 and close to the float32 run."""
    head = make()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 16, generator=gen).bfloat16()
    labels = torch.randint(0, 10, (8,), generator=gen)
    reference, _ = head(x.float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = head(x.requires_grad_(True), labels)
    loss.backward()
    assert loss.dtype == torch.float32 and head.weight.grad.dtype == torch.float32
    assert x.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_weights_are_xavier_normal_with_k_rows_per_class():
    head = SubCenterAAM(num_classes=1000, emb_dim=256, sub_centers=3)
    assert list(head.state_dict()) == ["weight"]
    assert head.weight.shape == (3000, 256)
    assert head.weight.std().item() == pytest.approx(math.sqrt(2.0 / (3000 + 256)), rel=0.02)
    am = AMSoftmax(num_classes=3000, emb_dim=512)
    assert list(am.state_dict()) == ["weight"]
    assert am.weight.std().item() == pytest.approx(math.sqrt(2.0 / (3000 + 512)), rel=0.02)
    with pytest.raises(ValueError, match=r"SubCenterAAM expects embeddings of shape \[batch, 256\]"):
        head(torch.randn(4, 192), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("make,key", [
    (lambda: AMSoftmax(10, 16, m=-0.1), "head.m"),
    (lambda: AMSoftmax(10, 16, m=1.0), r"head.m.*cosine margin.*\[0, 1\)"),
    (lambda: AMSoftmax(10, 16, s=0.0), "head.s"),
    (lambda: AMSoftmax(10, 16, s=float("inf")), "head.s"),
    (lambda: AMSoftmax(10, 16, m=True), "head.m"),
    (lambda: AMSoftmax(1, 16), "head.num_classes"),
    (lambda: SubCenterAAM(10, 16, m=math.pi / 2), r"head.m.*angular margin.*\[0, pi/2\)"),
    (lambda: SubCenterAAM(10, 16, s=-1.0), "head.s"),
    (lambda: SubCenterAAM(10, 0), "head.emb_dim"),
    (lambda: SubCenterAAM(10, 16, sub_centers=0), "head.sub_centers"),
    (lambda: SubCenterAAM(10, 16, top_k=-1), "head.top_k"),
    (lambda: SubCenterAAM(10, 16, top_k=10), r"head.top_k must be at most num_classes - 1 = 9"),
    (lambda: SubCenterAAM(10, 16, top_k_margin=2.0), "head.top_k_margin"),
    (lambda: SubCenterAAM(10, 16, easy_margin="yes"), "head.easy_margin"),
])
def test_bad_arguments_are_errors_at_build_time(make, key):
    with pytest.raises(ValueError, match=key):
        make()


def test_scheduled_margin_is_checked_against_the_heads_own_range():
    am = AMSoftmax(10, 16)
    with pytest.raises(ValueError, match="head.m"):
        am.m = 1.0  # a cosine margin of 1 leaves the target logit 0 for an embedding on its class centre
    sub = SubCenterAAM(10, 16)
    sub.m = 1.2  # fine as an angle
    assert sub.current_top_k_margin == pytest.approx(0.06 * 1.2 / 0.2)
