#!/usr/bin/env python
"""Write a degraded copy of a trial list's audio, to measure how a model holds up in noise and reverberation:
each file is reverberated (with probability --reverb-prob) by a room impulse response and mixed with one noise
file at an SNR drawn uniformly from --snr, with the definitions of training augmentation (README,
Augmentation). Draws come from --seed, one file after another in sorted order, so the copy is reproducible.

    python scripts/degrade_trials.py --trials T --root R --out DIR --musan-dir M --rir-dir D [--snr 0 10]
    # no MUSAN / RIRS_NOISES at hand: generated noise, music and RIRs (not the real sets)
    python scripts/degrade_trials.py --trials T --root R --out DIR --synthetic-banks /tmp/banks

It writes DIR/wav/<path> (16-bit, the files' own rate) for every file of the list and DIR/trials.txt,
then `speakerid evaluate --model M --trials DIR/trials.txt --root DIR/wav` evaluates on it. Test noise should not be
the noise a model was trained with: pass other files (or --categories) than training used.
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speakerid.augment import AugmentConfigError, fft_convolve, musan_categories, rir_files
from speakerid.data.audio import AudioError, read_full
from speakerid.data.lists import ListFormatError, check_files_exist, read_trials, trial_files
from speakerid.io import atomic_path, write_json_atomic


def degrade(speech: np.ndarray, noise: np.ndarray, snr_db: float, rir: np.ndarray | None,
            rng: np.random.Generator) -> np.ndarray:
    """Reverberate (unit-energy RIR, full convolution cut to the length), then add a noise segment (repeated
    when shorter, at a random offset when longer) scaled to snr_db against the reverberated speech."""
    x = speech.astype(np.float64)
    if rir is not None:
        h = torch.from_numpy(rir / np.sqrt(np.sum(rir.astype(np.float64) ** 2)))[None].float()
        x = fft_convolve(torch.from_numpy(x)[None].float(), h, len(x))[0].double().numpy()
    if len(noise) < len(x):
        segment = np.resize(noise, len(x))
    else:
        start = int(rng.integers(len(noise) - len(x) + 1))
        segment = noise[start:start + len(x)]
    segment = segment.astype(np.float64)
    speech_power = np.mean(x ** 2)
    scale = np.sqrt(speech_power / max(np.mean(segment ** 2), 1e-20) / 10 ** (snr_db / 10))
    return x + scale * segment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", required=True, help="trial list (`label enrol test` or `enrol test`)")
    parser.add_argument("--root", required=True, help="folder the trial paths are relative to")
    parser.add_argument("--out", required=True, help="output folder (gets wav/ and trials.txt)")
    parser.add_argument("--musan-dir", help="MUSAN as distributed (<dir>/<category>/<subset>/*.wav)")
    parser.add_argument("--rir-dir", help="RIR files, or RIRS_NOISES as distributed")
    parser.add_argument("--synthetic-banks", help="generate noise, music and RIRs here instead (speakerid's "
                        "synthetic stand-ins) and use them")
    parser.add_argument("--categories", nargs="+", default=["noise", "music"],
                        help="MUSAN categories to draw the noise from (default noise music; those absent are "
                             "skipped)")
    parser.add_argument("--snr", nargs=2, type=float, default=[0.0, 10.0], metavar=("LO", "HI"))
    parser.add_argument("--reverb-prob", type=float, default=0.5)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not all(math.isfinite(x) for x in args.snr) or args.snr[0] > args.snr[1]:
        parser.error(f"--snr takes two finite numbers LO <= HI (dB), got {args.snr[0]} {args.snr[1]}")
    out, root = Path(args.out), Path(args.root).resolve()
    wav = (out / "wav").resolve()
    if wav == root or root in wav.parents or wav in root.parents:
        parser.error(f"--out {out}: its wav/ folder ({wav}) overlaps --root {root}: the degraded copies would be "
                     f"written over or among the source audio; give a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not (out / "degrade.json").is_file():
        parser.error(f"--out {out} holds files this script did not write (no degrade.json): give a new or empty "
                     f"folder")

    try:
        if args.synthetic_banks:
            from speakerid.data.synthetic_noise import NoiseSpec, ensure_noise_corpus

            banks = Path(args.synthetic_banks)
            ensure_noise_corpus(banks, NoiseSpec(seed=7, noise_files=12, music_files=12, speech_files=2))
            args.musan_dir, args.rir_dir = banks / "musan", banks / "RIRS_NOISES"
        if not args.musan_dir:
            parser.error("give --musan-dir (and --rir-dir unless --reverb-prob 0), or --synthetic-banks")
        if not 0.0 <= args.reverb_prob <= 1.0:
            parser.error(f"--reverb-prob must be within [0, 1], got {args.reverb_prob}")
        categories = musan_categories(args.musan_dir)
        noise_files = [f for c in args.categories for f in categories.get(c, [])]
        if not noise_files:
            raise AugmentConfigError(f"{args.musan_dir} has none of the categories {args.categories} "
                                     f"(it has {sorted(categories)})")
        rirs = []
        if args.reverb_prob > 0:
            if not args.rir_dir:
                parser.error("--reverb-prob > 0 needs --rir-dir")
            rirs = [read_full(p, args.sample_rate, resample=True) for p in rir_files(args.rir_dir)]
        noises = [read_full(p, args.sample_rate, resample=True) for p in noise_files]

        trials = read_trials(args.trials)
        files = sorted(trial_files(trials))
        check_files_exist(args.root, files, what=f"trial list {args.trials}")
        rng = np.random.default_rng(args.seed)
        for rel in files:
            speech = read_full(Path(args.root) / rel, args.sample_rate)
            rir = rirs[rng.integers(len(rirs))] if rirs and rng.random() < args.reverb_prob else None
            noise = noises[rng.integers(len(noises))]
            y = degrade(speech, noise, float(rng.uniform(*args.snr)), rir, rng)
            y /= max(1.0, float(np.abs(y).max()) / 0.99)  # no clipping in 16-bit
            with atomic_path(out / "wav" / rel) as tmp:
                sf.write(str(tmp), y.astype(np.float32), args.sample_rate, subtype="PCM_16",
                         format=Path(rel).suffix.lstrip(".").upper() or "WAV")
        with atomic_path(out / "trials.txt") as tmp:
            shutil.copyfile(args.trials, tmp)
        write_json_atomic(out / "degrade.json", {
            "trials": str(Path(args.trials).resolve()), "root": str(Path(args.root).resolve()),
            "musan_dir": str(Path(args.musan_dir).resolve()), "categories": args.categories,
            "noise_files": len(noise_files), "rir_dir": str(Path(args.rir_dir).resolve()) if rirs else None,
            "rirs": len(rirs), "snr_db": args.snr, "reverb_prob": args.reverb_prob, "seed": args.seed,
            "files": len(files)})
    except (AugmentConfigError, AudioError, ListFormatError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(files)} degraded files and the trial list under {out}: evaluate with "
          f"--trials {out / 'trials.txt'} --root {out / 'wav'}")
    print(json.dumps({"snr_db": args.snr, "reverb_prob": args.reverb_prob, "noise_files": len(noise_files),
                      "rirs": len(rirs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
