"""Evaluate a model on a trial protocol of the `eval` config group (the same protocols that train.py
validates on): embeddings once per file, cosine or multi-crop scores, optional AS-norm, EER and minDCF
(p_target 0.01 and 0.05). Writes the score file `enrol test score label`, the metrics and the EER
threshold as JSON beside it, and a DET plot. Embeddings are kept per model file (in <out-dir>/embeddings),
so scoring other lists or norms does not extract them again.

    # eval=folder (default): the trials.txt of the corpus the model was trained on
    speakerid evaluate --model runs/arsc/<date>/checkpoints/best.pt
    speakerid evaluate --model best.pt eval=vox1_o eval.dir=/data/voxceleb1
    speakerid evaluate --model best.pt eval=vox1_o eval.dir=... eval.embedding.mode=multicrop
    speakerid evaluate --model best.pt eval=vox1_o eval.dir=... eval.asnorm.enabled=true \\
        eval.asnorm.cohort_list=/data/vox2/train_list.txt eval.asnorm.cohort_root=/data/vox2/dev/wav
    speakerid evaluate --model model.pt --trials my_trials.txt --root /data/wav   # any list; a model file
--model takes a training checkpoint, an averaged checkpoint or a model file (`speakerid export`); a model
file keeps no training paths, so give it --trials and --root or eval=... eval.dir=... A checkpoint's relative
data paths (data.dir=data/...) are read from the folder its training ran in, as Hydra recorded it in the run
folder, never from the current one; without that record, give --trials and --root.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from speakerid.builders import compose_eval_protocol
from speakerid.config import ConfigError
from speakerid.data.audio import AudioError
from speakerid.data.lists import ListFormatError, MissingFilesError
from speakerid.evaluation import Evaluation, save_embeddings, write_json, write_scores
from speakerid.io import atomic_write, check_new_file, check_writable
from speakerid.metrics import format_eer
from speakerid.model_file import load_extractor
from speakerid.plots import det_image
from speakerid.scoring import Embeddings
from speakerid.speaker_model import resolve_device


def default_out_dir(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}_eval")


HELP = "EER and minDCF of a model on a trial list (scores, JSON, DET plot)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--checkpoint", dest="model", required=True,
                        help="a checkpoint written by train.py (last.pt, best.pt), an averaged checkpoint or a "
                             "model file")
    parser.add_argument("overrides", nargs="*", help="config overrides: eval=vox1_o eval.dir=... eval.asnorm.enabled=true")
    parser.add_argument("--trials", help="shortcut for eval.trials=... (any `label enrol test` or `enrol test` list)")
    parser.add_argument("--root", help="shortcut for eval.root=...: folder the trial paths are relative to")
    parser.add_argument("--out-dir", type=Path, help="where scores, JSON, DET plot and embeddings go "
                        "(default: <checkpoint>_eval/ beside the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--num-workers", help="shortcut for eval.embedding.num_workers=...: processes reading "
                        "the audio ahead of the model (auto: half the CPUs, at most 8, with a GPU; 0 on a CPU)")
    parser.add_argument("--no-cache", action="store_true", help="extract every embedding, store none")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the scores and metrics of an earlier evaluation of the same protocol and "
                             "scoring in --out-dir")
    parser.add_argument("--resample", action="store_true",
                        help="resample files at another sample rate than the model's (default: as the checkpoint "
                             "was trained, data.resample)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    checkpoint_path = Path(args.model)
    overrides = list(args.overrides)
    literal = {}  # set on the composed config, not as overrides: a path may hold `,`, quotes or `${`
    if args.trials:
        literal |= {"trials": str(Path(args.trials).resolve()), "name": Path(args.trials).stem}
    if args.root:
        literal["root"] = str(Path(args.root).resolve())
    if args.num_workers is not None:
        overrides.append(f"eval.embedding.num_workers={args.num_workers}")
    out_dir = args.out_dir or default_out_dir(checkpoint_path)
    device = resolve_device(args.device)
    try:
        check_writable(out_dir, folder=True, what="--out-dir")
        loaded = load_extractor(checkpoint_path)
        source = f"{loaded.kind} {checkpoint_path}"
        if loaded.relative_paths:  # a protocol that needs one of them stops, saying why it is not known
            source += (", whose " + ", ".join(f"data.{k}={v}" for k, v in loaded.relative_paths.items())
                       + " are relative to the folder its training ran in, which neither it nor its run folder "
                       "(.hydra/hydra.yaml) records")
        protocol = compose_eval_protocol(overrides, loaded.data, source, literal)
        evaluation = Evaluation(protocol)  # lists parsed, every file checked, before any audio is read
        # the scoring's name (and so the file names) as run() will do it: a model file's mean is subtracted too
        scoring = protocol.scoring_with(protocol.mean_subtraction.enabled or loaded.embedding_mean is not None)
        stem = out_dir / f"{protocol.name}.{scoring}"
        for output in ("scores.txt", "json"):  # an earlier evaluation's scores are the user's: never replaced
            check_new_file(f"{stem}.{output}", args.overwrite, what="evaluation output")
        resample = args.resample or loaded.resample
        evaluation.check_audio(loaded.sample_rate, resample, advice="--resample")
        extractor = loaded.extractor.to(device)
        model_id = loaded.sha256
        start = time.perf_counter()
        result = evaluation.run(extractor, device, loaded.sample_rate, resample,
                                cache_dir=None if args.no_cache else out_dir / "embeddings", model_id=model_id,
                                progress=True,
                                mean=None if loaded.embedding_mean is None else np.asarray(loaded.embedding_mean))
        seconds = time.perf_counter() - start
    except (ConfigError, HydraException, OmegaConfBaseException, ListFormatError, MissingFilesError, AudioError,
            OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    assert result.scoring == scoring, (result.scoring, scoring)
    scores_path = Path(f"{stem}.scores.txt")
    write_scores(scores_path, result.trials, result.scores)
    # A model file is the same model as the checkpoint it was exported from: thresholds and calibrations of
    # either hold for both (model_file.evaluated_model_identities).
    provenance_sha256 = loaded.provenance.get("checkpoint_sha256")
    report = {"checkpoint": str(checkpoint_path.resolve()), "checkpoint_sha256": model_id,
              "provenance_sha256": provenance_sha256,
              "scores": str(scores_path.resolve()), **result.report(), "device": str(device), "seconds": seconds}
    if result.cohort is not None:
        cohort_path = Path(f"{stem}.cohort.npz")
        save_embeddings(cohort_path, Embeddings(result.cohort.speakers, result.cohort.embeddings.astype("float32")),
                        {"cohort_list": protocol.asnorm.cohort_list, "model": model_id,
                         "provenance_sha256": provenance_sha256})
        report["cohort"] = str(cohort_path.resolve())
    if result.mean is not None:  # stored beside the cohort: verify --threshold-from subtracts it as evaluate did
        mean_path = Path(f"{stem}.mean.npz")
        save_embeddings(mean_path, Embeddings(["mean"], result.mean[None]),
                        {"mean_list": protocol.mean_subtraction.list, "model": model_id,
                         "provenance_sha256": provenance_sha256})  # export --mean-from: a model file's checkpoint
        report["embedding_mean"] = str(mean_path.resolve())
    if result.metrics is not None:
        det_path = Path(f"{stem}.det.png")
        with atomic_write(det_path, "wb") as f:
            Image.fromarray(det_image(result.scores, result.labels, result.metrics["eer"],
                                      f"{protocol.name} ({result.scoring})")).save(f, format="PNG")
        report["det_plot"] = str(det_path.resolve())
    json_path = Path(f"{stem}.json")
    write_json(json_path, report)

    speed = (f"embedded {result.n_extracted} in {result.extraction_seconds:.1f} s "
             f"({result.n_extracted / result.extraction_seconds:.1f} utt/s on {device})" if result.n_extracted
             else "all embeddings from the cache")
    print(f"{protocol.name} ({protocol.trials}), {result.scoring}: {len(result.trials)} trials, "
          f"{result.n_files} files; {speed}")
    if result.metrics is None:
        print("the list has no labels: scores only, no EER or minDCF")
    else:
        m = result.metrics
        print(f"EER {format_eer(m['eer'])}  minDCF(p=0.01) {m['min_dcf_p0.01']:.4f}  "
              f"minDCF(p=0.05) {m['min_dcf_p0.05']:.4f}  (EER threshold {m['eer_threshold']:.4f})")
    print(f"scores: {scores_path}\nmetrics: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
