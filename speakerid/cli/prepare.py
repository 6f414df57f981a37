"""Write a train list (`speaker relative/path` lines) from a folder laid out as
speaker/session/utterance.{wav,flac} (VoxCeleb), from a Kaldi data directory (wav.scp + utt2spk), or from
VoxCeleb2's m4a files, which it first converts to 16 kHz mono wav or flac with ffmpeg (in parallel,
resumable: run it again after an interruption and finished files are skipped; files ffmpeg cannot decode
are listed and the command exits 1 without writing the list).

    speakerid prepare --root /data/voxceleb2/dev/wav --out /data/voxceleb2/train_list.txt
    speakerid prepare --root /data/voxceleb2/dev/aac --convert-to /data/voxceleb2/dev/wav \\
        --out /data/voxceleb2/train_list.txt [--format flac] [--workers 32]
    speakerid prepare --kaldi data/train --out lists/train.txt [--root /data/audio]
    speakerid prepare --list train.txt --root /data/wav --out train_3s.txt --segment-seconds 3
    speakerid prepare --real-rirs /data/RIRS_NOISES --out /data/real_rirs_mono

It prints the data.train_list and data.train_root to train with. With --kaldi the paths of wav.scp are
written relative to --root (default: the deepest folder holding them all). flac is lossless and smaller
than wav; wav decodes with less CPU per crop. --segment-seconds S lists each utterance once per whole S
seconds of it (at least once), as 3D-Speaker's recipes do (S = 3), from any of these sources or an existing
list (--list); the list's first line, a comment, says so, and training and check-data then take the
repeated lines as intended. --real-rirs writes 3D-Speaker's RIRs (the real ones of RIRS_NOISES'
real_rirs_isotropic_noises/rir_list, first channel) as mono files into the folder --out, for
augment.rir_dir of augment=campplus.

Endings match in any case (--ext WAV), linked folders are followed, and names starting with '.' (macOS
`._x.wav` stubs) are skipped. File and folder names with whitespace, a speaker starting with '#' or a name
that is not UTF-8 stop the command, each named: a list line cannot hold them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from speakerid.cli import usage_error
from speakerid.cli.options import add_output_arguments
from speakerid.cli.overrides import hydra_override, join
from speakerid.data.audio import AudioError
from speakerid.data.lists import ListFormatError, read_train_list
from speakerid.data.prepare import (
    AUDIO_EXTENSIONS,
    ConversionReport,
    FFmpegNotFoundError,
    check_listable,
    convert_tree,
    listed_segment_seconds,
    read_kaldi_data_dir,
    relative_entries,
    rows_per_segment,
    scan_voxceleb_folder,
    write_real_rirs,
    write_train_list,
)
from speakerid.io import check_new_file

# The conversion options, which only --convert-to uses; given without it they would be silently ignored.
CONVERSION_DEFAULTS = {"format": "wav", "workers": None, "sample_rate": 16000, "ffmpeg": None, "source_ext": ".m4a"}

HELP = "write a train list from a VoxCeleb-style folder or a Kaldi data directory (converting m4a first)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", help="folder holding speaker/session/utterance files (with --convert-to: the "
                                       "m4a files); with --kaldi, the folder the list's paths are relative to")
    add_output_arguments(parser, "train list to write (with --real-rirs: the folder to write into)", required=True)
    parser.add_argument("--ext", nargs="+", default=list(AUDIO_EXTENSIONS),
                        help="audio file endings to list (in any case)")
    parser.add_argument("--list", help="an existing train list (paths relative to --root), for --segment-seconds")
    parser.add_argument("--segment-seconds", type=float,
                        help="one row per whole this many seconds of each utterance, at least one (3D-Speaker: 3)")
    kaldi = parser.add_argument_group("Kaldi data directory")
    kaldi.add_argument("--kaldi", help="Kaldi data directory with wav.scp and utt2spk")
    kaldi.add_argument("--kaldi-base", help="folder that relative wav.scp paths start from (default: the "
                                            "current directory, as in Kaldi)")
    convert = parser.add_argument_group("conversion of VoxCeleb2's m4a files")
    convert.add_argument("--convert-to", type=Path, help="convert the m4a files under --root into this folder "
                                                         "(same layout), then list it")
    convert.add_argument("--format", choices=["wav", "flac"], default=CONVERSION_DEFAULTS["format"])
    convert.add_argument("--workers", type=int, default=CONVERSION_DEFAULTS["workers"],
                         help="parallel ffmpeg processes (default: CPUs)")
    convert.add_argument("--sample-rate", type=int, default=CONVERSION_DEFAULTS["sample_rate"])
    convert.add_argument("--ffmpeg", default=CONVERSION_DEFAULTS["ffmpeg"],
                         help="path of the ffmpeg executable (default: from PATH)")
    convert.add_argument("--source-ext", default=CONVERSION_DEFAULTS["source_ext"])
    parser.add_argument("--real-rirs", type=Path, metavar="RIRS_NOISES",
                        help="write 3D-Speaker's RIRs from this RIRS_NOISES folder into the folder --out instead")


def run(args: argparse.Namespace) -> int:
    unused = [f"--{name.replace('_', '-')}" for name, default in CONVERSION_DEFAULTS.items()
              if getattr(args, name) != default]
    if unused and not args.convert_to:
        return usage_error(args.command, f"{', '.join(unused)} only apply to the conversion of m4a files: they "
                                         f"need --convert-to; leave them out otherwise")
    if args.real_rirs:
        if args.root or args.kaldi or args.list or args.convert_to or args.segment_seconds is not None:
            return usage_error(args.command, "--real-rirs takes only --out (the folder to write into)")
        try:
            written = write_real_rirs(args.real_rirs, args.out)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{args.out}: {written} mono RIRs; train with {join(hydra_override('augment.rir_dir', str(args.out)))}")
        return 0
    if not args.kaldi and not args.root:
        return usage_error(args.command, "give --root (a VoxCeleb-style folder) or --kaldi (a Kaldi data "
                                         "directory)")
    if args.list and (args.kaldi or args.convert_to or not args.root):
        return usage_error(args.command, "--list takes --root (the folder its paths are relative to), and "
                                         "neither --kaldi nor --convert-to")
    if args.segment_seconds is not None and not args.segment_seconds > 0:
        return usage_error(args.command, f"--segment-seconds must be positive, got {args.segment_seconds:g}")
    if args.kaldi and args.convert_to:
        return usage_error(args.command, "--convert-to converts the m4a files under --root; it does not take "
                                         "--kaldi")
    segment_seconds = args.segment_seconds
    try:
        check_new_file(args.out, args.overwrite, what="--out")  # before any conversion: never a user's list
        if args.list:
            listed = read_train_list(args.list, args.root)
            if listed.segmented and args.segment_seconds is not None:
                raise ValueError(f"{args.list} already lists each utterance once per segment (written by "
                                 f"--segment-seconds); give the list it was made from")
            root, entries = args.root, list(zip(listed.speakers, listed.paths))
            if listed.segmented:  # copied with its header, so that its repeated lines stay intended
                segment_seconds = listed_segment_seconds(args.list)
        elif args.kaldi:
            root, entries = relative_entries(read_kaldi_data_dir(args.kaldi, args.kaldi_base), args.root)
            check_listable(entries, args.kaldi)
        else:
            root, extensions = args.root, tuple(e if e.startswith(".") else f".{e}" for e in args.ext)
            if args.convert_to:
                if convert(args).failed:
                    return 1
                root, extensions = args.convert_to, (f".{args.format}",)
            entries = scan_voxceleb_folder(root, extensions)
        utterances = len({path for _, path in entries})  # a segmented list names each once per segment
        if args.segment_seconds is not None:
            entries = rows_per_segment(entries, root, args.segment_seconds)
        write_train_list(entries, args.out, segment_seconds)
    except (ValueError, OSError, FFmpegNotFoundError, ListFormatError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    per_speaker = Counter(s for s, _ in entries)
    rows = "" if segment_seconds is None else f"{len(entries)} rows (one per {segment_seconds:g} s) of "
    print(f"{args.out}: {rows}{utterances} utterances of {len(per_speaker)} speakers "
          f"({min(per_speaker.values())}-{max(per_speaker.values())} {'rows' if rows else 'utterances'} per speaker)")
    # words for a shell, each read back by Hydra as the exact path (',' '=' or a space in it included)
    print("train with: " + join(hydra_override("data.train_list", str(args.out)),
                                hydra_override("data.train_root", str(root))))
    return 0


def convert(args: argparse.Namespace) -> ConversionReport:
    """The m4a files under --root as --format files under --convert-to; prints progress and what failed."""
    start = time.perf_counter()
    last = [0.0]

    def progress(report: ConversionReport, total: int) -> None:
        done = report.converted + len(report.failed)
        now = time.perf_counter()
        if now - last[0] > 10 or done == total:
            last[0] = now
            print(f"{done}/{total} converted ({len(report.failed)} failed), {done / (now - start):.0f} files/s",
                  flush=True)

    report = convert_tree(args.root, args.convert_to, args.format, args.workers, args.ffmpeg, args.sample_rate,
                          args.source_ext, progress=progress)
    print(f"{args.convert_to}: {report.converted} converted, {report.skipped} already there, "
          f"{len(report.failed)} failed in {time.perf_counter() - start:.0f} s")
    if report.failed:
        for source, error in report.failed[:10]:
            print(f"failed: {source}: {error}", file=sys.stderr)
        print("the train list was not written: run the same command again to retry the failed files",
              file=sys.stderr)
    return report

