"""One place where metrics leave the trainer: TensorBoard scalars plus a JSON-lines history, and the
validation's pictures (a DET curve image, score histograms), which go to TensorBoard only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from torch.utils.tensorboard import SummaryWriter


class MetricLogger:
    """log({'train/loss': 1.2, ...}, step) writes each scalar to TensorBoard under its namespaced name
    and appends one line to metrics.jsonl, flushed at once so a killed run keeps what it logged."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard")) if enabled else None
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        """An RGB image [height, width, 3], uint8."""
        if self.enabled:
            self.writer.add_image(name, image, global_step=step, dataformats="HWC")

    def log_histogram(self, name: str, values: np.ndarray, step: int) -> None:
        if self.enabled and len(values):
            self.writer.add_histogram(name, np.asarray(values, dtype=np.float64), global_step=step)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self._jsonl.close()
