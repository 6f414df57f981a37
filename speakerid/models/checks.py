"""Argument and input checks shared by the encoders, so that a bad config key or a wrongly shaped batch
gets the same clear error from each model."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def require_positive_int(key: str, value: object) -> int:
    """`value` if it is an int >= 1 (not a bool); else a ValueError naming the config key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def require_positive_ints(key: str, values: object, length: int | None = None) -> tuple[int, ...]:
    """A list of positive ints (a YAML list arrives as a ListConfig) as a tuple; `length` if it must have one."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{key} must be a non-empty list of positive integers, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{key} must have {length} entries, got {len(values)}: {list(values)!r}")
    return tuple(require_positive_int(f"{key}[{i}]", v) for i, v in enumerate(values))


def check_features(features: torch.Tensor, model: str, in_dim: int, min_frames: int = 1) -> None:
    """Features must be [batch, in_dim, frames] with frames >= min_frames (shape only: no value is read,
    so this adds no graph break under torch.compile)."""
    if features.dim() != 3 or features.shape[1] != in_dim or features.shape[2] < min_frames:
        raise ValueError(
            f"{model} expects features [batch, {in_dim}, frames] with frames >= {min_frames}, "
            f"got {tuple(features.shape)}"
        )
