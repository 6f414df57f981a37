"""One place where metrics leave the trainer: TensorBoard scalars plus a JSON-lines history, and what goes to
TensorBoard only: the validation's pictures (a DET curve image, score histograms), the resolved config as
text and the hyperparameters with the final metrics (the HPARAMS tab)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries


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

    def log_text(self, name: str, text: str, step: int) -> None:
        """Preformatted text (TensorBoard's TEXT tab renders Markdown: indented lines are shown verbatim)."""
        if self.enabled:
            self.writer.add_text(name, "".join(f"    {line}\n" for line in text.splitlines()), global_step=step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """One row of TensorBoard's HPARAMS tab: the run's hyperparameters and its final metrics. The metrics
        are also written as scalars under their own tags, which is where that tab reads them."""
        if self.enabled:
            # Into this run's own event file: SummaryWriter.add_hparams would open a second writer (a sub-run).
            for summary in hparams_summaries(hparams, metrics):  # the experiment, session start, session end
                self.writer.file_writer.add_summary(summary, step)
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self._jsonl.close()


def flat_hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {'optim.lr': 0.001, 'model._target_': '...', ...}: numbers, booleans and strings
    as they are, lists and null as JSON text (TensorBoard's HPARAMS tab takes no other types)."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = json.dumps(node)

    visit("", OmegaConf.to_container(cfg, resolve=True))
    return flat
