"""Is a nearest-token score meaningful? Each score next to what random vectors and real tokens get.

A trained vector always has *some* nearest token; the question is whether it is nearer to it than
chance. :func:`decoding_baseline` places each vector's best score among

- **random vectors of the same norm**, drawn with the vocabulary's per-dimension mean and spread
  (the ``"random"`` init), scaled to the query's length: the chance level of "looks like a token";
- **real tokens**, each against its nearest *other* token (:class:`VocabStats`): how close
  neighbouring tokens are to each other.

Cosine ignores length, so its random reference is the cached ``VocabStats.random_best_cosine``;
L2 and dot depend on length, so their random vectors are drawn at each query's norm.

    >>> b = decoding_baseline(prompt, lm.embedding, stats)                 # doctest: +SKIP
    >>> b.best, b.random_percentile, b.meaningful                          # doctest: +SKIP
    (array([0.27, 0.25, ...]), array([0., 0., ...]), array([False, False, ...]))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .index import _queries, _scan, vocab_index
from .stats import VocabStats

MEANINGFUL_PERCENTILE = 95.0       # nearer than 95% of random vectors: the decoded token is not chance


@dataclass
class DecodingBaseline:
    """Each vector's best nearest-token score beside its baselines (n = vectors).

    Attributes:
        metric: ``"cosine"``, ``"l2"`` (smaller is nearer) or ``"dot"``.
        best: (n,) the best score of each vector (highest cosine/dot, smallest L2).
        random_percentile: (n,) percent of random vectors of the same norm that are NOT nearer to
            their nearest token than this vector is to its own (100: nearer than every random vector).
        token_percentile: (n,) the same among real tokens against their nearest other token (NaN for
            ``"dot"``, which has no token reference).
        random_median, random_p95: the random vectors' median best score and the score a vector needs
            to be nearer than 95% of them, (n,) each (one value repeated for cosine).
        meaningful: (n,) bool, ``random_percentile >= MEANINGFUL_PERCENTILE``.
    """

    metric: str
    best: np.ndarray
    random_percentile: np.ndarray
    token_percentile: np.ndarray
    random_median: np.ndarray
    random_p95: np.ndarray
    meaningful: np.ndarray

    @property
    def n_meaningful(self) -> int:
        return int(self.meaningful.sum())

    def summary(self) -> str:
        """One sentence: how many virtual tokens decode better than chance."""
        n, kept = len(self.best), self.n_meaningful
        verdict = ("decoding is not meaningful for any of them" if kept == 0 else
                   "all of them are nearer to their token than chance" if kept == n else
                   f"{kept} of {n} are nearer to their token than chance")
        return (f"best {self.metric} {_fmt(self.best)} vs random vectors' median {_fmt(self.random_median)} "
                f"(95th percentile {_fmt(self.random_p95)}): {verdict}.")


def _fmt(values: np.ndarray) -> str:
    lo, hi = f"{float(np.min(values)):.2f}", f"{float(np.max(values)):.2f}"
    return lo if lo == hi else f"{lo}-{hi}"


def _nearer_percent(reference: np.ndarray, x: np.ndarray, smaller_is_nearer: bool) -> np.ndarray:
    """Percent of ``reference`` values (1-D) that are not nearer than each ``x``."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    if smaller_is_nearer:      # not nearer = a distance >= x
        return 100.0 * (len(ref) - np.searchsorted(ref, x, side="left")) / len(ref)
    return 100.0 * np.searchsorted(ref, x, side="right") / len(ref)


def decoding_baseline(vectors, embedding, stats: VocabStats, metric: str = "cosine", n_random: int = 200,
                      seed: int = 0) -> DecodingBaseline:
    """Each vector's best nearest-token score and where it falls among random vectors and real tokens.

    Args:
        vectors: (n, d) prompt (or (d,)), torch or numpy.
        embedding: (V, d) input embedding matrix, or a :class:`VocabIndex`.
        stats: the model's :class:`VocabStats` (its tokens' nearest-neighbour scores and, for cosine,
            its random vectors).
        metric: ``"cosine"``, ``"l2"`` or ``"dot"``.
        n_random: random vectors per query for ``"l2"`` and ``"dot"`` (drawn at the query's norm).
        seed: seed of those random vectors.
    """
    if metric not in ("cosine", "l2", "dot"):
        raise ValueError(f"metric {metric!r}: use 'cosine', 'l2' or 'dot'.")
    index = vocab_index(embedding)
    Q = _queries(vectors, index)
    n = Q.shape[0]
    with torch.no_grad():
        best = _scan(Q, index, 1, (metric,))[metric][0][:, 0].double().cpu().numpy()
        if metric == "cosine":
            rand = np.tile(np.asarray(stats.random_best_cosine, dtype=np.float64), (n, 1))   # (n, R)
        else:
            E = index.embedding
            mean, std = E.mean(0).cpu(), E.std(0, correction=0).cpu()
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            R = mean + std * torch.randn(n_random, E.shape[1], generator=gen)                   # (R, d)
            R = R / torch.linalg.vector_norm(R, dim=1, keepdim=True)
            norms = torch.linalg.vector_norm(Q.float().cpu(), dim=1)                             # (n,)
            scaled = (norms[:, None, None] * R[None]).reshape(n * n_random, -1).to(E.device)     # same norm
            rand = _scan(scaled, index, 1, (metric,))[metric][0][:, 0].double().cpu().numpy().reshape(n, n_random)
    smaller = metric == "l2"
    random_pct = np.array([_nearer_percent(rand[i], best[i:i + 1], smaller)[0] for i in range(n)])
    if metric == "dot":
        token_pct = np.full(n, np.nan)
    else:
        ref = stats.nn_cosine if metric == "cosine" else stats.nn_l2
        token_pct = _nearer_percent(ref, best, smaller)
    q95 = np.percentile(rand, 5.0 if smaller else 95.0, axis=1)
    return DecodingBaseline(metric=metric, best=best, random_percentile=random_pct, token_percentile=token_pct,
                            random_median=np.median(rand, axis=1), random_p95=q95,
                            meaningful=random_pct >= MEANINGFUL_PERCENTILE)


__all__ = ["MEANINGFUL_PERCENTILE", "DecodingBaseline", "decoding_baseline"]
