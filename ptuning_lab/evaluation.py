"""Evaluation: first-token P@1 (LAMA style), exact match of whole answers, candidate accuracy, and
label / choice scoring with the task's metrics (accuracy, macro-F1, F1a, EM: ``ptuning_lab.metrics``).

A label's score is the log-likelihood of its label words after the template (:class:`LabelScoring`:
summed over a word's tokens by default, the mean as an option; a label's several words combined by
logsumexp by default, max as an option); a multiple-choice example's choices are scored the same way.

Candidate accuracy ranks the task's full answers (possibly several tokens each) by their summed
log-likelihood after the template, scored exactly from one cached forward per example
(``ptuning_lab.candidates``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .candidates import best_candidates, candidate_logprobs, choice_logprobs  # noqa: F401 (re-exported)
from .frozen_lm import FrozenLM, _at_least_float32
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
                ws = reduce_words(lm, cand[:, [at[w] for w in words]], words, scoring.reduce)
                scores = combine_words(ws, [len(v) for v in verbalizer.values()], scoring.combine)
            else:
                scores = label_scores(lm, template, inputs, verbalizer, prompt, log_probs, scoring)
            best = scores.argmax(1).tolist()
            pred_labels += [labels[i] for i in best]
            gold_labels += [ex.label for ex in chunk]
        elif kind == "multiple_choice":
            for ex, sc in zip(chunk, choice_logprobs(lm, template, chunk, prompt, log_probs, reduce=scoring.reduce)):
                pred_labels.append(str(int(sc.argmax())))
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
    return reduce_words(lm, candidate_logprobs(lm, template, inputs, words, prompt, log_probs), words, reduce)


def reduce_words(lm: FrozenLM, scores: torch.Tensor, words: Sequence[str], reduce: str = "sum") -> torch.Tensor:
    """(B, W) summed word log-likelihoods as :class:`LabelScoring` reduces them: kept (``"sum"``) or
    divided by each word's token count (``"mean"``)."""
    if reduce != "mean":
        return scores
    return scores / torch.tensor([len(lm.answer_ids(w)) for w in words], dtype=scores.dtype, device=scores.device)


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
