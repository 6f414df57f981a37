"""Export of the embedding extractor (fbank + model: waveform [batch, samples] -> embedding [batch, dim]) to
TorchScript and ONNX, for use without this package. Both take any batch size and any length. The
embedding is not normalised: score two of them by cosine similarity, as evaluation does.

TorchScript is traced (the model's Python control flow does not depend on the input's values, and the
traced graph keeps the time axis symbolic; the parity tests check other lengths and batch sizes); torch
2.11 marks torch.jit deprecated in favour of torch.export, and says so when it is used. ONNX
uses torch.export (torch.onnx.export with dynamo=True) with the batch and sample axes declared dynamic.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speakerid.io import atomic_path

ONNX_OPSET = 18


def _example(sample_rate: int) -> torch.Tensor:
    # Batch 2 and an odd length, so that neither axis is specialised to a constant during export.
    return torch.randn(2, 2 * sample_rate + 123, generator=torch.Generator().manual_seed(0))


def export_torchscript(extractor: nn.Module, path: str | os.PathLike, sample_rate: int = 16000) -> Path:
    path = Path(path)
    extractor = extractor.cpu().eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The model's input-shape check becomes a constant in the trace; the feature size is fixed, so that
        # is what we want (lengths and batch sizes stay symbolic: see the parity tests).
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean",
                                category=torch.jit.TracerWarning)
        traced = torch.jit.trace(extractor, _example(sample_rate))
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return path


def export_onnx(extractor: nn.Module, path: str | os.PathLike, sample_rate: int = 16000,
                metadata: dict[str, str] | None = None) -> Path:
    import onnx
    from torch.export import Dim

    path = Path(path)
    extractor = extractor.cpu().eval()
    with torch.no_grad():
        program = torch.onnx.export(
            extractor, (_example(sample_rate),), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
            input_names=["waveform"], output_names=["embedding"],
            dynamic_shapes={"waveform": {0: Dim("batch"), 1: Dim("samples", min=sample_rate // 10)}},
        )
    model = program.model_proto
    for key, value in {"sample_rate": str(sample_rate), "output": "speaker embedding, not normalised (cosine)",
                       **(metadata or {})}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def load_torchscript(path: str | os.PathLike) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path), map_location="cpu").eval()


class OnnxExtractor:
    """An exported .onnx run with onnxruntime: waveform [batch, samples] float32 -> embedding [batch, dim]."""

    def __init__(self, path: str | os.PathLike):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        return self.session.run(["embedding"], {"waveform": np.ascontiguousarray(waveform, dtype=np.float32)})[0]
