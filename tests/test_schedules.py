"""LR and margin schedules: values worked out by hand at chosen epochs, shape, batch-size invariance, the
optimizer hook (against torch's StepLR, and across a resume), constructor errors."""

import math

import pytest
import torch

from speakerid.schedules import MarginSchedule, StepDecay, WarmupCosine, WarmupExponential, epoch_at

# WeSpeaker's voxceleb recipe: 0.1 -> 5e-5 over 150 epochs, 6 warm-up epochs from 0.
WESPEAKER_LR = dict(initial_lr=0.1, final_lr=5e-5, epochs=150, warm_up_epochs=6)
# 3D-Speaker's voxceleb ECAPA recipe: 0.2 -> 5e-5 over 70 epochs, 5 warm-up epochs.
THREED_LR = dict(initial_lr=0.2, final_lr=5e-5, epochs=70, warm_up_epochs=5)


@pytest.mark.parametrize("epoch,expected", [
    (0, 0.0),
    (3, 0.5 * 0.1 * 0.0005 ** 0.02),   # half-way through the warm-up, times the decay so far: 0.04294864
    (6, 0.1 * 0.0005 ** 0.04),         # end of warm-up: 0.07378342, below 0.1
    (78, 0.1 * 0.0005 ** 0.52),        # 0.001920722
    (150, 5e-5),
    (200, 5e-5),                       # held after the last epoch
])
def test_warmup_exponential_values(epoch, expected):
    assert WarmupExponential(**WESPEAKER_LR).lr_at(epoch) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("epoch,expected", [
    (0, 5e-5),               # the warm-up starts from the final lr
    (2.5, 0.100025),         # half-way: (5e-5 + 0.2) / 2
    (5, 0.2),
    (21.25, 0.17071800044912508),  # a quarter of the cosine: 5e-5 + 0.19995 * (1 + cos(pi / 4)) / 2
    (37.5, 0.100025),        # half of the cosine
    (70, 5e-5),
    (80, 5e-5),
])
def test_warmup_cosine_values(epoch, expected):
    assert WarmupCosine(**THREED_LR).lr_at(epoch) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("gamma,step_size,epoch,expected", [
    (0.97, 1, 0, 1e-3), (0.97, 1, 0.99, 1e-3), (0.97, 1, 1.0, 9.7e-4), (0.97, 1, 2.5, 9.409e-4),
    (0.5, 3, 2.9, 1e-3), (0.5, 3, 3.0, 5e-4), (0.5, 3, 6.5, 2.5e-4),
])
def test_step_decay_values(gamma, step_size, epoch, expected):
    assert StepDecay(1e-3, gamma, step_size).lr_at(epoch) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("increase_type,epoch,expected", [
    ("exp", 10, 0.0), ("exp", 20, 0.0),
    ("exp", 25, 0.2 * (1 - 0.001 ** 0.25)),   # 0.1644344
    ("exp", 30, 0.2 * (1 - 0.001 ** 0.5)),    # 0.1936754
    ("exp", 40, 0.2), ("exp", 100, 0.2),
    ("linear", 10, 0.0), ("linear", 25, 0.05), ("linear", 30, 0.1), ("linear", 40, 0.2), ("linear", 100, 0.2),
])
def test_margin_values(increase_type, epoch, expected):
    schedule = MarginSchedule(increase_start_epoch=20, fix_start_epoch=40, initial_margin=0.0, final_margin=0.2,
                              increase_type=increase_type)
    assert schedule.margin_at(epoch) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_margin_matches_wespeakers_iteration_arithmetic():
    """WeSpeaker's increase_start_epoch 20 / fix_start_epoch 40 (1-based) are 19 / 39 epochs done here. Its
    margin at iteration i: fixed before (20-1)*E, final from (40-1)*E, and in between
    1 - exp(t * log(1e-3 / (1 + 1e-6))) of the way, t the fraction of the increase iterations. Its 1e-6 moves
    the margin by at most 0.2 * 6e-8."""
    per_epoch = 50
    start, fix = (20 - 1) * per_epoch, (40 - 1) * per_epoch
    schedule = MarginSchedule(increase_start_epoch=19, fix_start_epoch=39)
    for i in range(0, 45 * per_epoch, 7):
        if i >= fix:
            wespeaker = 0.2
        elif i >= start:
            wespeaker = 0.2 * (1.0 - math.exp((i - start) / (fix - start) * math.log(1e-3 / (1.0 + 1e-6))))
        else:
            wespeaker = 0.0
        assert schedule.margin_at(epoch_at(i, per_epoch)) == pytest.approx(wespeaker, rel=0, abs=0.2 * 6e-8), i


