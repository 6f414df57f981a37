"""Utterances of different lengths in one padded batch: a frame mask, and the masked reductions over time
that make each utterance's result equal its own, unpadded one.

A padded batch gives each utterance the result it has alone when (1) every convolution wider than one
frame sees zeros past the utterance's end, as its own zero padding would give it, and (2) every mean,
variance and softmax over time runs over the utterance's frames only. Pointwise layers (1x1
convolutions, BatchNorm in eval mode, activations) leave the padded frames' values in the padded frames,
so they need nothing. Evaluation batches whole utterances this way (speakerid.evaluation.extraction)
instead of cutting them to a common length.
"""

from __future__ import annotations

import torch
from torch import nn


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """Bool [batch, 1, frames]: True at each utterance's own frames (the first lengths[i])."""
    return (torch.arange(frames, device=lengths.device) < lengths.unsqueeze(1)).unsqueeze(1)


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x [batch, channels, (freq,) frames] with the padded frames set to 0 (x itself when there is no mask)."""
    return x if mask is None else x.masked_fill(~mask, 0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of each utterance's own frames: [batch, channels, frames] -> [batch, channels, 1].
    Summed and divided in at least float32: under bf16 autocast a frame count such as 1001 has no bf16."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    total = zero_padding(x, mask).sum(dim=2, keepdim=True, dtype=dtype)
    return (total / mask.sum(dim=2, keepdim=True)).to(x.dtype)


def conv_lengths(lengths: torch.Tensor, conv: nn.Conv1d | nn.Conv2d) -> torch.Tensor:
    """Frames out of a convolution along its last (time) axis for `lengths` frames in."""
    kernel, stride = conv.kernel_size[-1], conv.stride[-1]
    padding, dilation = conv.padding[-1], conv.dilation[-1]
    return (lengths + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def time_mask(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """frame_mask for x [batch, channels, frames] or [batch, channels, freq, frames]."""
    mask = frame_mask(lengths, x.shape[-1])
    return mask.unsqueeze(1) if x.dim() == 4 else mask


def run_masked(layers: nn.Sequential, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`layers` on a padded batch x, with zeros past each utterance's end before every convolution wider than
    one frame in time (its own zero padding), and the frame counts after them. Nested Sequentials are
    walked; a module with `forward_masked(x, lengths) -> (x, lengths)` (a residual block, a layer that
    averages over time) does its own masking; anything else must be pointwise in time."""
    for layer in layers:
        if hasattr(layer, "forward_masked"):
            x, lengths = layer.forward_masked(x, lengths)
        elif isinstance(layer, nn.Sequential):
            x, lengths = run_masked(layer, x, lengths)
        else:
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                if layer.kernel_size[-1] > 1:
                    x = zero_padding(x, time_mask(lengths, x))
                lengths = conv_lengths(lengths, layer)
            x = layer(x)
    return x, lengths

