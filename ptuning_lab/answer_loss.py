"""Whole-answer training losses: every token of the answer, or a cross-entropy over the label scores (PET).

The trainer's default, ``answer_loss="first"``, reads one next-token distribution per example (the
LAMA objective). The two losses here read more of the answer, through the forward interface's
``answer_logits(inputs, answer_ids, prompt)`` -- ``(B, L, vocab)`` logits at every answer token
under teacher forcing -- so the fast path and the plain path give the same loss and gradient:

- ``"full"``: the negative log-likelihood of the whole answer, summed over its tokens and averaged
  over the batch (for "Buenos Aires": -log p(" Buenos") - log p(" Aires" | " Buenos")).
- ``"labels"``: classification and multiple choice. Each label's score is the log-likelihood of its
  label words (``evaluation.LabelScoring``: sum or mean over tokens, logsumexp or max over words),
  a multiple-choice example's scores are those of its choices; the loss is the cross-entropy of
  the gold label under the softmax of these scores (PET's ``convert_mlm_logits_to_cls_logits``
  followed by a cross-entropy, with log-likelihoods in place of an MLM's logits so that label
  words of several tokens work too).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .evaluation import LabelScoring, answer_token_stats, combine_words, normalise_verbalizer


def check_answer_loss(how: str, task) -> None:
    """Refuse a loss the task cannot have (``"labels"`` needs labels or choices)."""
    if how == "labels" and task.kind not in ("classification", "multiple_choice"):
        raise ValueError(f"answer_loss='labels' is a cross-entropy over label scores, but '{task.name}' is a "
                         f"{task.kind} (no labels); use answer_loss='first' or 'full'.")


def full_answer_loss(forward, inputs: Sequence[str], answer_ids: Sequence[Sequence[int]], prompt) -> torch.Tensor:
    """Mean over the batch of each answer's summed token negative log-likelihood (a scalar)."""
    logits = forward.answer_logits(inputs, answer_ids, prompt)                 # (B, L, vocab)
    B, L, V = logits.shape
    target = torch.full((B, L), -100, dtype=torch.long)
    for b, ids in enumerate(answer_ids):
        target[b, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    target = target.to(logits.device)
    return F.cross_entropy(logits.reshape(B * L, V), target.reshape(-1), ignore_index=-100, reduction="sum") / B


def label_loss(forward, lm, examples, prompt, verbalizer: dict | None, scoring: LabelScoring | None,
               answer_ids: Callable[[str], list[int]]) -> torch.Tensor:
    """Cross-entropy of the gold label (or choice) under the softmax of the label (choice) scores."""
    scoring = scoring or LabelScoring()
    inputs = list(examples)                    # each template slot reads its field of the example
    if any(ex.choices for ex in examples):
        per_example = [list(ex.choices) for ex in examples]
        gold = [int(ex.label) for ex in examples]
        scores = _scores(forward, inputs, per_example, prompt, scoring.reduce, answer_ids)     # (B, C) padded
    else:
        if not verbalizer:
            raise ValueError("answer_loss='labels' needs a verbalizer (classification) or choices (multiple choice).")
        verbalizer = normalise_verbalizer(verbalizer)
        labels = list(verbalizer)
        words = [w for ws in verbalizer.values() for w in ws]
        word_scores = _scores(forward, inputs, [words] * len(inputs), prompt, scoring.reduce, answer_ids)
        scores = combine_words(word_scores, [len(ws) for ws in verbalizer.values()], scoring.combine)
        gold = [labels.index(ex.label) for ex in examples]
    return F.cross_entropy(scores, torch.tensor(gold, device=scores.device))


def _scores(forward, inputs, candidates: list[list[str]], prompt, reduce: str, answer_ids) -> torch.Tensor:
    """(B, C) log-likelihood of candidate c after input b (-inf where example b has fewer candidates)."""
    ids = [[answer_ids(c) for c in cs] for cs in candidates]
    C = max(len(cs) for cs in candidates)
    if all(len(t) == 1 for row in ids for t in row):
        # single-token words: one next-token distribution per example scores them all
        logp = forward.last_logits(inputs, prompt).log_softmax(-1)                    # (B, vocab)
        index = torch.tensor([[row[min(c, len(row) - 1)][0] for c in range(C)] for row in ids], device=logp.device)
        token_sum = logp.gather(1, index)
        lengths = torch.ones_like(token_sum)
    else:
        # every (example, candidate) pair as its own row: the context is recomputed per candidate, but
        # the fast path shares it (cached prefix, shared head) and the gradient stays exact
        pairs = [(b, c) for b, row in enumerate(ids) for c in range(len(row))]
        logits = forward.answer_logits([inputs[b] for b, _ in pairs], [ids[b][c] for b, c in pairs], prompt)
        logp, _, mask = answer_token_stats(logits, [ids[b][c] for b, c in pairs])
        flat = torch.tensor([b * C + c for b, c in pairs], device=logits.device)
        token_sum = logp.new_zeros(len(inputs) * C).index_copy(0, flat, logp.sum(1)).view(len(inputs), C)
        lengths = logp.new_ones(len(inputs) * C).index_copy(0, flat, mask.sum(1).to(logp.dtype)).view(len(inputs), C)
    scores = token_sum / lengths if reduce == "mean" else token_sum
    present = torch.tensor([[c < len(row) for c in range(C)] for row in ids], device=scores.device)
    return scores.masked_fill(~present, float("-inf"))
