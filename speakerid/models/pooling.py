"""Pooling over time, shared by the encoders: frame-level features [batch, channels, frames] (or
[batch, channels, freq, frames] from a 2-D network) -> one vector per utterance.

Each utterance is pooled on its own: nothing here mixes the items of a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakerid.models.lengths import masked_mean, zero_padding


class TemporalStatsPooling(nn.Module):
    """Temporal statistics pooling (TSTP, the x-vector's): mean and standard deviation over time,
    concatenated -> [batch, 2 * channels * freq] (means first, channel-major when there is a freq axis).

    The convention is WeSpeaker's TSTP: unbiased variance (divisor frames - 1) and std = sqrt(var + eps)
    with eps = 1e-7, which keeps the gradient finite for a constant channel. It therefore needs at least
    2 frames. 3D-Speaker's CAM++ uses the same unbiased std without eps. The statistics are computed in
    (at least) float32 even under autocast: a bf16 variance of near-equal frames loses most of its digits.
    """

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"TemporalStatsPooling eps must be > 0, got {eps!r}")
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` [batch, 1, frames] (speakerid.models.lengths): each utterance pooled over its own frames."""
        x = x.flatten(start_dim=1, end_dim=-2)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if mask is None:
            var, mean = torch.var_mean(x, dim=-1, correction=1)
        else:
            frames = mask.sum(dim=-1).to(x.dtype)  # [batch, 1]
            mean = masked_mean(x, mask)
            var = zero_padding(x - mean, mask).square().sum(dim=-1) / (frames - 1)
            mean = mean.squeeze(-1)
        return torch.cat((mean, torch.sqrt(var + self.eps)), dim=1)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def segment_means(x: torch.Tensor, segment_frames: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[..., frames] -> same shape, each frame replaced by the mean of its segment: the time axis cut into
    consecutive segments of `segment_frames` frames, the last one possibly shorter (it is the mean of the
    frames it has). CAM++'s segment-level context. With `mask` [batch, 1, frames] (a padded batch,
    speakerid.models.lengths) a segment's mean is over the utterance's own frames in it.

    Not avg_pool1d(ceil_mode=True), which gives these means too: torch.compile (Inductor, torch 2.11)
    divides the gradient of its short last window by the full window (pytorch/pytorch#198119)."""
    frames = x.shape[-1]
    # A ceiling division without negative numbers: ONNX integer division truncates towards zero.
    segments = (frames + segment_frames - 1) // segment_frames
    fill = (0, segments * segment_frames - frames)
    sums = F.pad(zero_padding(x, mask), fill).unflatten(-1, (segments, segment_frames)).sum(dim=-1)
    if mask is None:
        starts = torch.arange(segments, device=x.device) * segment_frames
        counts = (frames - starts).clamp(max=segment_frames)
    else:
        counts = F.pad(mask.to(x.dtype), fill).unflatten(-1, (segments, segment_frames)).sum(dim=-1).clamp(min=1)
    means = sums / counts
    # narrow, not [..., :frames]: torch.export cannot prove a slice's length, only check narrow's. (Nor a
    # gather by arange(frames) // segment_frames: Inductor's CPU code for that division is wrong in 2.11.)
    return means.repeat_interleave(segment_frames, dim=-1).narrow(-1, 0, frames)


class AttentiveStatsPooling(nn.Module):
    """Channel- and context-dependent attentive statistics pooling (ECAPA-TDNN): the attention sees each
    frame together with the utterance's global mean and standard deviation.

    The global standard deviation divides by the number of frames T (SpeechBrain, the paper) or, with
    `unbiased_context_std`, by T - 1 (TaoRuijie/ECAPA-TDNN's torch.var); both clamp the variance at 1e-4.
    The factor is only T / (T - 1), but it moves which near-constant channels sit below the clamp: at
    initialisation on real 2 s crops it changes the attention's first-layer gradient by up to 13%."""

    def __init__(self, channels: int, bottleneck: int = 128, unbiased_context_std: bool = False):
        super().__init__()
        self.unbiased_context_std = unbiased_context_std
        self.attention = nn.Sequential(
            nn.Conv1d(channels * 3, bottleneck, 1),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(bottleneck),
            nn.Tanh(),
            nn.Conv1d(bottleneck, channels, 1),
        )

    @staticmethod
    def _stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.sum(x * weights, dim=2)
        var = torch.sum(x * x * weights, dim=2) - mean * mean
        return mean, torch.sqrt(var.clamp(min=1e-4))

    def _context(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The global mean and standard deviation over time (over each utterance's own frames)."""
        if mask is None:
            if self.unbiased_context_std:
                if x.shape[2] == 1:  # no unbiased variance (0 / 0): take it as 0, which the clamp lifts, as for T
                    return x[:, :, 0], torch.full_like(x[:, :, 0], 1e-4).sqrt()
                var, mean = torch.var_mean(x, dim=2, correction=1)
                return mean, torch.sqrt(var.clamp(min=1e-4))
            return self._stats(x, torch.full_like(x[:, :1, :], 1.0 / x.shape[2]))
        frames = mask.sum(dim=2).to(x.dtype)  # [batch, 1]
        if self.unbiased_context_std:
            mean = masked_mean(x, mask)
            var = zero_padding(x - mean, mask).square().sum(dim=2) / (frames - 1).clamp(min=1)
            return mean.squeeze(2), torch.sqrt(var.clamp(min=1e-4))
        return self._stats(x, mask.to(x.dtype) / frames.unsqueeze(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, channels, frames]; `mask` [batch, 1, frames] (speakerid.models.lengths): each
        utterance pooled over its own frames only."""
        frames = x.shape[2]
        mean, std = self._context(x, mask)
        context = torch.cat(
            (x, mean.unsqueeze(2).expand(-1, -1, frames), std.unsqueeze(2).expand(-1, -1, frames)), dim=1
        )
        scores = self.attention(context)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=2)
        mean, std = self._stats(x, weights)
        return torch.cat((mean, std), dim=1)

    def extra_repr(self) -> str:
        return "unbiased_context_std=True" if self.unbiased_context_std else ""
