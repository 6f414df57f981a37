#!/usr/bin/env python
"""Write a VoxCeleb2-style train list (`speaker relative/path`), from a folder laid out as
speaker/session/utterance.{wav,flac}, or from a Kaldi data directory (wav.scp + utt2spk).

    python scripts/prepare_list.py --root /data/voxceleb2/dev/wav --out /data/voxceleb2/train_list.txt
    python scripts/prepare_list.py --kaldi data/train --out lists/train.txt [--root /data/audio]

With --kaldi the paths of wav.scp are written relative to --root (default: the deepest folder holding
them all), and the command prints the data.train_root to train with.
"""

import argparse
import sys
from collections import Counter

from speakerid.data.prepare import (
    AUDIO_EXTENSIONS,
    read_kaldi_data_dir,
    relative_entries,
    scan_voxceleb_folder,
    write_train_list,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="folder holding speaker/session/utterance files; with --kaldi, the "
                                       "folder the list's paths are relative to")
    parser.add_argument("--kaldi", help="Kaldi data directory with wav.scp and utt2spk")
    parser.add_argument("--kaldi-base", help="folder that relative wav.scp paths start from (default: the "
                                             "current directory, as in Kaldi)")
    parser.add_argument("--out", required=True, help="train list to write")
    parser.add_argument("--ext", nargs="+", default=list(AUDIO_EXTENSIONS), help="audio file endings")
    args = parser.parse_args(argv)
    if not args.kaldi and not args.root:
        parser.error("give --root (a VoxCeleb-style folder) or --kaldi (a Kaldi data directory)")
    try:
        if args.kaldi:
            root, entries = relative_entries(read_kaldi_data_dir(args.kaldi, args.kaldi_base), args.root)
        else:
            root = args.root
            entries = scan_voxceleb_folder(args.root, tuple(e if e.startswith(".") else f".{e}" for e in args.ext))
    except (ValueError, NotADirectoryError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_train_list(entries, args.out)
    per_speaker = Counter(s for s, _ in entries)
    print(f"{args.out}: {len(entries)} utterances of {len(per_speaker)} speakers "
          f"({min(per_speaker.values())}-{max(per_speaker.values())} per speaker)")
    if args.kaldi:
        print(f"train with: data.train_list={args.out} data.train_root={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
