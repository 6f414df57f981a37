"""Additive angular margin softmax (ArcFace / AAM-softmax) as in TaoRuijie/ECAPA-TDNN.

The formula is the reference's, with the embedding size a parameter instead of a hard-coded 192.
"""

from __future__ import annotations

import math

import torch

from speakerid.losses.margin_head import MarginHead, additive_angular, sine_of
from speakerid.config import ANGULAR_MARGIN


class AAMSoftmax(MarginHead):
    """Classification head: cos(theta + m) for the true class, scaled by s, then cross-entropy.

    Target logit s * cos(theta + m) while theta < pi - m; past that, where cos(theta + m) would stop decreasing,
    the reference's linear continuation s * (cos(theta) - m * sin(pi - m)), so the logit stays monotonic in theta.
    Other classes: s * cos(theta_j). (Deng et al., ArcFace, CVPR 2019, arXiv:1801.07698; TaoRuijie/ECAPA-TDNN
    loss.py.)

    forward(embeddings [B, D], labels [B]) -> (loss, top1), where top1 is the fraction of the batch whose
    argmax over the margin-adjusted logits is the true class (the reference's "precision").
    """

    margin_range = ANGULAR_MARGIN

    def __init__(self, num_classes: int, emb_dim: int = 256, m: float = 0.2, s: float = 30.0):
        super().__init__(num_classes, emb_dim, m, s)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        m = self.m
        phi = additive_angular(cosine, sine_of(cosine), m, threshold=math.cos(math.pi - m),
                               fallback_offset=math.sin(math.pi - m) * m)
        return self.scaled(labels, phi, cosine)
