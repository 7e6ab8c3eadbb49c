"""Running a template: the plain path or the fast path, behind one interface, chosen in one place.

Both forwards are built for one frozen model and one parsed :class:`~ptuning_lab.templates.Template`
and answer the same calls:

- ``last_logits(inputs, prompt, candidates=None)`` -- ``(B, vocab)`` (or ``(B, C)``) next-token
  logits after the template filled with each input, float32, differentiable w.r.t. ``prompt``;
- ``answer_logits(inputs, answer_ids, prompt)`` -- ``(B, L, vocab)`` logits at every token of each
  answer (teacher forcing), differentiable: the whole-answer loss and exact match;
- ``evaluate(examples, prompt, answers=None, **task)`` -- ``evaluation.evaluate``'s metrics dict;
- ``uses_fast_path`` and ``fallback_reason`` -- which path runs, and why not the fast one.

:func:`make_forward` is the only place that decides between them; the trainer calls it once.

    >>> forward = make_forward(lm, Template.parse("The capital of [X] is [P]*3"), FastConfig())  # doctest: +SKIP
    >>> forward.last_logits(["France"], prompt).shape                                          # doctest: +SKIP
    torch.Size([1, 49152])
"""
from __future__ import annotations

from typing import Sequence

import torch

from .evaluation import answer_logits, evaluate
from .fast import FastConfig, FastForward
from .prompts import INPUT_LAYER
from .templates import Template


class PlainForward:
    """The reference path: ``lm.last_logits(lm.encode(template, inputs), prompt, candidates)``.

    Every prompt works here (input-layer ``(n, d)`` tensors and K/V prefixes alike).
    """

    uses_fast_path = False

    def __init__(self, lm, template, reason: str = "the plain path was asked for (fast=False)"):
        self.lm, self.template = lm, Template.parse(template)
        self.fallback_reason = reason

    def last_logits(self, inputs: Sequence, prompt, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, vocab)`` (or ``(B, C)``) next-token logits after the template, float32 (inputs as in ``encode``)."""
        return self.lm.last_logits(self.lm.encode(self.template, inputs), prompt, candidates)

    def answer_logits(self, inputs: Sequence[str], answer_ids, prompt) -> torch.Tensor:
        """``(B, L, vocab)`` logits at every answer token (teacher forcing): ``evaluation.answer_logits``."""
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        return answer_logits(self.lm, self.template, inputs, answer_ids, prompt)

    def evaluate(self, examples, prompt, answers: Sequence[str] | None = None, **task) -> dict:
        """``evaluation.evaluate`` on the plain path: ``{"n", "p_at_1", "loss"}`` (+ ``"candidate_accuracy"``
        and the task's metrics; ``task``: ``verbalizer=``, ``metrics=``, ``scoring=``)."""
        return evaluate(self.lm, self.template, examples, prompt, answers, **task)


def make_forward(lm, template, fast: FastConfig | bool | None = True, *, produces: str = INPUT_LAYER):
    """The forward for ``lm`` and ``template``: :class:`FastForward` or :class:`PlainForward`.

    ``fast``: the fast path's settings (``True`` = ``FastConfig()``; ``False``/``None`` = the plain
    path). ``produces``: what the prompt method makes (``ptuning_lab.prompts.INPUT_LAYER`` or
    ``KEY_VALUE``); a K/V prefix runs the model itself, so it always takes the plain path. Even
    when chosen, the fast path falls back to the plain one by itself where it cannot be exact
    (``FastForward.fallback_reason`` then says why).
    """
    template = Template.parse(template)
    if produces != INPUT_LAYER:
        return PlainForward(lm, template, "the prompt is not input-layer vectors: it runs the model itself")
    if fast is None or fast is False:
        return PlainForward(lm, template)
    return FastForward(lm, template, FastConfig() if fast is True else fast)


__all__ = ["PlainForward", "make_forward"]
