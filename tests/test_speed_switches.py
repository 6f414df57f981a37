"""Speed switches, each set through the config of a real run: torch.compile (trainer.compile) and bf16
autocast (trainer.precision=bf16, run on the CPU's bf16 autocast) give the fp32 step within tolerance;
trainer.cudnn_benchmark reaches cuDNN (and its outputs match the default algorithms on CUDA). channels-last
is not offered: PyTorch defines it for 4-D tensors only, and ECAPA-TDNN's Conv1d tensors are 3-D."""

import copy

import numpy as np
import pytest
import torch

from speakerid.training import setup_run


def one_step(run, waves, labels):
    torch.manual_seed(0)
    result = run.step(waves, labels)
    assert result.finite.item()
    return result.loss.item(), {k: v.detach().clone() for k, v in run.parts.model.state_dict().items()}


def same_weights(target, source):
    target.parts.model.load_state_dict(source.parts.model.state_dict())
    target.parts.head.load_state_dict(source.parts.head.state_dict())


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tiny_cfg, tmp_path):
    # SGD, not Adam: Adam divides by the gradient's own size, so parameters whose true gradient is zero
    # (biases before a BatchNorm or a softmax over time) move by +-lr on rounding noise in either mode.
    eager = setup_run(tiny_cfg("optim=sgd", run_dir=tmp_path / "eager"))
    compiled = setup_run(tiny_cfg("optim=sgd", "trainer.compile=true", run_dir=tmp_path / "compiled"))
    same_weights(compiled, eager)
    assert compiled.parts.train_model is not compiled.parts.model  # the step really goes through torch.compile
    waves, labels = next(iter(eager.loader.loader))
    for _ in range(2):  # the second step runs the compiled graph with updated weights and optimizer state
        loss_e, params_e = one_step(eager, waves, labels)
        loss_c, params_c = one_step(compiled, waves, labels)
        assert loss_c == pytest.approx(loss_e, rel=1e-4, abs=1e-5)
        for name, value in params_e.items():
            torch.testing.assert_close(params_c[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert list(compiled.parts.model.state_dict()) == list(eager.parts.model.state_dict())  # no _orig_mod. keys


@pytest.mark.parametrize("optimised", [
    ["trainer.precision=bf16"],
    pytest.param(["trainer.precision=bf16", "trainer.compile=true"], marks=pytest.mark.slow),
], ids=["bf16", "bf16_compiled"])
def test_optimised_training_step_matches_eager_fp32(tiny_cfg, tmp_path, optimised):
    """trainer.precision=bf16 (with trainer.compile=true: the fastest step on a GPU): the model runs in bf16,
    the fbank and the margin arithmetic in float32; the step's loss and its parameter update are those of
    the eager fp32 step within bf16's precision."""
    fp32 = setup_run(tiny_cfg("optim=sgd", run_dir=tmp_path / "fp32"))
    bf16 = setup_run(tiny_cfg("optim=sgd", *optimised, run_dir=tmp_path / "bf16"))
    same_weights(bf16, fp32)
    compiled = "trainer.compile=true" in optimised
    assert (bf16.parts.train_model is not bf16.parts.model) is compiled
    seen = {}
    if not compiled:  # hooks inside a compiled graph would be traced, not called
        bf16.parts.fbank.register_forward_hook(lambda m, i, out: seen.__setitem__("features", out.dtype))
        bf16.parts.model.register_forward_hook(lambda m, i, out: seen.__setitem__("embeddings", out.dtype))
    start = {k: v.clone() for k, v in fp32.parts.model.state_dict().items()}
    waves, labels = next(iter(fp32.loader.loader))
    loss32, params32 = one_step(fp32, waves, labels)
    loss16, params16 = one_step(bf16, waves, labels)
    if not compiled:
        assert seen == {"features": torch.float32, "embeddings": torch.bfloat16}
    assert loss16 == pytest.approx(loss32, rel=0.02)
    update32 = torch.cat([(params32[k] - start[k]).flatten() for k in start if start[k].is_floating_point()])
    update16 = torch.cat([(params16[k] - start[k]).flatten() for k in start if start[k].is_floating_point()])
    assert torch.nn.functional.cosine_similarity(update16, update32, dim=0) > 0.98
    assert (update16 - update32).norm() < 0.2 * update32.norm()


@pytest.fixture
def global_torch_flags():
    """trainer.cudnn_benchmark and trainer.deterministic set process-wide flags: restore them after."""
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    yield
    torch.backends.cudnn.benchmark = benchmark
    torch.use_deterministic_algorithms(deterministic)


@pytest.mark.parametrize("benchmark,deterministic,expected", [
    (True, False, True), (False, False, False), (True, True, False)])
def test_cudnn_benchmark_follows_the_config(tiny_cfg, tmp_path, global_torch_flags, benchmark, deterministic,
                                            expected):
    torch.backends.cudnn.benchmark = not expected
    setup_run(tiny_cfg(f"trainer.cudnn_benchmark={benchmark}", f"trainer.deterministic={deterministic}",
                       run_dir=tmp_path / "run"))
    assert torch.backends.cudnn.benchmark is expected
    assert torch.are_deterministic_algorithms_enabled() is deterministic


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cudnn.benchmark only applies on CUDA")
def test_cudnn_benchmark_matches_default_algorithms(tiny_cfg, tmp_path, global_torch_flags):
    features = torch.randn(8, 80, 200, device="cuda")
    outputs = []
    for benchmark in (False, True):
        run = setup_run(tiny_cfg("trainer.device=cuda", f"trainer.cudnn_benchmark={benchmark}",
                                 run_dir=tmp_path / f"run{benchmark}"))
        assert torch.backends.cudnn.benchmark is benchmark
        torch.manual_seed(0)
        model = copy.deepcopy(run.parts.model).eval()
        with torch.no_grad():
            outputs.append(model(features))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)


@pytest.fixture
def torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_threads_leave_a_core_to_each_loader_worker(monkeypatch):
    """trainer.num_threads=auto on a CPU: one intra-op thread per core the loader workers leave free, so
    that no thread waits at torch's barriers for a core another thread or process holds."""
    from speakerid.training import setup

    monkeypatch.setattr(setup, "available_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [setup.resolve_num_threads("auto", cpu, workers) for workers in (0, 1, 2, 3)] == [2, 1, 1, 1]
    assert setup.resolve_num_threads("auto", cuda, 1) is None  # the host thread only launches work
    assert setup.resolve_num_threads(3, cpu, 1) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's choice for several processes per node
    assert setup.resolve_num_threads("auto", cpu, 1) is None


def test_the_run_sets_torch_threads_from_the_config(tiny_cfg, tmp_path, torch_threads, monkeypatch):
    from speakerid.resources import available_cpus

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(3)
    setup_run(tiny_cfg("trainer.num_threads=1", run_dir=tmp_path / "one"))
    assert torch.get_num_threads() == 1
    setup_run(tiny_cfg("data.num_workers=1", run_dir=tmp_path / "auto"))  # debug=tiny runs on the CPU
    assert torch.get_num_threads() == max(1, available_cpus() - 1)


@pytest.mark.parametrize("cpus,cpu_workers,gpu_workers", [(1, 0, 1), (2, 1, 1), (4, 2, 2), (16, 2, 8), (64, 2, 8)])
def test_auto_loader_workers(monkeypatch, cpus, cpu_workers, gpu_workers):
    """data.num_workers=auto: with a GPU half the CPUs, at most 8; on a CPU half of them, at most 2."""
    from speakerid import resources
    from speakerid.training.setup import resolve_num_workers

    monkeypatch.setattr(resources, "available_cpus", lambda: cpus)
    assert resolve_num_workers("auto", torch.device("cpu")) == cpu_workers
    assert resolve_num_workers("auto", torch.device("cuda")) == gpu_workers
    assert resolve_num_workers(5, torch.device("cuda")) == 5


def test_read_threads_give_the_same_batches_and_errors(tiny_cfg, tmp_path):
    """data.read_threads: a loader process reads a batch's crops on several threads, and the batches of an
    epoch are those of one thread (each crop comes from its own seed), in a real loader process; a bad
    file is still the AudioError that names it."""
    from speakerid.data.audio import AudioError

    def epoch(threads, run_dir):
        run = setup_run(tiny_cfg(f"data.read_threads={threads}", "data.num_workers=1", run_dir=tmp_path / run_dir))
        assert run.loader.dataset.read_threads == threads
        return [(waves.clone(), labels.clone()) for waves, labels in run.loader.loader]

    one, four = epoch(1, "one"), epoch(4, "four")
    assert len(one) == len(four) > 1
    for (waves_1, labels_1), (waves_4, labels_4) in zip(one, four):
        assert torch.equal(waves_1, waves_4) and torch.equal(labels_1, labels_4)

    run = setup_run(tiny_cfg("data.read_threads=3", run_dir=tmp_path / "bad"))
    dataset = run.loader.dataset
    items = [(i, 1000 + i) for i in range(6)]
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1]
               for a, b in zip(dataset.__getitems__(items), [dataset[item] for item in items]))
    dataset.paths = list(dataset.paths)
    dataset.paths[4] = "missing/file.wav"
    with pytest.raises(AudioError, match="missing/file.wav"):
        dataset.__getitems__(items)


def test_read_threads_must_be_a_positive_integer(tiny_cfg, tmp_path):
    """Refused by the config check, before any process or loader starts."""
    from speakerid.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.read_threads=0 is not allowed: an integer >= 1"):
        setup_run(tiny_cfg("data.read_threads=0", run_dir=tmp_path / "zero"))
    assert not (tmp_path / "zero").exists()
