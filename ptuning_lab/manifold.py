"""Where do learned prompts live? The vocabulary manifold: nearest tokens, drift, snapping, maps.

A trained prompt is a ``(num_virtual_tokens, d)`` tensor in the same space as the model's input
embedding matrix ``(vocab, d)``. This module answers, with pure functions (arrays in, arrays /
pandas frames / dataclasses out), how that prompt relates to the real tokens:

- **Nearest-token decoding** -- :func:`nearest_tokens` lists, per virtual token and per metric,
  the top-k vocabulary tokens. Three metrics, because they disagree off the manifold:
  ``"cosine"`` (direction only), ``"l2"`` (Euclidean distance; the score is the distance, smaller
  is nearer) and ``"dot"`` (the raw inner product: with tied embeddings this is the logit the
  model's head would give the token). :func:`metric_agreement` says how often their top-1 agree.
- **Drift** -- :func:`drift_metrics` / :func:`drift_over_training`: how long the vectors are
  relative to real tokens, how close they are to *any* token compared with how close tokens are to
  each other (and to random vectors), whether several virtual tokens collapse onto one token, and
  the rank of task tokens (``" capital"``) among each vector's neighbours. The baselines come from
  :class:`VocabStats`, computed once per model and cached on disk.
- **Faithfulness** -- :func:`snap_to_vocab` replaces each vector by its nearest token's embedding
  and :func:`snap_report` measures what that costs; :func:`waywardness_penalty` and
  :func:`decoded_f1` implement the waywardness analysis of Khashabi et al. (2022): a prompt can
  solve a task while decoding to an arbitrary, unrelated text.
- **Maps** -- :func:`fit_projection` fits a 2-D PCA or UMAP map of the vocabulary once per model
  (cached); :meth:`VocabProjection.transform` places prompts and training snapshots on that one
  map so trajectories of all methods are comparable.

Conventions: ``V`` = vocabulary size, ``d`` = embedding width, ``n`` = number of vectors. Inputs
may be torch tensors or numpy arrays; searches run in float32 on the embedding's device, in
chunks of queries so memory stays bounded (~64 MB of scores at a time).

Cache files live under ``ptuning_lab.models.cache_dir() / "manifold"``, one file per model and
settings, in safetensors with the cache key as JSON metadata (no pickle). The key holds the model
id, ``V``, ``d``, a cheap fingerprint of the embedding and the settings; a file whose key differs
(stale) or that cannot be read (corrupt) is rebuilt and replaced atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import string
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .frozen_lm import readable_token
from .models import cache_dir

log = logging.getLogger(__name__)

METRICS = ("cosine", "l2", "dot")
CACHE_VERSION = 1
# scores of one query chunk are (chunk, V) float32: keep a chunk near 64 MB
_CHUNK_ELEMENTS = 16 * 1024 * 1024
# extra candidates re-ranked exactly for L2 (the matmul form |e|^2 - 2 e.v + |v|^2 cancels badly)
_L2_RERANK_EXTRA = 8
# cosine distance below which a vector counts as lying on a fitted token (float32 rounding of cos = 1)
_SAME_DIRECTION = 1e-6


def _pandas():
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - pandas ships with the viz extra
        raise ImportError("ptuning_lab.manifold returns pandas DataFrames; install them with "
                          "pip install 'ptuning_lab[viz]' (or pip install pandas).") from err
    return pd


# ============================================================================ inputs
def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}.") from err


@dataclass
class VocabIndex:
    """The embedding matrix prepared for nearest-neighbour search.

    Attributes:
        embedding: (V, d) float32 rows, on the source embedding's device.
        norms: (V,) L2 norm of each row.
        ids: None for the full vocabulary (row = token id); for a restricted index, the (V',)
            token id of each kept row.
        source: the tensor the index was built from (kept so its memory, hence its address, stays
            valid while the index is memoised).
    """

    embedding: torch.Tensor
    norms: torch.Tensor
    ids: torch.Tensor | None = None
    source: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        # per-row factors that turn one matmul into all three rankings (see _scan)
        self.inv_norms = 1.0 / self.norms.clamp_min(1e-12)
        self.sq_norms = self.norms.square()
        self._restricted: dict[bytes, VocabIndex] = {}

    @property
    def vocab_size(self) -> int:
        return self.embedding.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.embedding.shape[1]

    def restrict(self, mask: np.ndarray) -> "VocabIndex":
        """The index of the rows where ``mask`` (V,) is True (memoised per mask); ``ids`` maps back."""
        key = hashlib.sha1(np.packbits(mask).tobytes()).digest()
        sub = self._restricted.get(key)
        if sub is None:
            keep = torch.from_numpy(np.flatnonzero(mask)).to(self.embedding.device)
            sub = VocabIndex(self.embedding[keep], self.norms[keep], ids=keep)
            self._restricted = {key: sub}                 # one filter at a time is all a session uses
        return sub


_INDEX_MEMO: "OrderedDict[tuple, VocabIndex]" = OrderedDict()


def vocab_index(embedding) -> VocabIndex:
    """A :class:`VocabIndex` for ``embedding`` (V, d); memoised for torch tensors.

    The memo key is the tensor's storage address, shape, dtype, device and autograd version
    counter, so ``lm.embedding`` and ``lm.embedding.detach()`` share one entry and an in-place
    change of the weights builds a new one. numpy inputs are not memoised (numpy has no version
    counter); pass a torch tensor or the returned index to skip recomputing the norms (~20 ms).
    """
    if isinstance(embedding, VocabIndex):
        return embedding
    E = _as_tensor(embedding, "embedding")
    if E.dim() != 2 or E.shape[0] < 2 or E.shape[1] < 1:
        raise ValueError(f"the embedding must be a (vocab, d) matrix with at least two rows, got shape "
                         f"{tuple(E.shape)}; pass lm.embedding.")
    key = None
    if isinstance(embedding, torch.Tensor):
        key = (E.data_ptr(), tuple(E.shape), tuple(E.stride()), E.dtype, str(E.device), E._version)
        hit = _INDEX_MEMO.get(key)
        if hit is not None:
            _INDEX_MEMO.move_to_end(key)
            return hit
    rows = E if E.dtype == torch.float32 else E.float()
    index = VocabIndex(rows, torch.linalg.vector_norm(rows, dim=1), source=E)
    if key is not None:
        _INDEX_MEMO[key] = index
        while len(_INDEX_MEMO) > 4:
            _INDEX_MEMO.popitem(last=False)
    return index


def _queries(vectors, index: VocabIndex, name: str = "vectors") -> torch.Tensor:
    """``vectors`` (n, d) or (d,) as float32 on the index's device, checked against d."""
    Q = _as_tensor(vectors, name)
    if Q.dim() == 1:
        Q = Q.unsqueeze(0)
    if Q.dim() != 2:
        raise ValueError(f"{name} must be (n, d) or (d,), got shape {tuple(Q.shape)}; for training snapshots "
                         f"(S, n, d) use drift_over_training or reshape to (S * n, d).")
    if Q.shape[0] == 0:
        raise ValueError(f"{name} hold no vectors (shape {tuple(Q.shape)}): a prompt with 0 virtual tokens has "
                         "nothing to decode; pass a (n, d) prompt with n >= 1.")
    if Q.shape[1] != index.hidden_size:
        raise ValueError(f"{name} have width {Q.shape[1]} but the embedding has width {index.hidden_size}: "
                         f"pass vectors of the same model as the embedding (a prompt is (n, d_model)).")
    return Q.to(device=index.embedding.device, dtype=torch.float32)


def _check_metrics(metrics) -> tuple[str, ...]:
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad or metrics}: use any of {', '.join(METRICS)}.")
    return metrics


