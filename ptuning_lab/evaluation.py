"""Metrics: first-token P@1 over the whole vocabulary (LAMA style) and candidate accuracy.

Candidate accuracy ranks the task's full answers (possibly several tokens each) by their summed
log-likelihood after the template. The first token's log-probability is an upper bound on a full
answer's score (later tokens only add log-probabilities <= 0), so answers are scored in order of
that bound and the search stops as soon as no remaining answer can win: exact, and cheap when the
model is confident.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .frozen_lm import FrozenLM
from .templates import Template, warn_unused_fields


def first_token_ids(lm: FrozenLM, targets: Sequence[str]) -> torch.Tensor:
    """(N,) id of the first token of each answer as it follows a template (" Paris" -> id)."""
    ids = []
    for t in targets:
        toks = lm.answer_ids(t)
        if not toks:
            raise ValueError(f"the answer {t!r} tokenizes to nothing; remove empty answers from the task.")
        ids.append(toks[0])
    return torch.tensor(ids, dtype=torch.long, device=lm.device)


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def best_candidates(lm: FrozenLM, template, inputs: Sequence[str], answers: Sequence[str],
                    prompt: torch.Tensor | None, log_probs: torch.Tensor, chunk: int = 32) -> list[int]:
    """Index into ``answers`` of the highest-likelihood full answer for each input.

    ``log_probs``: (B, vocab) next-token log-probabilities after the template, already computed.
    """
    answer_ids = [lm.answer_ids(a) for a in answers]
    first = torch.tensor([ids[0] for ids in answer_ids], device=log_probs.device)
    multi = [len(ids) > 1 for ids in answer_ids]
    choice = []
    for b, x in enumerate(inputs):
        bound = log_probs[b, first].tolist()                   # upper bound of each answer's score
        order = sorted(range(len(answers)), key=lambda a: -bound[a])
        best, best_score = None, -math.inf
        pos = 0
        while pos < len(order) and bound[order[pos]] > best_score:
            group = []
            while pos < len(order) and bound[order[pos]] > best_score and len(group) < chunk:
                a = order[pos]
                pos += 1
                if not multi[a]:
                    if bound[a] > best_score:
                        best, best_score = a, bound[a]
                else:
                    group.append(a)
            if group:
                scores = lm.continuation_logprob(template, [x] * len(group), [answer_ids[a] for a in group], prompt)
                for a, s in zip(group, scores.tolist()):
                    if s > best_score:
                        best, best_score = a, s
        choice.append(best)
    return choice


@torch.no_grad()
def evaluate(lm: FrozenLM, template, examples, prompt: torch.Tensor | None = None,
             answers: Sequence[str] | None = None, batch_size: int = 64) -> dict:
    """Evaluate a (possibly manual) template on examples.

    Returns ``{"n", "p_at_1", "loss"}`` plus ``"candidate_accuracy"`` when ``answers`` is given.
    ``p_at_1``: the argmax over the whole vocabulary equals the answer's first token.
    ``loss``: mean cross-entropy of that first token (the training objective).
    """
    prompt = prompt.detach() if isinstance(prompt, torch.Tensor) else prompt
    template = Template.parse(template)                  # once, not per batch
    return score(lm, template, examples, prompt, answers, batch_size,
                 logits_fn=lambda inputs: lm.last_logits(lm.encode(template, inputs), prompt),
                 gold_fn=lambda targets: first_token_ids(lm, targets))


@torch.no_grad()
def score(lm: FrozenLM, template, examples, prompt, answers: Sequence[str] | None, batch_size: int,
          logits_fn: Callable[[list[str]], torch.Tensor], gold_fn: Callable[[list[str]], torch.Tensor]) -> dict:
    """The metrics of :func:`evaluate`, with the next-token logits ``(B, vocab)`` of a list of inputs
    from ``logits_fn`` and the answers' first-token ids ``(B,)`` from ``gold_fn`` (the fast path
    brings its own of both)."""
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to evaluate: the split is empty. Use a larger task or other split fractions.")
    warn_unused_fields(template, examples)
    hits, loss_sum, cand_hits = 0, 0.0, 0
    answers = list(answers) if answers is not None else None
    for chunk in _batches(examples, batch_size):
        inputs = list(chunk)              # the examples themselves: each template slot reads its field
        gold = gold_fn([ex.target for ex in chunk])
        log_probs = logits_fn(inputs).log_softmax(-1)
        hits += int((log_probs.argmax(-1) == gold).sum())
        loss_sum += float(F.nll_loss(log_probs, gold, reduction="sum"))
        if answers is not None:
            picked = best_candidates(lm, template, inputs, answers, prompt, log_probs)
            cand_hits += sum(answers[p] == ex.target for p, ex in zip(picked, chunk))
    n = len(examples)
    out = {"n": n, "p_at_1": hits / n, "loss": loss_sum / n}
    if answers is not None:
        out["candidate_accuracy"] = cand_hits / n
    return out


def macro_average(results: dict[str, dict], key: str) -> float:
    """Mean of ``key`` over tasks: ``results`` maps task name -> metrics dict."""
    values = [r[key] for r in results.values() if key in r]
    return sum(values) / len(values) if values else float("nan")
