"""AAM-softmax with sub-centres and the inter-top-k penalty, as WeSpeaker's
ArcMarginProduct_intertopk_subcenter (wenet-e2e/wespeaker wespeaker/models/projections.py)."""

from __future__ import annotations

import math

import torch

from speakerid.losses.margin_head import MarginHead, additive_angular, sine_of
from speakerid.config import ANGULAR_MARGIN, check_int_at_least, check_margin

# WeSpeaker scales the top-k penalty with the margin, reaching `top_k_margin` at this margin (its final 0.2).
TOP_K_MARGIN_AT = 0.2
# Below this margin WeSpeaker switches the top-k penalty off.
TOP_K_MARGIN_FROM = 0.001


class SubCenterAAM(MarginHead):
    """AAM-softmax over the best of K sub-centres per class, with an extra angular penalty on the hardest
    non-target classes. With theta_j the angle between the embedding and class j's nearest sub-centre,

        cos(theta_j) = max_k cos(x, w_{j,k})                                  (k = 1..K sub-centres)
        true class y:  s * cos(theta_y + m)        if cos(theta_y) > cos(pi - m)
                       s * (cos(theta_y) - (1 - cos m))   otherwise (continuous at theta_y = pi - m)
        the top_k non-target classes of largest cos(theta_j):  s * cos(theta_j - m')
        other classes: s * cos(theta_j)
        m' = top_k_margin * m / 0.2, and 0 while m <= 0.001

    then cross-entropy. cos(theta_j - m') raises the hardest negatives' logits, so they must be beaten by more.
    With easy_margin the true class uses s * cos(theta_y + m) only while cos(theta_y) > 0, else s * cos(theta_y).
    (The continuation past pi - m is WeSpeaker's, 1 - cos m; AAMSoftmax uses TaoRuijie's m * sin(pi - m).)

    m' follows m as in WeSpeaker's update(margin): a margin schedule raising m from 0 to 0.2 raises m' from 0 to
    top_k_margin. WeSpeaker's constructor leaves m' = 0 until update() is first called (its MarginScheduler
    always calls it at the start); here m' follows m from construction on, which is the same in training.
    WeSpeaker's defaults: K = 3, top_k = 5, top_k_margin (its mp) = 0.06, s = 32; its large-margin fine-tuning
    (do_lm) turns the penalty off: top_k = 0 here.

    Deng et al., Sub-center ArcFace, ECCV 2020; Zhao et al., Multi-query multi-head attention pooling and
    inter-topK penalty for speaker verification, ICASSP 2022 (arXiv:2110.05042).

    `weight` has K rows per class, class c's sub-centres at rows c*K .. c*K+K-1 (WeSpeaker's layout).
    forward(embeddings [B, D], labels [B]) -> (loss, top1), top1 being the accuracy of the argmax of the
    logits above (margin and top-k penalty included, as WeSpeaker's training accuracy).
    """

    margin_range = ANGULAR_MARGIN

    def __init__(self, num_classes: int, emb_dim: int = 256, m: float = 0.2, s: float = 32.0, sub_centers: int = 3,
                 top_k: int = 5, top_k_margin: float = 0.06, easy_margin: bool = False):
        super().__init__(num_classes, emb_dim, m, s, centers_per_class=check_int_at_least(sub_centers, 1, "head.sub_centers"))
        self.sub_centers = sub_centers
        self.top_k = check_int_at_least(top_k, 0, "head.top_k")
        if top_k > num_classes - 1:
            raise ValueError(f"head.top_k must be at most num_classes - 1 = {num_classes - 1} (the non-target "
                             f"classes), got {top_k}")
        self.top_k_margin = check_margin(top_k_margin, ANGULAR_MARGIN, "head.top_k_margin")
        if not isinstance(easy_margin, bool):
            raise ValueError(f"head.easy_margin must be true or false, got {easy_margin!r}")
        self.easy_margin = easy_margin

    @property
    def current_top_k_margin(self) -> float:
        """m', the penalty on the hardest non-target classes at the current margin."""
        return self.top_k_margin * self.m / TOP_K_MARGIN_AT if self.m > TOP_K_MARGIN_FROM else 0.0

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_center = self.cosine(embeddings)
        cosine = per_center.view(per_center.shape[0], self.num_classes, self.sub_centers).max(dim=2).values
        sine = sine_of(cosine)
        m = self.m
        if self.easy_margin:
            target = additive_angular(cosine, sine, m, threshold=0.0, fallback_offset=0.0)
        else:
            target = additive_angular(cosine, sine, m, threshold=math.cos(math.pi - m),
                                      fallback_offset=1.0 + math.cos(math.pi - m))
        others = cosine
        if self.top_k > 0:
            non_target = cosine.detach().scatter(1, labels.unsqueeze(1), float("-inf"))
            hardest = non_target.topk(self.top_k, dim=1).indices
            is_hard = torch.zeros_like(cosine, dtype=torch.bool).scatter_(1, hardest, True)
            penalty = self.current_top_k_margin
            others = torch.where(is_hard, cosine * math.cos(penalty) + sine * math.sin(penalty), cosine)
        return self.scaled(labels, target, others)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, sub_centers={self.sub_centers}, top_k={self.top_k}, "
                f"top_k_margin={self.top_k_margin}, easy_margin={self.easy_margin}")
