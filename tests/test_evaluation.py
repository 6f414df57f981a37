"""Embedding extraction (batching by length, multi-crop), the embedding cache, and an evaluation run end
to end on small files, each against a one-file-at-a-time reference."""

import itertools
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from conftest import ARSC_DIR, requires_arsc, small_extractor
from speakerid.data.audio import AudioError
from speakerid.data.lists import MissingFilesError
from speakerid.evaluation import (
    EmbeddingCache,
    EmbeddingExtractor,
    Evaluation,
    ExtractionOptions,
    Protocol,
    extract_embeddings,
    load_embeddings,
    plan_batches,
    save_embeddings,
)
from speakerid.evaluation.extraction import MIN_FILL, cut_batching, plan_padded_batches
from speakerid.features import Fbank
from speakerid.plots import det_image


@pytest.fixture(scope="module")
def extractor():
    return small_extractor(channels=32, emb_dim=24)


@pytest.fixture(scope="module")
def cut_extractor(extractor):
    """As a model whose forward takes no frame counts: extraction cuts its batches."""
    return cut_batching(extractor)


def one_at_a_time(extractor, wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return F.normalize(extractor(torch.from_numpy(wave)[None].float()), dim=1)[0].numpy()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Speech-like test files of chosen lengths (16 kHz): four within 0.2% of each other, then others."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    lengths = {"a/1.wav": 32000, "a/2.wav": 32000, "b/1.wav": 31990, "b/2.wav": 31950, "c/1.wav": 30000,
               "c/2.wav": 20000, "d/1.wav": 12000}
    t = np.arange(40000) / 16000
    for i, (rel, n) in enumerate(lengths.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        tone = np.sin(2 * np.pi * (120 + 30 * i) * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t)))
        wave = (0.3 * tone + 0.05 * rng.standard_normal(len(t)))[:n]
        sf.write(str(root / rel), wave.astype(np.float32), 16000, subtype="FLOAT")
    return root, lengths


def read(root, rel):
    return sf.read(str(root / rel), dtype="float32")[0]


@pytest.mark.parametrize("max_trim", [0.0, 0.0025, 0.05])
def test_plan_batches_bounds_the_cut_and_the_batch(max_trim):
    rng = np.random.default_rng(1)
    lengths = rng.integers(16000, 160000, 500)
    lengths[::7] = lengths[0]  # equal lengths too
    batches = plan_batches(lengths, batch_size=16, max_batch_samples=16 * 100000, max_trim=max_trim)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every file exactly once
    for batch in batches:
        members = lengths[batch]
        assert len(batch) <= 16
        assert members.min() >= members.max() * (1 - max_trim)  # nobody loses more than max_trim
        assert len(batch) == 1 or len(batch) * members.min() <= 16 * 100000
    if max_trim == 0.0:
        assert all(len(set(lengths[b].tolist())) == 1 for b in batches)
    assert max(len(b) for b in batches) > 1  # it does batch


@pytest.mark.parametrize("pad_multiple", [1, 2560])
def test_plan_padded_batches_bounds_the_padding_and_the_batch(pad_multiple):
    rng = np.random.default_rng(1)
    lengths = rng.integers(16000, 160000, 500)
    lengths[::7] = lengths[0]
    lengths[:3] = [900000, 400000, 30000]  # sparse long files: alone in their batches
    plan = plan_padded_batches(lengths, batch_size=16, max_batch_samples=16 * 100000, pad_multiple=pad_multiple)
    flat = np.concatenate([b for b, _ in plan])
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every file exactly once
    for batch, padded in plan:
        members = lengths[batch]
        assert len(batch) <= 16 and padded % pad_multiple == 0
        assert members.max() <= padded < members.max() + pad_multiple  # the longest, rounded up
        assert members.min() >= MIN_FILL * members.max()  # padding at most 11% of a member's length
        assert len(batch) == 1 or len(batch) * padded <= 16 * 100000
    assert [len(b) for b, _ in plan[:2]] == [1, 1]
    assert np.mean([len(b) for b, _ in plan]) > 10  # dense lengths fill batches (up to max_batch_samples)


