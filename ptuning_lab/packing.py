"""Packed rows: the layout the fast path (``ptuning_lab.fast``) runs a batch in.

The live parts of several examples share one row after a copy of the shared head; a block mask
lets each example see only its own cached prefix, the shared tokens and itself (causally). Padding
goes only at a row's end. Pure layout: token ids and segment ids in, masks out; no model.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

SHARED, PAD = -1, -2          # segment ids: seen by every example / padding


class Seq(NamedTuple):
    """One templated input: ``ids`` (-1 at each [P]) as a list and an array, the prompt row of each
    position (the k-th [P] takes row k; other positions 0), its first [P] (or its last position
    when it has none), its length and its number of [P]."""

    ids: list
    arr: np.ndarray
    slots: np.ndarray
    first: int
    n: int
    n_virtual: int

    @classmethod
    def of(cls, ids: list[int]) -> "Seq":
        arr = np.asarray(ids, dtype=np.int64)
        virtual = arr == -1
        slots = np.where(virtual, np.cumsum(virtual) - 1, 0)
        n = len(ids)
        first = min(int(np.argmax(virtual)) if virtual.any() else n - 1, n - 1)
        return cls(ids, arr, slots, first, n, int(virtual.sum()))


def pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """Split examples (in order) into rows of at most ``budget`` tokens, balanced in length."""
    total = sum(lengths)
    n_rows = max(1, math.ceil(total / budget), math.ceil(max(lengths) / budget))
    target = total / n_rows
    rows, row, acc = [], [], 0
    for b, n in enumerate(lengths):
        if row and (acc + n > budget or (acc + n / 2 > target and len(rows) < n_rows - 1)):
            rows.append(row)
            row, acc = [], 0
        row.append(b)
        acc += n
    rows.append(row)
    return rows


def block_mask(seg: torch.Tensor, kseg: torch.Tensor, dtype) -> torch.Tensor:
    """Attention mask (R, 1, Q, K + Q) for packed rows.

    ``seg`` (R, Q): example id of each live token (SHARED for the shared head, PAD for padding);
    ``kseg`` (R, K): example id of each cached key. A token sees the cached keys of its own example
    and the shared ones, and the live tokens of its example and the shared head up to itself.
    Padding sees itself, so no row of the mask is empty (an empty row gives NaN gradients).
    """
    R, Q = seg.shape
    keys = torch.cat([kseg, seg], dim=1)                                           # (R, K + Q)
    order_q = torch.arange(Q, device=seg.device)
    order_k = torch.cat([torch.full((kseg.shape[1],), -1, device=seg.device), order_q])
    same = (keys.unsqueeze(1) == seg.unsqueeze(2)) | (keys.unsqueeze(1) == SHARED)
    allowed = same & (order_k.view(1, 1, -1) <= order_q.view(1, -1, 1))
    allowed = allowed & ((keys.unsqueeze(1) != PAD) | (seg.unsqueeze(2) == PAD))
    allowed = allowed.unsqueeze(1)
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


def common_prefix_length(ids_list: list[list[int]]) -> int:
    """Length of the longest token prefix every list shares."""
    first = ids_list[0]
    n = min(len(ids) for ids in ids_list)
    for i in range(n):
        t = first[i]
        if any(ids[i] != t for ids in ids_list):
            return i
    return n


__all__ = ["SHARED", "PAD", "Seq", "pack_rows", "block_mask", "common_prefix_length"]
