"""ResNet speaker encoder in WeSpeaker's speaker-verification form (wenet-e2e/wespeaker,
wespeaker/models/resnet.py; He et al., "Deep Residual Learning for Image Recognition", 2016).

The fbank [batch, in_dim, frames] is a 1-channel image [batch, 1, in_dim, frames]:

- stem: 3x3 convolution (stride 1) to base_width channels, BatchNorm, ReLU (no max-pooling);
- four stages of residual blocks with base_width x (1, 2, 4, 8) channels (x 4 for Bottleneck outputs);
  stages 2-4 start with stride 2 on both frequency and time, so frames shrink 8x and 80 bins become 10;
- temporal statistics pooling (TSTP) of the last stage flattened over channels x frequency;
- one Linear layer to emb_dim (WeSpeaker's two_emb_layer=False), no BatchNorm after it.

| depth | block      | blocks per stage | parameters at in_dim 80, width 32, 256-d (WeSpeaker VoxCeleb v2) |
|-------|------------|------------------|------------------------------------------------------------------|
| 34    | BasicBlock | 3, 4, 6, 3       | 6.63M                                                            |
| 221   | Bottleneck | 6, 16, 48, 3     | 23.79M                                                           |
| 293   | Bottleneck | 10, 20, 64, 3    | 28.62M                                                           |

The counts are WeSpeaker's "speaker_model size": the encoder with its embedding layer, without the
classification head (tests/test_encoders.py checks ours against them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakerid.models.checks import check_features, require_positive_int
from speakerid.models.lengths import frame_mask, run_masked
from speakerid.models.pooling import TemporalStatsPooling

Stride = int | tuple[int, int]


class _PointwiseConv2d(nn.Conv2d):
    """A strided 1x1 convolution computed as subsampling and then a stride-1 1x1 convolution (the same
    numbers): torch 2.11's CPU backward of a strided 1x1 convolution on channels-last tensors, the layout
    Inductor chooses, corrupts the heap when there are fewer than 8 input channels (the tiny models)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x[:, :, ::self.stride[0], ::self.stride[1]], self.weight, self.bias)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: Stride = 1) -> nn.Sequential:
    # No bias: the BatchNorm after it has one.
    conv = _PointwiseConv2d if kernel_size == 1 else nn.Conv2d
    return nn.Sequential(
        conv(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class _ResidualBlock(nn.Module):
    """body(x) + shortcut(x), then ReLU; the shortcut is a strided 1x1 convolution + BatchNorm whenever the
    shape changes, else the identity."""

    expansion = 1

    def __init__(self, body: nn.Module, in_channels: int, out_channels: int, stride: Stride):
        super().__init__()
        self.body = body
        changes_shape = stride not in (1, (1, 1)) or in_channels != out_channels
        self.shortcut = _conv_bn(in_channels, out_channels, 1, stride) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))

    def forward_masked(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """On a padded batch (speakerid.models.lengths.run_masked); the shortcut is pointwise in time."""
        body, lengths = run_masked(self.body, x, lengths)
        return F.relu(body + self.shortcut(x)), lengths


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (the first strided) with `channels` outputs. `stride` may be a (freq, time) pair:
    CAM++'s front-end strides frequency only."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: Stride = 1):
        body = nn.Sequential(
            _conv_bn(in_channels, channels, 3, stride), nn.ReLU(inplace=True), _conv_bn(channels, channels, 3)
        )
        super().__init__(body, in_channels, channels * self.expansion, stride)


class Bottleneck(_ResidualBlock):
    """1x1 reduce to `channels`, 3x3 (strided), 1x1 expand to 4 x `channels`."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: Stride = 1):
        body = nn.Sequential(
            _conv_bn(in_channels, channels, 1), nn.ReLU(inplace=True),
            _conv_bn(channels, channels, 3, stride), nn.ReLU(inplace=True),
            _conv_bn(channels, channels * self.expansion, 1),
        )
        super().__init__(body, in_channels, channels * self.expansion, stride)


def residual_stage(block: type[_ResidualBlock], in_channels: int, channels: int, num_blocks: int,
                   stride: Stride) -> nn.Sequential:
    """`num_blocks` blocks, the first with `stride` (and the channel change), the rest with stride 1."""
    blocks = [block(in_channels, channels, stride)]
    blocks += [block(channels * block.expansion, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def halved(size: int, times: int) -> int:
    """The size of an axis after `times` stride-2 convolutions with kernel 3 and padding 1 (n -> ceil(n / 2))."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


class ResNet(nn.Module):
    """WeSpeaker-style ResNet speaker encoder: features [batch, in_dim, frames] -> [batch, emb_dim].

    depth 34, 221 or 293 (see the module docstring for the blocks and published sizes); base_width is
    WeSpeaker's m_channels (32 in all its VoxCeleb recipes). Needs frames >= 9 (2 frames left after the
    8x downsampling, for the standard deviation).
    """

    ARCHITECTURES: dict[int, tuple[type[_ResidualBlock], tuple[int, int, int, int]]] = {
        34: (BasicBlock, (3, 4, 6, 3)),
        221: (Bottleneck, (6, 16, 48, 3)),
        293: (Bottleneck, (10, 20, 64, 3)),
    }
    DOWNSAMPLING_STAGES = 3

    def __init__(self, depth: int = 34, in_dim: int = 80, base_width: int = 32, emb_dim: int = 256):
        super().__init__()
        if isinstance(depth, bool) or depth not in self.ARCHITECTURES:
            raise ValueError(f"model.depth must be one of {sorted(self.ARCHITECTURES)}, got {depth!r}")
        self.depth = depth
        self.in_dim = require_positive_int("model.in_dim", in_dim)
        self.base_width = require_positive_int("model.base_width", base_width)
        self.emb_dim = require_positive_int("model.emb_dim", emb_dim)
        self.min_frames = 2 ** self.DOWNSAMPLING_STAGES + 1

        block, num_blocks = self.ARCHITECTURES[depth]
        self.stem = nn.Sequential(_conv_bn(1, base_width, 3), nn.ReLU(inplace=True))
        stages = []
        channels = base_width
        for i, n in enumerate(num_blocks):
            width = base_width * 2 ** i
            stages.append(residual_stage(block, channels, width, n, stride=1 if i == 0 else 2))
            channels = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.pooling = TemporalStatsPooling()
        pooled_dim = 2 * channels * halved(in_dim, self.DOWNSAMPLING_STAGES)
        self.embedding = nn.Linear(pooled_dim, emb_dim)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` [batch]: the frames of each utterance of a padded batch (speakerid.models.lengths); each
        then gets the embedding it has alone. None: every frame counts."""
        check_features(features, f"ResNet{self.depth}", self.in_dim, self.min_frames)
        if lengths is None:
            x = self.stages(self.stem(features.unsqueeze(1)))
            return self.embedding(self.pooling(x))
        if bool((lengths < self.min_frames).any()):
            raise ValueError(f"ResNet{self.depth} needs at least {self.min_frames} frames per utterance, got "
                             f"lengths {lengths.tolist()}")
        x, lengths = run_masked(nn.Sequential(self.stem, self.stages), features.unsqueeze(1), lengths)
        return self.embedding(self.pooling(x, frame_mask(lengths, x.shape[-1])))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, in_dim={self.in_dim}, base_width={self.base_width}, emb_dim={self.emb_dim}"
