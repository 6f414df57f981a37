"""Valid ranges of the classification heads' margin and scale: the one place that states them.

The heads check their arguments (and every margin a schedule sets) with these functions; config validation is
meant to call the same ones, with the head class's `margin_range`, so the two cannot disagree.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class MarginRange:
    """Margins in [0, upper). The upper bound is where the target logit of an embedding lying exactly on its
    class centre stops being positive, i.e. no better than an orthogonal class (cosine 0)."""

    upper: float
    upper_text: str  # how the bound reads in an error message
    meaning: str     # what the margin is, for the error message


ANGULAR_MARGIN = MarginRange(math.pi / 2, "pi/2", "angular margin, radians")  # cos(0 + m) > 0
COSINE_MARGIN = MarginRange(1.0, "1", "cosine margin")                        # cos(0) - m > 0


def is_real(value: object) -> bool:
    """A real number that is not a bool (YAML `true` must not pass as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_margin(value: object, margin_range: MarginRange, key: str = "head.m") -> float:
    """`value` as a float, or ValueError naming `key` when it is outside `margin_range`."""
    if not (is_real(value) and 0.0 <= value < margin_range.upper):
        raise ValueError(f"{key} ({margin_range.meaning}) must be in [0, {margin_range.upper_text}), got {value!r}")
    return float(value)


def check_scale(value: object, key: str = "head.s") -> float:
    """`value` as a float, or ValueError naming `key` unless it is a finite logit scale > 0."""
    if not (is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{key} (logit scale) must be > 0, got {value!r}")
    return float(value)


def check_int(value: object, minimum: int, key: str) -> int:
    """`value`, or ValueError naming `key` unless it is an integer >= `minimum` (bools refused)."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)
