#!/usr/bin/env python
"""Convert VoxCeleb2's m4a files to 16 kHz mono 16-bit wav or flac with ffmpeg, in parallel, keeping the
speaker/video/utterance layout. Resumable: run it again after an interruption and finished files are
skipped (each file is written under a temporary name and renamed when complete).

    python scripts/convert_voxceleb2.py --src /data/voxceleb2/dev/aac --dst /data/voxceleb2/dev/wav
    python scripts/convert_voxceleb2.py --src ... --dst ... --format flac --workers 32

flac is lossless and smaller than wav; wav decodes with less CPU per crop.
"""

import argparse
import sys
import time

from speakerid.data.prepare import FFmpegNotFoundError, convert_tree


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder with speaker/video/utterance.m4a")
    parser.add_argument("--dst", required=True, help="output folder (same layout)")
    parser.add_argument("--format", choices=["wav", "flac"], default="wav")
    parser.add_argument("--workers", type=int, default=None, help="parallel ffmpeg processes (default: CPUs)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--ffmpeg", default=None, help="path of the ffmpeg executable (default: from PATH)")
    parser.add_argument("--source-ext", default=".m4a")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    last = [0.0]

    def progress(report, total):
        done = report.converted + len(report.failed)
        now = time.perf_counter()
        if now - last[0] > 10 or done == total:
            last[0] = now
            print(f"{done}/{total} converted ({len(report.failed)} failed), {done / (now - start):.0f} files/s",
                  flush=True)

    try:
        report = convert_tree(args.src, args.dst, args.format, args.workers, args.ffmpeg, args.sample_rate,
                              args.source_ext, progress=progress)
    except (FFmpegNotFoundError, ValueError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {report.converted} converted, {report.skipped} already there, {len(report.failed)} failed "
          f"in {time.perf_counter() - start:.0f} s")
    if report.failed:
        for source, error in report.failed[:10]:
            print(f"failed: {source}: {error}", file=sys.stderr)
        print("run the same command again to retry the failed files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
