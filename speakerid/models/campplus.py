"""CAM++ speaker encoder (Wang et al., "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking", Interspeech 2023), as in 3D-Speaker (modelscope/3D-Speaker,
speakerlab/models/campplus/DTDNN.py and layers.py). Written from that description, not copied.

Structure, for features [batch, in_dim, frames]:

- FCM front-end (2-D): the fbank as a 1-channel image; 3x3 conv to fcm_channels, then two stages of two
  residual BasicBlocks and a final 3x3 conv + BatchNorm + ReLU, each of the three stride 2 on frequency
  only, so 80 bins become 10 and the time axis is kept; channels x frequency flatten to the 1-D channels
  (32 x 10 = 320).
- TDNN layer: kernel-5 convolution with stride 2 in time (frames halve) to init_channels, BatchNorm, ReLU.
- Three densely connected TDNN blocks (12, 24 and 16 layers; dilation 1, 2, 2). Each layer is
  BatchNorm-ReLU, 1x1 conv to bottleneck_scale x growth_rate, BatchNorm-ReLU, then a context-aware
  masking (CAM) layer: a kernel-3 dilated conv to growth_rate channels, multiplied by a sigmoid mask that a
  two-layer 1x1 network computes from the context = utterance mean + mean of the frame's 100-frame segment.
  Its output is concatenated to its input (the block grows by growth_rate per layer).
- After each block a transit layer: BatchNorm-ReLU and a 1x1 conv that halves the channels.
- BatchNorm-ReLU, temporal statistics pooling (mean and std over time), and the dense embedding layer:
  a bias-free Linear to emb_dim with a BatchNorm without affine parameters.

Size: 7.18M parameters at 3D-Speaker's VoxCeleb setting (egs/voxceleb/sv-cam++/conf/cam++.yaml:
embedding_size 512; WeSpeaker's CAM++ recipe also uses 512 and reports 7.18M). Our default emb_dim is
512 too, so the default is the published model; the project's other encoders default to 256-d.

Differences from 3D-Speaker: the statistics pooling is the shared TSTP (WeSpeaker's CAM++ uses it too),
i.e. std = sqrt(unbiased var + 1e-7) where 3D-Speaker has the unbiased std without eps; there is no
gradient-checkpointing option (3D-Speaker's memory_efficient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakerid.models.checks import check_features, require_positive_int, require_positive_ints
from speakerid.models.lengths import frame_mask, masked_mean, run_masked, zero_padding
from speakerid.models.pooling import TemporalStatsPooling, segment_means
from speakerid.models.resnet import BasicBlock, halved, residual_stage


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(channels), nn.ReLU(inplace=True))


class FrequencyConvModule(nn.Module):
    """FCM: a small 2-D ResNet that strides frequency only: [batch, in_dim, frames] ->
    [batch, channels * ceil(in_dim / 8), frames]."""

    FREQ_STRIDE = (2, 1)

    def __init__(self, in_dim: int, channels: int = 32, blocks_per_stage: int = 2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            residual_stage(BasicBlock, channels, channels, blocks_per_stage, self.FREQ_STRIDE),
            residual_stage(BasicBlock, channels, channels, blocks_per_stage, self.FREQ_STRIDE),
            nn.Conv2d(channels, channels, 3, stride=self.FREQ_STRIDE, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        )
        self.out_channels = channels * halved(in_dim, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features.unsqueeze(1)).flatten(start_dim=1, end_dim=2)

    def forward_masked(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = run_masked(self.body, features.unsqueeze(1), lengths)
        return x.flatten(start_dim=1, end_dim=2), lengths


class ContextAwareMasking(nn.Module):
    """CAM layer: a local dilated convolution whose output channels are gated by a mask predicted from the
    utterance-level and segment-level mean of the input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int,
                 reduction: int = 2, segment_frames: int = 100):
        super().__init__()
        self.local = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                               padding=(kernel_size - 1) // 2 * dilation, bias=False)
        self.mask = nn.Sequential(
            nn.Conv1d(in_channels, in_channels // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv1d(in_channels // reduction, out_channels, 1), nn.Sigmoid(),
        )
        self.segment_frames = segment_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(dim=-1, keepdim=True) + segment_means(x, self.segment_frames)
        return self.local(x) * self.mask(context)

    def forward_masked(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """On a padded batch: the means over each utterance's own frames, its padding zero for the conv."""
        mask = frame_mask(lengths, x.shape[-1])
        context = masked_mean(x, mask) + segment_means(x, self.segment_frames, mask)
        return self.local(zero_padding(x, mask)) * self.mask(context), lengths


class DenseTDNNLayer(nn.Module):
    """BN-ReLU, 1x1 bottleneck conv, BN-ReLU, CAM: in_channels -> growth_rate new channels."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck: int, kernel_size: int, dilation: int,
                 cam_reduction: int, segment_frames: int):
        super().__init__()
        self.layers = nn.Sequential(
            _bn_relu(in_channels),
            nn.Conv1d(in_channels, bottleneck, 1, bias=False),
            _bn_relu(bottleneck),
            ContextAwareMasking(bottleneck, growth_rate, kernel_size, dilation, cam_reduction, segment_frames),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.layers(x)), dim=1)

    def forward_masked(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new, lengths = run_masked(self.layers, x, lengths)
        return torch.cat((x, new), dim=1), lengths


class CAMPPlus(nn.Module):
    """CAM++ speaker encoder: features [batch, in_dim, frames] -> [batch, emb_dim] (see the module docstring).

    Defaults are 3D-Speaker's VoxCeleb model (7.18M parameters at emb_dim 512). Needs frames >= 3 (2 frames
    left after the stride-2 TDNN layer, for the standard deviation).
    """

    def __init__(
        self,
        in_dim: int = 80,
        emb_dim: int = 512,
        fcm_channels: int = 32,
        init_channels: int = 128,
        growth_rate: int = 32,
        bottleneck_scale: int = 4,
        block_layers: Sequence[int] = (12, 24, 16),
        block_dilations: Sequence[int] = (1, 2, 2),
        kernel_size: int = 3,
        cam_reduction: int = 2,
        segment_frames: int = 100,
    ):
        super().__init__()
        self.in_dim = require_positive_int("model.in_dim", in_dim)
        self.emb_dim = require_positive_int("model.emb_dim", emb_dim)
        for key, value in [("fcm_channels", fcm_channels), ("init_channels", init_channels),
                           ("growth_rate", growth_rate), ("bottleneck_scale", bottleneck_scale),
                           ("cam_reduction", cam_reduction), ("segment_frames", segment_frames)]:
            require_positive_int(f"model.{key}", value)
        if require_positive_int("model.kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"model.kernel_size must be odd (same-length padding), got {kernel_size}")
        bottleneck = bottleneck_scale * growth_rate
        if bottleneck < cam_reduction:
            raise ValueError(f"model.cam_reduction ({cam_reduction}) must not exceed the bottleneck width "
                             f"bottleneck_scale * growth_rate ({bottleneck})")
        block_layers = require_positive_ints("model.block_layers", block_layers)
        block_dilations = require_positive_ints("model.block_dilations", block_dilations, len(block_layers))
        self.min_frames = 3

        self.front_end = FrequencyConvModule(in_dim, fcm_channels)
        channels = init_channels
        layers: list[nn.Module] = [
            nn.Conv1d(self.front_end.out_channels, channels, 5, stride=2, padding=2, bias=False),
            _bn_relu(channels),
        ]
        for num_layers, dilation in zip(block_layers, block_dilations):
            for _ in range(num_layers):
                layers.append(DenseTDNNLayer(channels, growth_rate, bottleneck, kernel_size, dilation,
                                             cam_reduction, segment_frames))
                channels += growth_rate
            # Transit layer.
            layers += [_bn_relu(channels), nn.Conv1d(channels, channels // 2, 1, bias=False)]
            channels //= 2
        layers.append(_bn_relu(channels))
        self.tdnn = nn.Sequential(*layers)
        self.pooling = TemporalStatsPooling()
        self.embedding = nn.Linear(2 * channels, emb_dim, bias=False)
        self.emb_bn = nn.BatchNorm1d(emb_dim, affine=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # 3D-Speaker's initialisation: He-normal 1-D convolutions and the embedding layer, zero biases
        # (the 2-D front-end keeps PyTorch's default).
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` [batch]: the frames of each utterance of a padded batch (speakerid.models.lengths); each
        then gets the embedding it has alone. None: every frame counts."""
        check_features(features, "CAMPPlus", self.in_dim, self.min_frames)
        if lengths is None:
            x = self.tdnn(self.front_end(features))
            return self.emb_bn(self.embedding(self.pooling(x)))
        if bool((lengths < self.min_frames).any()):
            raise ValueError(f"CAMPPlus needs at least {self.min_frames} frames per utterance, got lengths "
                             f"{lengths.tolist()}")
        x, lengths = run_masked(nn.Sequential(self.front_end, self.tdnn), features, lengths)
        return self.emb_bn(self.embedding(self.pooling(x, frame_mask(lengths, x.shape[-1]))))