def _check_strings(token_strings, V: int) -> list[str]:
    if token_strings is None:
        raise ValueError("token_strings is needed here (word-like filter or readable names); pass lm.token_strings.")
    if len(token_strings) != V:
        raise ValueError(f"token_strings has {len(token_strings)} entries but the embedding has {V} rows; "
                         f"pass lm.token_strings of the same model (one string per token id).")
    return token_strings


# ============================================================================ word-like tokens
_WORD_MEMO: "OrderedDict[int, tuple[Sequence[str], int, np.ndarray]]" = OrderedDict()


def _is_word(token: str, min_length: int) -> bool:
    core = token[1:] if token.startswith(" ") else token
    return len(core) >= min_length and core.isalpha()      # isalpha() is False for any inner space


def word_like_mask(token_strings: Sequence[str], min_length: int = 2) -> np.ndarray:
    """(V,) bool: tokens that are a word or word start -- letters only, optionally one leading space.

    ``" Paris"``, ``"the"`` and ``" élan"`` are word-like; ``"."``, ``" 1999"``, ``"ing!"``, ``"a"``
    (shorter than ``min_length`` letters) and special tokens such as ``"<|endoftext|>"`` are not.
    Memoised per list object (``lm.token_strings`` is the same list on every call).
    """
    memo = _WORD_MEMO.get(id(token_strings))
    if memo is not None and memo[0] is token_strings and memo[1] == min_length:
        return memo[2]
    mask = np.fromiter((_is_word(t, min_length) for t in token_strings), dtype=bool, count=len(token_strings))
    _WORD_MEMO[id(token_strings)] = (token_strings, min_length, mask)
    while len(_WORD_MEMO) > 4:
        _WORD_MEMO.popitem(last=False)
    return mask


