"""Tiny end-to-end runs composed from the real configs (debug=tiny): the loss falls, TensorBoard gets the
scalars, checkpoints hold the full state, and a resumed run continues exactly where it stopped."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from speakerid.checkpoint import load_checkpoint
from speakerid.training import setup_run, train


def tensorboard_scalars(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tiny_run_learns_logs_and_checkpoints(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.epochs=6", "optim.lr=0.005", run_dir=tmp_path / "run")
    results = train(cfg)
    run_dir = tmp_path / "run"

    scalars = tensorboard_scalars(run_dir)
    for tag in ("train/loss", "train/top1", "train/lr", "val/eer", "val/min_dcf_p0.01", "val/min_dcf_p0.05"):
        assert tag in scalars, tag
    losses = scalars["train/loss"]
    assert len(losses) == 6 * 6  # 36 utterances / batch 6, logged every step
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6
    assert len(scalars["val/eer"]) == 6
    assert scalars["train/lr"][-1] == pytest.approx(0.005 * 0.97 ** 5)
    # each validation also logs a DET curve image and the target / non-target score histograms
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert len(acc.Images("val/det")) == 6 and acc.Images("val/det")[-1].width == 480
    trial_labels = [line.split()[0] for line in Path(cfg.eval.trials).read_text().splitlines()]
    assert acc.Histograms("val/scores_target")[-1].histogram_value.num == trial_labels.count("1")
    assert acc.Histograms("val/scores_nontarget")[-1].histogram_value.num == trial_labels.count("0")

    assert results["epochs"] == 6 and results["steps"] == 36
    assert results["val/eer"] == pytest.approx(scalars["val/eer"][-1])
    assert results["best/eer"] == pytest.approx(min(scalars["val/eer"]))
    assert (run_dir / "config.yaml").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 36 + 6 + 6  # steps, epoch ends, validations

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for key in ("model", "head", "optimizer", "scaler", "progress", "rng", "config", "speakers", "versions"):
        assert key in last, key
    assert last["progress"]["epoch"] == 6 and last["progress"]["step"] == 36
    assert last["config"]["model"]["channels"] == 16
    assert last["speakers"] == sorted(last["speakers"]) and len(last["speakers"]) == 6
    assert last["versions"]["torch"] == torch.__version__
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["progress"]["best_eer"] == pytest.approx(results["best/eer"])
    assert not list(run_dir.glob("checkpoints/*.tmp"))


def assert_same_final_state(run_a, run_b):
    """The last checkpoints of two runs hold the same progress and bit-identical model and head."""
    a = load_checkpoint(run_a / "checkpoints" / "last.pt")
    b = load_checkpoint(run_b / "checkpoints" / "last.pt")
    assert a["progress"] == b["progress"]
    for part in ("model", "head"):
        for name, tensor in a[part].items():
            torch.testing.assert_close(b[part][name], tensor, rtol=0, atol=0, msg=name)


def test_resume_continues_exactly(tiny_cfg, tmp_path):
    straight = train(tiny_cfg("trainer.epochs=3", run_dir=tmp_path / "straight"))
    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "first"))
    first = load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")

    resumed = setup_run(tiny_cfg("trainer.epochs=3", f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}",
                               run_dir=tmp_path / "second"))
    assert resumed.state.progress.epoch == 1 and resumed.state.progress.step == 6 and resumed.state.progress.position == 0
    state = resumed.optimisation.optimizer.state_dict()
    for key, saved in first["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state["state"][key][name], saved[name], rtol=0, atol=0)
    assert resumed.optimisation.lr_schedule.lr_at(1.0) == pytest.approx(0.001 * 0.97)
    results = resumed.fit()

    assert_same_final_state(tmp_path / "straight", tmp_path / "second")
    assert results["val/eer"] == straight["val/eer"]


def test_resume_true_picks_the_latest_run_of_the_same_name_and_settings(tiny_cfg, tmp_path):
    from speakerid.training.state import RunFinished

    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "runs" / "2026-01-01_00-00-00"))
    with pytest.raises(RunFinished, match="2026-01-01_00-00-00/checkpoints/last.pt: this run already finished"):
        setup_run(tiny_cfg("trainer.epochs=1", "trainer.resume=true", run_dir=tmp_path / "runs" / "2026-01-02_00-00-00"))
    # Other settings (here more epochs, which stretch the LR schedule) are another run: it starts afresh.
    other = setup_run(tiny_cfg("trainer.epochs=2", "trainer.resume=true", run_dir=tmp_path / "runs" / "2026-01-03_00-00-00"))
    assert other.state.progress.step == 0
    # Nothing to resume yet: a new run starts (job scripts can always pass resume=true).
    assert setup_run(tiny_cfg("trainer.resume=true", run_dir=tmp_path / "elsewhere" / "x")).state.progress.step == 0
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        setup_run(tiny_cfg(f"trainer.resume={tmp_path / 'nope.pt'}", run_dir=tmp_path / "elsewhere" / "y"))


def test_refuses_to_train_over_an_existing_run(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    with pytest.raises(FileExistsError, match="trainer.resume=true"):
        setup_run(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    # Nor resume another run's checkpoint into it: its checkpoints would be replaced by the other run's.
    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "other"))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "checkpoints").iterdir()}
    with pytest.raises(FileExistsError, match=r"already holds another run's checkpoints"):
        setup_run(tiny_cfg("trainer.epochs=2", f"trainer.resume={tmp_path / 'other' / 'checkpoints' / 'last.pt'}",
                           run_dir=tmp_path / "run"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "checkpoints").iterdir()} == before
    # Its own checkpoint resumes in place.
    setup_run(tiny_cfg("trainer.epochs=2", f"trainer.resume={tmp_path / 'run' / 'checkpoints' / 'last.pt'}",
                       run_dir=tmp_path / "run")).close()


def test_resume_with_another_architecture_names_the_keys(tiny_cfg, tmp_path):
    """From the configs when the checkpoint has one; from the weights' shapes when it has none."""
    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(RuntimeError, match=r"this run's settings differ from the checkpoint's .*model.channels: 16 -> 24"):
        setup_run(tiny_cfg("model.channels=24", f"trainer.resume={last}", run_dir=tmp_path / "other"))
    checkpoint = load_checkpoint(last)
    del checkpoint["config"]
    torch.save(checkpoint, tmp_path / "no_config.pt")
    with pytest.raises(RuntimeError, match=r"(?s)does not match the configured architecture\n  shapes differ \(\d+\):\n"
                       r".*    blocks.0.body.0.0.weight: checkpoint \(16, 16, 1\) vs model \(24, 24, 1\)"):
        setup_run(tiny_cfg("model.channels=24", f"trainer.resume={tmp_path / 'no_config.pt'}",
                           run_dir=tmp_path / "other2"))


