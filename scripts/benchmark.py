#!/usr/bin/env python
"""Throughput of the training pipeline, in utterances/s, every stage in one run on one machine:

  (a) loading only          the run's DataLoader (workers read crops, collate, pin)
  (b) augmentation+features one batch on the device: speed / noise / reverberation (when on), fbank, SpecAugment
  (c) training step         one batch on the device: fbank, SpecAugment, model, AAM head, backward, optimizer
  (d) whole training loop   the run's loader and TrainingStep together, augmentation as configured; with
                            augmentation on, also the step with it on one batch in memory (the loop's gap
                            to (c) split into the augmentation's share and the loader's)
  peer                      (c) with SpeechBrain's ECAPA_TDNN (channels [C]*4 + [3C], 256-d) in place of our
                            model: the same fbank, head, optimizer, batch, crop, precision and step code
  (e) storage               (a) and (d) on a corpus of VoxCeleb2-like lengths (4-20 s, mean 7.8 s) as 16-bit
                            WAV and as FLAC, with the files in the page cache (warm) and evicted from it (cold)
  (f) extraction            embeddings of 4-10 s utterances as evaluation computes them (batches of nearly
                            equal length, loader processes reading ahead), per --extract-workers

Everything is built by the real trainer from the real configs (experiment `arsc`, with model.channels,
data.batch_size, ... overridden), so the numbers are those of `python train.py`.

    # CPU, the real-speech corpus with its MUSAN-style noise and RIRs
    python scripts/benchmark.py --data ../shared/data/arsc --augment on --device cpu --batch-size 16
    # GPU, a generated corpus (no data needed), bf16 + torch.compile
    python scripts/benchmark.py --data synthetic --augment on --device cuda --precision bf16 --compile \\
        --batch-size 256 --steps 100

--stages picks the stages (default: all); e and f write their corpora under --storage-dir once, from the
training corpus's speakers. Before each cold measurement every file of the corpus is fsynced and dropped
from the page cache (posix_fadvise DONTNEED), and the fraction still cached is measured (mincore) and
reported: an eviction that did not take (tmpfs) shows there.

It prints a table and writes the numbers, the settings and the machine to --out (JSON).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from speakerid.resources import available_cpus
from speakerid.training import TrainingStep
from speakerid.training.setup import crop_samples

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (generated under --synthetic-dir) or a corpus folder with wav/ and "
                        "train_list.txt (e.g. ../shared/data/arsc)")
    p.add_argument("--synthetic-dir", default=str(REPO / "data" / "bench_synthetic"))
    p.add_argument("--synthetic-speakers", type=int, default=200)
    p.add_argument("--synthetic-utterances", type=int, default=24, help="per speaker")
    p.add_argument("--augment", choices=["on", "off"], default="on")
    p.add_argument("--musan-dir", default=None, help="default: <data>/musan, else generated synthetic noise")
    p.add_argument("--rir-dir", default=None, help="default: <data>/RIRS_NOISES, else generated synthetic RIRs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile our model and head (trainer.compile)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="ecapa_tdnn",
                   help="encoder, a config of the model group: ecapa_tdnn (with --channels), resnet34, resnet221, "
                        "resnet293, campplus, ...")
    p.add_argument("--channels", type=int, default=1024, help="ECAPA-TDNN's C")
    p.add_argument("--crop-frames", type=int, default=200)
    p.add_argument("--steps", type=int, default=8, help="timed batches per stage")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches before each stage")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds of all stages; each stage reports its median over rounds "
                        "(use 3 or more on a shared machine)")
    p.add_argument("--workers", default="auto", help="loader processes: auto or a number")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of the main process (default: torch's, the CPU count)")
    p.add_argument("--sample-dtype", choices=["int16", "float32"], default="int16")
    p.add_argument("--peer", choices=["on", "off"], default="on", help="time SpeechBrain's ECAPA_TDNN step")
    p.add_argument("--stages", default="a,b,c,d,e,f", help="comma-separated subset of a,b,c,d,e,f")
    p.add_argument("--storage-dir", default=None, help="where stages e and f write their corpora "
                   "(default: <synthetic-dir>_storage)")
    p.add_argument("--storage-formats", default="wav,flac", help="stage e: comma-separated subset of wav,flac")
    p.add_argument("--storage-utterances", type=int, default=None,
                   help="stage e: files per corpus (default: enough for warm-up and timed batches, read once)")
    p.add_argument("--storage-steps", type=int, default=None, help="stage e: timed batches (default: --steps, at "
                   "most 30)")
    p.add_argument("--storage-workers", default=None, help="stage e: loader processes (default: --workers)")
    p.add_argument("--storage-read-threads", default=None, help="stage e: comma-separated data.read_threads "
                   "values (files each loader process reads at once), rows for each (default: the config's)")
    p.add_argument("--extract-utterances", type=int, default=2000, help="stage f: files of 4-10 s")
    p.add_argument("--extract-workers", default="auto",
                   help="stage f: comma-separated loader-process counts, one row each (auto: evaluation's default)")
    p.add_argument("--out", default=None, help="JSON to write (default: runs/benchmark/<date_time>.json)")
    p.add_argument("--override", nargs="*", default=[], help="extra config overrides (key=value)")
    p.add_argument("--prepare-only", action="store_true", help="generate the corpus / noise and exit")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print one table of the utterances/s in these "
                   "results (of earlier runs, a column each) and exit")
    return p.parse_args(argv)


def corpus_and_noise(args) -> tuple[Path, str | None, str | None]:
    from speakerid.data.synthetic import CorpusSpec, ensure_corpus
    from speakerid.data.synthetic_noise import NoiseSpec, ensure_noise_corpus

    if args.data == "synthetic":
        root = Path(args.synthetic_dir)
        spec = CorpusSpec(seed=7, train_speakers=args.synthetic_speakers, test_speakers=2, sessions=4,
                          utterances_per_session=max(1, args.synthetic_utterances // 4))
        t0 = time.perf_counter()
        ensure_corpus(root, spec)
        print(f"synthetic corpus {root} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    else:
        root = Path(args.data)
    if args.augment == "off":
        return root, None, None
    musan, rir = args.musan_dir, args.rir_dir
    if musan is None and (root / "musan").is_dir():
        musan = str(root / "musan")
    if rir is None and (root / "RIRS_NOISES").is_dir():
        rir = str(root / "RIRS_NOISES")
    if musan is None or rir is None:
        generated = ensure_noise_corpus(Path(args.synthetic_dir) / "noise", NoiseSpec())
        musan, rir = musan or generated["musan_dir"], rir or generated["rir_dir"]
    return root, musan, rir


def storage_corpora(args, root: Path, stages: set[str]) -> dict[str, Path]:
    """Train lists of the corpora of stages e ("wav", "flac") and f ("extract"), written on first use from the
    speakers of the training corpus (its train list)."""
    from bench_corpus import LongCorpusSpec

    # Beside the synthetic corpus, not in it: ensure_corpus refuses a folder holding what it did not write.
    base = Path(args.storage_dir or f"{Path(args.synthetic_dir)}_storage")
    source = dict(source_list=str(root / "train_list.txt"), source_root=str(root / "wav"))
    corpora = {}
    if "e" in stages:
        count = args.storage_utterances or args.batch_size * (args.warmup + storage_steps(args) + read_ahead(args))
        for fmt in args.storage_formats.split(","):
            spec = LongCorpusSpec(**source, utterances=count, fmt=fmt)
            corpora[fmt] = timed_build(f"{fmt} corpus of {count} files of 4-20 s", base / fmt, spec)
    if "f" in stages:
        spec = LongCorpusSpec(**source, utterances=args.extract_utterances, min_seconds=4.0, max_seconds=10.0,
                              lengths="uniform", seed=1)
        corpora["extract"] = timed_build(f"extraction corpus of {args.extract_utterances} files of 4-10 s",
                                         base / "extract", spec)
    return corpora


def timed_build(what: str, folder: Path, spec) -> Path:
    from bench_corpus import ensure_long_corpus

    t0 = time.perf_counter()
    train_list = ensure_long_corpus(folder, spec)
    print(f"{what}: {folder} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return train_list


def storage_steps(args) -> int:
    return args.storage_steps if args.storage_steps is not None else min(args.steps, 30)


def read_ahead(args) -> int:
    """Batches the loader reads beyond the timed ones (prefetch_factor 4 per worker): the cold corpus holds
    them too, so that no timed batch comes from a file read earlier in the same measurement."""
    from speakerid.training.setup import resolve_device, resolve_num_workers

    workers = resolve_num_workers(args.storage_workers or args.workers, resolve_device(args.device))
    return 4 * workers + 1


def time_storage(args, run, corpora: dict[str, Path], rows: dict, tmp: Path) -> None:
    """Stage e: loading only and the whole loop on each storage corpus, with a warm and a cold page cache."""
    from omegaconf import OmegaConf

    from bench_corpus import evict, resident_fraction, warm
    from speakerid.data.lists import read_train_list
    from speakerid.training.setup import setup_loader

    cfg = OmegaConf.create(OmegaConf.to_container(run.cfg, resolve=True))
    cfg.data.num_workers = args.storage_workers or args.workers
    # Persistent workers would outlive a measurement (the DataLoader keeps them) and read ahead into the
    # next one's evicted files.
    cfg.data.persistent_workers = False
    read_samples = run.speed.read_samples if run.speed is not None else crop_samples(run.cfg)
    steps, device = storage_steps(args), run.env.device
    thread_counts = ([int(n) for n in args.storage_read_threads.split(",")] if args.storage_read_threads
                     else [cfg.data.get("read_threads", 1)])
    lists = {fmt: read_train_list(corpora[fmt], corpora[fmt].parent / "wav") for fmt in ("wav", "flac")
             if fmt in corpora}
    for fmt, threads, cache, what in itertools.product(lists, thread_counts, ("warm", "cold"), ("loading", "loop")):
        train_list = lists[fmt]
        files = [train_list.root / p for p in train_list.paths]
        size_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        cfg.data.read_threads = threads
        (evict if cache == "cold" else warm)(files)
        resident = resident_fraction(files)
        loader = setup_loader(cfg, run.env, train_list, read_samples, tmp / "skipped.txt")
        batches = iter(loader.loader)
        call = (lambda: next(batches)) if what == "loading" else (lambda: run.step(*next(batches)))
        per, _ = timed(call, steps, args.warmup, device)
        workers = loader.loader.num_workers
        del batches, loader  # its worker processes end before the next eviction
        key = f"storage_{fmt}_{cache}_{what}" + (f"_rt{threads}" if threads != 1 else "")
        label = (f"(e) {'loading only' if what == 'loading' else 'whole loop'}, {fmt.upper()} "
                 f"{size_mb:.2f} MB/file, {cache}" + (f", {threads} read threads" if threads != 1 else ""))
        rows[key] = {"stage": label, "utterances_per_s": args.batch_size / per, "ms_per_batch": 1000 * per,
                     "page_cache_resident_before": resident, "mb_per_file": size_mb,
                     "workers": workers, "read_threads": threads, "timed_batches": steps}
        print(f"  {label:<52} {args.batch_size / per:10.1f} utt/s  (cached before: "
              f"{'?' if resident is None else f'{100 * resident:.0f}%'})", flush=True)


def time_extraction(args, run, train_list_file: Path, rows: dict) -> None:
    """Stage f: evaluation's extraction (speakerid.evaluation.extract_embeddings, its default batching) of
    every file of the 4-10 s corpus, in the page cache, per loader-process count; then where its time goes:
    the reading path with no model (per loader-process count), the header scan that plans the batches, and
    the model on the same batches with the audio already in memory."""
    from bench_corpus import warm
    from speakerid.data.audio import read_full
    from speakerid.data.lists import read_train_list
    from speakerid.evaluation import EmbeddingExtractor, ExtractionOptions, extract_embeddings
    from speakerid.evaluation.extraction import cut_batching, file_lengths, plan_extraction

    device = run.env.device
    files = read_train_list(train_list_file, train_list_file.parent / "wav")
    warm([files.root / p for p in files.paths])
    extractor = EmbeddingExtractor(run.parts.fbank, run.parts.model)

    cut_extractor = cut_batching(extractor)  # the batching padded batches replaced, for comparison
    defaults = ExtractionOptions(precision=args.precision)
    # The header scan that plans evaluation's batches, timed: one part of extraction's time.
    t0 = time.perf_counter()
    lengths = file_lengths(files.root, files.paths, 16000, False)
    seconds = time.perf_counter() - t0
    rows["extract_header_scan"] = {"stage": "(f) header scan that plans the batches", "files": len(files),
                                   "utterances_per_s": len(files) / seconds, "seconds": seconds}
    batches = len(plan_extraction(extractor, lengths, defaults, device, 16000)[0])
    for workers in args.extract_workers.split(","):
        workers = workers if workers == "auto" else int(workers)
        options = ExtractionOptions(precision=args.precision, num_workers=workers)
        extract_embeddings(extractor, files.root, files.paths[:256], device, options)  # kernels, allocator
        sync(device)
        t0 = time.perf_counter()
        extract_embeddings(extractor, files.root, files.paths, device, options)
        seconds = time.perf_counter() - t0
        label = f"(f) extraction, 4-10 s, {args.precision}, {workers} loader processes"
        rows[f"extract_workers_{workers}"] = {
            "stage": label, "utterances_per_s": len(files) / seconds, "files": len(files), "seconds": seconds,
            "batches": batches, "mean_batch": len(files) / batches, "workers": workers}
        print(f"  {label:<52} {len(files) / seconds:10.1f} utt/s  ({len(files)} files in {batches} batches)",
              flush=True)
    # Where the time goes: reading with no model, the header scan (above), and the model on the same batches
    # from memory (no file reads), padded (evaluation's batching for this model) and, for comparison, cut to
    # the shortest member at evaluation's max_trim (its batching before padded batches; smaller batches).

    class ReadingOnly(torch.nn.Module):
        """Extraction's reading path with no model: the first samples of each waveform as its "embedding"."""

        samples_for_frames = extractor.samples_for_frames
        takes_lengths = extractor.takes_lengths

        def forward(self, waves, lengths=None):
            return waves[:, :8]

    for workers in args.extract_workers.split(","):
        workers = workers if workers == "auto" else int(workers)
        options = ExtractionOptions(precision=args.precision, num_workers=workers)
        sync(device)
        t0 = time.perf_counter()
        extract_embeddings(ReadingOnly(), files.root, files.paths, device, options)
        seconds = time.perf_counter() - t0
        label = f"(f) reading only (no model), {workers} loader processes"
        rows[f"extract_reading_workers_{workers}"] = {"stage": label, "utterances_per_s": len(files) / seconds,
                                                      "files": len(files), "seconds": seconds, "workers": workers}
        print(f"  {label:<52} {len(files) / seconds:10.1f} utt/s", flush=True)
    scan = rows["extract_header_scan"]
    print(f"  {scan['stage']:<52} {scan['utterances_per_s']:10.1f} utt/s", flush=True)
    audio = {p: read_full(files.root / p, 16000) for p in files.paths}
    for name, model in (("padded", extractor), ("cut", cut_extractor)):
        planned = len(plan_extraction(model, lengths, defaults, device, 16000)[0])
        extract_embeddings(model, files.root, files.paths[:256], device, defaults, waveforms=audio)  # kernels
        sync(device)
        t0 = time.perf_counter()
        extract_embeddings(model, files.root, files.paths, device, defaults, waveforms=audio)
        seconds = time.perf_counter() - t0
        label = f"(f) model only (audio in memory), {model.batching} batches"
        rows[f"extract_memory_{name}"] = {
            "stage": label, "utterances_per_s": len(files) / seconds, "files": len(files), "seconds": seconds,
            "batches": planned, "mean_batch": len(files) / planned, "batching": model.batching}
        print(f"  {label:<52} {len(files) / seconds:10.1f} utt/s  ({planned} batches)", flush=True)
    del audio
    run.parts.model.train()