def test_extraction_plans_padded_batches_for_the_device(extractor, cut_extractor):
    """On a CPU at most CPU_BATCH_SECONDS of audio per batch (larger ones run slower per utterance there),
    unrounded; on a GPU full batches rounded up to PAD_MULTIPLE; a model without lengths gets cut batches."""
    from speakerid.evaluation.extraction import CPU_BATCH_SECONDS, PAD_MULTIPLE, plan_extraction

    lengths = np.full(64, 3 * 16000) - np.arange(64)  # 64 files of (nearly) 3 s
    options = ExtractionOptions()
    cpu, cpu_padded = plan_extraction(extractor, lengths, options, torch.device("cpu"), 16000)
    assert max(len(b) for b in cpu) == int(CPU_BATCH_SECONDS // 3) and cpu_padded[0] == lengths.max()
    gpu, gpu_padded = plan_extraction(extractor, lengths, options, torch.device("cuda"), 16000)  # planning only
    assert [len(b) for b in gpu] == [64] and gpu_padded[0] % PAD_MULTIPLE == 0 and gpu_padded[0] >= lengths.max()
    cut, none = plan_extraction(cut_extractor, lengths, options, torch.device("cpu"), 16000)
    assert none is None and [len(b) for b in cut] == [64]  # within max_trim of one length: cut as before


def test_padded_batches_give_each_whole_utterance_its_own_embedding(extractor, audio_dir):
    """ECAPA-TDNN takes frame counts: files of different lengths share a zero-padded batch, and each gets
    the embedding of the whole file embedded alone (nothing cut)."""
    root, lengths = audio_dir
    paths = list(lengths)
    assert extractor.batching == "padded"
    batches = []
    hook = extractor.register_forward_pre_hook(
        lambda module, args: batches.append((args[0].shape, args[1].tolist())))
    try:
        emb = extract_embeddings(extractor, root, paths + paths[:2], options=ExtractionOptions(batch_size=8))
    finally:
        hook.remove()
    assert emb.keys == paths and emb.crops is None and emb.full.dtype == np.float32
    # 32000 to 30000 samples are within MIN_FILL of each other: one batch of five lengths, padded to the longest.
    assert batches == [((5, 32000), [32000, 32000, 31990, 31950, 30000]), ((1, 20000), [20000]),
                       ((1, 12000), [12000])]
    for rel in paths:
        assert float(emb.full[emb.index()[rel]] @ one_at_a_time(extractor, read(root, rel))) > 1 - 1e-6, rel


def test_cut_batches_equal_one_at_a_time_on_the_cut_audio(cut_extractor, audio_dir):
    extractor = cut_extractor
    assert extractor.batching == "cut"
    root, lengths = audio_dir
    paths = list(lengths)
    options = ExtractionOptions(batch_size=8, max_trim=0.0025)
    emb = extract_embeddings(extractor, root, paths + paths[:2], options=options)  # duplicates: once each
    assert emb.keys == paths and emb.crops is None and emb.full.dtype == np.float32
    # a/1, a/2, b/1 and b/2 are within 0.25% of 32000 samples: one batch, all cut to 31950.
    for rel in ("a/1.wav", "a/2.wav", "b/1.wav", "b/2.wav"):
        expected = one_at_a_time(extractor, read(root, rel)[:31950])
        assert float(emb.full[emb.index()[rel]] @ expected) > 1 - 1e-6, rel
    for rel in ("c/1.wav", "c/2.wav", "d/1.wav"):  # alone in their batches: the whole file
        assert float(emb.full[emb.index()[rel]] @ one_at_a_time(extractor, read(root, rel))) > 1 - 1e-6, rel
    exact = extract_embeddings(extractor, root, paths, options=ExtractionOptions(max_trim=0.0))
    for rel in paths:
        assert float(exact.full[exact.index()[rel]] @ one_at_a_time(extractor, read(root, rel))) > 1 - 1e-6, rel


def test_digital_silence_is_named_in_a_warning_with_loader_processes_too(extractor, audio_dir, tmp_path, caplog):
    """Two silent files embed alike, so a trial between them scores 1.0 whoever the speakers: extraction
    warns, naming them, whether a loader process or this one read them."""
    root, lengths = audio_dir
    silent_root = tmp_path / "wav"
    shutil.copytree(root, silent_root)
    for rel in ("x/1.wav", "y/1.wav"):
        (silent_root / rel).parent.mkdir()
        sf.write(silent_root / rel, np.zeros(24000, dtype=np.int16), 16000, subtype="PCM_16")
    paths = [*lengths, "x/1.wav", "y/1.wav"]
    for workers in (0, 1):
        caplog.clear()
        with caplog.at_level("WARNING", logger="speakerid"):
            emb = extract_embeddings(extractor, silent_root, paths,
                                     options=ExtractionOptions(batch_size=2, num_workers=workers))
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, workers
        assert warnings[0].startswith("2 of 9 files are digital silence")
        assert str(silent_root / "x/1.wav") in warnings[0] and str(silent_root / "y/1.wav") in warnings[0]
        index = emb.index()
        assert float(emb.full[index["x/1.wav"]] @ emb.full[index["y/1.wav"]]) > 1 - 1e-6  # why it matters
    caplog.clear()
    with caplog.at_level("WARNING", logger="speakerid"):
        extract_embeddings(extractor, root, list(lengths))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_multicrop_embeds_taoruijie_crops(extractor, audio_dir):
    root, lengths = audio_dir
    paths = ["a/1.wav", "c/2.wav", "d/1.wav"]  # d/1 (0.75 s) is shorter than a crop: wrap-padded
    options = ExtractionOptions(mode="multicrop", num_crops=4, crop_frames=100, max_trim=0.0)
    emb = extract_embeddings(extractor, root, paths, options=options)
    assert emb.crops.shape == (3, 4, 24)
    max_audio = 100 * 160 + 240
    for i, rel in enumerate(paths):
        audio = read(root, rel)
        if audio.shape[0] <= max_audio:  # TaoRuijie: numpy.pad(audio, (0, shortage), 'wrap')
            audio = np.pad(audio, (0, max_audio - audio.shape[0]), "wrap")
        for j, start in enumerate(np.linspace(0, audio.shape[0] - max_audio, num=4)):
            expected = one_at_a_time(extractor, audio[int(start):int(start) + max_audio])
            assert float(emb.crops[i, j] @ expected) > 1 - 1e-6, (rel, j)
        assert float(emb.full[i] @ one_at_a_time(extractor, read(root, rel))) > 1 - 1e-6


def test_multicrop_crops_follow_the_extractors_fbank_hop_and_window(extractor, audio_dir):
    """features.fbank.hop_length/win_length set how many samples crop_frames frames take, as in training."""
    root, lengths = audio_dir
    fbank = Fbank(hop_length=80, win_length=320)
    coarse = EmbeddingExtractor(fbank, extractor.model).eval()
    widths = []
    hook = fbank.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    options = ExtractionOptions(mode="multicrop", num_crops=3, crop_frames=100, max_trim=0.0)
    try:
        emb = extract_embeddings(coarse, root, ["c/2.wav"], options=options)
    finally:
        hook.remove()
    crop = 100 * 80 + (320 - 80)  # frames * hop + (window - hop); 100 * 160 + 240 with the default fbank
    assert widths == [lengths["c/2.wav"], crop]  # the full utterance, then its three crops in one forward
    audio = read(root, "c/2.wav")
    for j, start in enumerate(np.linspace(0, len(audio) - crop, num=3)):
        expected = one_at_a_time(coarse, audio[int(start):int(start) + crop])
        assert float(emb.crops[0, j] @ expected) > 1 - 1e-6, j


def pids_reading(monkeypatch, log):
    """Record which process reads each file (loader processes inherit the patch when they fork)."""
    from speakerid.evaluation import extraction

    real = extraction.read_full

    def read_and_log(path, *args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(extraction, "read_full", read_and_log)
    return lambda: [int(line) for line in log.read_text().split()]


@requires_arsc()
@pytest.mark.parametrize("mode", ["full", "multicrop"])
def test_loader_processes_give_the_embeddings_of_reading_in_process(extractor, monkeypatch, tmp_path, mode):
    """Real FLAC speech of many lengths: two loader processes reading whole planned batches give the
    embeddings of reading in this process, file for file."""
    from speakerid.data.lists import read_trials, trial_files

    files = trial_files(read_trials(ARSC_DIR / "trials.txt"))[:32]
    options = ExtractionOptions(mode=mode, num_crops=3, crop_frames=100, batch_size=8, max_trim=0.05, num_workers=0)
    pids = pids_reading(monkeypatch, tmp_path / "pids.txt")
    in_process = extract_embeddings(extractor, ARSC_DIR / "wav", files, options=options)
    assert set(pids()) == {os.getpid()}
    (tmp_path / "pids.txt").unlink()
    workers = extract_embeddings(extractor, ARSC_DIR / "wav", files, options=replace(options, num_workers=2))
    assert len(set(pids()) - {os.getpid()}) == 2 and os.getpid() not in pids()  # two other processes read
    assert workers.keys == in_process.keys == files
    cosine = np.einsum("ij,ij->i", workers.full.astype(np.float64), in_process.full.astype(np.float64))
    assert cosine.min() > 1 - 1e-6
    if mode == "multicrop":
        cosine = np.einsum("ijk,ijk->ij", workers.crops.astype(np.float64), in_process.crops.astype(np.float64))
        assert workers.crops.shape == (32, 3, 24) and cosine.min() > 1 - 1e-6


@pytest.mark.parametrize("readers", [0, 2])
def test_a_file_that_cannot_be_decoded_is_named_from_a_loader_process(extractor, audio_dir, tmp_path, readers):
    """Its header reads (so batching plans it), its data does not: the error names it, without a worker's
    traceback around the message."""
    src, lengths = audio_dir
    root = tmp_path / "audio"
    shutil.copytree(src, root)
    sf.write(str(root / "c/bad.flac"), read(root, "c/1.wav"), 16000)
    data = (root / "c/bad.flac").read_bytes()
    (root / "c/bad.flac").write_bytes(data[:len(data) // 3])
    assert sf.info(str(root / "c/bad.flac")).frames == lengths["c/1.wav"]
    with pytest.raises(AudioError, match=r"^\S*/c/bad\.flac: cannot read audio \(.*\)$"):
        extract_embeddings(extractor, root, list(lengths) + ["c/bad.flac"], options=ExtractionOptions(batch_size=2),
                           readers=readers)


def test_files_at_another_rate_or_in_stereo_are_named_before_any_is_read(extractor, tmp_path):
    """From the headers (speakerid.data.audio.length_at), with advice that embed and verify users can take."""
    wave = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    sf.write(str(tmp_path / "r8k.wav"), wave, 8000)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([wave, wave], axis=1), 16000)
    with pytest.raises(AudioError, match=r"r8k\.wav: sample rate is 8000 Hz but the model's is 16000 Hz \(resample "
                       r"the file to 16000 Hz; evaluate can do it on the fly with --resample\)$"):
        extract_embeddings(extractor, tmp_path, ["r8k.wav"])
    assert extract_embeddings(extractor, tmp_path, ["r8k.wav"], resample=True).full.shape == (1, 24)
    with pytest.raises(AudioError, match=r"stereo\.wav: expected mono audio, got 2 channels$"):
        extract_embeddings(extractor, tmp_path, ["stereo.wav"])


def test_extraction_runs_without_cudnn_autotuning_and_restores_it(extractor, audio_dir, monkeypatch):
    """Autotuning every new utterance length never pays off over a trial list (the trainer turns it on)."""
    root, lengths = audio_dir
    seen = []
    hook = extractor.model.register_forward_pre_hook(lambda m, a: seen.append(torch.backends.cudnn.benchmark))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    try:
        extract_embeddings(extractor, root, list(lengths))
    finally:
        hook.remove()
    assert seen and not any(seen) and torch.backends.cudnn.benchmark is True


def test_extraction_workers_follow_the_device_and_the_list():
    from speakerid.evaluation.extraction import resolve_num_workers
    from speakerid.resources import available_cpus

    assert resolve_num_workers("auto", torch.device("cpu"), batches=50) == 0  # the model needs the cores
    assert resolve_num_workers("auto", torch.device("cuda"), batches=50) == min(8, max(1, available_cpus() // 2))
    assert resolve_num_workers(3, torch.device("cpu"), batches=50) == 3
    assert resolve_num_workers(3, torch.device("cpu"), batches=2) == 1  # no more workers than batches ahead
    assert resolve_num_workers(3, torch.device("cuda"), batches=1) == 0


def test_embedding_file_round_trip_and_cache(extractor, audio_dir, tmp_path):
    root, lengths = audio_dir
    paths = list(lengths)
    calls = []

    def extract(missing):
        calls.append(list(missing))
        return extract_embeddings(extractor, root, missing)

    cache = EmbeddingCache(tmp_path / "emb", "model-1", root, ExtractionOptions(), 16000, False)
    first, n = cache.get(paths[:4], extract)
    assert n == 4 and first.keys == paths[:4]
    again, n = cache.get(paths[2:], extract)  # two cached, three new
    assert n == 3 and calls[-1] == paths[4:] and again.keys == paths[2:]
    np.testing.assert_array_equal(again.select(paths[2:4]).full, first.select(paths[2:4]).full)
    assert cache.get(paths, extract)[1] == 0 and len(calls) == 2  # nothing left to extract
    stored, meta = load_embeddings(cache.path)  # readable with numpy alone, no pickle
    assert sorted(stored.keys) == sorted(paths) and meta["model"] == "model-1"
    other = EmbeddingCache(tmp_path / "emb", "model-2", root, ExtractionOptions(), 16000, False)
    assert other.path == cache.path and other.get(paths[:1], extract)[1] == 1  # another model: not mixed in
    assert load_embeddings(cache.path)[0].keys == paths[:1]
    assert not list((tmp_path / "emb").glob(".*tmp"))
    with np.load(cache.path, allow_pickle=False) as data:
        assert set(data.files) == {"keys", "full", "meta", "stamps"}
    save_embeddings(tmp_path / "x.npz", first, {"a": 1})
    loaded, meta = load_embeddings(tmp_path / "x.npz")
    assert loaded.keys == first.keys and meta == {"a": 1}
    np.testing.assert_array_equal(loaded.full, first.full)


def test_cache_embeds_a_changed_file_again(extractor, audio_dir, tmp_path):
    src, lengths = audio_dir
    root = tmp_path / "audio"
    shutil.copytree(src, root)
    paths = list(lengths)[:3]
    cache = EmbeddingCache(tmp_path / "emb", "model-1", root, ExtractionOptions(), 16000, False)
    extract = lambda missing: extract_embeddings(extractor, root, missing)  # noqa: E731
    before, n = cache.get(paths, extract)
    assert n == 3

    # Same length, other content, and a modification time that certainly differs.
    wave, sr = sf.read(str(root / paths[1]), dtype="float32")
    noise = 0.1 * np.random.default_rng(1).standard_normal(len(wave)).astype(np.float32)
    sf.write(str(root / paths[1]), noise, sr, subtype="FLOAT")
    st = os.stat(root / paths[1])
    os.utime(root / paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after, n = cache.get(paths, extract)
    assert n == 1  # only the changed file
    np.testing.assert_array_equal(after.select([paths[0], paths[2]]).full, before.select([paths[0], paths[2]]).full)
    assert not np.allclose(after.select([paths[1]]).full, before.select([paths[1]]).full, atol=1e-3)
    np.testing.assert_allclose(after.select([paths[1]]).full[0], one_at_a_time(extractor, read(root, paths[1])),
                               atol=1e-5)
    assert cache.get(paths, extract)[1] == 0


def write_list(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def eer_of_roc(far: np.ndarray, frr: np.ndarray) -> float:
    """Where the straight segments between consecutive ROC points (strictest first) cross FAR = FRR."""
    i = int(np.argmax(frr <= far))
    if frr[i] == far[i]:
        return float(far[i])
    before, after = frr[i - 1] - far[i - 1], frr[i] - far[i]
    return float(far[i - 1] + before / (before - after) * (far[i] - far[i - 1]))


def test_evaluation_scores_measures_and_handles_lists_without_labels(extractor, audio_dir, tmp_path):
    root, lengths = audio_dir
    # Pairs of files, a target when they share a folder: the scores of targets and non-targets overlap. The
    # last (non-target) pair is left out: with 3 targets and 17 non-targets FRR and FAR (k/3, j/17) are
    # never equal between 0 and 1, so the EER is an interpolated crossing.
    pairs = [(str(int(e[0] == t[0])), e, t) for e, t in itertools.combinations(lengths, 2)][:-1]
    labelled = write_list(tmp_path / "l.txt", [" ".join(p) for p in pairs])
    protocol = Protocol(name="small", trials=str(labelled), root=str(root),
                        embedding=ExtractionOptions(max_trim=0.0))
    result = Evaluation(protocol).run(extractor, cache_dir=tmp_path / "emb", model_id="m")
    reference = {rel: one_at_a_time(extractor, read(root, rel)) for rel in lengths}
    expected = np.array([reference[e] @ reference[t] for _, e, t in pairs], dtype=np.float64)
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)

    # The metrics, against float64 cosines of the very embeddings scored (the run's cache) and sklearn's ROC.
    # (One-at-a-time embeddings differ by ~1e-6, the gap between some of these scores.)
    (cache_file,) = (tmp_path / "emb").glob("*.npz")
    stored = load_embeddings(cache_file)[0]
    unit = {k: e / np.linalg.norm(e) for k, e in zip(stored.keys, stored.full.astype(np.float64))}
    scores64 = np.array([unit[e] @ unit[t] for _, e, t in pairs])
    np.testing.assert_allclose(result.scores, scores64, rtol=0, atol=1e-6)
    labels = np.array([int(p[0]) for p in pairs])
    far, tpr, _ = roc_curve(labels, scores64, drop_intermediate=False)
    frr = 1.0 - tpr
    eer = eer_of_roc(far, frr)
    assert 0 < eer < 0.5
    assert result.metrics["eer"] == pytest.approx(eer, abs=1e-12)
    for p_target in (0.01, 0.05):
        min_dcf = np.min(frr * p_target + far * (1 - p_target)) / min(p_target, 1 - p_target)
        assert result.metrics[f"min_dcf_p{p_target}"] == pytest.approx(min_dcf, abs=1e-12)
    assert result.n_files == 7 and result.n_extracted == 7
    report = result.report()
    assert report["name"] == "small" and report["scoring"] == "cosine" and report["labelled"]

    unlabelled = write_list(tmp_path / "u.txt", [f"{e} {t}" for _, e, t in pairs])
    result = Evaluation(Protocol(name="u", trials=str(unlabelled), root=str(root))).run(extractor)
    assert result.metrics is None and result.labels is None and len(result.scores) == len(pairs)
    assert not result.report()["labelled"] and "eer" not in result.report()


@pytest.mark.parametrize("mode", ["full", "multicrop"])
def test_file_with_nan_samples_is_named_and_nothing_is_cached(extractor, audio_dir, tmp_path, mode):
    src, lengths = audio_dir
    root = tmp_path / "audio"
    shutil.copytree(src, root)
    wave = read(root, "a/1.wav").copy()
    wave[[100, 20000]] = np.nan
    sf.write(str(root / "a/nan.wav"), wave, 16000, subtype="FLOAT")
    assert np.isnan(read(root, "a/nan.wav")).sum() == 2
    # finite samples whose power overflows float32 in the fbank: the embedding's own check names the file
    wave[[100, 20000]] = 3e38
    sf.write(str(root / "a/huge.wav"), wave, 16000, subtype="FLOAT")
    options = ExtractionOptions(mode=mode, num_crops=2, crop_frames=100)
    good = write_list(tmp_path / "good.txt", ["1 a/1.wav a/2.wav", "0 a/1.wav c/1.wav"])
    evaluation = Evaluation(Protocol(name="g", trials=str(good), root=str(root), embedding=options))
    evaluation.run(extractor, cache_dir=tmp_path / "emb", model_id="m")
    (cache_file,) = (tmp_path / "emb").glob("*")
    before = cache_file.read_bytes()

    # NaN samples are named when the file is read; a/huge is embedded in one batch with b/1 and b/2 (within
    # max_trim of its length): only it is named.
    for name, message in (("nan", r"\S*/a/nan\.wav: contains NaN or infinite samples$"),
                          ("huge", r"non-finite embedding .* for 1 of 3 files: \S*/a/huge\.wav$")):
        trials = write_list(tmp_path / "t.txt", [f"1 a/1.wav a/{name}.wav", "0 b/1.wav b/2.wav"])
        evaluation = Evaluation(Protocol(name="t", trials=str(trials), root=str(root), embedding=options))
        with pytest.raises(AudioError, match=message):
            evaluation.run(extractor, cache_dir=tmp_path / "emb", model_id="m")
        assert list((tmp_path / "emb").glob("*")) == [cache_file] and cache_file.read_bytes() == before


def test_missing_trial_files_are_listed_before_any_audio_is_read(audio_dir, tmp_path):
    root, _ = audio_dir
    trials = write_list(tmp_path / "t.txt", ["1 a/1.wav a/2.wav", "0 a/1.wav x/gone.wav", "0 y/gone.wav a/2.wav"])
    with pytest.raises(MissingFilesError, match=r"(?s)2 of 4 files do not exist.*x/gone.wav.*y/gone.wav"):
        Evaluation(Protocol(name="t", trials=str(trials), root=str(root)))


def test_det_image_draws_the_curve():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(2, 1, 500), rng.normal(0, 1, 500)]
    labels = np.r_[np.ones(500), np.zeros(500)]
    image = det_image(scores, labels, eer=0.16, title="x", size=300)
    assert image.shape == (300, 300, 3) and image.dtype == np.uint8
    curve = np.all(image == (31, 119, 180), axis=2)
    assert curve.sum() > 300  # a line crossing the plot
    cols = np.flatnonzero(curve.any(axis=0))
    assert cols.max() - cols.min() > 150


def test_checkpoint_of_another_architecture_names_the_keys():
    """Every way of using a checkpoint (evaluate, embed, verify, export) builds its extractor here."""
    from omegaconf import OmegaConf

    from conftest import compose_config
    from speakerid.builders import build_model, extractor_from_checkpoint

    cfg = compose_config(["debug=tiny"])
    state = build_model(cfg).state_dict()
    config = OmegaConf.to_container(cfg, resolve=True)
    config["model"]["emb_dim"] = 40  # the weights are 32-d
    with pytest.raises(RuntimeError, match=r"(?s)does not match the configured architecture.*"
                       r"embedding.weight: checkpoint \(32, 96\) vs model \(40, 96\)"):
        extractor_from_checkpoint({"config": config, "model": state})


def test_mean_subtraction_scores_centred_embeddings_and_centres_the_cohort(extractor, audio_dir, tmp_path):
    """WeSpeaker's mean subtraction, re-derived in float64 from one-at-a-time embeddings: the mean of the
    train list's unit embeddings is subtracted from every trial embedding and from the AS-norm cohort's
    before anything is scored."""
    from speakerid.evaluation.protocol import ASNormOptions, MeanSubtractionOptions

    root, lengths = audio_dir
    pairs = [(str(int(e[0] == t[0])), e, t) for e, t in itertools.combinations(lengths, 2)]
    trials = write_list(tmp_path / "t.txt", [" ".join(p) for p in pairs])
    train_files = ["a/1.wav", "b/2.wav", "c/1.wav", "c/2.wav", "d/1.wav"]
    train = write_list(tmp_path / "train.txt", [f"{rel[0]} {rel}" for rel in train_files])
    unit = {rel: one_at_a_time(extractor, read(root, rel)).astype(np.float64) for rel in lengths}
    unit = {k: v / np.linalg.norm(v) for k, v in unit.items()}
    mean = np.mean([unit[rel] for rel in train_files], axis=0)
    centred = {k: (v - mean) / np.linalg.norm(v - mean) for k, v in unit.items()}
    expected = np.array([centred[e] @ centred[t] for _, e, t in pairs])
    plain = np.array([unit[e] @ unit[t] for _, e, t in pairs])
    assert np.abs(expected - plain).max() > 0.05  # the mean is not negligible for these files

    subtract = MeanSubtractionOptions(enabled=True, list=str(train), root=str(root))
    protocol = Protocol(name="m", trials=str(trials), root=str(root), embedding=ExtractionOptions(max_trim=0.0),
                        mean_subtraction=subtract)
    assert protocol.scoring == "cosine_meansub"
    result = Evaluation(protocol).run(extractor)
    np.testing.assert_allclose(result.mean, mean, atol=1e-5)
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)
    assert result.report()["mean_subtraction"]["list"] == str(train)

    # AS-norm on top: cohort = per-speaker means of the centred train embeddings, top 2 of 4 speakers.
    asnorm = ASNormOptions(enabled=True, top_k=2, cohort_list=str(train), cohort_root=str(root))
    # One file per batch: AS-norm divides by the spread of two cohort scores, which magnifies a padded
    # batch's float rounding (1e-7) past this formula check's tolerance.
    result = Evaluation(Protocol(name="m", trials=str(trials), root=str(root),
                                 embedding=ExtractionOptions(batch_size=1), mean_subtraction=subtract,
                                 asnorm=asnorm)).run(extractor)
    speakers = sorted({rel[0] for rel in train_files})
    cohort = []
    for s in speakers:
        total = np.sum([centred[rel] for rel in train_files if rel[0] == s], axis=0)
        cohort.append(total / np.linalg.norm(total))
    cohort = np.array(cohort)

    def stats(rel):
        top = np.sort(cohort @ centred[rel])[-2:]
        return top.mean(), top.std()

    normed = []
    for score, (_, e, t) in zip(expected, pairs):
        (me, se), (mt, st) = stats(e), stats(t)
        normed.append(0.5 * ((score - me) / se + (score - mt) / st))
    np.testing.assert_allclose(result.scores, normed, atol=1e-4)


def test_mean_subtraction_config_names_a_missing_list(tmp_path):
    from speakerid.config import ConfigError

    node = {"name": "x", "trials": "t.txt", "root": "r", "mean_subtraction": {"enabled": True, "list": None,
                                                                            "root": "r"}}
    with pytest.raises(ConfigError, match=r"eval\.mean_subtraction\.list"):
        Protocol.from_config(node)