# ============================================================================ the one scan
def _scan(Q: torch.Tensor, index: VocabIndex, k: int = 1, metrics: Sequence[str] = ("cosine",),
          allowed: np.ndarray | None = None, rank_ids: torch.Tensor | None = None,
          exclude: torch.Tensor | None = None) -> dict:
    """Top-k neighbours of queries ``Q`` (n, d) for several metrics from ONE matmul per chunk.

    For a fixed query q, cosine ranks tokens like ``q.e / |e|`` and L2 like ``|e|^2 - 2 q.e``
    (the query's own factors are constant along a row), so the three rankings cost one (chunk, V)
    matmul and two elementwise passes; the k winners' scores are then computed exactly (L2 from
    the differences themselves, since the expanded form cancels badly near a token).

    Args:
        allowed: (V,) bool numpy mask: only these tokens are candidates (searched as a cached
            sub-matrix, which is also faster). Not combinable with ``rank_ids``/``exclude``.
        rank_ids: (r,) token ids whose cosine rank (0 = nearest) is returned per query.
        exclude: (n,) one token id per query that is not a candidate (a token's own row).
    Returns:
        {metric: (scores (n, k), ids (n, k))} and, with rank_ids, "ranks": (n, r) long.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: give the number of nearest tokens to find, a whole number >= 1 (e.g. k=5).")
    if allowed is not None:
        if int(allowed.sum()) < k:
            raise ValueError(f"k={k} but only {int(allowed.sum())} tokens pass the word-like filter; "
                             f"use a smaller k or word_like=False.")
        sub = index.restrict(allowed)
        res = _scan(Q, sub, k, metrics)
        return {m: (scores, sub.ids[ids]) for m, (scores, ids) in res.items()}
    E = index.embedding
    V = E.shape[0]
    n_cand = V - (1 if exclude is not None else 0)
    if not 1 <= k <= n_cand:
        raise ValueError(f"k={k} but only {n_cand} tokens are candidates; use 1 <= k <= {n_cand}.")
    out = {m: ([], []) for m in metrics}
    ranks = []
    chunk = max(1, _CHUNK_ELEMENTS // V)
    rows_all = torch.arange(Q.shape[0], device=Q.device)
    for start in range(0, Q.shape[0], chunk):
        q = Q[start:start + chunk]
        dot = q @ E.T                                                   # (c, V)
        if exclude is not None:
            self_pos = (rows_all[:q.shape[0]], exclude[start:start + chunk])
        if "dot" in metrics:
            s = dot
            if exclude is not None:
                s = dot.clone()
                s[self_pos] = float("-inf")
            top = s.topk(k, dim=1)
            out["dot"][0].append(top.values)
            out["dot"][1].append(top.indices)
        if "l2" in metrics:
            key = torch.add(index.sq_norms.unsqueeze(0), dot, alpha=-2.0)  # |e|^2 - 2 q.e
            if exclude is not None:
                key[self_pos] = float("inf")
            kk = min(k + _L2_RERANK_EXTRA, n_cand)
            cand = key.topk(kk, dim=1, largest=False).indices                # (c, kk)
            del key
            exact = torch.linalg.vector_norm(E[cand] - q.unsqueeze(1), dim=-1)
            order = exact.argsort(dim=1, stable=True)[:, :k]
            out["l2"][0].append(exact.gather(1, order))
            out["l2"][1].append(cand.gather(1, order))
        if "cosine" in metrics or rank_ids is not None:
            key = dot.mul_(index.inv_norms.unsqueeze(0))                     # q.e / |e|, in place
            if rank_ids is not None:
                ref = key[:, rank_ids]                                      # (c, r)
                ranks.append(torch.stack([(key > ref[:, j:j + 1]).sum(1) for j in range(ref.shape[1])], 1))
            if "cosine" in metrics:
                if exclude is not None:
                    key[self_pos] = float("-inf")
                top = key.topk(k, dim=1)
                inv_q = 1.0 / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-12)
                out["cosine"][0].append(top.values * inv_q)
                out["cosine"][1].append(top.indices)
        del dot
    result = {m: (torch.cat(v[0]), torch.cat(v[1])) for m, v in out.items()}
    if rank_ids is not None:
        result["ranks"] = torch.cat(ranks)
    return result


def _allowed(index: VocabIndex, token_strings, word_like: bool) -> np.ndarray | None:
    if not word_like:
        return None
    mask = word_like_mask(_check_strings(token_strings, index.vocab_size))
    if not mask.any():
        raise ValueError("no token is word-like (letters, optional leading space, >= 2 letters); "
                         "use word_like=False.")
    return mask


# ============================================================================ 1. decoding
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


# ============================================================================ 3. vocabulary baselines
@dataclass
class VocabStatsConfig:
    """Settings of the vocabulary baselines (part of the cache key)."""

    subset: int | None = field(default=5000, metadata={"help": "Token rows (seeded sample) whose nearest-neighbour "
                               "cosine/L2 to ANOTHER token is computed, against the full vocabulary; None = all V "
                               "rows (~10x slower for a 50k vocabulary)."})
    n_random: int = field(default=1000, metadata={"help": "Random vectors, drawn with the vocabulary's per-dimension "
                          "mean and std, whose best cosine to any token gives the 'chance' baseline."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset and of the random vectors."})

    def __post_init__(self):
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"subset must be a positive number of tokens or None (all), got {self.subset}.")
        if self.n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {self.n_random}.")


def _percentile(sorted_ref: np.ndarray, x) -> np.ndarray:
    """Percent (0-100) of the reference values <= x."""
    return 100.0 * np.searchsorted(sorted_ref, np.asarray(x, dtype=np.float64), side="right") / len(sorted_ref)


@dataclass
class VocabStats:
    """Baselines of one model's vocabulary: what "close to the manifold" means for it.

    Attributes (V = vocab, m = subset rows, R = random vectors):
        model_id: the model's name.
        norms: (V,) L2 norm of every token embedding.
        subset_ids: (m,) token ids whose nearest-neighbour statistics were computed.
        nn_cosine: (m,) best cosine of each subset token to ANOTHER token of the full vocabulary.
        nn_l2: (m,) L2 distance of each subset token to its nearest other token.
        random_best_cosine: (R,) best cosine to any token of random vectors drawn from
            N(vocab mean, vocab std) per dimension: the chance level of "looks like a token".
        config: the settings used.
    """

    model_id: str
    norms: np.ndarray
    subset_ids: np.ndarray
    nn_cosine: np.ndarray
    nn_l2: np.ndarray
    random_best_cosine: np.ndarray
    config: VocabStatsConfig

    def __post_init__(self):
        self._sorted = {name: np.sort(np.asarray(getattr(self, name), dtype=np.float64))
                        for name in ("norms", "nn_cosine", "nn_l2", "random_best_cosine")}

    @property
    def vocab_size(self) -> int:
        return len(self.norms)

    @property
    def mean_norm(self) -> float:
        return float(np.mean(self.norms, dtype=np.float64))

    @property
    def median_nn_l2(self) -> float:
        return float(np.median(self.nn_l2))

    def norm_percentile(self, norm) -> np.ndarray:
        """Percent of vocabulary tokens whose norm is <= ``norm``."""
        return _percentile(self._sorted["norms"], norm)

    def nn_cosine_percentile(self, cosine) -> np.ndarray:
        """Percent of tokens whose best cosine to another token is <= ``cosine``."""
        return _percentile(self._sorted["nn_cosine"], cosine)

    def random_cosine_percentile(self, cosine) -> np.ndarray:
        """Percent of random vectors whose best cosine to a token is <= ``cosine``."""
        return _percentile(self._sorted["random_best_cosine"], cosine)


def _compute_vocab_stats(index: VocabIndex, config: VocabStatsConfig) -> dict[str, np.ndarray]:
    """The arrays of :class:`VocabStats` (the expensive part: (m + R) x V cosines)."""
    E = index.embedding
    V, d = E.shape
    rng = np.random.default_rng(config.seed)
    subset_ids = (np.arange(V) if config.subset is None or config.subset >= V
                  else np.sort(rng.choice(V, size=config.subset, replace=False)))
    ids_t = torch.from_numpy(subset_ids).to(E.device)
    with torch.no_grad():
        res = _scan(E[ids_t], index, 1, ("cosine", "l2"), exclude=ids_t)
        mean, std = E.mean(0), E.std(0, correction=0)                     # same scale as the "random" init
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        R = (mean.cpu() + std.cpu() * torch.randn(config.n_random, d, generator=gen)).to(E.device)
        rand = _scan(R, index, 1, ("cosine",))
    return {
        "norms": index.norms.cpu().numpy().astype(np.float32),
        "subset_ids": subset_ids.astype(np.int64),
        "nn_cosine": res["cosine"][0][:, 0].cpu().numpy(),
        "nn_l2": res["l2"][0][:, 0].cpu().numpy(),
        "random_best_cosine": rand["cosine"][0][:, 0].cpu().numpy(),
    }


def vocab_stats(embedding, model_id: str = "model", subset: int | None = 5000, n_random: int = 1000,
                seed: int = 0, cache: bool = True) -> VocabStats:
    """The :class:`VocabStats` baselines of a model, cached on disk per model and settings.

    Nearest-neighbour statistics use a seeded sample of ``subset`` token rows (5000 by default,
    each compared with the FULL vocabulary) because all V x V pairs cost minutes on a CPU; 5000
    rows pin the percentiles to within about a percentage point. ``subset=None`` uses every row.
    First build on SmolLM2 (49k x 576, 2 CPU cores): a few seconds; a cached load: milliseconds.
    """
    config = VocabStatsConfig(subset=subset, n_random=n_random, seed=seed)
    index = vocab_index(embedding)
    key = _cache_key("vocab_stats", model_id, index, asdict(config))
    path = _cache_path("vocab_stats", model_id, key)
    arrays = _load_cache(path, key) if cache else None
    if arrays is not None and not _stats_arrays_ok(arrays, index.vocab_size):
        log.warning("ptuning_lab: the vocabulary-stats cache %s is inconsistent; rebuilding it", path)
        arrays = None
    if arrays is None:
        arrays = _compute_vocab_stats(index, config)
        if cache:
            _save_cache(path, key, arrays)
    return VocabStats(model_id=model_id, config=config, **{k: np.asarray(arrays[k]) for k in
                      ("norms", "subset_ids", "nn_cosine", "nn_l2", "random_best_cosine")})


def _stats_arrays_ok(arrays: dict, V: int) -> bool:
    need = ("norms", "subset_ids", "nn_cosine", "nn_l2", "random_best_cosine")
    if any(k not in arrays for k in need):
        return False
    m = len(arrays["subset_ids"])
    return (arrays["norms"].shape == (V,) and arrays["nn_cosine"].shape == (m,) and arrays["nn_l2"].shape == (m,)
            and m > 0 and len(arrays["random_best_cosine"]) > 0
            and all(np.isfinite(arrays[k]).all() for k in need))


# ============================================================================ 2. drift
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


# ============================================================================ 4. faithfulness
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


# ============================================================================ 5. projections
@dataclass
class ProjectionConfig:
    """Settings of a 2-D vocabulary map (part of the cache key)."""

    method: str = field(default="pca", metadata={"help": "'pca' (linear, exact, fast) or 'umap' (non-linear "
                        "neighbourhoods; cosine metric, so it ignores vector lengths)."})
    subset: int | None = field(default=5000, metadata={"help": "Tokens to fit on (a seeded sample); None = all of them."})
    seed: int = field(default=0, metadata={"help": "Seed of the sample and of UMAP."})
    word_like: bool | None = field(default=None, metadata={"help": "Fit on word-like tokens only; None = yes when "
                                   "sampling a subset, no (the full vocabulary) when subset is None."})
    n_neighbors: int = field(default=15, metadata={"help": "UMAP neighbours (also used to place new points)."})
    min_dist: float = field(default=0.1, metadata={"help": "UMAP min_dist."})
    n_epochs: int | None = field(default=None, metadata={"help": "UMAP epochs (None = UMAP's default; small values "
                                 "for tests)."})

    def __post_init__(self):
        if self.method not in ("pca", "umap"):
            raise ValueError(f"unknown projection method {self.method!r}: use 'pca' or 'umap'.")
        if self.subset is not None and self.subset < 3:
            raise ValueError(f"subset must be >= 3 tokens or None (all), got {self.subset}.")
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be >= 2, got {self.n_neighbors}.")
        if self.word_like is None:
            self.word_like = self.subset is not None

    def key(self) -> dict:
        d = asdict(self)
        if self.method == "pca":       # UMAP knobs do not change a PCA map: share its cache file
            for name in ("n_neighbors", "min_dist", "n_epochs"):
                d.pop(name)
        return d


@dataclass
class VocabProjection:
    """A 2-D map of the vocabulary on which prompts and snapshots are placed.

    Attributes (m = fitted tokens):
        config: the settings.
        model_id: the model's name.
        token_ids: (m,) ids of the fitted tokens.
        coords: (m, 2) their map coordinates.
        tokens: m readable token strings (for hover labels), or ids as text.
        mean, components: PCA only: (d,) centre and (d, 2) axes; ``explained_variance_ratio`` (2,).
        reference: UMAP only: (m, d) float32 embeddings of the fitted tokens, unit-normalised (for
            placing new points); re-gathered from the embedding, never stored in the cache.
    """

    config: ProjectionConfig
    model_id: str
    token_ids: np.ndarray
    coords: np.ndarray
    tokens: list[str]
    mean: np.ndarray | None = None
    components: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None
    reference: torch.Tensor | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return self.config.method

    def transform(self, vectors) -> np.ndarray:
        """Place vectors (..., d) on the map -> (..., 2) float64.

        PCA: the fitted linear map, exact (a fitted token lands on its stored point).
        UMAP: an approximation of ``umap.UMAP.transform`` -- its initialisation step, without the
        extra optimisation epochs: find the ``n_neighbors`` nearest fitted tokens (cosine
        distance), weight them by UMAP's fuzzy membership ``exp(-d / sigma)`` with ``sigma``
        solved so the weights sum to log2(n_neighbors) (UMAP's ``smooth_knn_dist`` with
        ``rho = 0``, as in its transform), and average their 2-D coordinates; a vector at cosine
        distance ~0 (< 1e-6) from a fitted token -- any positive multiple of it -- lands exactly
        on that token, as in UMAP. Deterministic, fast, and pickle-free (UMAP's own model object is not).
        """
        X = _as_tensor(vectors, "vectors")
        shape = tuple(X.shape)
        d = self.mean.shape[0] if self.method == "pca" else self.reference.shape[1]
        if X.dim() < 1 or shape[-1] != d:
            raise ValueError(f"vectors of shape {shape} cannot be placed on a map of width-{d} embeddings; "
                             f"pass (..., {d}) vectors of the model the map was fitted on ('{self.model_id}').")
        flat = X.reshape(-1, d)
        if self.method == "pca":
            out = (flat.cpu().numpy().astype(np.float64) - self.mean) @ self.components
        else:
            out = _umap_place(flat, self.reference, self.coords, self.config.n_neighbors)
        return out.reshape(*shape[:-1], 2)

    def frame(self):
        """The fitted tokens as a frame: ``token_id, token, x, y`` (for scatter plots)."""
        pd = _pandas()
        return pd.DataFrame({"token_id": self.token_ids, "token": self.tokens,
                             "x": self.coords[:, 0], "y": self.coords[:, 1]})


def _umap_sigmas(dist: np.ndarray, k: float, n_iter: int = 64) -> np.ndarray:
    """UMAP's ``smooth_knn_dist`` with rho = 0, vectorised: sigma (q,) per row of sorted distances (q, k)."""
    target = math.log2(k)
    lo = np.zeros(dist.shape[0])
    hi = np.full(dist.shape[0], np.inf)
    mid = np.ones(dist.shape[0])
    rest = dist[:, 1:]                                                  # UMAP's sum skips the first neighbour
    for _ in range(n_iter):                                             # bisection (doubling while unbounded)
        with np.errstate(divide="ignore", over="ignore"):
            psum = np.where(rest > 0, np.exp(-rest / mid[:, None]), 1.0).sum(1)
        above = psum > target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2, (lo + hi) / 2)
    # UMAP keeps sigma >= 1e-3 x the mean distance (of the batch; here of the row, so a point's
    # place does not depend on which other points are placed with it)
    return np.maximum(mid, 1e-3 * dist.mean(1))


