"""Additive (cosine) margin softmax: AM-softmax / CosFace."""

from __future__ import annotations

import torch

from speakerid.losses.margin_head import MarginHead
from speakerid.config import COSINE_MARGIN


class AMSoftmax(MarginHead):
    """Classification head: s * (cos(theta_y) - m) for the true class y, s * cos(theta_j) for the others, then
    cross-entropy. m is subtracted from the cosine, not added to the angle, so it is in [0, 1).

    Wang et al., Additive Margin Softmax for Face Verification, IEEE SPL 2018 (arXiv:1801.05599); Wang et al.,
    CosFace, CVPR 2018 (arXiv:1801.09414); as wenet-e2e/wespeaker wespeaker/models/projections.py
    AddMarginProduct.

    forward(embeddings [B, D], labels [B]) -> (loss, top1), top1 being the accuracy of the argmax of the
    margin-adjusted logits.
    """

    margin_range = COSINE_MARGIN

    def __init__(self, num_classes: int, emb_dim: int = 256, m: float = 0.2, s: float = 30.0):
        super().__init__(num_classes, emb_dim, m, s)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        return self.scaled(labels, cosine - self.m, cosine)
