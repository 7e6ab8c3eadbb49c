"""Faithfulness: snapping a prompt to real tokens, what that costs, and waywardness (Khashabi et al., 2022).

A prompt can solve a task while decoding to an arbitrary, unrelated text: :func:`snap_report`
measures the cost of going back to the nearest tokens, :func:`waywardness_penalty` pulls a prompt
towards a target text during training and :func:`decoded_f1` scores the decoded prompt against it.
"""
from __future__ import annotations

import string
from collections import Counter
from typing import Callable, Sequence

import torch

from ..frozen_lm import readable_token
from .index import METRICS, _allowed, _as_tensor, _check_metrics, _queries, _scan, vocab_index


def snap_to_vocab(vectors, embedding, metric: str = "cosine", token_strings: Sequence[str] | None = None,
                  word_like: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each vector by its nearest token's embedding.

    Returns ``(snapped (n, d), token_ids (n,))``: rows of the embedding itself (its dtype and
    device), so feeding ``snapped`` to the model equals feeding the decoded tokens.
    """
    (metric,) = _check_metrics(metric)
    index = vocab_index(embedding)
    Q = _queries(vectors, index)
    with torch.no_grad():
        ids = _scan(Q, index, 1, (metric,), allowed=_allowed(index, token_strings, word_like))[metric][1][:, 0]
    source = index.source if index.source is not None else index.embedding
    return source[ids.to(source.device)].detach().clone(), ids.cpu()


def snap_report(evaluate_fn: Callable[[torch.Tensor], float], prompt, embedding, metrics: Sequence[str] = METRICS,
                token_strings: Sequence[str] | None = None, word_like: bool = False) -> dict:
    """Evaluate the prompt and its snapped versions: how much is lost by going back to real tokens.

    ``evaluate_fn(prompt (n, d)) -> float`` is yours (e.g. dev accuracy); it is called once for the
    original and once per metric, with tensors of the prompt's dtype and device.

    Returns ``{"original": float, "snapped": {metric: float}, "drop": {metric: original - snapped},
    "token_ids": {metric: [n ids]}}`` plus ``"tokens": {metric: [n readable strings]}`` when
    ``token_strings`` is given.
    """
    metrics = _check_metrics(metrics)
    P = _as_tensor(prompt, "prompt")
    original = float(evaluate_fn(prompt))
    report = {"original": original, "snapped": {}, "drop": {}, "token_ids": {}}
    if token_strings is not None:
        report["tokens"] = {}
    for m in metrics:
        snapped, ids = snap_to_vocab(P, embedding, metric=m, token_strings=token_strings, word_like=word_like)
        value = float(evaluate_fn(snapped.to(device=P.device, dtype=P.dtype)))
        report["snapped"][m] = value
        report["drop"][m] = original - value
        report["token_ids"][m] = ids.tolist()
        if token_strings is not None:
            report["tokens"][m] = [readable_token(token_strings[i]) for i in ids.tolist()]
    return report


def waywardness_penalty(prompt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over virtual tokens of the squared L2 distance to a target text's embeddings.

    ``prompt`` (n, d) and ``target`` (n, d) (e.g. ``initial_prompt("text:...", n, lm.embedding)``).
    Differentiable; the trainer adds ``gamma * penalty`` to the loss (Khashabi et al., 2022).
    """
    if not isinstance(prompt, torch.Tensor):
        prompt = torch.as_tensor(prompt)
    target = torch.as_tensor(target).to(device=prompt.device, dtype=prompt.dtype)
    if prompt.shape != target.shape or prompt.dim() != 2:
        raise ValueError(f"prompt {tuple(prompt.shape)} and target {tuple(target.shape)} must both be (n, d): "
                         f"one target embedding per virtual token (cycle or truncate the target text).")
    return (prompt - target).square().sum(-1).mean()


_PUNCT = str.maketrans("", "", string.punctuation)


def _words(text: str) -> list[str]:
    # '␣' marks spaces in readable tokens; punctuation is dropped as in SQuAD ("Paris," == "paris")
    return text.replace("␣", " ").lower().translate(_PUNCT).split()


def decoded_f1(decoded_tokens: Sequence[str], target_text: str) -> float:
    """Word-level F1 between a decoded prompt and a target text (bag of words with counts, SQuAD-style).

    The tokens are concatenated as the tokenizer would (``[" The", " cap", "ital"]`` -> "The
    capital"; '␣' counts as a space), then both sides are lowercased, stripped of punctuation and
    split on whitespace. Unlike SQuAD, articles are kept: "the" is a real word of a prompt. Both
    empty -> 1.0; one empty -> 0.0.

    >>> decoded_f1([" the", " capital", " city"], "The capital of")
    0.6666666666666666
    """
    pred, gold = _words("".join(decoded_tokens)), _words(target_text)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)