def _umap_place(X: torch.Tensor, reference: torch.Tensor, coords: np.ndarray, n_neighbors: int) -> np.ndarray:
    ref = reference
    C = np.asarray(coords, dtype=np.float64)
    k = min(n_neighbors, ref.shape[0])
    out = []
    chunk = max(1, _CHUNK_ELEMENTS // ref.shape[0])
    for start in range(0, X.shape[0], chunk):
        q = X[start:start + chunk].to(device=ref.device, dtype=torch.float32)
        q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-12)
        dist = (1.0 - q @ ref.T).clamp_min_(0.0)                         # cosine distance (c, m)
        d, idx = dist.topk(k, dim=1, largest=False)
        d, idx = d.double().cpu().numpy(), idx.cpu().numpy()
        sigma = _umap_sigmas(d, float(n_neighbors))
        w = np.where(d > 0, np.exp(-d / sigma[:, None]), 1.0)          # UMAP's membership strengths
        placed = (w[..., None] * C[idx]).sum(1) / w.sum(1, keepdims=True)
        # UMAP puts a point with a weight-1 neighbour (distance 0) on it; 1e-6 absorbs float32
        # rounding of cos = 1 for parallel vectors
        exact = d[:, 0] <= _SAME_DIRECTION
        placed[exact] = C[idx[exact, 0]]
        out.append(placed)
    return np.concatenate(out)


