"""The vocabulary index and the one nearest-neighbour scan every manifold analysis shares.

:class:`VocabIndex` holds the ``(V, d)`` embedding in float32 with its row norms; :func:`_scan`
ranks all tokens for several metrics from one ``(chunk, V)`` matmul per chunk of queries, so
memory stays near 64 MB of scores at a time. :func:`word_like_mask` is the "word-like tokens"
filter used by decoding and maps.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

METRICS = ("cosine", "l2", "dot")
# scores of one query chunk are (chunk, V) float32: keep a chunk near 64 MB
_CHUNK_ELEMENTS = 16 * 1024 * 1024
# extra candidates re-ranked exactly for L2 (the matmul form |e|^2 - 2 e.v + |v|^2 cancels badly)
_L2_RERANK_EXTRA = 8


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
