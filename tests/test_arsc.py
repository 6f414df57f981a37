"""The real-speech arsc corpus (../shared/data/arsc, VoxCeleb layout, FLAC): its lists parse, every file
exists and reads, and a short training run on it learns (the loss falls, EER is measured on its trials).
Skipped with a reason where the corpus is absent."""

import numpy as np
import pytest
import soundfile as sf

from conftest import ARSC_DIR, compose_config, requires_arsc
from speakerid.data.audio import read_crop, read_full
from speakerid.data.lists import check_files_exist, read_train_list, read_trials

pytestmark = requires_arsc()


def test_lists_parse_and_all_files_exist():
    train = read_train_list(ARSC_DIR / "train_list.txt", ARSC_DIR / "wav")
    assert len(train) == 1800 and len(train.speaker_ids) == 18
    check_files_exist(ARSC_DIR / "wav", train.paths, what="arsc train list")
    trials = read_trials(ARSC_DIR / "trials.txt")
    assert len(trials) == 6000
    check_files_exist(ARSC_DIR / "wav", [p for t in trials for p in (t.enrol, t.test)], what="arsc trials")
    assert not {t.enrol.split("/")[0] for t in trials} & set(train.speaker_ids)


def test_real_flac_crops_match_full_reads():
    train = read_train_list(ARSC_DIR / "train_list.txt", ARSC_DIR / "wav")
    rng = np.random.default_rng(0)
    for rel in train.paths[::300]:
        path = ARSC_DIR / "wav" / rel
        full = read_full(path)
        assert len(full) == sf.info(str(path)).frames
        crop = read_crop(path, 16_000, rng)
        if len(full) >= 16_000:
            # the crop is found verbatim in the full read
            hits = [s for s in range(len(full) - 16_000 + 1) if full[s] == crop[0] and np.array_equal(full[s:s + 16_000], crop)]
            assert hits


@pytest.mark.slow
def test_short_training_on_real_speech(tmp_path):
    from speakerid.training import train

    cfg = compose_config([
        "experiment=arsc", f"data.dir={ARSC_DIR}", f"run_dir={tmp_path / 'run'}",
        "model.channels=64", "model.mfa_channels=192", "model.attention_channels=32", "model.se_bottleneck=32",
        "data.crop_frames=100", "data.batch_size=32", "data.num_workers=0", "trainer.epochs=2",
        "trainer.progress_bar=false", "trainer.device=cpu", "optim.lr=0.003",
    ])
    results = train(cfg)
    import json

    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert 0.0 <= results["val/eer"] < 0.5  # better than chance on unseen real speakers

    # Batching by length (the default: utterances cut by at most 0.25% to share a batch) stays faithful to
    # one-at-a-time full-utterance embeddings of the trained model on real speech.
    from speakerid.builders import extractor_from_checkpoint
    from speakerid.checkpoint import load_checkpoint
    from speakerid.data.lists import trial_files
    from speakerid.evaluation import ExtractionOptions, extract_embeddings
    from speakerid.metrics import compute_eer
    from speakerid.scoring import raw_scores

    extractor, _ = extractor_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    trials = read_trials(ARSC_DIR / "trials.txt")
    files = trial_files(trials)
    exact = extract_embeddings(extractor, ARSC_DIR / "wav", files, options=ExtractionOptions(batch_size=1, max_trim=0))
    # results["val/eer"] is the last validation: these weights, batched with the default options.
    labels = np.array([t.label for t in trials])
    assert abs(results["val/eer"] - compute_eer(raw_scores(exact, trials), labels)) < 0.001
    subset = files[::4]
    batched = extract_embeddings(extractor, ARSC_DIR / "wav", subset, options=ExtractionOptions())
    cosine = np.einsum("ij,ij->i", batched.full.astype(np.float64), exact.select(subset).full.astype(np.float64))
    assert cosine.min() > 0.999
