"""ECAPA-TDNN (Desplanques, Thienpondt, Demuynck, Interspeech 2020).

Layer sizes follow the paper: SE bottleneck 128 and attention bottleneck 128, which gives 6.2M / 14.7M
parameters for C = 512 / 1024 with a 192-d output. TaoRuijie's implementation differs in two places, both
options here (model=ecapa_tdnn_taoruijie sets them): a 256 attention bottleneck (attention_channels=256) and
the unbiased standard deviation in the attention's global context (unbiased_context_std=True). With those
two, its training step and ours give the same loss and embeddings from the same weights and batches
(scripts/taoruijie_parity.py).
"""

from __future__ import annotations

import torch
from torch import nn

from speakerid.models.checks import check_features
from speakerid.models.lengths import frame_mask, masked_mean, zero_padding
from speakerid.models.pooling import AttentiveStatsPooling


class ConvReluBN(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                      padding=dilation * (kernel_size - 1) // 2),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(out_channels),
        )


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool1d(1),
            nn.Conv1d(channels, bottleneck, 1),
            nn.ReLU(inplace=True),
            nn.Conv1d(bottleneck, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # The gate's average pooling of a one-frame mean is that mean.
        return x * self.gate(x if mask is None else masked_mean(x, mask))


class Res2Conv(nn.Module):
    """Res2Net dilated convolution: channels split into `scale` groups, each group's convolution also
    sees the previous group's output, and the last group passes through unchanged."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = 8):
        super().__init__()
        if channels % scale:
            raise ValueError(f"model.channels ({channels}) must be divisible by model.scale ({scale})")
        self.width = channels // scale
        self.blocks = nn.ModuleList(
            ConvReluBN(self.width, self.width, kernel_size, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        chunks = torch.split(x, self.width, dim=1)
        outputs = []
        previous = None
        for chunk, block in zip(chunks, self.blocks):
            previous = block(zero_padding(chunk if previous is None else chunk + previous, mask))
            outputs.append(previous)
        outputs.append(chunks[-1])
        return torch.cat(outputs, dim=1)


class SERes2Block(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = 8, se_bottleneck: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            ConvReluBN(channels, channels, 1),
            Res2Conv(channels, kernel_size, dilation, scale),
            ConvReluBN(channels, channels, 1),
            SqueezeExcitation(channels, se_bottleneck),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return x + self.body(x)
        reduce, res2, expand, se = self.body
        return x + se(expand(res2(reduce(x), mask)), mask)


class ECAPATDNN(nn.Module):
    """Speaker embedding extractor: features [batch, in_dim, frames] -> embeddings [batch, emb_dim]."""

    def __init__(
        self,
        in_dim: int = 80,
        channels: int = 1024,
        emb_dim: int = 256,
        mfa_channels: int = 1536,
        scale: int = 8,
        se_bottleneck: int = 128,
        attention_channels: int = 128,
        dilations: tuple[int, ...] = (2, 3, 4),
        unbiased_context_std: bool = False,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.emb_dim = emb_dim
        self.stem = ConvReluBN(in_dim, channels, kernel_size=5)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, 3, d, scale, se_bottleneck) for d in dilations
        )
        self.mfa = nn.Sequential(nn.Conv1d(channels * len(dilations), mfa_channels, 1), nn.ReLU(inplace=True))
        self.pooling = AttentiveStatsPooling(mfa_channels, attention_channels, unbiased_context_std)
        self.pool_bn = nn.BatchNorm1d(mfa_channels * 2)
        self.embedding = nn.Linear(mfa_channels * 2, emb_dim)
        self.emb_bn = nn.BatchNorm1d(emb_dim)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` [batch]: the frames of each utterance of a padded batch (speakerid.models.lengths);
        each then gets the embedding it has alone. None: every frame counts."""
        check_features(features, "ECAPATDNN", self.in_dim)
        mask = None if lengths is None else frame_mask(lengths, features.shape[2])
        x = self.stem(zero_padding(features, mask))
        block_outputs = []
        # Each block receives the sum of the stem and all earlier block outputs (dense residuals).
        residual_sum = x
        for block in self.blocks:
            x = block(residual_sum, mask)
            block_outputs.append(x)
            residual_sum = residual_sum + x
        x = self.mfa(torch.cat(block_outputs, dim=1))
        x = self.pool_bn(self.pooling(x, mask))
        return self.emb_bn(self.embedding(x))