def test_exp_margin_steps_the_last_thousandth_at_the_fix_epoch():
    schedule = MarginSchedule(increase_start_epoch=20, fix_start_epoch=40, final_margin=0.2)
    just_before = schedule.margin_at(40 - 1e-9)
    assert just_before == pytest.approx(0.2 * 0.999, rel=1e-6)
    assert schedule.margin_at(40) == 0.2


def grid(last, points=2001):
    return [last * i / (points - 1) for i in range(points)]


def assert_monotonic(values, increasing):
    pairs = list(zip(values, values[1:]))
    assert all(b >= a for a, b in pairs) if increasing else all(b <= a for a, b in pairs)


@pytest.mark.parametrize("schedule", [WarmupExponential(**WESPEAKER_LR), WarmupCosine(**THREED_LR)])
def test_lr_rises_during_warm_up_then_falls(schedule):
    warm_up = [schedule.lr_at(e) for e in grid(schedule.warm_up_epochs)]
    decay = [schedule.lr_at(e) for e in grid(schedule.epochs + 10)[1:] if e >= schedule.warm_up_epochs]
    assert_monotonic(warm_up, increasing=True)
    assert_monotonic(decay, increasing=False)
    assert warm_up[-1] > warm_up[0] and decay[0] > decay[-1] == schedule.final_lr


def test_step_decay_and_margin_are_monotonic():
    assert_monotonic([StepDecay(1e-3, 0.97).lr_at(e) for e in grid(80)], increasing=False)
    for kind in MarginSchedule.INCREASE_TYPES:
        schedule = MarginSchedule(increase_start_epoch=20, fix_start_epoch=40, increase_type=kind)
        assert_monotonic([schedule.margin_at(e) for e in grid(100)], increasing=True)


@pytest.mark.parametrize("epoch", [0.25, 3.5, 5.75, 77.75, 149.5])
def test_same_point_of_training_same_value_whatever_the_steps_per_epoch(epoch):
    """A 4x larger batch (or 4x the GPUs) means 4x fewer steps per epoch; the schedule sees the same epoch."""
    schedules = [WarmupExponential(**WESPEAKER_LR), WarmupCosine(**THREED_LR), StepDecay(1e-3, 0.97)]
    margin = MarginSchedule(increase_start_epoch=2, fix_start_epoch=100)
    for steps_per_epoch in (100, 400, 1000):
        step = round(epoch * steps_per_epoch)
        at = epoch_at(step, steps_per_epoch)
        assert [s.lr_at(at) for s in schedules] == [s.lr_at(epoch) for s in schedules]
        assert margin.margin_at(at) == margin.margin_at(epoch)


def two_group_sgd(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    return model, torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                   {"params": model[1].parameters(), "lr": 0.02}], lr=0.1, momentum=0.9)


def train_steps(model, optimizer, schedule, steps, steps_per_epoch, first=0):
    seen = []
    for step in range(first, first + steps):
        schedule.apply_to(optimizer, epoch_at(step, steps_per_epoch))
        seen.append([g["lr"] for g in optimizer.param_groups])
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return seen


def test_apply_to_sets_every_group_each_step_keeping_their_ratio():
    schedule = WarmupExponential(initial_lr=0.1, final_lr=1e-3, epochs=3, warm_up_epochs=1)
    model, optimizer = two_group_sgd()
    seen = train_steps(model, optimizer, schedule, steps=31, steps_per_epoch=10)
    for step, (lr0, lr1) in enumerate(seen):
        e = step / 10
        expected = 0.1 * 0.01 ** (min(e, 3) / 3) * min(1.0, e)
        assert lr0 == pytest.approx(expected, rel=1e-12, abs=1e-18)
        assert lr1 == pytest.approx(0.2 * expected, rel=1e-12, abs=1e-18)  # built with 0.02 / 0.1
    assert seen[0] == [0.0, 0.0] and seen[30][0] == pytest.approx(1e-3, rel=1e-12)


