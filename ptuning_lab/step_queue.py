"""Training steps queued ahead: on a GPU the device never waits for the host between steps.

A step ends with a question only the host can act on: was the loss finite? Asking it at once
(``loss.item()``) makes the host wait for the whole step before it may queue the next, so the GPU idles
for the host's share of every step (the batch's layout, the encoder, loss, clip and AdamW launches).
With a fused AdamW the answer can wait one step:

- each step hands AdamW ``found_inf`` = "this loss, or any loss queued before it, was not finite", so
  a bad step and every step queued after it skip their update *on the device* (parameters, moments and
  step counts untouched);
- the host queues step k + 1 and only then reads step k's loss. When it is not finite, the schedule is
  rewound to before step k and ``FloatingPointError`` names step k: the encoder, the optimizer and the
  schedule are exactly as before step k, as if it had never run (tests/test_step_queue.py).

:func:`run` is what :meth:`Trainer.fit` calls between its evaluations; ``Trainer.train_step`` is one
step read at once. Steps overlap only where it is safe and pays: a single process, a fused optimizer,
``trainer.overlap_steps`` (on by default on CUDA), and no callbacks (a callback sees the state right
after its step). Otherwise every step is read before the next is queued, as before.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Queued:
    """A step handed to the device whose loss the host has not read yet."""

    index: int                     # the step's 0-based number (what an error names)
    loss: torch.Tensor             # 0-d, on the device
    bad: torch.Tensor              # 1.0 when this loss or an earlier queued one was not finite (AdamW's found_inf)
    lr: float                      # the learning rate after the step (what the history records)
    rewind: tuple                  # the schedule and the groups' learning rates before the step


def fused(trainer) -> bool:
    """True when every parameter group's AdamW is fused (it honours ``found_inf``; a state resumed from an
    unfused optimizer brings its groups' ``fused=None`` back)."""
    return all(group.get("fused") for group in trainer.optimizer.param_groups)


def can_overlap(trainer) -> bool:
    """True when :func:`run` may read each loss one step late (see the module's notes)."""
    return (getattr(trainer, "overlap_steps", False) and trainer.dist.world_size == 1 and fused(trainer)
            and not trainer.callbacks)


def queue(trainer, examples, index: int, after: Queued | None = None) -> Queued:
    """Hand one fused training step to the device: loss, backward, clip, AdamW (skipped on the device when
    this loss or ``after``'s was not finite), the schedule. Nothing here waits for the device. A trainer
    with recorded steps (:mod:`ptuning_lab.step_graphs`) replays one where it can."""
    graphs = getattr(trainer, "step_graphs", None)
    if graphs is not None:
        step = graphs.queue(examples, index, after)
        if step is not None:
            return step
    rewind = before(trainer)
    trainer.encoder.train()
    trainer.lm.begin_step()
    loss = trainer.loss(examples)
    loss.backward()
    loss = loss.detach()
    bad = (~torch.isfinite(loss)).float()
    if after is not None:
        bad = torch.maximum(bad, after.bad)
    trainer.optimizer.found_inf = bad
    if trainer.config.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainer.encoder.parameters(), trainer.config.grad_clip)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return Queued(index, loss, bad, trainer.scheduler.get_last_lr()[0], rewind)


def before(trainer) -> tuple:
    """What :func:`rewind` needs to undo a step: the schedule's state and the groups' learning rates."""
    return copy.deepcopy(trainer.scheduler.state_dict()), [g["lr"] for g in trainer.optimizer.param_groups]


def settle(trainer, step: Queued) -> float:
    """Read ``step``'s loss (the one wait for the device). Not finite: rewind the schedule to before the
    step (the device skipped its update and every later queued one) and raise ``FloatingPointError``."""
    value = step.loss.item()
    if not math.isfinite(value):
        rewind(trainer, step)
        raise FloatingPointError(f"the training loss became {value} at step {step.index}")
    return value


def rewind(trainer, step: Queued) -> None:
    """The schedule and learning rates as they were before ``step`` (the optimizer skipped it on the device)."""
    schedule, lrs = step.rewind
    trainer.scheduler.load_state_dict(schedule)
    for group, lr in zip(trainer.optimizer.param_groups, lrs):
        group["lr"] = lr
    trainer.step = step.index


def run(trainer, n: int, on_step: Callable[[float, float], None]) -> None:
    """``n`` training steps from ``trainer.step``; after each, ``trainer.step`` advances and
    ``on_step(loss, lr)`` records it, in order. Steps overlap when :func:`can_overlap`; a non-finite loss
    raises ``FloatingPointError`` with the trainer as it was before that step."""
    if not can_overlap(trainer):
        for _ in range(n):
            value = trainer.train_step(trainer.batch_examples(trainer.step))
            trainer.step += 1
            on_step(value, trainer.scheduler.get_last_lr()[0])
        return
    queued: list[Queued] = []            # handed to the device, loss not read yet (at most two)
    try:
        for _ in range(n):
            index = trainer.step + len(queued)
            queued.append(queue(trainer, trainer.batch_examples(index), index, after=queued[-1] if queued else None))
            if len(queued) == 2:             # the device has the next step already: read this one
                _count(trainer, queued, on_step)
        while queued:
            _count(trainer, queued, on_step)
    except KeyboardInterrupt:
        # Ctrl-C (most likely while the host waits for a loss): every queued step has changed the encoder
        # or was skipped on the device; count each finite one, rewind to before the first one that is not
        for step in queued:
            value = step.loss.item()
            if not math.isfinite(value):
                rewind(trainer, step)
                break
            trainer.step += 1
            on_step(value, step.lr)
        raise


def _count(trainer, queued: list[Queued], on_step) -> None:
    """Read the oldest queued step's loss; record it, or raise with the trainer rewound to before it."""
    value = settle(trainer, queued[0])
    step = queued.pop(0)
    trainer.step += 1
    on_step(value, step.lr)