def build_run(args, root: Path, musan: str | None, rir: str | None, run_dir: Path):
    from speakerid.configs import compose
    from speakerid.training import setup_run

    overrides = [
        "experiment=arsc", f"data.dir={root}", f"run_dir={run_dir}", f"model={args.model}",
        *([f"model.channels={args.channels}", "model.emb_dim=256"] if args.model == "ecapa_tdnn" else []),
        f"data.batch_size={args.batch_size}",
        f"data.crop_frames={args.crop_frames}", f"data.num_workers={args.workers}",
        f"data.sample_dtype={args.sample_dtype}", f"trainer.device={args.device}",
        f"trainer.precision={args.precision}", f"trainer.compile={str(args.compile).lower()}",
        "trainer.progress_bar=false", "trainer.epochs=1000",
        *([f"trainer.num_threads={args.threads}"] if args.threads is not None else []),
    ]
    if args.augment == "on":
        overrides += ["augment=musan_rir", f"augment.musan_dir={musan}", f"augment.rir_dir={rir}"]
    overrides += args.override
    return setup_run(compose("train", overrides)), overrides


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(run, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The run's batches, epoch after epoch from `epoch`, as the training loop gets them."""
    while True:
        run.loader.sampler.set_epoch(epoch)
        yield from run.loader.loader
        epoch += 1


def timed(fn, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds per call over `steps` calls after `warmup` calls, seconds of the warm-up)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t1) / steps, t1 - t0


