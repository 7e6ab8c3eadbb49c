"""Candidate answers scored after a templated input: one forward of the context, then the answers.

Every answer of every example is scored exactly, at a cost that does not depend on the prompt: the
template and input run once per example, and the answers' later tokens continue from that forward's
cached keys/values, many (example, answer) rows per call. :func:`candidate_logprobs` scores answers
shared by all inputs (a relation's candidates, a verbalizer's words); :func:`choice_logprobs` scores
each example's own choices (COPA) in the same batched way. ``ptuning_lab.evaluation`` builds on them.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch

from .frozen_lm import FrozenLM, right_pad


@torch.no_grad()
def best_candidates(lm: FrozenLM, template, inputs: Sequence[str], answers: Sequence[str],
                    prompt, log_probs: torch.Tensor, chunk: int = 256) -> list[int]:
    """Index into ``answers`` of the highest-likelihood full answer for each input.

    ``log_probs``: (B, vocab) next-token log-probabilities after the template, already computed.
    ``chunk``: (example, answer) rows per forward call (:func:`candidate_logprobs`).
    """
    return candidate_logprobs(lm, template, inputs, answers, prompt, log_probs, chunk=chunk).argmax(1).tolist()


@torch.no_grad()
def candidate_logprobs(lm: FrozenLM, template, inputs: Sequence[str], answers: Sequence[str], prompt=None,
                       log_probs: torch.Tensor | None = None, chunk: int = 256,
                       logits_chunk: int = 256) -> torch.Tensor:
    """Summed log-likelihood (B, A) of each full answer (one or more tokens) after each templated input.

    ``prompt``: ``(n, d)`` for the [P] slots, a K/V prefix (``PrefixKV``), or None (manual template).
    ``log_probs``: (B, vocab) next-token log-probabilities after the template if already computed
    (they score each answer's first token); else they come from the context's own forward.
    The template and input run once per example; the answers' later tokens run after their cached
    keys/values, ``chunk`` (example, answer row) pairs per call, and the log-softmax over the
    vocabulary is taken only where an answer token is read, ``logits_chunk`` positions at a time.
    """
    answer_ids = _answer_ids(lm, answers)
    plan = _Continuations(answer_ids)
    if log_probs is not None and not plan.rows:
        # every answer is one token: the next-token distribution already holds every score, no forward needed
        first = torch.tensor([ids[0] for ids in answer_ids], dtype=torch.long, device=log_probs.device)
        return log_probs[:, first].clone()
    batch = lm.encode(template, list(inputs))
    context = _Context(lm, batch, prompt)
    if log_probs is None:
        log_probs = _float(lm.head(context.last_hidden)).log_softmax(-1)
    first = torch.tensor([ids[0] for ids in answer_ids], dtype=torch.long, device=log_probs.device)
    scores = log_probs[:, first].clone()                                   # (B, A), first tokens only so far
    if not plan.rows:
        return scores
    dev = lm.device
    pair_ans, pair_row, pair_pos, pair_tok = (torch.tensor(col, device=dev) for col in zip(*plan.pairs))
    pairs_of_row = [torch.nonzero(pair_row == r).flatten() for r in range(len(plan.rows))]
    # (example, row) work items, longest rows first so that a call pads little
    work = sorted(((b, r) for b in range(len(batch.input_ids)) for r in range(len(plan.rows))),
                  key=lambda w: -len(plan.rows[w[1]]))
    for start in range(0, len(work), chunk):
        part = work[start:start + chunk]
        rows_b = torch.tensor([b for b, _ in part], device=dev)
        hidden = context.continue_with(lm, rows_b, [plan.rows[r] for _, r in part])      # (R, L, d)
        # the answer tokens read in this call: work item, flat (item, position) index, target, answer
        sel = [pairs_of_row[r] for _, r in part]
        item = torch.cat([torch.full((len(s),), i, device=dev) for i, s in enumerate(sel)])
        sel = torch.cat(sel)
        token_lp = _token_logprobs(lm, hidden, item, pair_pos[sel], pair_tok[sel], logits_chunk, scores.dtype)
        scores.index_put_((rows_b[item], pair_ans[sel]), token_lp, accumulate=True)
    return scores


def _token_logprobs(lm: FrozenLM, hidden: torch.Tensor, item: torch.Tensor, pos: torch.Tensor,
                    target: torch.Tensor, logits_chunk: int, dtype) -> torch.Tensor:
    """(N,) log-probability of token ``target[i]`` read at ``hidden[item[i], pos[i]]`` (hidden: (R, L, d)).

    Each position's head runs once however many reads share it, ``logits_chunk`` positions at a time,
    and the log-softmax is read at the targets only (one pass over the vocabulary for the normaliser).
    """
    needed, where = torch.unique(item * hidden.shape[1] + pos, return_inverse=True)
    h = hidden.reshape(-1, hidden.shape[-1])[needed]
    token_lp = torch.empty(len(item), dtype=dtype, device=hidden.device)
    for s in range(0, len(needed), logits_chunk):
        logits = _float(lm.head(h[s:s + logits_chunk]))                     # (<= logits_chunk, vocab)
        hit = (where >= s) & (where < s + logits_chunk)
        at = where[hit] - s
        token_lp[hit] = (logits[at, target[hit]] - logits.logsumexp(-1)[at]).to(dtype)
    return token_lp


def _answer_ids(lm: FrozenLM, answers: Sequence[str]) -> list[list[int]]:
    ids = [lm.answer_ids(a) for a in answers]
    for a, toks in zip(answers, ids):
        if not toks:
            raise ValueError(f"the answer {a!r} tokenizes to nothing; remove empty answers from the task.")
    return ids


class _Continuations:
    """The token rows to run after the context so that every multi-token answer gets its score.

    Answer ``t_0 .. t_{k-1}`` reads its tokens after ``t_1`` from the outputs at ``t_0 .. t_{k-2}``
    (its feed). A feed that begins another answer's feed reads from that row (" San Marino" and
    " San José" both read after " San"), so only the maximal feeds run. ``pairs``: one
    ``(answer, row, position in the row, target token)`` per answer token after the first.
    """

    def __init__(self, answer_ids: list[list[int]]):
        feeds = sorted({tuple(ids[:-1]) for ids in answer_ids if len(ids) > 1})
        # once sorted, a feed begins some other feed iff it begins the next one
        self.rows = [f for k, f in enumerate(feeds) if not (k + 1 < len(feeds) and feeds[k + 1][:len(f)] == f)]
        row_of = {}
        for r, row in enumerate(self.rows):
            for j in range(1, len(row) + 1):
                row_of.setdefault(row[:j], r)
        self.pairs = [(a, row_of[tuple(ids[:-1])], j, ids[j + 1])
                      for a, ids in enumerate(answer_ids) for j in range(len(ids) - 1)]


class _Context:
    """One forward of the templated inputs whose keys/values the answers continue from.

    Same positions and masks as ``FrozenLM.hidden``: right padding, explicit position ids, and for
    a K/V prefix its ``n`` positions first (the inputs at ``n, n+1, ...``). ``last_hidden``: (B, d).
    """

    def __init__(self, lm: FrozenLM, batch, prompt):
        B, T = batch.input_ids.shape
        prefix = prompt if hasattr(prompt, "cache") else None
        if prefix is not None:
            prefix.check_batch(batch)
        self.offset = prefix.num_virtual_tokens if prefix is not None else 0
        if self.offset + T > lm.max_positions:
            raise ValueError(f"{self.offset} prefix positions + a {T}-token input exceed the model's "
                             f"{lm.max_positions} positions; use fewer virtual tokens or shorter inputs.")
        # transformers 5 calls the cache argument `cache`, older releases `past_key_values`
        params = inspect.signature(lm.model.forward).parameters
        self.arg = "cache" if "cache" in params else "past_key_values"
        ones = torch.ones(B, self.offset, dtype=batch.attention_mask.dtype, device=lm.device)
        self.mask = torch.cat([ones, batch.attention_mask], dim=1)                # (B, n + T)
        self.lengths = batch.attention_mask.sum(1)                                # (B,) real tokens
        position_ids = self.offset + torch.arange(T, device=lm.device).unsqueeze(0).expand(B, T)
        start = {self.arg: prefix.cache(lm, B)} if prefix is not None else {}
        out = lm.transformer(inputs_embeds=lm.embed(batch, None if prefix is not None else prompt),
                             attention_mask=self.mask, position_ids=position_ids, use_cache=True, **start)
        self.last_hidden = out.last_hidden_state[torch.arange(B, device=lm.device), batch.last_index]
        cache = getattr(out, self.arg, None) or out.past_key_values
        # copies: a model compiled with CUDA graphs may reuse its output memory on the next call
        self.kv = [(k.clone(), v.clone()) for k, v in _layer_kv(cache)]     # per layer, (B, H, n + T, hd)
        self.config = lm.model.config

    def continue_with(self, lm: FrozenLM, rows_b: torch.Tensor, feeds: list) -> torch.Tensor:
        """Final hidden states (R, L, d) of token rows ``feeds`` run after the contexts ``rows_b`` (R,)."""
        from transformers import DynamicCache

        ids, mask = (t.to(lm.device) for t in right_pad([list(f) for f in feeds], lm.pad_id))
        try:
            cache = DynamicCache(config=self.config)
        except TypeError:                             # transformers < 4.56: no per-layer types from the config
            cache = DynamicCache()
        for layer, (keys, values) in enumerate(self.kv):
            cache.update(keys[rows_b], values[rows_b], layer)
        positions = self.offset + self.lengths[rows_b].unsqueeze(1) + torch.arange(ids.shape[1], device=lm.device)
        out = lm.transformer(inputs_embeds=lm.model.get_input_embeddings()(ids),
                             attention_mask=torch.cat([self.mask[rows_b], mask], dim=1), position_ids=positions,
                             use_cache=True, **{self.arg: cache})
        return out.last_hidden_state


def _layer_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values), each (B, H, T, hd), from a cache of any transformers version."""
    if hasattr(cache, "layers"):                                   # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "to_legacy_cache"):
        return [tuple(kv[:2]) for kv in cache.to_legacy_cache()]
    return [tuple(kv[:2]) for kv in cache]


