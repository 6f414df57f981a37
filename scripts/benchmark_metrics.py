#!/usr/bin/env python
"""Time EER and minDCF (p_target 0.01 and 0.05) on a large random trial set (default 600,000 trials, about
Vox1-E's size): one call of speakerid.metrics.verification_metrics, which sorts the scores once. With
--bootstrap N, also `speakerid calibrate`'s threshold with its speaker-bootstrap intervals (N resamples of
--speakers speakers, Vox1-E has 1251), for the EER and the FAR rules.

    python scripts/benchmark_metrics.py [--trials 600000] [--repeats 5] [--bootstrap 100 --speakers 1251]
"""

import argparse
import os
import platform
import time

import numpy as np

from speakerid.metrics import compute_eer, compute_min_dcf, verification_metrics
from speakerid.thresholds import choose_threshold


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=600_000)
    parser.add_argument("--targets", type=float, default=0.5, help="fraction of target trials")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=0, help="also time calibrate's threshold with this many "
                        "speaker resamples (0: not)")
    parser.add_argument("--speakers", type=int, default=1251, help="speakers of the trials, for --bootstrap")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = (rng.random(args.trials) < args.targets).astype(np.int64)
    scores = rng.normal(0.0, 0.1, args.trials) + 0.3 * labels  # float64, nearly all distinct
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.trials:,} trials ({labels.sum():,} targets), {platform.processor() or platform.machine()}, "
          f"{cpus} CPUs, numpy {np.__version__}; best of {args.repeats}")
    metrics = verification_metrics(scores, labels)
    t_all = best_of(args.repeats, lambda: verification_metrics(scores, labels))
    t_eer = best_of(args.repeats, lambda: compute_eer(scores, labels))
    t_dcf = best_of(args.repeats, lambda: compute_min_dcf(scores, labels, p_target=0.01))
    print(f"EER {100 * metrics['eer']:.3f}%, minDCF(0.01) {metrics['min_dcf_p0.01']:.4f}, "
          f"minDCF(0.05) {metrics['min_dcf_p0.05']:.4f}")
    print(f"verification_metrics (EER + both minDCF): {t_all * 1000:.0f} ms")
    print(f"compute_eer alone: {t_eer * 1000:.0f} ms; compute_min_dcf alone: {t_dcf * 1000:.0f} ms")
    if args.bootstrap:
        enrol_speaker = rng.integers(0, args.speakers, args.trials)
        test_speaker = np.where(labels == 1, enrol_speaker, (enrol_speaker + rng.integers(1, args.speakers,
                                                                                            args.trials)) % args.speakers)
        enrol = [f"id{s}/v/1.wav" for s in enrol_speaker]
        test = [f"id{s}/v/2.wav" for s in test_speaker]
        for kind, target in (("eer", None), ("far", 0.01)):
            start = time.perf_counter()
            choose_threshold(scores, labels, enrol, test, kind, target, n_bootstrap=args.bootstrap)
            print(f"calibrate's {kind} threshold with {args.bootstrap} resamples of {args.speakers} speakers: "
                  f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
