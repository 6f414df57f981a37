#!/usr/bin/env python
"""Export a checkpoint's embedding extractor (fbank + model: 16 kHz waveform [batch, samples] -> embedding
[batch, dim], not normalised) to TorchScript and ONNX, then check both against the eager model.

    python scripts/export.py --checkpoint best.pt --out-dir exported/ [--check a.wav b.flac ...]

Writes exported/extractor.ts (torch.jit.load) and exported/extractor.onnx (onnxruntime; input `waveform`,
output `embedding`, both axes dynamic). The check embeds the given files (default: two seconds of noise and
a shorter batch of two) with all three and fails when any cosine distance exceeds --tolerance.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from speakerid.builders import extractor_from_checkpoint
from speakerid.checkpoint import load_checkpoint
from speakerid.data.audio import AudioError, read_full
from speakerid.export import OnnxExtractor, export_onnx, export_torchscript, load_torchscript


def parity(extractor, exported: dict, inputs: list[np.ndarray]) -> dict[str, float]:
    """Largest cosine distance between the eager embedding and each export's, over the inputs."""
    worst = {name: 0.0 for name in exported}
    for x in inputs:
        with torch.no_grad():
            eager = extractor(torch.from_numpy(x))
            for name, run in exported.items():
                other = torch.as_tensor(run(x) if name == "onnx" else run(torch.from_numpy(x)))
                distance = (1 - F.cosine_similarity(eager.double(), other.double(), dim=1)).max().item()
                worst[name] = max(worst[name], distance)
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--formats", nargs="+", choices=("torchscript", "onnx"), default=["torchscript", "onnx"])
    parser.add_argument("--check", nargs="*", type=Path, default=[], help="audio files for the parity check")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest cosine distance accepted")
    args = parser.parse_args(argv)

    try:
        checkpoint = load_checkpoint(args.checkpoint)
        extractor, cfg = extractor_from_checkpoint(checkpoint, source=str(args.checkpoint))
        extractor.eval()
        rate = cfg.data.sample_rate
        inputs = [read_full(p, rate)[None] for p in args.check]
    except (AudioError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not inputs:
        noise = np.random.default_rng(0).standard_normal(2 * rate + 77).astype(np.float32) * 0.1
        inputs = [noise[None], np.stack([noise[:rate], noise[-rate:]])]
    exported = {}
    if "torchscript" in args.formats:
        path = export_torchscript(extractor, args.out_dir / "extractor.ts", rate)
        exported["torchscript"] = load_torchscript(path)
        print(f"TorchScript: {path}")
    if "onnx" in args.formats:
        path = export_onnx(extractor, args.out_dir / "extractor.onnx", rate,
                           metadata={"embedding_dim": str(cfg.model.emb_dim), "checkpoint": str(args.checkpoint)})
        exported["onnx"] = OnnxExtractor(path)
        print(f"ONNX: {path}")
    worst = parity(extractor, exported, inputs)
    for name, distance in worst.items():
        print(f"{name}: largest cosine distance to the eager model {distance:.2e} over {len(inputs)} inputs")
    if any(d > args.tolerance for d in worst.values()):
        print(f"error: an export differs from the eager model by more than {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