def test_missing_train_files_are_reported_before_training(tiny_cfg, tiny_corpus_dir, tmp_path):
    lines = (tiny_corpus_dir / "train_list.txt").read_text().splitlines()
    bad = tmp_path / "train.txt"
    bad.write_text("\n".join(lines + ["syn00001 syn00001/s09/gone.wav", "syn00002 syn00002/s09/gone.wav"]) + "\n")
    from speakerid.data.lists import MissingFilesError

    with pytest.raises(MissingFilesError, match=r"2 of 38 files do not exist.*\n.*s09/gone.wav"):
        setup_run(tiny_cfg(f"data.train_list={bad}"))
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_unreadable_audio_during_training_names_the_file(tiny_cfg, tiny_corpus_dir, tmp_path):
    root = tmp_path / "wav"
    root.mkdir()
    all_lines = (tiny_corpus_dir / "train_list.txt").read_text().splitlines()
    good = all_lines[:3] + all_lines[6:9]  # two speakers
    import shutil

    for line in good:
        rel = line.split()[1]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_corpus_dir / "wav" / rel, root / rel)
    broken = good[0].split()[1]
    (root / broken).write_bytes(b"RIFF....not really a wav")
    lst = tmp_path / "train.txt"
    lst.write_text("\n".join(good) + "\n")
    from speakerid.data.audio import AudioError

    with pytest.raises(AudioError, match=broken.replace("/", ".")):
        train(tiny_cfg(f"data.train_list={lst}", f"data.train_root={root}", "trainer.epochs=1", "data.batch_size=2"))


