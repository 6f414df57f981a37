#!/usr/bin/env python
"""Time EER and minDCF (p_target 0.01 and 0.05) on a large random trial set (default 600,000 trials, about
Vox1-E's size): one call of speakerid.metrics.verification_metrics, which sorts the scores once.

    python scripts/benchmark_metrics.py [--trials 600000] [--repeats 5]
"""

import argparse
import os
import platform
import time

import numpy as np

from speakerid.metrics import compute_eer, compute_min_dcf, verification_metrics


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


if __name__ == "__main__":
    main()