def _projection_ids(token_strings, V: int, config: ProjectionConfig) -> np.ndarray:
    if config.word_like:
        pool = np.flatnonzero(word_like_mask(_check_strings(token_strings, V)))
        if len(pool) < 3:
            raise ValueError("fewer than 3 word-like tokens to fit a map on; pass word_like=False.")
    else:
        pool = np.arange(V)
    if config.subset is None or config.subset >= len(pool):
        return pool.astype(np.int64)
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(pool, size=config.subset, replace=False)).astype(np.int64)


def _fit_pca(X: np.ndarray) -> dict[str, np.ndarray]:
    """Exact 2-component PCA of X (m, d) through the (d, d) covariance, in float64."""
    X = X.astype(np.float64)
    mean = X.mean(0)
    Xc = X - mean
    cov = Xc.T @ Xc / max(len(X) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)                                    # ascending
    comps = vecs[:, ::-1][:, :2].copy()
    # eigenvectors have no sign: make each axis's largest entry positive so maps are reproducible
    signs = np.sign(comps[np.abs(comps).argmax(0), [0, 1]])
    comps *= np.where(signs == 0, 1.0, signs)
    total = vals.sum()
    ratio = vals[::-1][:2] / total if total > 0 else np.zeros(2)
    return {"mean": mean, "components": comps, "explained_variance_ratio": ratio, "coords": Xc @ comps}