def test_metrics_history_is_json_lines(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=1", run_dir=tmp_path / "run"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and "val/eer" in records[-1]


@pytest.fixture(scope="module")
def noise_dirs(tmp_path_factory):
    from speakerid.data.synthetic_noise import NoiseSpec, ensure_noise_corpus

    return ensure_noise_corpus(tmp_path_factory.mktemp("noise"), NoiseSpec(seconds=1.0, rirs=4))


def augment_overrides(noise_dirs):
    return ["augment=musan_rir", f"augment.musan_dir={noise_dirs['musan_dir']}",
            f"augment.rir_dir={noise_dirs['rir_dir']}", "augment.speed.factors=[0.9,1.0,1.1]",
            "augment.speed.speakers_as_new=true"]


def test_resume_continues_exactly_with_augmentation(tiny_cfg, tmp_path, noise_dirs):
    """Noise, reverberation and speed draws come from RNG state that the checkpoint restores, so a run
    resumed mid-epoch ends with the same parameters as an uninterrupted one, and logs the same means
    (the logging window of steps 4-6 spans the stop after step 4)."""
    aug = augment_overrides(noise_dirs) + ["trainer.log_every_steps=3"]
    straight = setup_run(tiny_cfg(*aug, "trainer.epochs=2", run_dir=tmp_path / "straight"))
    # The augmentation is really on: speed-perturbed copies are new classes, and the inputs change.
    assert straight.parts.head.num_classes == 3 * 6 and straight.noise_reverb is not None
    waves, labels = next(iter(straight.loader.loader))
    state = torch.get_rng_state()
    augmented, _ = straight.step.augment(waves, labels)
    torch.set_rng_state(state)  # leave the run's random stream as it was
    assert augmented.shape == (6, straight.speed.crop_samples) and waves.shape[1] == straight.speed.read_samples
    assert not torch.allclose(augmented, waves[:, :straight.speed.crop_samples].float(), atol=1e-3)
    straight.fit()

    # A run interrupted after step 4 of epoch 1 (of 6 steps), with a checkpoint written at that step.
    mid = setup_run(tiny_cfg(*aug, "trainer.epochs=1", "trainer.checkpoint_every_steps=4", run_dir=tmp_path / "mid"))
    original_step = mid.step
    calls = {"n": 0}

    class Stop(Exception):
        pass

    def step_then_stop(*args):
        if calls["n"] == 4:
            raise Stop
        calls["n"] += 1
        return original_step(*args)

    mid.step = step_then_stop
    with pytest.raises(Stop):
        mid.fit()
    resumed = setup_run(tiny_cfg(*aug, "trainer.epochs=2", f"trainer.resume={tmp_path / 'mid' / 'checkpoints' / 'last.pt'}",
                               run_dir=tmp_path / "second"))
    assert resumed.state.progress.step == 4 and resumed.state.progress.position == 24
    resumed.fit()

    assert_same_final_state(tmp_path / "straight", tmp_path / "second")
    # The epoch's means include the 4 steps taken before the stop, as the uninterrupted run's do.
    def logged(run):
        return {(r["step"], key): value for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                for key, value in r.items() if key in ("train/loss", "train/top1", "train/epoch_loss", "train/epoch_top1")}
    straight_logged, resumed_logged = logged("straight"), logged("second")
    assert ((6, "train/epoch_loss") in resumed_logged and (12, "train/epoch_loss") in resumed_logged)
    assert {k: v for k, v in straight_logged.items() if k[0] > 4} == resumed_logged


def test_margin_and_lr_schedules_step_every_step_and_resume_on_the_curve(tiny_cfg, tmp_path):
    """WeSpeaker-style schedules: the LR warms up and decays and the margin rises, both updated every step as
    functions of epochs done; a run resumed in the middle of the margin ramp continues on the same curves
    and ends with the parameters of an uninterrupted run."""
    from speakerid.schedules import MarginSchedule, WarmupExponential

    schedules = ["optim=sgd", "optim.lr=0.05", "scheduler=warmup_exponential", "scheduler.warm_up_epochs=1",
                 "margin_schedule=wespeaker", "margin_schedule.increase_start_epoch=0.5",
                 "margin_schedule.fix_start_epoch=2.5", "head.m=0.3", "trainer.epochs=3"]
    straight = train(tiny_cfg(*schedules, run_dir=tmp_path / "straight"))
    scalars = tensorboard_scalars(tmp_path / "straight")
    lr, margin = WarmupExponential(0.05, 5e-5, 3, 1), MarginSchedule(0.5, 2.5, 0.0, 0.3)
    steps = range(18)  # 6 steps per epoch; the value logged at step k+1 is the one used for the step after k
    assert scalars["train/lr"] == pytest.approx([lr.lr_at(k / 6) for k in steps], rel=1e-6)
    assert scalars["train/margin"] == pytest.approx([margin.margin_at(k / 6) for k in steps], rel=1e-6)
    assert 0 < scalars["train/margin"][8] < 0.3 and scalars["train/margin"][-1] == pytest.approx(0.3)

    # A run stopped after step 9 (of 18), in the middle of the ramp, with a checkpoint written at step 8.
    first = setup_run(tiny_cfg(*schedules, "trainer.checkpoint_every_steps=4", run_dir=tmp_path / "first"))
    original_step, calls = first.step, {"n": 0}

    def step_then_stop(*args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return original_step(*args)

    first.step = step_then_stop
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    saved = load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")["progress"]
    assert saved["step"] == 8 and saved["margin"] == pytest.approx(margin.margin_at(7 / 6))  # recorded mid-ramp
    resumed = train(tiny_cfg(*schedules, f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}",
                             run_dir=tmp_path / "second"))
    assert_same_final_state(tmp_path / "straight", tmp_path / "second")
    assert resumed["val/eer"] == straight["val/eer"]
    assert tensorboard_scalars(tmp_path / "second")["train/margin"] == pytest.approx(scalars["train/margin"][8:])


def test_model_config_differences_take_a_missing_key_as_the_classes_default(tiny_cfg):
    """A checkpoint written before a model switch existed has no such key: it was built with the default."""
    from omegaconf import OmegaConf

    from speakerid.builders import model_config_differences

    current = OmegaConf.to_container(tiny_cfg().model, resolve=True)
    old = {k: v for k, v in current.items() if k != "unbiased_context_std"}
    assert model_config_differences(old, current) == []
    assert model_config_differences(old, {**current, "unbiased_context_std": True}) == [
        "unbiased_context_std: False -> True"]
    assert model_config_differences({**current, "dilations": (2, 3, 4)}, {**current, "dilations": [2, 3, 5]}) == [
        "dilations: [2, 3, 4] -> [2, 3, 5]"]
    assert model_config_differences({**current, "_target_": "speakerid.models.ResNet"}, current) == [
        "_target_: speakerid.models.ResNet -> speakerid.models.ECAPATDNN"]


def test_fine_tuning_starts_from_a_checkpoint_with_a_new_optimizer(tiny_cfg, tmp_path):
    """trainer.init_from (large-margin fine-tuning): model and head weights loaded strictly, a new optimizer,
    new schedules and a new run folder; a mismatching checkpoint names the differing keys."""
    train(tiny_cfg("trainer.epochs=2", run_dir=tmp_path / "base"))
    base = tmp_path / "base" / "checkpoints" / "last.pt"
    saved = load_checkpoint(base)
    tuned = setup_run(tiny_cfg("trainer.epochs=1", f"trainer.init_from={base}", "head.m=0.5", "data.crop_frames=90",
                               run_dir=tmp_path / "lm"))
    for part, module in (("model", tuned.parts.model), ("head", tuned.parts.head)):
        for name, tensor in module.state_dict().items():
            torch.testing.assert_close(tensor, saved[part][name], rtol=0, atol=0, msg=name)
    assert tuned.optimisation.optimizer.state_dict()["state"] == {}  # not resumed: a fresh optimizer
    assert tuned.state.progress.step == 0 and tuned.parts.head.m == 0.5
    results = tuned.fit()
    assert results["steps"] == 6
    recorded = load_checkpoint(tmp_path / "lm" / "checkpoints" / "last.pt")["config"]["trainer"]["init_from"]
    assert recorded == str(base)  # the run records where it started

    # A new train list (other speakers): a new head, the model's weights kept.
    fresh = setup_run(tiny_cfg(f"trainer.init_from={base}", "trainer.init_head=false", "head.m=0.5",
                               run_dir=tmp_path / "new_head"))
    torch.testing.assert_close(fresh.parts.model.state_dict()["blocks.0.body.0.0.weight"],
                               saved["model"]["blocks.0.body.0.0.weight"], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"(?s)trainer.init_from=.*model: the checkpoint does not match.*"
                                           r"blocks.0.body.0.0.weight: checkpoint \(16, 16, 1\) vs model \(24, 24, 1\)"):
        setup_run(tiny_cfg("model.channels=24", f"trainer.init_from={base}", run_dir=tmp_path / "other"))
    # Same shapes, another computation: named too, before a step is taken.
    with pytest.raises(RuntimeError, match=r"trainer.init_from=.*: its model was built with other settings than "
                                           r"this run's \(checkpoint -> this run\): model.unbiased_context_std: False -> True"):
        setup_run(tiny_cfg("model.unbiased_context_std=true", f"trainer.init_from={base}", run_dir=tmp_path / "flag"))
    with pytest.raises(RuntimeError, match=r"other settings than this run's \(checkpoint -> this run\): "
                                           r"features.fbank.f_max: 7600.0 -> 4000; features.fbank.hop_length: 160 -> 320"):
        setup_run(tiny_cfg("features.fbank.f_max=4000", "features.fbank.hop_length=320", f"trainer.init_from={base}",
                           run_dir=tmp_path / "fbank"))


def test_a_resume_with_other_model_fbank_or_optimizer_settings_stops_and_other_changes_are_named(tiny_cfg, tmp_path,
                                                                                                  caplog):
    """The optimizer's settings come back from its state (a new weight decay would be ignored, another
    optimizer fail at its first step) and the weights mean what the model and fbank settings say: a resume
    that changes them stops, naming them; other changes (more epochs, another margin) resume with a
    warning that names them."""
    import logging

    train(tiny_cfg("trainer.epochs=1", "~eval", run_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    for overrides, named in ((["optim.weight_decay=0.5"], r"optim.weight_decay: 2e-05 -> 0.5"),
                             (["optim=sgd"], r"optim._target_: 'torch.optim.Adam' -> 'torch.optim.SGD'"),
                             (["model.unbiased_context_std=true"], r"model.unbiased_context_std: False -> True"),
                             (["features.fbank.n_mels=40", "model.in_dim=40"], r"features.fbank.n_mels: 80 -> 40")):
        with pytest.raises(RuntimeError, match=rf"last.pt: this run's settings differ from the checkpoint's in what "
                                               rf"its weights or optimizer state mean \(checkpoint -> this run\): .*{named}"):
            setup_run(tiny_cfg(*overrides, "trainer.epochs=2", "~eval", f"trainer.resume={last}",
                               run_dir=tmp_path / "b"))
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        resumed = setup_run(tiny_cfg("trainer.epochs=2", "head.m=0.3", "optim.lr=0.0005", "~eval",
                                     f"trainer.resume={last}", run_dir=tmp_path / "c"))
    [warning] = [r.getMessage() for r in caplog.records if "differ from the checkpoint's" in r.getMessage()]
    assert "head.m: 0.2 -> 0.3" in warning and "trainer.epochs: 1 -> 2" in warning and "run_dir" not in warning
    # The LR schedule sets the optimizer's lr at every step: a lower optim.lr takes effect (named, allowed).
    assert "optim.lr: 0.001 -> 0.0005" in warning
    resumed.optimisation.apply_schedules(resumed.state.progress.epoch, 0, resumed.parts.head)
    assert resumed.optimisation.optimizer.param_groups[0]["lr"] < 0.0005
    assert resumed.state.progress.epoch == 1
    resumed.close()


def test_a_resume_does_not_read_the_headers_of_unchanged_training_files_again(tiny_cfg, tmp_path, caplog):
    import logging

    train(tiny_cfg("trainer.epochs=1", "~eval", run_dir=tmp_path / "a"))
    assert (tmp_path / "a" / "audio_headers.npz").is_file()
    with caplog.at_level(logging.INFO, logger="speakerid"):
        setup_run(tiny_cfg("trainer.epochs=2", "~eval", f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}",
                           run_dir=tmp_path / "b")).close()
    assert "36 of 36 files unchanged since" in caplog.text and (tmp_path / "b" / "audio_headers.npz").is_file()


def test_a_resume_with_another_batch_size_continues_on_the_same_schedule(tiny_cfg, tmp_path):
    """Schedules are functions of epochs done. The run's step count was divided by the new steps per epoch:
    36 utterances, 2 epochs of 6 steps at batch 6, resumed at batch 3 (12 steps per epoch) began at epoch 1."""
    train(tiny_cfg("trainer.epochs=2", "scheduler.gamma=0.5", "~eval", run_dir=tmp_path / "a"))
    train(tiny_cfg("trainer.epochs=3", "scheduler.gamma=0.5", "data.batch_size=3", "~eval",
                   f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}", run_dir=tmp_path / "b"))
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["train/lr"] for row in rows if "train/lr" in row]
    assert len(lrs) == 12 and lrs == [pytest.approx(1e-3 * 0.5 ** 2, rel=1e-12)] * 12  # the third epoch's


def test_a_train_list_edited_since_the_checkpoint_stops_a_mid_epoch_resume_only(tiny_cfg, tiny_corpus_dir, tmp_path,
                                                                                   caplog):
    """The rest of an epoch is a permutation of the list it was drawn from: after a line is removed (a bad
    file, say) a mid-epoch checkpoint cannot go on as it would have, and the resume stops saying why; an
    epoch-end checkpoint goes on with the new list and a warning."""
    import logging
    import shutil

    lines = (tiny_corpus_dir / "train_list.txt").read_text().splitlines()
    edited = tmp_path / "edited.txt"
    edited.write_text("\n".join(lines[:-1]) + "\n")  # the last utterance's speaker keeps others
    # A mid-epoch checkpoint lasts only until the epoch ends: copy it aside when it is written.
    first = setup_run(tiny_cfg("trainer.epochs=1", "trainer.checkpoint_every_steps=4", "~eval", run_dir=tmp_path / "a"))
    save = first.state.checkpoints.save
    mid = tmp_path / "mid.pt"

    def save_and_copy(state, step):
        path = save(state, step)
        if state["progress"]["position"]:
            shutil.copyfile(path, mid)
        return path

    first.state.checkpoints.save = save_and_copy
    assert first.fit()["epochs"] == 1
    end = tmp_path / "a" / "checkpoints" / "last.pt"
    assert load_checkpoint(mid)["progress"]["position"] > 0 == load_checkpoint(end)["progress"]["position"]
    assert load_checkpoint(end)["train_list"]["utterances"] == len(lines)
    common = [f"data.train_list={edited}", f"data.train_root={tiny_corpus_dir / 'wav'}", "~eval", "trainer.epochs=2"]
    with pytest.raises(RuntimeError, match=rf"(?s)edited.txt has changed since {mid} was written \({len(lines)} -> "
                                           rf"{len(lines) - 1} utterances\), which was written after \d+ utterances "
                                           r"of epoch 1: .*resume from a checkpoint written at the end of an epoch"):
        setup_run(tiny_cfg(*common, f"trainer.resume={mid}", run_dir=tmp_path / "b"))
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        resumed = setup_run(tiny_cfg(*common, f"trainer.resume={end}", run_dir=tmp_path / "c"))
    assert any("the epochs from here on are drawn from the list as it is now" in r.getMessage() for r in caplog.records)
    assert resumed.state.progress.epoch == 1
    resumed.close()
