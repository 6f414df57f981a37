#!/usr/bin/env python
"""Write a VoxCeleb2-style train list by scanning a folder laid out as speaker/session/utterance.{wav,flac}.

    python scripts/prepare_list.py --root /data/voxceleb2/dev/wav --out /data/voxceleb2/train_list.txt
"""

import argparse
import sys
from collections import Counter

from speakerid.data.prepare import AUDIO_EXTENSIONS, scan_voxceleb_folder, write_train_list


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding speaker/session/utterance files")
    parser.add_argument("--out", required=True, help="train list to write")
    parser.add_argument("--ext", nargs="+", default=list(AUDIO_EXTENSIONS), help="audio file endings")
    args = parser.parse_args(argv)
    try:
        entries = scan_voxceleb_folder(args.root, tuple(e if e.startswith(".") else f".{e}" for e in args.ext))
    except (ValueError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_train_list(entries, args.out)
    per_speaker = Counter(s for s, _ in entries)
    print(f"{args.out}: {len(entries)} utterances of {len(per_speaker)} speakers "
          f"({min(per_speaker.values())}-{max(per_speaker.values())} per speaker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
