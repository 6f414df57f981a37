#!/usr/bin/env python
"""Embed audio files with a trained checkpoint into one .npz: `keys` (each file's path, relative to the
folder or list root), `full` [n, dim] L2-normalised embeddings and, with --mode multicrop, `crops`
[n, num_crops, dim]. Read it with numpy alone: `d = np.load("emb.npz"); d["keys"], d["full"]`.

    python scripts/embed.py --checkpoint best.pt --folder /data/meeting_audio --out meeting.npz
    python scripts/embed.py --checkpoint best.pt --list files.txt --root /data/wav --out emb.npz

A list holds one path per line, or `speaker path` lines (a train list); paths are relative to --root
(default: the list's folder) or absolute. A file that does not exist stops the run before any is read.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from speakerid.builders import extractor_from_checkpoint
from speakerid.checkpoint import load_checkpoint
from speakerid.data.audio import AudioError
from speakerid.data.lists import ListFormatError, MissingFilesError, check_files_exist
from speakerid.evaluation import ExtractionOptions, extract_embeddings, file_digest, save_embeddings
from speakerid.io import check_writable

AUDIO_SUFFIXES = (".wav", ".flac")


def files_in_folder(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder} holds no {' or '.join(AUDIO_SUFFIXES)} files")
    return files


def files_in_list(list_file: Path) -> list[str]:
    files = []
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{list_file}: list file does not exist") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise ListFormatError(f"{list_file}:{number}: expected 'path' or 'speaker path', got {len(fields)} fields")
        files.append(fields[-1])
    if not files:
        raise ListFormatError(f"{list_file}: the list has no entries")
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="embed every .wav/.flac under this folder (recursively)")
    source.add_argument("--list", type=Path, help="embed the files of this list")
    parser.add_argument("--root", type=Path, help="folder the list's relative paths start from (default: its folder)")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--mode", choices=("full", "multicrop"), default="full",
                        help="full utterance only, or also TaoRuijie's evenly spaced crops")
    parser.add_argument("--num-crops", type=int, default=5)
    parser.add_argument("--crop-frames", type=int, default=300)
    parser.add_argument("--max-trim", type=float, default=ExtractionOptions.max_trim,
                        help="largest fraction of a file cut to batch it with others of similar length (0: none)")
    parser.add_argument("--batch-size", type=int, default=ExtractionOptions.batch_size)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    try:
        check_writable(args.out, what="--out")
        if args.folder is not None:
            root, files = args.folder, files_in_folder(args.folder)
        else:
            root, files = (args.root or args.list.parent), files_in_list(args.list)
        check_files_exist(root, files, what=str(args.list or args.folder), show=10)
        checkpoint = load_checkpoint(args.checkpoint)
        extractor, cfg = extractor_from_checkpoint(checkpoint, source=str(args.checkpoint))
        extractor.to(device)
        options = ExtractionOptions(mode=args.mode, num_crops=args.num_crops, crop_frames=args.crop_frames,
                                    max_trim=args.max_trim, batch_size=args.batch_size)
        start = time.perf_counter()
        embeddings = extract_embeddings(extractor, root, files, device, options, cfg.data.sample_rate,
                                        cfg.data.resample, progress=True)
        seconds = time.perf_counter() - start
    except (ListFormatError, MissingFilesError, AudioError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    save_embeddings(args.out, embeddings, {"checkpoint": str(Path(args.checkpoint).resolve()),
                                           "model": file_digest(args.checkpoint), "root": str(Path(root).resolve()),
                                           **options.cache_fields()})
    print(f"{len(embeddings)} files embedded in {seconds:.1f} s ({len(embeddings) / seconds:.1f} utt/s on {device}): "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