def test_a_resumed_run_continues_on_the_same_curve():
    schedule = WarmupCosine(initial_lr=0.1, final_lr=1e-4, epochs=4, warm_up_epochs=1)
    model, optimizer = two_group_sgd()
    straight = train_steps(model, optimizer, schedule, steps=40, steps_per_epoch=10)

    model, optimizer = two_group_sgd()
    first = train_steps(model, optimizer, schedule, steps=17, steps_per_epoch=10)
    saved = optimizer.state_dict()
    model, optimizer = two_group_sgd(seed=1)  # a new process: the optimizer built again from the config
    optimizer.load_state_dict(saved)
    rest = train_steps(model, optimizer, schedule, steps=23, steps_per_epoch=10, first=17)
    assert first + rest == straight


def test_step_decay_per_step_equals_torch_steplr_per_epoch():
    steps_per_epoch, epochs = 7, 6
    model, ours = two_group_sgd()
    _, theirs = two_group_sgd()
    step_lr = torch.optim.lr_scheduler.StepLR(theirs, step_size=2, gamma=0.5)
    schedule = StepDecay(0.1, gamma=0.5, step_size=2)
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            schedule.apply_to(ours, epoch_at(epoch * steps_per_epoch + i, steps_per_epoch))
            assert [g["lr"] for g in ours.param_groups] == pytest.approx([g["lr"] for g in theirs.param_groups],
                                                                          rel=1e-15)
        theirs.step()
        step_lr.step()


@pytest.mark.parametrize("make,key", [
    (lambda: WarmupExponential(0.0, 0.0, 10, 1), "scheduler.initial_lr"),
    (lambda: WarmupExponential(0.1, 0.0, 10, 1), r"scheduler.final_lr=0.0 is not allowed: a learning rate with 0 < final_lr"),
    (lambda: WarmupExponential(0.1, 0.2, 10, 1), "scheduler.final_lr"),
    (lambda: WarmupExponential(0.1, 1e-3, 0, 0), "scheduler.epochs"),
    (lambda: WarmupExponential(0.1, 1e-3, 10, warm_up_epochs=11), r"scheduler.warm_up_epochs=11 is not allowed: .* \[0, epochs = 10\]"),
    (lambda: WarmupExponential(0.1, 1e-3, 10, warm_up_epochs=-1), "scheduler.warm_up_epochs"),
    (lambda: WarmupCosine(0.1, -1e-3, 10, 1), r"final_lr=-0.001 is not allowed: a learning rate with 0 <= final_lr"),
    (lambda: WarmupCosine(0.1, 1e-3, float("nan"), 1), "scheduler.epochs"),
    (lambda: WarmupCosine("0.1", 1e-3, 10, 1), "scheduler.initial_lr"),
    (lambda: StepDecay(0.1, gamma=0.0), "scheduler.gamma"),
    (lambda: StepDecay(0.1, gamma=1.5), "scheduler.gamma"),
    (lambda: StepDecay(0.1, step_size=0), "scheduler.step_size"),
    (lambda: StepDecay(0.1, step_size=1.5), "scheduler.step_size"),
    (lambda: MarginSchedule(20, 10), r"margin_schedule.fix_start_epoch=10 is not allowed: .* >= increase_start_epoch = 20"),
    (lambda: MarginSchedule(-1, 10), "margin_schedule.increase_start_epoch"),
    (lambda: MarginSchedule(0, 10, initial_margin=-0.1), "margin_schedule.initial_margin"),
    (lambda: MarginSchedule(0, 10, initial_margin=0.3, final_margin=0.2), "margin_schedule.final_margin"),
    (lambda: MarginSchedule(0, 10, increase_type="cosine"), "margin_schedule.increase_type=.cosine. is not allowed: exp or linear"),
    (lambda: WarmupExponential(**WESPEAKER_LR).lr_at(-0.5), "epoch"),
    (lambda: MarginSchedule(0, 10).margin_at(float("inf")), "epoch"),
    (lambda: epoch_at(5, 0), "steps_per_epoch"),
    (lambda: epoch_at(-1, 10), "step"),
])
def test_bad_arguments_are_errors(make, key):
    with pytest.raises(ValueError, match=key):
        make()


def test_margin_equal_epochs_switch_at_once():
    """WeSpeaker's large-margin fine-tuning: 0.5 from the first step (start = fix)."""
    schedule = MarginSchedule(increase_start_epoch=0, fix_start_epoch=0, initial_margin=0.5, final_margin=0.5)
    assert schedule.margin_at(0) == 0.5 and schedule.margin_at(3.2) == 0.5


def test_optimizer_built_with_zero_lr_in_group_zero_is_an_error():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
    with pytest.raises(ValueError, match="param group 0 was built with lr=0.0"):
        StepDecay(0.1).apply_to(optimizer, 0.0)
