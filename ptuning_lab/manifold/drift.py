"""Drift: how far a prompt (or each training snapshot) has moved off the vocabulary manifold."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..frozen_lm import readable_token
from .index import VocabIndex, _as_tensor, _check_strings, _pandas, _queries, _scan, vocab_index
from .stats import VocabStats, vocab_stats


@dataclass
class Drift:
    """Drift of one prompt (n virtual tokens) from the vocabulary manifold.

    Attributes:
        table: one row per virtual token (see :func:`drift_metrics` for the columns).
        pairwise_cosine: (n, n) cosine between the prompt's own vectors.
        mean_pairwise_cosine: mean of its off-diagonal entries (NaN for one vector); near 1 means
            the virtual tokens collapsed onto one direction.
        duplicate_nearest: n minus the number of distinct nearest tokens (by cosine): how many
            virtual tokens share their nearest token with an earlier one.
    """

    table: Any                       # pandas.DataFrame
    pairwise_cosine: np.ndarray
    mean_pairwise_cosine: float
    duplicate_nearest: int


def _relevant(relevant, token_strings, V: int) -> tuple[list[str], list[int]]:
    if relevant is None:
        return [], []
    if isinstance(relevant, Mapping):
        labels, ids = [str(k) for k in relevant], [int(v) for v in relevant.values()]
    else:
        ids = [int(i) for i in relevant]
        labels = [readable_token(token_strings[i]) if token_strings is not None and 0 <= i < V else str(i)
                  for i in ids]
    bad = [i for i in ids if not 0 <= i < V]
    if bad:
        raise ValueError(f"relevant token ids {bad} are outside the vocabulary of {V}; use lm.tokenize(' capital') "
                         f"of the same model (first token of a multi-token word).")
    return labels, ids


def _drift_steps(S_vectors: torch.Tensor, index: VocabIndex, stats: VocabStats, token_strings, relevant):
    """Drift for (S, n, d) snapshots -> list of S :class:`Drift` (one scan for all S * n vectors)."""
    pd = _pandas()
    S, n, d = S_vectors.shape
    labels, rel_ids = _relevant(relevant, token_strings, index.vocab_size)
    rank_ids = torch.tensor(rel_ids, dtype=torch.long, device=index.embedding.device) if rel_ids else None
    flat = S_vectors.reshape(S * n, d)
    with torch.no_grad():
        res = _scan(flat, index, 1, ("cosine", "l2"), rank_ids=rank_ids)
        norms = torch.linalg.vector_norm(flat, dim=1)
        unit = flat / norms.clamp_min(1e-12).unsqueeze(1)
        unit = unit.reshape(S, n, d)
        pair = (unit @ unit.transpose(1, 2)).cpu().numpy().astype(np.float64)   # (S, n, n)
    norms = norms.cpu().numpy().astype(np.float64)
    max_cos = res["cosine"][0][:, 0].cpu().numpy().astype(np.float64)
    nearest = res["cosine"][1][:, 0].cpu().numpy()
    nn_l2 = res["l2"][0][:, 0].cpu().numpy().astype(np.float64)
    ranks = res["ranks"].cpu().numpy() if rank_ids is not None else None
    median_l2 = stats.median_nn_l2
    out = []
    for s in range(S):
        sl = slice(s * n, (s + 1) * n)
        near = nearest[sl]
        counts = Counter(near.tolist())
        off = ~np.eye(n, dtype=bool)
        mean_to_others = (pair[s] * off).sum(1) / max(n - 1, 1) if n > 1 else np.full(n, np.nan)
        cols = {
            "virtual_token": np.arange(n),
            "norm": norms[sl],
            "norm_ratio": norms[sl] / stats.mean_norm,
            "norm_percentile": stats.norm_percentile(norms[sl]),
            "nearest_id": near.astype(np.int64),
            "nearest_token": ([readable_token(token_strings[i]) for i in near.tolist()] if token_strings is not None
                              else [str(i) for i in near.tolist()]),
            "max_cosine": max_cos[sl],
            "max_cosine_pct_vocab": stats.nn_cosine_percentile(max_cos[sl]),
            "max_cosine_pct_random": stats.random_cosine_percentile(max_cos[sl]),
            "nn_l2": nn_l2[sl],
            "nn_l2_ratio": nn_l2[sl] / median_l2 if median_l2 > 0 else np.full(n, np.inf),
            "mean_cosine_to_others": mean_to_others,
            "shares_nearest": np.array([counts[i] - 1 for i in near.tolist()], dtype=np.int64),
        }
        for j, label in enumerate(labels):
            cols[f"rank:{label}"] = ranks[sl, j].astype(np.int64)
        out.append(Drift(table=pd.DataFrame(cols), pairwise_cosine=pair[s],
                         mean_pairwise_cosine=float(pair[s][off].mean()) if n > 1 else float("nan"),
                         duplicate_nearest=int(n - len(counts))))
    return out


def _stats_for(index: VocabIndex, stats: VocabStats | None) -> VocabStats:
    if stats is None:
        return vocab_stats(index, model_id="unnamed", cache=False)
    if stats.vocab_size != index.vocab_size:
        raise ValueError(f"the VocabStats were computed for a vocabulary of {stats.vocab_size} tokens "
                         f"('{stats.model_id}') but the embedding has {index.vocab_size}; compute "
                         f"vocab_stats(lm.embedding, lm.name) for this model.")
    return stats


def drift_metrics(vectors, embedding, stats: VocabStats | None = None, token_strings: Sequence[str] | None = None,
                  relevant: Sequence[int] | Mapping[str, int] | None = None) -> Drift:
    """How far each virtual token has drifted from the vocabulary manifold.

    Args:
        vectors: (n, d) prompt.
        embedding: (V, d) input embedding matrix (or a :class:`VocabIndex`).
        stats: the model's :func:`vocab_stats` (computed uncached when None: pass it to reuse).
        token_strings: V decoded tokens, for readable names.
        relevant: task tokens whose rank among each vector's cosine neighbours is reported: ids,
            or ``{"capital": id}``. The column is ``"rank:<label>"``; 0 = the nearest token.
    Returns:
        :class:`Drift`; ``table`` columns per virtual token:

        ========================  ===============================================================
        norm                      ||p||
        norm_ratio                ||p|| / mean token norm (1 = a typical token's length)
        norm_percentile           percent of tokens with a norm <= ||p||
        nearest_id/_token         the nearest token by cosine
        max_cosine                cosine to that token
        max_cosine_pct_vocab      percent of tokens whose best cosine to ANOTHER token is <= it
        max_cosine_pct_random     percent of random vectors whose best cosine is <= it
        nn_l2                     L2 distance to the nearest token (by L2)
        nn_l2_ratio               nn_l2 / median token-to-nearest-token L2 distance
        mean_cosine_to_others     mean cosine to the other virtual tokens
        shares_nearest            other virtual tokens with the same nearest token
        ========================  ===============================================================
    """
    index = vocab_index(embedding)
    Q = _queries(vectors, index)
    if token_strings is not None:
        _check_strings(token_strings, index.vocab_size)
    return _drift_steps(Q.unsqueeze(0), index, _stats_for(index, stats), token_strings, relevant)[0]


def drift_over_training(snapshots, embedding, steps: Sequence[int] | None = None, stats: VocabStats | None = None,
                        token_strings: Sequence[str] | None = None,
                        relevant: Sequence[int] | Mapping[str, int] | None = None):
    """:func:`drift_metrics` for every training snapshot: (S, n, d) -> one long frame.

    Returns the per-virtual-token columns of :func:`drift_metrics` with a ``step`` column first
    (``steps``, e.g. ``run.snapshot_steps``; 0..S-1 when None) and the per-step
    ``mean_pairwise_cosine`` and ``duplicate_nearest`` repeated on each of the step's rows.
    """
    pd = _pandas()
    index = vocab_index(embedding)
    X = _as_tensor(snapshots, "snapshots")
    if X.dim() != 3 or X.shape[-1] != index.hidden_size:
        raise ValueError(f"snapshots must be (S, n, {index.hidden_size}), got {tuple(X.shape)}; pass "
                         f"run.snapshots (one prompt per saved step) of the same model.")
    steps = list(range(X.shape[0])) if steps is None else [int(s) for s in steps]
    if len(steps) != X.shape[0]:
        raise ValueError(f"{len(steps)} steps for {X.shape[0]} snapshots: pass run.snapshot_steps with run.snapshots.")
    if token_strings is not None:
        _check_strings(token_strings, index.vocab_size)
    X = X.to(device=index.embedding.device, dtype=torch.float32)
    drifts = _drift_steps(X, index, _stats_for(index, stats), token_strings, relevant)
    frames = []
    for step, dr in zip(steps, drifts):
        t = dr.table
        t.insert(0, "step", step)
        t["mean_pairwise_cosine"] = dr.mean_pairwise_cosine
        t["duplicate_nearest"] = dr.duplicate_nearest
        frames.append(t)
    return pd.concat(frames, ignore_index=True)
