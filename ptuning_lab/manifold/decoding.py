"""Nearest-token decoding of a prompt: top-k tokens per metric, their agreement, the decoded text."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..frozen_lm import readable_token
from .faithfulness import snap_to_vocab
from .index import METRICS, _allowed, _check_metrics, _check_strings, _pandas, _queries, _scan, vocab_index


def nearest_tokens(vectors, embedding, token_strings: Sequence[str] | None, k: int = 5,
                   metrics: Sequence[str] = METRICS, word_like: bool = False):
    """The k nearest vocabulary tokens of each vector, for each metric, as a long pandas frame.

    Args:
        vectors: (n, d) prompt vectors (or (d,)), torch or numpy.
        embedding: (V, d) input embedding matrix (``lm.embedding``), or a :class:`VocabIndex`.
        token_strings: V decoded tokens (``lm.token_strings``); None shows ids only.
        k: neighbours per vector and metric.
        metrics: any of ``"cosine"`` (similarity), ``"l2"`` (distance; smaller is nearer), ``"dot"``.
        word_like: only consider word-like tokens (see :func:`word_like_mask`).
    Returns:
        DataFrame with one row per (virtual_token, metric, rank), in that order, and columns
        ``virtual_token, metric, rank (0 = nearest), token_id, token (readable: ' ' shown as '␣'),
        score``.

    >>> nearest_tokens(prompt, lm.embedding, lm.token_strings, k=3).query("rank == 0")  # doctest: +SKIP
    """
    pd = _pandas()
    metrics = _check_metrics(metrics)
    index = vocab_index(embedding)
    Q = _queries(vectors, index)
    if token_strings is not None:
        _check_strings(token_strings, index.vocab_size)
    with torch.no_grad():
        res = _scan(Q, index, k, metrics, allowed=_allowed(index, token_strings, word_like))
    n, n_metrics = Q.shape[0], len(metrics)
    scores = torch.stack([res[m][0] for m in metrics], 1).cpu().numpy()   # (n, metrics, k)
    ids = torch.stack([res[m][1] for m in metrics], 1).cpu().numpy()
    flat_ids = ids.reshape(-1)
    names = ([readable_token(token_strings[i]) for i in flat_ids.tolist()] if token_strings is not None
             else [str(i) for i in flat_ids.tolist()])
    return pd.DataFrame({
        "virtual_token": np.repeat(np.arange(n), n_metrics * k),
        "metric": np.tile(np.repeat(np.array(metrics, dtype=object), k), n),
        "rank": np.tile(np.arange(k), n * n_metrics),
        "token_id": flat_ids.astype(np.int64),
        "token": names,
        "score": scores.reshape(-1).astype(np.float64),
    })


def metric_agreement(table) -> dict[str, float]:
    """How often the metrics' top-1 tokens agree, from a :func:`nearest_tokens` frame.

    Returns fractions over the virtual tokens: ``"all"`` (every metric in the table agrees) and one
    entry per pair, e.g. ``"cosine=l2"``. Cosine and dot agree when the vocabulary norms are
    similar; L2 departs from both when the vector is far longer or shorter than real tokens.
    """
    top1 = table[table["rank"] == 0].pivot(index="virtual_token", columns="metric", values="token_id")
    metrics = [m for m in METRICS if m in top1.columns]
    if len(metrics) < 2:
        raise ValueError(f"metric_agreement needs at least two metrics in the table, got {metrics}; call "
                         f"nearest_tokens(..., metrics=('cosine', 'l2', 'dot')).")
    ids = top1[metrics].to_numpy()
    out = {"all": float((ids == ids[:, :1]).all(1).mean())}
    for i, a in enumerate(metrics):
        for b in metrics[i + 1:]:
            out[f"{a}={b}"] = float((top1[a] == top1[b]).mean())
    return out


def decode_prompt(vectors, embedding, token_strings: Sequence[str], metric: str = "cosine",
                  word_like: bool = False) -> list[str]:
    """The nearest token of each vector (n,) as text (real spaces, not '␣'): the "decoded prompt"."""
    _, ids = snap_to_vocab(vectors, embedding, metric=metric, token_strings=token_strings, word_like=word_like)
    strings = _check_strings(token_strings, vocab_index(embedding).vocab_size)
    return [strings[i] for i in ids.tolist()]


def decode_run(run, lm, k: int = 5, word_like: bool = False) -> str:
    """A readable report of a saved run's prompt: top-k tokens per metric, length, agreement.

    ``run``: a :class:`ptuning_lab.checkpoint.Run`; ``lm``: the :class:`FrozenLM` it was trained on.
    Used by ``ptuning-lab decode``.
    """
    prompt = run.prompt
    table = nearest_tokens(prompt, lm.embedding, lm.token_strings, k=k, word_like=word_like)
    index = vocab_index(lm.embedding)
    mean_norm = float(index.norms.mean())
    norms = torch.linalg.vector_norm(prompt.float(), dim=1).tolist()
    lines = [f"run: {run.path}   model: {lm.name}   {prompt.shape[0]} virtual tokens   "
             f"top-{k}{' word-like' if word_like else ''} (cosine and dot: similarity; l2: distance)"]
    for v in range(prompt.shape[0]):
        rows = table[table["virtual_token"] == v]
        best_cos = rows[(rows["metric"] == "cosine") & (rows["rank"] == 0)]["score"].iloc[0]
        lines.append(f"[P]{v}  |p| / mean |e| = {norms[v] / mean_norm:.2f}   best cosine {best_cos:.3f}")
        for m in METRICS:
            r = rows[rows["metric"] == m]
            lines.append(f"    {m:<7} " + ", ".join(f"{t} {s:.3g}" for t, s in zip(r["token"], r["score"])))
    agree = metric_agreement(table)
    lines.append("top-1 agreement: " + "; ".join(f"{name} {value:.2f}" for name, value in agree.items()))
    return "\n".join(lines)