def _float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go up to float32 for a stable softmax; float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


@torch.no_grad()
def choice_logprobs(lm: FrozenLM, template, examples: Sequence, prompt=None, log_probs: torch.Tensor | None = None,
                    chunk: int = 256, logits_chunk: int = 256, reduce: str = "sum") -> list[torch.Tensor]:
    """Log-likelihood of each example's own ``choices`` after its templated input: a ``(C_b,)`` tensor each.

    One forward of all the contexts, then every (example, choice) continuation from its cached
    keys/values, ``chunk`` rows per call; ``reduce="mean"`` divides by a choice's token count. Equal
    to scoring one example at a time (:func:`ptuning_lab.evaluation.choice_scores`), in a few calls.
    """
    examples = list(examples)
    for ex in examples:
        if not ex.choices:
            raise ValueError(f"the example {ex.input[:40]!r} has no choices: a multiple-choice example needs its "
                             "candidate texts in Example.choices.")
    ids = [_answer_ids(lm, ex.choices) for ex in examples]
    batch = lm.encode(template, examples)
    context = _Context(lm, batch, prompt)
    if log_probs is None:
        log_probs = _float(lm.head(context.last_hidden)).log_softmax(-1)
    dev = log_probs.device
    scores = [log_probs[b, torch.tensor([c[0] for c in ids[b]], device=dev)].clone() for b in range(len(examples))]
    # the (example, choice) pairs with tokens after the first, longest first so that a call pads little
    work = sorted(((b, c) for b in range(len(examples)) for c in range(len(ids[b])) if len(ids[b][c]) > 1),
                  key=lambda w: -len(ids[w[0]][w[1]]))
    for start in range(0, len(work), chunk):
        part = work[start:start + chunk]
        feeds = [ids[b][c][:-1] for b, c in part]
        hidden = context.continue_with(lm, torch.tensor([b for b, _ in part], device=dev), feeds)   # (R, L, d)
        item = torch.tensor([i for i, f in enumerate(feeds) for _ in f], device=dev)
        pos = torch.tensor([j for f in feeds for j in range(len(f))], device=dev)
        target = torch.tensor([t for (b, c) in part for t in ids[b][c][1:]], device=dev)
        token_lp = _token_logprobs(lm, hidden, item, pos, target, logits_chunk, log_probs.dtype)
        totals = torch.zeros(len(part), dtype=token_lp.dtype, device=dev).index_add_(0, item, token_lp)
        for i, (b, c) in enumerate(part):
            scores[b][c] += totals[i]
    if reduce == "mean":
        scores = [sc / torch.tensor([len(c) for c in ids[b]], dtype=sc.dtype, device=dev) for b, sc in enumerate(scores)]
    return scores
