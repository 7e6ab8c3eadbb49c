"""Steps queued ahead (ptuning_lab.step_queue): reading each loss one step late changes nothing a user
sees -- the same history, encoder, optimizer and schedule as reading it at once, also when a loss turns
non-finite or the run is interrupted in the middle of a queued stretch. Run on a CPU with overlap forced
on (it is on by default only on CUDA, where it pays)."""
import copy

import pytest
import torch

from ptuning_lab import step_queue
from ptuning_lab.prompts import build_encoder
from ptuning_lab.tasks import Example, Task
from ptuning_lab.trainer import TrainConfig, Trainer

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light", "table", "sugar", "horse", "glass"]


def _task():
    answers = ["north", "south", "east", "west"]
    exs = [Example(f"{w} {i}", answers[i % 4]) for i, w in enumerate(WORDS * 2)]
    return Task("toy", "Direction of [X] is", exs[:12], exs[12:18], exs[18:], sorted(answers))


@pytest.fixture
def lm(lm64):
    """conftest's tiny float64 GPT-2 and Llama (the tests here change trainers, never the model)."""
    return lm64


def _trainer(lm, overlap, method="mlp", **cfg):
    init, template = ("random", "Direction of [X] is") if method == "prefix" else ("vocab", "[P]*2 Direction of [X] is [P]")
    enc = build_encoder(method, 3, lm.embedding.detach(), init=init, seed=0, lm=lm).double()
    # warm-up, decay and clipping all on: the schedule and the clip are part of what must match
    cfg = {"lr": 1e-2, "batch_size": 4, "max_steps": 11, "eval_every": 4, "snapshot_every": 100,
           "warmup_ratio": 0.2, "grad_clip": 0.5, **cfg}
    trainer = Trainer(lm, enc, _task(), template, TrainConfig(**cfg), progress=False)
    trainer.overlap_steps = overlap
    return trainer


def _state(trainer):
    return (copy.deepcopy(trainer.encoder.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()["state"]),
            trainer.scheduler.last_epoch, [g["lr"] for g in trainer.optimizer.param_groups], trainer.step)


def _assert_same(a, b):
    enc_a, opt_a, epoch_a, lr_a, step_a = a
    enc_b, opt_b, epoch_b, lr_b, step_b = b
    for name in enc_a:
        assert torch.equal(enc_a[name], enc_b[name]), name
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        for name in opt_a[key]:
            assert torch.equal(opt_a[key][name], opt_b[key][name]), (key, name)
    assert (epoch_a, lr_a, step_a) == (epoch_b, lr_b, step_b)


def _nan_at(trainer, calls: set[int], error=None):
    """Make the loss of the given loss calls (0-based, in call order) NaN, or raise ``error`` there."""
    real, count = trainer.loss, [0]

    def loss(examples):
        i = count[0]
        count[0] += 1
        if i in calls and error is not None:
            raise error
        value = real(examples)
        return value * float("nan") if i in calls else value
    trainer.loss = loss


@pytest.mark.parametrize("method", ["mlp", "lstm", "direct", "prefix"])
def test_overlapped_steps_equal_steps_read_at_once(lm, method):
    runs = []
    for overlap in (False, True):
        trainer = _trainer(lm, overlap, method)
        assert step_queue.can_overlap(trainer) is overlap
        result = trainer.fit()
        runs.append((result, _state(trainer), trainer.history))
    (r0, s0, h0), (r1, s1, h1) = runs
    assert h0["train"] == h1["train"] and len(h1["train"]) == 11            # every loss and lr, in order
    assert [e["dev_loss"] for e in h0["eval"]] == [e["dev_loss"] for e in h1["eval"]]
    _assert_same(s0, s1)
    assert r0.best_step == r1.best_step and r0.best_dev == r1.best_dev      # encoder above: the best state


def test_the_host_reads_each_loss_after_queuing_the_next(lm, monkeypatch):
    trainer = _trainer(lm, True, max_steps=4, eval_every=4)
    order = []
    queue, settle = step_queue.queue, step_queue.settle
    monkeypatch.setattr(step_queue, "queue", lambda t, ex, i, after=None: order.append(f"q{i}") or queue(t, ex, i, after))
    monkeypatch.setattr(step_queue, "settle", lambda t, s: order.append(f"r{s.index}") or settle(t, s))
    trainer.fit()
    assert order == ["q0", "q1", "r0", "q2", "r1", "q3", "r2", "r3"]


