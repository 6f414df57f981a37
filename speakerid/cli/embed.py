"""Embed audio files with a trained model into one .npz: `keys` (each file's path, relative to the folder or
the list's root), `full` [n, dim] L2-normalised embeddings and, with --mode multicrop, `crops`
[n, num_crops, dim]. Read it with numpy alone: `d = np.load("emb.npz"); d["keys"], d["full"]`.

    speakerid embed --model best.pt --folder /data/meeting_audio --out meeting.npz
    speakerid embed --model model.pt --list files.txt --root /data/wav --out emb.npz
    speakerid embed --model best.pt --list train_list.txt --root /data/wav --out emb.npz --mode multicrop

A list holds one path per line, or `speaker path` lines (a train list), in UTF-8 (a byte-order mark is
accepted); paths are relative to --root (default: the list's folder) and may not be absolute or go up with
`..`. Every file is checked (exists, readable, mono, long enough) before any is embedded; files at another
sample rate than the model's are resampled. Embedded as evaluation embeds (batches of similar length).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from speakerid.augment import AUDIO_SUFFIXES, list_audio_files
from speakerid.cli import usage_error
from speakerid.cli.options import add_output_arguments
from speakerid.data.audio import AudioError
from speakerid.data.lists import ListFormatError, read_file_list
from speakerid.evaluation import ExtractionOptions, save_embeddings
from speakerid.io import check_new_file

HELP = "embed audio files (a folder or a list) into one .npz"


def files_in_folder(folder: Path) -> list[str]:
    """Every .wav and .flac file under `folder` (recursively, through linked folders, as prepare and finetune
    find them: macOS `._x.wav` stubs and other '.' names left out), relative to it, sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = sorted(str(p.relative_to(folder)) for p in list_audio_files(folder))
    if not files:
        raise FileNotFoundError(f"{folder} holds no {' or '.join(AUDIO_SUFFIXES)} files")
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--checkpoint", dest="model", required=True,
                        help="a checkpoint, an averaged checkpoint or a model file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="embed every .wav/.flac under this folder (recursively, "
                        "following linked folders; names starting with '.' are skipped)")
    source.add_argument("--list", type=Path, help="embed the files of this list")
    parser.add_argument("--root", type=Path, help="folder the list's paths start from (default: the list's folder)")
    add_output_arguments(parser, "the .npz to write", required=True)
    parser.add_argument("--mode", choices=("full", "multicrop"), default="full",
                        help="full utterance only, or also TaoRuijie's evenly spaced crops")
    parser.add_argument("--num-crops", type=int, help=f"with --mode multicrop: crops per file (default: "
                                                      f"{ExtractionOptions.num_crops})")
    parser.add_argument("--crop-frames", type=int, help=f"with --mode multicrop: frames per crop (default: "
                                                        f"{ExtractionOptions.crop_frames}, 3 s)")
    parser.add_argument("--max-trim", type=float, default=ExtractionOptions.max_trim,
                        help="largest fraction of a file cut to batch it with others of similar length (0: none)")
    parser.add_argument("--batch-size", type=int, default=ExtractionOptions.batch_size)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def run(args: argparse.Namespace) -> int:
    from speakerid.speaker_model import load

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.root is not None and args.list is None:
        print("error: --root goes with --list (a --folder is its own root)", file=sys.stderr)
        return 1
    # the crop options, which only --mode multicrop uses; given without it they would be silently ignored
    crops = {name: value for name, value in (("num_crops", args.num_crops), ("crop_frames", args.crop_frames))
             if value is not None}
    if crops and args.mode != "multicrop":
        named = ", ".join("--" + name.replace("_", "-") for name in crops)
        return usage_error(args.command, f"{named} {'applies' if len(crops) == 1 else 'apply'} only to --mode "
                                         f"multicrop: add it, or leave {'it' if len(crops) == 1 else 'them'} out")
    try:
        options = ExtractionOptions(mode=args.mode, max_trim=args.max_trim, batch_size=args.batch_size,
                                    **crops)  # checked before any work
        check_new_file(args.out, args.overwrite, what="--out")
        if args.folder is not None:
            root, files = args.folder, files_in_folder(args.folder)
        else:
            root, files = (args.root or args.list.parent), read_file_list(args.list)
        model = load(args.model, args.device)
        start = time.perf_counter()
        embeddings = model.embed_files(files, root, options, progress=True)
        seconds = time.perf_counter() - start
        # checked again as it is put in place: a file that appeared at --out while embedding is not replaced
        save_embeddings(args.out, embeddings, {"model_path": str(Path(args.model).resolve()),
                                               "model": model.loaded.sha256, "root": str(Path(root).resolve()),
                                               **options.cache_fields()}, overwrite=args.overwrite)
    except (ListFormatError, AudioError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(embeddings)} files embedded in {seconds:.1f} s ({len(embeddings) / seconds:.1f} utt/s on "
          f"{model.device}): {args.out}")
    return 0
