"""Score calibration: scores -> log-likelihood ratios.

`Calibration` is the linear map llr = slope * score + offset (natural log), fitted by logistic regression
on the scores of a labelled trial list (the NIST SRE tradition). It is stored in a model file as the plain
dict of `to_dict()`, so the file stays loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    slope: float
    offset: float

    def llr(self, scores) -> np.ndarray:
        """Natural-log likelihood ratios of `scores` (any shape)."""
        return self.slope * np.asarray(scores, dtype=np.float64) + self.offset

    def to_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        missing = {"slope", "offset"} - set(data)
        if missing:
            raise ValueError(f"calibration lacks {', '.join(sorted(missing))}")
        return cls(slope=float(data["slope"]), offset=float(data["offset"]))
