"""Metrics: first-token P@1 over the whole vocabulary (LAMA style) and candidate accuracy.

Candidate accuracy ranks the task's full answers (possibly several tokens each) by their summed
log-likelihood after the template. Every answer of every example is scored exactly, at a cost that
does not depend on the prompt: the template and input run once per example, and the answers'
later tokens continue from that forward's cached keys/values, many (example, answer) rows per call
(:func:`candidate_logprobs`).
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .frozen_lm import FrozenLM, right_pad
from .templates import Template


def first_token_ids(lm: FrozenLM, targets: Sequence[str]) -> torch.Tensor:
    """(N,) id of the first token of each answer as it follows a template (" Paris" -> id)."""
    ids = []
    for t in targets:
        toks = lm.answer_ids(t)
        if not toks:
            raise ValueError(f"the answer {t!r} tokenizes to nothing; remove empty answers from the task.")
        ids.append(toks[0])
    return torch.tensor(ids, dtype=torch.long, device=lm.device)


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
    batch = lm.encode(template, list(inputs))
    context = _Context(lm, batch, prompt)
    if log_probs is None:
        log_probs = _float(lm.head(context.last_hidden)).log_softmax(-1)
    first = torch.tensor([ids[0] for ids in answer_ids], device=log_probs.device)
    scores = log_probs[:, first].clone()                                   # (B, A), first tokens only so far
    plan = _Continuations(answer_ids)
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
        needed, where = torch.unique(item * hidden.shape[1] + pair_pos[sel], return_inverse=True)
        h = hidden.reshape(-1, hidden.shape[-1])[needed]
        token_lp = torch.empty(len(sel), dtype=scores.dtype, device=dev)
        for s in range(0, len(needed), logits_chunk):
            logits = _float(lm.head(h[s:s + logits_chunk]))                     # (<= logits_chunk, vocab)
            hit = (where >= s) & (where < s + logits_chunk)
            at = where[hit] - s
            # log-softmax read at the targets only: one pass over the vocabulary for the normaliser
            token_lp[hit] = (logits[at, pair_tok[sel[hit]]] - logits.logsumexp(-1)[at]).to(scores.dtype)
        scores.index_put_((rows_b[item], pair_ans[sel]), token_lp, accumulate=True)
    return scores


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
def evaluate(lm: FrozenLM, template, examples, prompt: torch.Tensor | None = None,
             answers: Sequence[str] | None = None, batch_size: int = 64) -> dict:
    """Evaluate a (possibly manual) template on examples.

    Returns ``{"n", "p_at_1", "loss"}`` plus ``"candidate_accuracy"`` when ``answers`` is given.
    ``p_at_1``: the argmax over the whole vocabulary equals the answer's first token.
    ``loss``: mean cross-entropy of that first token (the training objective).
    """
    prompt = prompt.detach() if isinstance(prompt, torch.Tensor) else prompt
    template = Template.parse(template)                  # once, not per batch
    return score(lm, template, examples, prompt, answers, batch_size,
                 logits_fn=lambda inputs: lm.last_logits(lm.encode(template, inputs), prompt),
                 gold_fn=lambda targets: first_token_ids(lm, targets))


@torch.no_grad()
def score(lm: FrozenLM, template, examples, prompt, answers: Sequence[str] | None, batch_size: int,
          logits_fn: Callable[[list[str]], torch.Tensor], gold_fn: Callable[[list[str]], torch.Tensor]) -> dict:
    """The metrics of :func:`evaluate`, with the next-token logits ``(B, vocab)`` of a list of inputs
    from ``logits_fn`` and the answers' first-token ids ``(B,)`` from ``gold_fn`` (the fast path
    brings its own of both)."""
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to evaluate: the split is empty. Use a larger task or other split fractions.")
    hits, loss_sum, cand_hits = 0, 0.0, 0
    answers = list(answers) if answers is not None else None
    for chunk in _batches(examples, batch_size):
        inputs = [ex.input for ex in chunk]
        gold = gold_fn([ex.target for ex in chunk])
        log_probs = logits_fn(inputs).log_softmax(-1)
        hits += int((log_probs.argmax(-1) == gold).sum())
        loss_sum += float(F.nll_loss(log_probs, gold, reduction="sum"))
        if answers is not None:
            picked = best_candidates(lm, template, inputs, answers, prompt, log_probs)
            cand_hits += sum(answers[p] == ex.target for p, ex in zip(picked, chunk))
    n = len(examples)
    out = {"n": n, "p_at_1": hits / n, "loss": loss_sum / n}
    if answers is not None:
        out["candidate_accuracy"] = cand_hits / n
    return out


def macro_average(results: dict[str, dict], key: str) -> float:
    """Mean of ``key`` over tasks: ``results`` maps task name -> metrics dict."""
    values = [r[key] for r in results.values() if key in r]
    return sum(values) / len(values) if values else float("nan")
