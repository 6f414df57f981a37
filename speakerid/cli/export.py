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
subtracted (its .mean.npz; one computed with another model is refused, a model file and the checkpoint it was
exported from being one model), subtracted before cosine scoring; `speakerid.load` and every command's --model
read it, `torch.load(weights_only=True)` too. A calibration holds only for the scores it was fitted on: one
fitted with another mean (or none) is refused, and the calibration and threshold of a --model file are
dropped, with a warning, when --mean-from changes its mean.
--format torchscript (torch.jit.load) and onnx (onnxruntime; needs `pip install "speakerid[onnx]"`) write
the extractor alone: waveform [batch, samples] float32 at the model's rate -> embedding [batch, dim], not
normalised (score by cosine), both axes dynamic (ONNX input `waveform`, output `embedding`).

The check embeds the --check files (default: two seconds of noise, and a shorter batch of two) with the
export and with the model, and fails when any cosine distance exceeds --tolerance or an embedding of either is
not finite (NaN or inf). An existing --out is replaced only with --overwrite.
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
    from speakerid.evaluation.store import load_mean_file
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
            mean, meta = load_mean_file(args.mean_from)
            check_mean_model(args.mean_from, meta, model, args.model)
            model.embedding_mean = mean
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
            exported = write(model, args.format, tmp, args.model, args.out)
            worst = 0.0
            with torch.no_grad():
                for i, x in enumerate(inputs):
                    eager = extractor(torch.from_numpy(x)).double()
                    other = torch.as_tensor(np.asarray(exported(x))).double()
                    check_finite(eager, other, args.check[i] if args.check else f"input {i + 1} (noise)", args)
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


def check_mean_model(path: Path, meta: dict, model, model_path: str) -> None:
    """Refuse (ValueError) an evaluation's .mean.npz computed with another model than `model`: its scores would be
    centred on another model's mean embedding. A model file and the checkpoint it was
    exported from are one model, as for calibrations and --threshold-from
    (model_file.evaluated_model_identities, told by the evaluation JSON evaluate wrote beside the mean file);
    a file that does not record its model is taken with a warning."""
    from speakerid.io import read_json
    from speakerid.model_file import evaluated_model_identities

    recorded = meta.get("model")
    if not isinstance(recorded, str):
        print(f"warning: {path} does not record which model computed it (not written by speakerid evaluate, or by "
              f"an older one): it holds only if it is a mean of embeddings of {model_path}", file=sys.stderr)
        return
    report = {"checkpoint_sha256": recorded}
    if "provenance_sha256" in meta:  # evaluate records the checkpoint a model file was exported from
        report["provenance_sha256"] = meta["provenance_sha256"]
    evaluation = path.with_name(path.name.removesuffix(".mean.npz") + ".json")  # evaluate's <name>.<scoring>.json
    try:
        found = read_json(evaluation, "evaluation JSON") if evaluation.is_file() else None
    except (OSError, ValueError):
        found = None
    if isinstance(found, dict) and found.get("checkpoint_sha256") == recorded:
        report = found
    known = model.loaded.identities
    if not evaluated_model_identities(report, known) & known:
        raise ValueError(f"{path} is the mean embedding of another model (SHA-256 {recorded[:12]}"
                         f"{', ' + str(report['checkpoint']) if report.get('checkpoint') else ''}) than {model_path} "
                         f"(SHA-256 {model.loaded.sha256[:12]}): its scores would be centred on another model's "
                         f"mean; give the .mean.npz of an evaluation of {model_path} (or of a model file exported "
                         f"from it, with its evaluation JSON beside it), or a list of files to average")


def check_finite(eager, exported, what: object, args: argparse.Namespace) -> None:
    """A RuntimeError when the model's or the export's embeddings of input `what` are not finite: their cosine
    distance is NaN, which no tolerance check catches (max(0.0, nan) is 0.0)."""
    import torch

    for name, found in (("the model", eager), (f"the {args.format} export", exported)):
        if not bool(torch.isfinite(found).all()):
            raise RuntimeError(f"{name} gives non-finite embeddings (NaN or inf) of {what}" + (
                f": {args.model} holds non-finite weights or statistics" if name == "the model" else "") +
                f"; {args.out} is not written")


def write(model, format: str, path: Path, source: str, out: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Write `path` in `format` (the temporary file run() made for `out`); return the export, read back, as
    waveform [batch, samples] -> embedding."""
    import torch

    from speakerid.export import OnnxExtractor, export_onnx, export_torchscript, load_torchscript
    from speakerid.model_file import ModelFileError, load_extractor

    if format == "model":
        try:
            model.save(path, overwrite=True)
            extractor = load_extractor(path).extractor
        except ModelFileError as e:  # named after the hidden temporary file, which the user never sees
            raise ModelFileError(str(e).replace(str(path), f"{out} (the model file of {source})")) from None
        return lambda x: extractor(torch.from_numpy(x))
    if format == "torchscript":
        scripted = load_torchscript(export_torchscript(model.extractor, path, model.sample_rate))
        return lambda x: scripted(torch.from_numpy(x))
    path = export_onnx(model.extractor, path, model.sample_rate,
                       metadata={"embedding_dim": str(model.embedding_dim), "source": str(source)})
    return OnnxExtractor(path)
