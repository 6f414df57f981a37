"""TorchScript and ONNX exports of the embedding extractor give the eager model's embeddings (cosine
distance < 1e-4) on real audio, at lengths and batch sizes other than those used to export."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ARSC_DIR, small_extractor
from speakerid.data.audio import read_full
from speakerid.export import OnnxExtractor, export_onnx, export_torchscript, load_torchscript


@pytest.fixture(scope="module", params=[False, True], ids=["paper", "unbiased_context_std"])
def extractor(request):
    return small_extractor(channels=64, emb_dim=48, unbiased_context_std=request.param)


@pytest.fixture(scope="module")
def speech(tiny_corpus_dir):
    """Three real recordings (arsc) when the corpus is there, else synthetic-corpus files."""
    if (ARSC_DIR / "trials.txt").is_file():
        root, lines = ARSC_DIR / "wav", (ARSC_DIR / "trials.txt").read_text().splitlines()
    else:
        root, lines = tiny_corpus_dir / "wav", (tiny_corpus_dir / "trials.txt").read_text().splitlines()
    paths = list(dict.fromkeys(p for line in lines for p in line.split()[1:]))[:3]
    return [read_full(root / p) for p in paths]


def inputs(speech):
    a, b, c = speech
    n = min(len(b), len(c)) * 2 // 3
    # whole files of their own lengths, a batch of two at a third length, and a short 0.3 s piece
    return [a[None], b[None], np.stack([b[:n], c[:n]]), c[None, :4800]]


def cosine_distance(x, y) -> float:
    return (1 - F.cosine_similarity(torch.as_tensor(x).double(), torch.as_tensor(y).double(), dim=1)).max().item()


def test_torchscript_matches_eager(extractor, speech, tmp_path):
    path = export_torchscript(extractor, tmp_path / "extractor.ts")
    scripted = load_torchscript(path)
    for x in inputs(speech):
        with torch.no_grad():
            eager, exported = extractor(torch.from_numpy(x)), scripted(torch.from_numpy(x))
        assert exported.shape == (len(x), 48)
        assert cosine_distance(eager, exported) < 1e-4


def test_onnx_matches_eager(extractor, speech, tmp_path):
    import onnx

    path = export_onnx(extractor, tmp_path / "extractor.onnx", metadata={"embedding_dim": "48"})
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["sample_rate"] == "16000" and meta["embedding_dim"] == "48"
    session = OnnxExtractor(path)
    for x in inputs(speech):
        with torch.no_grad():
            eager = extractor(torch.from_numpy(x))
        exported = session(x)
        assert exported.shape == (len(x), 48)
        assert cosine_distance(eager, exported) < 1e-4