def _fit_umap(X: np.ndarray, config: ProjectionConfig) -> dict[str, np.ndarray]:
    try:
        import umap
    except ImportError as err:  # pragma: no cover - umap-learn ships with the viz extra
        raise ImportError("method='umap' needs umap-learn: pip install 'ptuning_lab[viz]'.") from err
    reducer = umap.UMAP(n_components=2, n_neighbors=config.n_neighbors, min_dist=config.min_dist, metric="cosine",
                        n_epochs=config.n_epochs, random_state=config.seed, n_jobs=1, verbose=False)
    return {"coords": np.asarray(reducer.fit_transform(X.astype(np.float32)), dtype=np.float64)}


def fit_projection(embedding, token_strings: Sequence[str] | None, model_id: str = "model", method: str = "pca",
                   subset: int | None = 5000, seed: int = 0, cache: bool = True, word_like: bool | None = None,
                   n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int | None = None) -> VocabProjection:
    """Fit (or load from the cache) a 2-D map of the vocabulary.

    Args:
        embedding: (V, d) input embedding matrix.
        token_strings: V decoded tokens (needed for the word-like sample and for labels).
        model_id: the model's name (part of the cache key, with V, d and an embedding fingerprint).
        method: "pca" or "umap".
        subset: fit on a seeded sample of this many tokens (word-like by default); None = all.
        Other arguments: see :class:`ProjectionConfig`.
    Returns:
        :class:`VocabProjection`. A cached map loads in well under a second; the UMAP of 5000
        tokens takes ~10-30 s on 2 CPU cores the first time (numba compiles once per process).
    """
    config = ProjectionConfig(method=method, subset=subset, seed=seed, word_like=word_like,
                              n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs)
    index = vocab_index(embedding)
    V = index.vocab_size
    if token_strings is not None:
        _check_strings(token_strings, V)
    key = _cache_key(f"projection-{method}", model_id, index, config.key())
    path = _cache_path(f"projection-{method}", model_id, key)
    arrays = _load_cache(path, key) if cache else None
    if arrays is not None and not _projection_arrays_ok(arrays, config, index):
        log.warning("ptuning_lab: the projection cache %s is inconsistent; rebuilding it", path)
        arrays = None
    if arrays is None:
        ids = _projection_ids(token_strings, V, config)
        X = index.embedding[torch.from_numpy(ids).to(index.embedding.device)].cpu().numpy()
        arrays = _fit_pca(X) if method == "pca" else _fit_umap(X, config)
        arrays["token_ids"] = ids
        if cache:
            _save_cache(path, key, arrays)
    ids = np.asarray(arrays["token_ids"], dtype=np.int64)
    tokens = ([readable_token(token_strings[i]) for i in ids.tolist()] if token_strings is not None
              else [str(i) for i in ids.tolist()])
    proj = VocabProjection(config=config, model_id=model_id, token_ids=ids,
                           coords=np.asarray(arrays["coords"], dtype=np.float64), tokens=tokens)
    if method == "pca":
        proj.mean = np.asarray(arrays["mean"], dtype=np.float64)
        proj.components = np.asarray(arrays["components"], dtype=np.float64)
        proj.explained_variance_ratio = np.asarray(arrays["explained_variance_ratio"], dtype=np.float64)
    else:
        ref = index.embedding[torch.from_numpy(ids).to(index.embedding.device)]
        proj.reference = ref / index.norms[torch.from_numpy(ids).to(ref.device)].clamp_min(1e-12).unsqueeze(1)
    return proj


