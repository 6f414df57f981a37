"""What the margin classification heads share: class centres compared to embeddings by cosine, a settable
margin, and cross-entropy over scaled logits computed in float32 even under autocast."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from speakerid.config import MarginRange, check_int_at_least, check_margin, check_scale


class MarginHead(nn.Module, ABC):
    """Base of the heads: `weight` holds `centers_per_class` rows per class (class c's are rows c*K .. c*K+K-1,
    WeSpeaker's layout), Xavier-normal initialised.

    forward(embeddings [B, D], labels [B]) -> (loss, top1): cross-entropy of `logits`, and the fraction of the
    batch whose argmax over those margin-adjusted logits is the true class. Subclasses define `logits`.
    """

    margin_range: ClassVar[MarginRange]

    def __init__(self, num_classes: int, emb_dim: int, m: float, s: float, centers_per_class: int = 1):
        super().__init__()
        self.num_classes = check_int_at_least(num_classes, 2, "head.num_classes (speakers in the training list)")
        self.emb_dim = check_int_at_least(emb_dim, 1, "head.emb_dim")
        self.s = check_scale(s)
        self.weight = nn.Parameter(torch.empty(num_classes * centers_per_class, emb_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)
        self.m = m

    @property
    def m(self) -> float:
        """The margin; a schedule may set it during training (WeSpeaker raises it over epochs)."""
        return self._m

    @m.setter
    def m(self, value: float) -> None:
        self._m = check_margin(value, self.margin_range)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each embedding with each row of `weight`: [B, rows]."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.emb_dim:
            raise ValueError(f"{type(self).__name__} expects embeddings of shape [batch, {self.emb_dim}], "
                             f"got {tuple(embeddings.shape)}")
        return F.linear(F.normalize(embeddings), F.normalize(self.weight))

    def scaled(self, labels: torch.Tensor, target: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """s * (`target` in each row's true-class column, `others` elsewhere)."""
        one_hot = F.one_hot(labels, self.num_classes).to(target.dtype)
        return self.s * (one_hot * target + (1.0 - one_hot) * others)

    @abstractmethod
    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted, scaled logits [B, num_classes]."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The margin arithmetic is done in float32 even under autocast: cos close to 1 loses the margin
        # entirely in bf16.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = self.logits(embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16)
                                 else embeddings, labels)
            loss = F.cross_entropy(logits, labels)
        top1 = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, top1

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, emb_dim={self.emb_dim}, m={self.m}, s={self.s}"


def sine_of(cosine: torch.Tensor) -> torch.Tensor:
    """sin(theta) from cos(theta), theta in [0, pi]; clamped so rounding past |cos| = 1 gives 0, not NaN."""
    return torch.sqrt((1.0 - cosine * cosine).clamp(0, 1))


def additive_angular(cosine: torch.Tensor, sine: torch.Tensor, m: float, threshold: float,
                     fallback_offset: float) -> torch.Tensor:
    """cos(theta + m) where cos(theta) > threshold, else the continuation cos(theta) - fallback_offset.

    cos(theta + m) stops decreasing past theta = pi - m; the references replace it there by a line, each with its
    own offset (and `easy_margin` keeps the plain cosine for theta > pi/2: threshold 0, offset 0).
    """
    phi = cosine * math.cos(m) - sine * math.sin(m)
    return torch.where(cosine - threshold > 0, phi, cosine - fallback_offset)
