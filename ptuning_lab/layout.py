"""The layout of one batch on the fast path, computed on the host with array operations.

:func:`batch_layout` turns a batch of templated inputs (:class:`ptuning_lab.packing.Seq`) into the
packed rows the frozen model runs: where each live token goes in an ``(R, Q)`` grid, its position
id and example, which grid positions take which prompt row, and which positions are read out. All
of it travels to the device as one ``int64`` vector (:attr:`Layout.flat`), so a step costs one
host-to-device copy; :attr:`Layout.key` names everything about the layout's *shape*: two batches
with the same key run the same kernels on tensors of the same sizes (what a CUDA graph of a
training step needs, :mod:`ptuning_lab.step_graphs`).

No model and no torch here: the arrays are what ``FastForward`` turns into tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .packing import PAD, SHARED, Seq, common_prefix_length, pack_rows


@dataclass
class Layout:
    """Packed rows of one batch. ``flat`` = ids, segments, positions (each ``R*Q``), then the read
    positions, the virtual positions and their prompt rows (``n_read``, ``n_virtual``, ``n_virtual``)."""

    R: int                         # rows
    Q: int                         # tokens per row (shared head + live parts, rounded up)
    H: int                         # shared-head tokens at the start of every row (0: none)
    f0: int                        # constant-prefix length of the shared head's example (its cache entry)
    prefix_kind: str               # "none" | "shared" (one cached prefix for every row) | "rows" (per example)
    one_per_row: bool              # every row holds one example (then no mask is needed without a cache)
    n_read: int
    n_virtual: int
    flat: np.ndarray
    rows: list                     # the examples of each row (for per-example prefixes)
    firsts: np.ndarray             # each example's constant-prefix length
    tokens_run: int                # tokens the model runs (the fast path's statistics)

    @property
    def key(self) -> tuple:
        """Everything the shapes of this layout's tensors depend on."""
        return (self.R, self.Q, self.H, self.f0, self.prefix_kind, self.one_per_row, self.n_read, self.n_virtual)


def batch_layout(seqs: list[Seq], read: np.ndarray | None, *, cache_prefix: bool, share_head: bool,
                 pack_tokens: int, row_multiple: int, pad_id: int) -> Layout:
    """The packed-row layout of ``seqs`` (see ``FastForward._run``, which runs it).

    ``read``: (B,) how many last positions of each example to read (default 1 each).
    ``cache_prefix``: the tokens before each example's first [P] come from the prefix cache.
    ``share_head``: tokens common to the whole batch run once, at the start of every row.
    """
    B = len(seqs)
    lengths = np.fromiter((s.n for s in seqs), dtype=np.int64, count=B)
    # constant prefix: everything before the first [P]; the prediction position always runs live
    if cache_prefix:
        firsts = np.fromiter((s.first for s in seqs), dtype=np.int64, count=B)
    else:
        firsts = np.zeros(B, dtype=np.int64)
    common = common_prefix_length([s.ids for s in seqs]) if (share_head and B > 1) else 0
    read = np.ones(B, dtype=np.int64) if read is None else np.asarray(read, dtype=np.int64)
    common = min(common, int((lengths - read).min()))         # every position read runs live
    f0 = int(firsts[0])
    if common > f0 and bool((firsts == f0).all()):
        head, head_slots = seqs[0].arr[f0:common], seqs[0].slots[f0:common]
        starts = np.full(B, common, dtype=np.int64)
    else:
        head, head_slots, starts = seqs[0].arr[:0], seqs[0].slots[:0], firsts
    H = len(head)

    # pack the live parts into rows of at most pack_tokens tokens (one example never splits;
    # rows hold consecutive examples)
    live_lens = lengths - starts
    rows = pack_rows(live_lens.tolist(), max(pack_tokens - H, 1))
    R = len(rows)
    row_of = np.repeat(np.arange(R), [len(row) for row in rows])                 # (B,)
    row_tokens = np.bincount(row_of, weights=live_lens, minlength=R).astype(np.int64)
    Q = H + int(row_tokens.max())
    Q = -(-Q // row_multiple) * row_multiple      # padding at the rows' ends: fewer shapes to compile
    # every live token: id (-1 virtual), prompt row, example, position, and where it goes in (R, Q)
    tok = np.concatenate([s.arr[st:] for s, st in zip(seqs, starts.tolist())])
    slot = np.concatenate([s.slots[st:] for s, st in zip(seqs, starts.tolist())])
    seg = np.repeat(np.arange(B), live_lens)
    ends = np.cumsum(live_lens)
    begins = ends - live_lens
    pos = np.arange(len(tok)) - np.repeat(begins - starts, live_lens)
    row_begin = begins[[row[0] for row in rows]]                                 # (R,) first live token of each row
    tok_row = row_of[seg]
    dest = tok_row * Q + H + (np.arange(len(tok)) - row_begin[tok_row])
    f_tok = np.full((R, Q), -2, dtype=np.int64)
    f_slot = np.zeros((R, Q), dtype=np.int64)
    f_seg = np.full((R, Q), PAD, dtype=np.int64)
    f_pos = np.zeros((R, Q), dtype=np.int64)
    f_tok[:, :H], f_slot[:, :H], f_seg[:, :H], f_pos[:, :H] = head, head_slots, SHARED, np.arange(f0, f0 + H)
    for flat_grid, values in ((f_tok, tok), (f_slot, slot), (f_seg, seg), (f_pos, pos)):
        flat_grid.reshape(-1)[dest] = values
    f_tok, f_slot = f_tok.reshape(-1), f_slot.reshape(-1)
    # the positions read: the last read[b] tokens of example b, in order
    within = np.arange(int(read.sum())) - np.repeat(np.cumsum(read) - read, read)
    last = dest[np.repeat(ends - read, read) + within]
    # the virtual positions (flat index into R*Q) and the prompt row each one takes
    v_at = np.flatnonzero(f_tok == -1)
    v_slot = f_slot[v_at]
    ids = np.where(f_tok >= 0, f_tok, pad_id)
    flat = np.concatenate([ids, f_seg.reshape(-1), f_pos.reshape(-1), last, v_at, v_slot])
    if H and f0 > 0:
        kind = "shared"
    elif not H and int(firsts.max()) > 0:
        kind = "rows"
    else:
        kind = "none"
    return Layout(R, Q, H, f0, kind, all(len(row) == 1 for row in rows), len(last), len(v_at), flat, rows,
                  firsts, int(live_lens.sum()) + R * H)


__all__ = ["Layout", "batch_layout"]