@pytest.mark.parametrize("bad", [0, 5, 6, 10])
def test_a_non_finite_loss_in_a_queued_stretch_leaves_the_state_before_it(lm, bad):
    """Step ``bad``'s loss is NaN; the step after it was already queued when the host saw it. Both are
    undone: the encoder, AdamW's moments and step counts, the schedule and the history are those of the
    run read step by step, which stops with the state before step ``bad``."""
    states = []
    for overlap in (False, True):
        trainer = _trainer(lm, overlap)
        _nan_at(trainer, {bad})
        with pytest.warns(UserWarning, match=f"nan at step {bad}"):
            result = trainer.fit()
        assert result.stopped == "non_finite_loss"
        assert len(trainer.history["train"]) == bad and trainer.step == bad
        states.append((_state(trainer), trainer.history["train"]))
    assert states[0][1] == states[1][1]
    _assert_same(states[0][0], states[1][0])


def test_training_goes_on_after_a_non_finite_queued_step(lm):
    """The 'skip' flag does not stick: after the error, the next steps update the encoder again."""
    trainer = _trainer(lm, True, max_steps=20)
    _nan_at(trainer, {2})
    with pytest.warns(UserWarning, match="nan at step 2"):
        trainer.fit()
    before = copy.deepcopy(trainer.encoder.state_dict())
    trainer.loss = Trainer.loss.__get__(trainer)
    losses = []
    losses = trainer.train_steps(3)
    assert trainer.step == 5 and len(losses) == 3 and all(loss == loss for loss in losses)
    assert any(not torch.equal(v, before[k]) for k, v in trainer.encoder.state_dict().items())


def test_an_interrupt_in_a_queued_stretch_keeps_every_applied_step(lm):
    """Ctrl-C while step 6 is being queued: step 5 already changed the encoder, so it is counted."""
    runs = []
    for overlap in (False, True):
        trainer = _trainer(lm, overlap)
        _nan_at(trainer, {6}, error=KeyboardInterrupt())
        with pytest.warns(UserWarning, match="interrupted at step 6"):
            result = trainer.fit()
        assert result.stopped == "interrupted" and len(trainer.history["train"]) == 6
        runs.append((_state(trainer), trainer.history["train"]))
    assert runs[0][1] == runs[1][1]
    _assert_same(runs[0][0], runs[1][0])


def test_steps_are_read_at_once_with_callbacks_or_an_unfused_optimizer(lm):
    from ptuning_lab.trainer import Callback

    trainer = _trainer(lm, True)
    assert step_queue.can_overlap(trainer)
    trainer.callbacks.append(Callback())
    assert not step_queue.can_overlap(trainer)              # a callback sees the state right after its step
    trainer.callbacks.clear()
    for group in trainer.optimizer.param_groups:
        group["fused"] = None
    assert not step_queue.can_overlap(trainer)              # an unfused AdamW cannot skip on the device


def test_ctrl_c_while_the_host_waits_for_a_loss_counts_both_queued_steps(lm, monkeypatch):
    """Ctrl-C while reading step 5's loss (where a GPU host blocks): steps 5 and 6 are on the device
    already, so both are counted; the state equals a run read at once and interrupted before step 7."""
    ref = _trainer(lm, False)
    _nan_at(ref, {7}, error=KeyboardInterrupt())
    with pytest.warns(UserWarning, match="interrupted at step 7"):
        ref.fit()
    trainer = _trainer(lm, True)
    real, hit = step_queue.settle, []

    def settle(t, step):
        if step.index == 5 and not hit:
            hit.append(1)
            raise KeyboardInterrupt
        return real(t, step)
    monkeypatch.setattr(step_queue, "settle", settle)
    with pytest.warns(UserWarning, match="interrupted at step 7"):
        result = trainer.fit()
    assert hit and result.stopped == "interrupted"
    assert trainer.history["train"] == ref.history["train"] and len(trainer.history["train"]) == 7
    _assert_same(_state(ref), _state(trainer))
