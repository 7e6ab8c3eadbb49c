"""Evaluation: first-token P@1 (LAMA style), exact match of whole answers, candidate accuracy, and
label / choice scoring with the task's metrics (accuracy, macro-F1, F1a, EM: ``ptuning_lab.metrics``).

A label's score is the log-likelihood of its label words after the template (:class:`LabelScoring`:
summed over a word's tokens by default, the mean as an option; a label's several words combined by
logsumexp by default, max as an option); a multiple-choice example's choices are scored the same way.

Candidate accuracy ranks the task's full answers (possibly several tokens each) by their summed
log-likelihood after the template. Every answer of every example is scored exactly, at a cost that
does not depend on the prompt: the template and input run once per example, and the answers'
later tokens continue from that forward's cached keys/values, many (example, answer) rows per call
(:func:`candidate_logprobs`).
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .frozen_lm import FrozenLM, _at_least_float32, right_pad
from .templates import Template, warn_unused_fields


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
             answers: Sequence[str] | None = None, batch_size: int = 64, *, verbalizer: dict | None = None,
             metrics: Sequence[str] | None = None, scoring: "LabelScoring | None" = None,
             keep_predictions: bool = False) -> dict:
    """Evaluate a (possibly manual) template on examples.

    Returns ``{"n", "p_at_1", "loss"}`` plus ``"candidate_accuracy"`` when ``answers`` is given,
    plus the task's ``metrics`` (default: the kind's, ``ptuning_lab.tasks.base.DEFAULT_METRICS``).
    ``p_at_1``: the argmax over the whole vocabulary equals the answer's first token (LAMA).
    ``loss``: mean cross-entropy of that first token (the default training objective).
    ``exact_match`` (relations): every token of the answer is the argmax under teacher forcing, i.e.
    greedy decoding after the template writes the whole answer.
    Classification (``verbalizer`` given) and multiple choice (examples with ``choices``) score
    every label / choice in full (:func:`label_scores`, :func:`choice_scores`) and report
    ``accuracy`` (and ``f1_macro``, ``f1a``, ``em`` when asked).
    ``keep_predictions``: also return the per-example labels under ``"predictions"``, so metrics that
    are not means over examples (F1, EM) can be recomputed on the pooled shards of a launch
    (``distributed.combine_metrics``).
    """
    prompt = prompt.detach() if isinstance(prompt, torch.Tensor) else prompt
    template = Template.parse(template)                  # once, not per batch
    return score(lm, template, examples, prompt, answers, batch_size,
                 logits_fn=lambda inputs: lm.last_logits(lm.encode(template, inputs), prompt),
                 gold_fn=lambda targets: first_token_ids(lm, targets), verbalizer=verbalizer, metrics=metrics,
                 scoring=scoring, answer_logits_fn=lambda inputs, ids: answer_logits(lm, template, inputs, ids, prompt),
                 keep_predictions=keep_predictions)


@torch.no_grad()
def score(lm: FrozenLM, template, examples, prompt, answers: Sequence[str] | None, batch_size: int,
          logits_fn: Callable[[list[str]], torch.Tensor], gold_fn: Callable[[list[str]], torch.Tensor], *,
          verbalizer: dict | None = None, metrics: Sequence[str] | None = None, scoring=None,
          answer_logits_fn: Callable | None = None, keep_predictions: bool = False) -> dict:
    """The metrics of :func:`evaluate`, with the next-token logits ``(B, vocab)`` of a list of inputs
    from ``logits_fn``, the answers' first-token ids ``(B,)`` from ``gold_fn`` and the logits at
    every answer token ``(B, L, vocab)`` from ``answer_logits_fn(inputs, answer_ids)`` (the fast
    path brings its own of all three)."""
    from .metrics import label_metrics
    from .tasks.base import DEFAULT_METRICS

    examples = list(examples)
    if not examples:
        raise ValueError("no examples to evaluate: the split is empty. Use a larger task or other split fractions.")
    warn_unused_fields(template, examples)
    kind = "multiple_choice" if any(ex.choices for ex in examples) else \
        "classification" if verbalizer else "relation"
    metrics = tuple(metrics) if metrics else DEFAULT_METRICS[kind]
    scoring = scoring or LabelScoring()
    if verbalizer:
        verbalizer = normalise_verbalizer(verbalizer)
        warn_shared_first_tokens(lm, verbalizer)
    hits, loss_sum, cand_hits, exact = 0, 0.0, 0, 0
    gold_labels, pred_labels = [], []
    answers = list(answers) if answers is not None else None
    # a multiple-choice task has no task-wide answers: each example brings its own choices
    rank = bool(answers) and kind != "multiple_choice"
    for chunk in _batches(examples, batch_size):
        inputs = list(chunk)              # the examples themselves: each template slot reads its field
        # a multiple-choice example made by hand may leave target empty: its gold choice is the answer
        gold = gold_fn([ex.target or (ex.choices[int(ex.label)] if ex.choices else "") for ex in chunk])
        log_probs = logits_fn(inputs).log_softmax(-1)
        hits += int((log_probs.argmax(-1) == gold).sum())
        loss_sum += float(F.nll_loss(log_probs, gold, reduction="sum"))
        cand = None
        if rank:
            cand = candidate_logprobs(lm, template, inputs, answers, prompt, log_probs)     # (B, A)
            picked = cand.argmax(1).tolist()
            cand_hits += sum(answers[p] == ex.target for p, ex in zip(picked, chunk))
        if kind == "relation" and "exact_match" in metrics:
            ids = [lm.answer_ids(ex.target) for ex in chunk]
            logits = answer_logits_fn(inputs, ids) if answer_logits_fn is not None else \
                answer_logits(lm, template, inputs, ids, prompt)
            _, token_hit, mask = answer_token_stats(logits, ids)
            exact += int(((token_hit | ~mask).all(1)).sum())
        elif kind == "classification":
            labels = list(verbalizer)
            words = [w for ws in verbalizer.values() for w in ws]
            if cand is not None and set(words) <= set(answers):
                # the label words were scored among the candidates just now: reuse them, no second pass
                at = {a: i for i, a in enumerate(answers)}
                ws = cand[:, [at[w] for w in words]]
                if scoring.reduce == "mean":
                    ws = ws / torch.tensor([len(lm.answer_ids(w)) for w in words], dtype=ws.dtype, device=ws.device)
                scores = combine_words(ws, [len(v) for v in verbalizer.values()], scoring.combine)
            else:
                scores = label_scores(lm, template, inputs, verbalizer, prompt, log_probs, scoring)
            best = scores.argmax(1).tolist()
            pred_labels += [labels[i] for i in best]
            gold_labels += [ex.label for ex in chunk]
        elif kind == "multiple_choice":
            for b, ex in enumerate(chunk):
                pred_labels.append(str(int(choice_scores(lm, template, ex, prompt, log_probs[b:b + 1], scoring).argmax())))
                gold_labels.append(str(ex.label))
    n = len(examples)
    out = {"n": n, "p_at_1": hits / n, "loss": loss_sum / n}
    if answers is not None:
        # multiple choice: the candidates are the example's choices, so this is the choice accuracy
        out["candidate_accuracy"] = cand_hits / n if rank else \
            sum(p == g for p, g in zip(pred_labels, gold_labels)) / n
    if kind == "relation" and "exact_match" in metrics:
        out["exact_match"] = exact / n
    if kind != "relation":
        labels = list(verbalizer) if kind == "classification" else sorted(set(gold_labels) | set(pred_labels))
        names = [m for m in metrics if m not in ("p_at_1", "exact_match")]
        groups = [ex.group for ex in examples]
        out.update(label_metrics(names, gold_labels, pred_labels, labels, groups))
        if keep_predictions:
            out["predictions"] = {"gold": gold_labels, "pred": pred_labels, "groups": groups, "labels": labels,
                                  "metrics": names}
    return out


# ---------------------------------------------------------------- label words and choices
@dataclass(frozen=True)
class LabelScoring:
    """How a label's (or a choice's) score is made from the log-likelihood of its words.

    ``reduce``: over a word's tokens, ``"sum"`` (the word's log-likelihood; PET's choice for
    multi-token candidates) or ``"mean"`` (length-normalised: per-token average, which does not
    favour short words). ``combine``: over a label's words, ``"logsumexp"`` (log of the
    probability that the model says any of them) or ``"max"`` (its most likely word).
    """

    reduce: str = "sum"
    combine: str = "logsumexp"

    def __post_init__(self):
        if self.reduce not in ("sum", "mean"):
            raise ValueError(f"reduce={self.reduce!r}: use 'sum' (log-likelihood) or 'mean' (per token).")
        if self.combine not in ("logsumexp", "max"):
            raise ValueError(f"combine={self.combine!r}: use 'logsumexp' or 'max'.")


def normalise_verbalizer(verbalizer: dict) -> dict[str, tuple[str, ...]]:
    """``label -> (word, ...)``: a plain str value is a one-word tuple."""
    return {label: (words,) if isinstance(words, str) else tuple(words) for label, words in verbalizer.items()}


def warn_shared_first_tokens(lm: FrozenLM, verbalizer: dict) -> list[tuple[str, str]]:
    """Warn about label words of different labels that begin with the same token; returns those pairs.

    " very good" / " very bad": P@1 and the first-token loss read only the first token, which
    cannot tell them apart; full scoring (:func:`label_scores`, ``answer_loss="full"``) can.
    """
    first: dict[int, tuple[str, str]] = {}
    pairs = []
    for label, words in normalise_verbalizer(verbalizer).items():
        for word in words:
            ids = lm.answer_ids(word)
            if not ids:
                raise ValueError(f"the label word {word!r} of {label!r} tokenizes to nothing; give a real word.")
            other = first.setdefault(ids[0], (label, word))
            if other[0] != label:
                pairs.append((other[1], word))
    if pairs:
        shown = ", ".join(f"{a!r}/{b!r}" for a, b in pairs[:3])
        warnings.warn(f"label words {shown} of different labels share their first token: first-token P@1 and "
                      "TrainConfig(answer_loss='first') cannot tell them apart; the full label scores (accuracy) "
                      "and answer_loss='full' or 'labels' can.", stacklevel=3)
    return pairs


@torch.no_grad()
def word_scores(lm: FrozenLM, template, inputs: Sequence[str], words: Sequence[str], prompt=None,
                log_probs: torch.Tensor | None = None, reduce: str = "sum") -> torch.Tensor:
    """(B, W) log-likelihood of each word after each templated input: summed over its tokens, or their mean."""
    scores = candidate_logprobs(lm, template, inputs, words, prompt, log_probs)
    if reduce == "mean":
        lengths = torch.tensor([len(lm.answer_ids(w)) for w in words], dtype=scores.dtype, device=scores.device)
        scores = scores / lengths
    return scores


def combine_words(scores: torch.Tensor, sizes: Sequence[int], combine: str = "logsumexp") -> torch.Tensor:
    """(B, L) label scores from (B, W) word scores, the words grouped label by label (``sizes[l]`` each)."""
    parts = scores.split(list(sizes), dim=1)
    if combine == "max":
        return torch.stack([p.max(1).values for p in parts], 1)
    return torch.stack([p.logsumexp(1) for p in parts], 1)


@torch.no_grad()
def label_scores(lm: FrozenLM, template, inputs: Sequence[str], verbalizer: dict, prompt=None,
                 log_probs: torch.Tensor | None = None, scoring: LabelScoring | None = None) -> torch.Tensor:
    """(B, L) score of each label (verbalizer order) after each templated input.

    Every label word is scored in full (all its tokens, one cached forward of the context per
    example: :func:`candidate_logprobs`), reduced by ``scoring.reduce`` and the words of a label
    combined by ``scoring.combine``.
    """
    scoring = scoring or LabelScoring()
    verbalizer = normalise_verbalizer(verbalizer)
    words = [w for ws in verbalizer.values() for w in ws]
    scores = word_scores(lm, template, inputs, words, prompt, log_probs, scoring.reduce)
    return combine_words(scores, [len(ws) for ws in verbalizer.values()], scoring.combine)


@torch.no_grad()
def choice_scores(lm: FrozenLM, template, example, prompt=None, log_probs: torch.Tensor | None = None,
                  scoring: LabelScoring | None = None) -> torch.Tensor:
    """(C,) score of each of ``example.choices`` as the continuation after its templated input."""
    if not example.choices:
        raise ValueError(f"the example {example.input[:40]!r} has no choices: a multiple-choice example needs its "
                         "candidate texts in Example.choices.")
    scoring = scoring or LabelScoring()
    return word_scores(lm, template, [example], list(example.choices), prompt, log_probs, scoring.reduce)[0]


# ---------------------------------------------------------------- whole answers
def answer_logits(lm: FrozenLM, template, inputs: Sequence[str], answer_ids: Sequence[Sequence[int]],
                  prompt=None) -> torch.Tensor:
    """(B, L, vocab) logits at each answer token's prediction position (teacher forcing), L = longest answer.

    Row ``b``, position ``j < len(answer_ids[b])`` predicts ``answer_ids[b][j]``; the rest is 0.
    Differentiable with respect to ``prompt`` (the plain path of ``answer_loss="full"``).
    """
    # the answer's last token is never read as an input, so it is not appended
    batch = lm.encode(template, list(inputs), suffixes=[list(ids[:-1]) for ids in answer_ids])
    h = lm.hidden(batch, prompt)                                               # (B, T, d)
    L = max(len(ids) for ids in answer_ids)
    pos = (batch.suffix_start.unsqueeze(1) - 1 + torch.arange(L, device=h.device)).clamp(max=h.shape[1] - 1)
    rows = torch.arange(h.shape[0], device=h.device).unsqueeze(1)
    lengths = torch.tensor([len(ids) for ids in answer_ids], device=h.device)
    real = (torch.arange(L, device=h.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)   # (B, L, 1)
    return _at_least_float32(lm.head(h[rows, pos])) * real                       # padding rows are 0, as on the fast path


def answer_token_stats(logits: torch.Tensor, answer_ids: Sequence[Sequence[int]]):
    """From (B, L, vocab) answer logits: token log-probs (B, L) (0 past an answer's end), argmax hits
    (B, L) and the mask (B, L) of real answer tokens."""
    B, L = logits.shape[:2]
    target = torch.zeros(B, L, dtype=torch.long, device=logits.device)
    mask = torch.zeros(B, L, dtype=torch.bool, device=logits.device)
    for b, ids in enumerate(answer_ids):
        target[b, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[b, :len(ids)] = True
    logp = logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask
    hit = (logits.argmax(-1) == target) & mask
    return logp, hit, mask


def macro_average(results: dict[str, dict], key: str) -> float:
    """Mean of ``key`` over tasks: ``results`` maps task name -> metrics dict."""
    values = [r[key] for r in results.values() if key in r]
    return sum(values) / len(values) if values else float("nan")