class SpeechBrainPeer(torch.nn.Module):
    """SpeechBrain's ECAPA_TDNN behind our model's interface: features [B, 80, T] -> embeddings [B, 256]."""

    def __init__(self, channels: int, emb_dim: int = 256, in_dim: int = 80):
        super().__init__()
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

        self.net = ECAPA_TDNN(in_dim, lin_neurons=emb_dim, channels=[channels] * 4 + [3 * channels])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.transpose(1, 2)).squeeze(1)


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": available_cpus(),
            "torch_threads": torch.get_num_threads()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(paths: list[str]) -> None:
    """One markdown table, a row per stage and a column per result file (named by its stem), utterances/s."""
    results = {Path(p).stem: json.loads(Path(p).read_text()) for p in paths if Path(p).is_file()}
    missing = [p for p in paths if not Path(p).is_file()]
    labels: list[str] = []
    for result in results.values():
        labels += [r["stage"] for r in result["stages"].values() if r["stage"] not in labels]
    first = next(iter(results.values()), None)
    if first is not None:
        print(f"{first['machine'].get('gpu') or first['machine'].get('cpu')}, {first['machine']['cpus']} CPUs, "
              f"torch {first['machine']['torch']}; utterances/s")
    print("| stage | " + " | ".join(results) + " |")
    print("| --- |" + " --- |" * len(results))
    for label in labels:
        cells = []
        for result in results.values():
            row = next((r for r in result["stages"].values() if r["stage"] == label), {})
            value = row.get("utterances_per_s")
            cells.append("" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name, result in results.items():
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in result.get("ratios", {}).items())
        print(f"{name}: {result['command']}" + (f"  ({ratios})" if ratios else ""))
    if missing:
        print("no result (the run failed or ran out of time): " + ", ".join(missing))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print_table(args.table)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stages = set(args.stages.split(","))
    unknown = stages - set("abcdef")
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {', '.join(sorted(unknown))}; choose from a,b,c,d,e,f")
    root, musan, rir = corpus_and_noise(args)
    corpora = storage_corpora(args, root, stages)
    if args.prepare_only:
        print(f"data {root}, musan {musan}, rirs {rir}" + "".join(f", {k} {v.parent}" for k, v in corpora.items()))
        return 0
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        run, overrides = build_run(args, root, musan, rir, Path(tmp) / "run")
        ours_params = sum(p.numel() for p in run.parts.model.parameters()) / 1e6
        device = run.env.device
        batch = args.batch_size
        rows: dict[str, dict] = {}
        model = f"{args.model}" + (f" C={args.channels}" if args.model == "ecapa_tdnn" else "")
        print(f"device {device}, {args.precision}{' + compile' if args.compile else ''}, {model} ({ours_params:.2f}M), "
              f"batch {batch}, crop {args.crop_frames} frames, {run.loader.loader.num_workers} loader workers, "
              f"{torch.get_num_threads()} torch threads, augmentation {args.augment}, {args.rounds} round(s)",
              flush=True)
        run.parts.model.train()
        run.parts.head.train()
        waves, labels = next(iter(run.loader.loader))
        waves, labels = waves.to(device), labels.to(device)
        clean = waves[:, :crop_samples(run.cfg)].contiguous()
        epochs = iter(range(10**9))  # every loader round starts a fresh epoch: an empty prefetch queue

        def fresh_batches():
            batches = endless(run, next(epochs) * 1000)
            return lambda: next(batches)

        def augment_and_features():
            return run.step.features(run.step.augment(waves, labels)[0])

        def step_without_augmentation():
            """The run's step on one fixed batch, without speed / noise / reverberation."""
            run.step(clean, labels, augment=False)

        def step_with_augmentation():
            """The run's step on one fixed batch in memory, with its augmentation: against (c) it prices the
            augmentation, against (d) the loader."""
            run.step(waves, labels)

        def loop_steps():
            next_batch = fresh_batches()

            def loop_step():
                run.step(*next_batch())
            return loop_step

        peer_training_step = None
        if args.peer == "on":
            from speakerid import builders

            try:
                peer = SpeechBrainPeer(args.channels).to(device).train()
                head = builders.build_head(run.cfg, num_classes=run.parts.head.num_classes).to(device).train()
                parameters = list(peer.parameters()) + list(head.parameters())
                optimizer = builders.build_optimizer(run.cfg, parameters, device)
                # Eager, as SpeechBrain trains; the same step code with its model swapped in.
                peer_training_step = TrainingStep(
                    device=device, fbank=run.parts.fbank, specaugment=run.parts.specaugment, speed=None,
                    noise_reverb=None, model=peer, head=head, parameters=parameters, optimizer=optimizer,
                    scaler=run.optimisation.scaler, precision=run.cfg.trainer.precision,
                    grad_clip_norm=run.cfg.trainer.grad_clip_norm)
                peer_params = sum(p.numel() for p in peer.parameters()) / 1e6
            except ImportError as e:  # our numbers still count; say why the peer's are missing
                print(f"  peer skipped: SpeechBrain cannot be imported ({e}); pip install -e '.[bench]'")
                rows["peer_step"] = {"stage": "peer: SpeechBrain ECAPA_TDNN step", "error": str(e)}

        def peer_step():
            peer_training_step(clean, labels, augment=False)

        # (key, label, make the per-call function for a round, warm up in every round)
        stages_to_run = []
        if "a" in stages:
            stages_to_run.append(("loading", "(a) loading only", fresh_batches, True))
        if "b" in stages:
            stages_to_run.append(("augment_features", "(b) augmentation + features" if args.augment == "on"
                                  else "(b) features", lambda: augment_and_features, False))
        if "c" in stages:
            stages_to_run.append(("step", "(c) training step (ours)", lambda: step_without_augmentation, False))
        if "d" in stages:
            if args.augment == "on":
                stages_to_run.append(("step_augmented", "(d) step with augmentation, batch in memory",
                                      lambda: step_with_augmentation, False))
            stages_to_run.append(("loop", "(d) whole training loop" + (" with augmentation" if args.augment == "on"
                                                                       else ""), loop_steps, True))
        if peer_training_step is not None:
            stages_to_run.append(("peer_step", "peer: SpeechBrain ECAPA_TDNN step (eager)", lambda: peer_step, False))

        # Rounds interleave the stages, so that a change of load on a shared machine affects all alike;
        # each stage reports the median over rounds.
        per_round: dict[str, list[float]] = {key: [] for key, *_ in stages_to_run}
        warmups: dict[str, float] = {}
        load_by_round = []
        for r in range(args.rounds):
            load_by_round.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
            for key, label, make, warm_every_round in stages_to_run:
                per, warm = timed(make(), args.steps, args.warmup if (r == 0 or warm_every_round) else 0, device)
                per_round[key].append(per)
                warmups.setdefault(key, warm)
        for key, label, *_ in stages_to_run:
            seconds = sorted(per_round[key])
            median = seconds[len(seconds) // 2] if len(seconds) % 2 else sum(seconds[len(seconds) // 2 - 1:
                                                                                   len(seconds) // 2 + 1]) / 2
            rows[key] = {"stage": label, "utterances_per_s": batch / median, "ms_per_batch": 1000 * median,
                         "utterances_per_s_by_round": [batch / t for t in per_round[key]],
                         "first_warmup_s": warmups[key]}
            spread = ""
            if args.rounds > 1:
                spread = f"  (rounds {min(batch / t for t in seconds):.1f}-{max(batch / t for t in seconds):.1f})"
            print(f"  {label:<44} {batch / median:10.1f} utt/s{spread}", flush=True)
        if "peer_step" in rows and peer_training_step is not None:
            rows["peer_step"]["parameters_m"] = peer_params
        if "e" in stages:
            time_storage(args, run, corpora, rows, Path(tmp))
            cold = [r["utterances_per_s"] for k, r in rows.items() if k.endswith("_cold_loading")]
            if cold and "step" in rows and min(cold) < rows["step"]["utterances_per_s"]:
                print(f"  note: cold reads ({min(cold):.0f} utt/s) do not keep up with the step "
                      f"({rows['step']['utterances_per_s']:.0f} utt/s): more loader processes (--storage-workers) "
                      f"read more files at once")
        if "f" in stages:
            time_extraction(args, run, corpora["extract"], rows)

    # Ratios of medians, and per round (stages of one round ran minutes apart at most).
    ratios, ratios_by_round = {}, {}
    # loop_over_step = augmented_step_over_step (the augmentation's cost) x loop_over_augmented_step (the loader's).
    for name, top, bottom in (("step_ours_over_peer", "step", "peer_step"), ("loop_over_step", "loop", "step"),
                              ("augmented_step_over_step", "step_augmented", "step"),
                              ("loop_over_augmented_step", "loop", "step_augmented")):
        if "utterances_per_s" in rows.get(top, {}) and "utterances_per_s" in rows.get(bottom, {}):
            ratios[name] = rows[top]["utterances_per_s"] / rows[bottom]["utterances_per_s"]
            ratios_by_round[name] = [a / b for a, b in zip(rows[top]["utterances_per_s_by_round"],
                                                           rows[bottom]["utterances_per_s_by_round"])]
            by_round = ", ".join(f"{r:.2f}" for r in ratios_by_round[name])
            print(f"  {name:<44} {ratios[name]:10.2f}" + (f"  (by round {by_round})" if args.rounds > 1 else ""))
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"1-min load average at the start of each round: {', '.join(f'{x:.2f}' for x in load_by_round if x is not None)}"
          f"; at the end {load_end and round(load_end[0], 2)}")
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": vars(args), "config_overrides": overrides, "device": str(device), "machine": machine(device),
        "data": str(root), "musan_dir": musan, "rir_dir": rir, "num_classes": int(run.parts.head.num_classes),
        "our_parameters_m": ours_params, "stages": rows, "ratios": ratios, "ratios_by_round": ratios_by_round,
        "load_average_start": load_start, "load_average_end": load_end, "load_1min_by_round": load_by_round,
    }
    out = Path(args.out or REPO / "runs" / "benchmark" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.json")
    from speakerid.io import write_json_atomic

    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
