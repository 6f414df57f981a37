"""Additive angular margin softmax (ArcFace / AAM-softmax) as in TaoRuijie/ECAPA-TDNN.

The formula is the reference's, with the embedding size a parameter instead of a hard-coded 192.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AAMSoftmax(nn.Module):
    """Classification head: cos(theta + m) for the true class, scaled by s, then cross-entropy.

    forward(embeddings [B, D], labels [B]) -> (loss, top1), where top1 is the fraction of the batch whose
    argmax over the margin-adjusted logits is the true class (the reference's "precision").
    """

    def __init__(self, num_classes: int, emb_dim: int = 256, m: float = 0.2, s: float = 30.0):
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"head: num_classes must be an integer >= 2, got {num_classes!r}")
        if not (isinstance(emb_dim, int) and emb_dim >= 1):
            raise ValueError(f"head.emb_dim must be a positive integer, got {emb_dim!r}")
        if not (0.0 <= m < math.pi / 2):
            raise ValueError(f"head.m (angular margin, radians) must be in [0, pi/2), got {m!r}")
        if not s > 0:
            raise ValueError(f"head.s (logit scale) must be > 0, got {s!r}")
        self.num_classes = num_classes
        self.emb_dim = emb_dim
        self.s = float(s)
        self.weight = nn.Parameter(torch.empty(num_classes, emb_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)
        self.m = float(m)

    @property
    def m(self) -> float:
        return self._m

    @m.setter
    def m(self, value: float) -> None:
        # The margin may be scheduled during training (WeSpeaker raises it over epochs), so the
        # derived constants are recomputed whenever it changes.
        if not (0.0 <= value < math.pi / 2):
            raise ValueError(f"head.m (angular margin, radians) must be in [0, pi/2), got {value!r}")
        self._m = float(value)
        self.cos_m = math.cos(value)
        self.sin_m = math.sin(value)
        # Past theta = pi - m, cos(theta + m) stops decreasing; the reference then uses a linear
        # continuation cos(theta) - sin(pi - m) * m so the target logit stays monotonic in theta.
        self.th = math.cos(math.pi - value)
        self.mm = math.sin(math.pi - value) * value

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.emb_dim:
            raise ValueError(
                f"AAMSoftmax expects embeddings of shape [batch, {self.emb_dim}], got {tuple(embeddings.shape)}"
            )
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(0, 1))
        phi = cosine * self.cos_m - sine * self.sin_m
        phi = torch.where(cosine - self.th > 0, phi, cosine - self.mm)
        one_hot = F.one_hot(labels, self.num_classes).to(cosine.dtype)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cosine)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The angular arithmetic is done in float32 even under autocast: cos close to 1 loses the margin
        # entirely in bf16.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = self.logits(embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16)
                                 else embeddings, labels)
            loss = F.cross_entropy(logits, labels)
        top1 = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, top1

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, emb_dim={self.emb_dim}, m={self.m}, s={self.s}"
