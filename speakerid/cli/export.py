"""Export a trained model for deployment, then check the export against the model it came from.

    speakerid export --model best.pt --out model.pt                           # a model file (the default)
    speakerid export --model best.pt --out model.pt --calibration cal.json    # with calibration and threshold
    speakerid export --model best.pt --out model.pt --mean-from train_list.txt --root /data/wav
    speakerid export --model best.pt --out model.pt --mean-from best_eval/trials.cosine_meansub.mean.npz \
        --calibration cal.json       # the mean that evaluation subtracted, and a calibration of its scores
    speakerid export --model best.pt --format torchscript --out extractor.ts --check a.wav b.flac
    speakerid export --model model.pt --format onnx --out extractor.onnx

--format model writes a model file: the extractor's weights, its config, the sample rate and where it came
from, plus, when given, the calibration and threshold of a `speakerid calibrate` JSON
({"calibration": {...}, "threshold": {...}}) and the mean embedding of a list's files, or the one an evaluation
subtracted (its .mean.npz), subtracted before cosine scoring; `speakerid.load` and every command's --model read
it, `torch.load(weights_only=True)` too. A calibration holds only for the scores it was fitted on: one fitted with
another mean (or none) is refused, and the calibration and threshold of a --model file are dropped, with a
warning, when --mean-from changes its mean.
--format torchscript (torch.jit.load) and onnx (onnxruntime; needs `pip install "speakerid[onnx]"`) write
the extractor alone: waveform [batch, samples] float32 at the model's rate -> embedding [batch, dim], not
normalised (score by cosine), both axes dynamic (ONNX input `waveform`, output `embedding`).

The check embeds the --check files (default: two seconds of noise, and a shorter batch of two) with the
export and with the model, and fails when any cosine distance exceeds --tolerance. An existing --out is
replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from speakerid.cli.options import add_output_arguments
from speakerid.data.audio import AudioError

HELP = "write a model file (or TorchScript / ONNX) for deployment, and check it against the model"

FORMATS = ("model", "torchscript", "onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--checkpoint", dest="model", required=True,
                        help="a checkpoint, an averaged checkpoint or a model file")
    add_output_arguments(parser, "the file to write", required=True)
    parser.add_argument("--format", choices=FORMATS, default="model", help="what to write (default: model)")
    parser.add_argument("--calibration", type=Path,
                        help="a `speakerid calibrate` JSON: its calibration and threshold go into the model file")
    parser.add_argument("--mean-from", type=Path, dest="mean_from",
                        help="a list (`path` or `speaker path` lines) whose files' mean embedding goes into the "
                             "model file, to be subtracted before scoring; or the .mean.npz of an evaluation")
    parser.add_argument("--root", type=Path,
                        help="folder the --mean-from list's paths start from (default: the list's folder)")
    parser.add_argument("--check", nargs="*", type=Path, default=[], help="audio files for the parity check")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest cosine distance accepted")
    parser.add_argument("--device", default="auto", help="for --mean-from: auto, cpu or cuda[:N]")


def run(args: argparse.Namespace) -> int:
    import torch

    from speakerid.data.audio import read_full
    from speakerid.data.lists import ListFormatError, read_file_list
    from speakerid.evaluation.store import read_mean_file
    from speakerid.io import atomic_path, check_new_file
    from speakerid.speaker_model import load

    try:
        if args.format != "model" and (args.calibration or args.mean_from):
            raise ValueError("--calibration and --mean-from are stored in a model file only (--format model)")
        if args.root is not None and args.mean_from is None:
            raise ValueError("--root goes with --mean-from")
        check_new_file(args.out, args.overwrite, what="--out")
        model = load(args.model, args.device if args.mean_from else "cpu")
        if args.calibration is not None:  # replaces the model file's own, which no longer matter
            model.calibration = model.threshold = None
        if args.mean_from is not None and args.mean_from.name.endswith(".mean.npz"):
            if args.root is not None:
                raise ValueError(f"--root goes with a list; {args.mean_from} is a mean embedding")
            model.embedding_mean = read_mean_file(args.mean_from)
            print(f"mean embedding of {args.mean_from}")
        elif args.mean_from is not None:
            files = read_file_list(args.mean_from)
            embeddings = model.embed_files(files, args.root or args.mean_from.parent, progress=True)
            model.embedding_mean = embeddings.mean()
            print(f"mean embedding of {len(embeddings)} files of {args.mean_from}")
        if args.calibration is not None:  # after the mean: it must fit the scores the model file will give
            model.load_calibration(args.calibration)
        rate = model.sample_rate
        inputs = [read_full(p, rate, resample=True)[None] for p in args.check]
    except (AudioError, ListFormatError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not inputs:
        noise = np.random.default_rng(0).standard_normal(2 * rate + 77).astype(np.float32) * 0.1
        inputs = [noise[None], np.stack([noise[:rate], noise[-rate:]])]
    dropped = [what for what, value in (("a mean embedding", model.embedding_mean), ("a calibration",
               model.calibration), ("a threshold", model.threshold)) if value is not None]
    if args.format != "model" and dropped:
        print(f"warning: {args.model} holds {', '.join(dropped)}, which the {args.format} export does not carry: "
              f"its cosine scores are not the model file's scores, and the model file's threshold and calibration "
              f"do not apply to them", file=sys.stderr)

    extractor = model.to("cpu").extractor  # the exporters trace on the CPU
    try:
        # Written beside --out and put in place only when it passes the check: a failed export leaves nothing
        # behind, and an existing --out (with --overwrite) stays as it was.
        with atomic_path(args.out, overwrite=args.overwrite) as tmp:
            exported = write(model, args.format, tmp, args.model)
            worst = 0.0
            with torch.no_grad():
                for x in inputs:
                    eager = extractor(torch.from_numpy(x)).double()
                    other = torch.as_tensor(np.asarray(exported(x))).double()
                    worst = max(worst, (1 - torch.nn.functional.cosine_similarity(eager, other, dim=1)).max().item())
            print(f"{args.format}: largest cosine distance to the model {worst:.2e} over {len(inputs)} inputs")
            if not worst <= args.tolerance:
                raise RuntimeError(f"the export differs from the model by more than {args.tolerance}; {args.out} is "
                                   f"not written")
    except ImportError as e:
        print(f"error: {e} (the ONNX export needs pip install \"speakerid[onnx]\")", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.format}: {args.out}")
    return 0


def write(model, format: str, path: Path, source: str) -> Callable[[np.ndarray], np.ndarray]:
    """Write `path` in `format`; return the export, read back, as waveform [batch, samples] -> embedding."""
    import torch

    from speakerid.export import OnnxExtractor, export_onnx, export_torchscript, load_torchscript
    from speakerid.model_file import load_extractor

    if format == "model":
        model.save(path, overwrite=True)  # `path` is the temporary file run() made for it
        extractor = load_extractor(path).extractor
        return lambda x: extractor(torch.from_numpy(x))
    if format == "torchscript":
        scripted = load_torchscript(export_torchscript(model.extractor, path, model.sample_rate))
        return lambda x: scripted(torch.from_numpy(x))
    path = export_onnx(model.extractor, path, model.sample_rate,
                       metadata={"embedding_dim": str(model.embedding_dim), "source": str(source)})
    return OnnxExtractor(path)