def _projection_arrays_ok(arrays: dict, config: ProjectionConfig, index: VocabIndex) -> bool:
    if "token_ids" not in arrays or "coords" not in arrays:
        return False
    ids, coords = arrays["token_ids"], arrays["coords"]
    m = len(ids)
    ok = (ids.ndim == 1 and m >= 3 and coords.shape == (m, 2) and np.isfinite(coords).all()
          and ids.min() >= 0 and ids.max() < index.vocab_size)
    if ok and config.method == "pca":
        d = index.hidden_size
        ok = (arrays.get("mean", np.empty(0)).shape == (d,) and arrays.get("components", np.empty(0)).shape == (d, 2)
              and arrays.get("explained_variance_ratio", np.empty(0)).shape == (2,))
    return bool(ok)


# ============================================================================ cache files
def embedding_fingerprint(embedding) -> str:
    """A cheap fingerprint (16 hex) of an embedding matrix: ~500 rows' exact bytes + every column's sum.

    Not cryptographic: it tells "same weights" from "other or edited weights" for the cache key
    in ~30 ms on a 50k x 576 matrix. Memoised with the :class:`VocabIndex`.
    """
    index = vocab_index(embedding)
    cached = getattr(index, "_fingerprint", None)
    if cached is not None:
        return cached
    E = index.embedding.detach().cpu().numpy()
    V = E.shape[0]
    h = hashlib.sha256(np.asarray(E.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(E[:: max(1, V // 512)]).tobytes())
    h.update(np.ascontiguousarray(E[-1]).tobytes())
    h.update(E.sum(0, dtype=np.float64).tobytes())          # numpy's sum is deterministic (no threads)
    index._fingerprint = h.hexdigest()[:16]
    return index._fingerprint


def _cache_key(kind: str, model_id: str, index: VocabIndex, settings: dict) -> dict:
    return {"kind": kind, "version": CACHE_VERSION, "model_id": str(model_id), "vocab_size": index.vocab_size,
            "hidden_size": index.hidden_size, "embedding": embedding_fingerprint(index), "settings": settings}


def _cache_path(kind: str, model_id: str, key: dict) -> Path:
    # one file per model and settings: a changed embedding overwrites it instead of piling up files
    ident = {k: key[k] for k in ("kind", "model_id", "settings")}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model_id))[:60]
    return cache_dir() / "manifold" / f"{kind}-{slug}-{digest}.safetensors"


def _load_cache(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file whose stored key equals ``key``; None when missing, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as fh:
            stored = json.loads((fh.metadata() or {}).get("key", "null"))
            if stored != json.loads(json.dumps(key)):
                log.info("ptuning_lab: cache %s is stale (another model, embedding or settings); rebuilding", path)
                return None
            return {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as err:  # any unreadable file is rebuilt, never trusted
        log.warning("ptuning_lab: cache file %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None


def _save_cache(path: Path, key: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays atomically (temp file + rename); a failed write only costs a rebuild later."""
    from .checkpoint import write_tensors

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    try:
        write_tensors(path, tensors, metadata={"key": json.dumps(key, sort_keys=True), "format": "ptuning_lab.manifold/1"})
    except OSError as err:
        log.warning("ptuning_lab: could not write the cache file %s (%s); continuing without it", path, err)


# ============================================================================ CLI helper
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


__all__ = [
    "METRICS", "VocabIndex", "vocab_index", "word_like_mask", "nearest_tokens", "metric_agreement", "decode_prompt",
    "VocabStatsConfig", "VocabStats", "vocab_stats", "Drift", "drift_metrics", "drift_over_training",
    "snap_to_vocab", "snap_report", "waywardness_penalty", "decoded_f1", "ProjectionConfig", "VocabProjection",
    "fit_projection", "embedding_fingerprint", "decode_run",
]
