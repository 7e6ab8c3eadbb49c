"""Word polarity: strongly positive vs strongly negative words of the VADER lexicon (a classification task)."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .base import DEFAULT_SPLIT, Example, Task, TaskError, _check_verbalizer, _make_task
from .files import _package_lines
from .registry import register_task

# Picked among ten candidates by the zero-shot accuracy of the embedded SmolLM2-135M choosing
# " good" vs " bad" (see polarity_task): " good"/" bad" is the natural next word.
POLARITY_TEMPLATE = 'The word "[X]" means something'
POLARITY_VERBALIZER = {"positive": "good", "negative": "bad"}


def polarity_task(seed: int = 0, template: str | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                  max_examples: int | None = None, verbalizer: dict | None = None,
                  threshold: float = 2.0, offensive: bool = False) -> Task:
    """Word polarity from the VADER lexicon: strongly positive vs strongly negative words.

    Keeps dictionary words with mean valence >= ``threshold`` (positive) or <= ``-threshold``
    (negative), then the same number of each class: the most extreme words of the larger class.
    The most negative words of a sentiment lexicon include slurs and obscenities; a course shows
    its examples on screen, so words on the ``better-profanity`` word list are left out before the
    classes are balanced (52 words of the unfiltered 1734-word set, 51 of them negative; the other
    words of the pool take their places). ``offensive=True`` keeps them.
    The template ``The word "[X]" means something`` ends where " good"/" bad" is the natural next
    word. Zero-shot, the embedded SmolLM2-135M scores " good" above " bad" for the right class on
    93% of the 1732 words (50% is chance); of ten templates tried, 'The word "[X]" sounds' came
    next (87%), while '"[X]" is a' or '[X] is' answer " good" for nearly every word (50-55%).
    """
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 4:
        raise TaskError(f"threshold={threshold!r}: VADER valences lie in [-4, 4]; use a number in (0, 4], "
                        "e.g. 2.0.")
    words = _vader_words()
    if not offensive:
        blocked = _offensive_words()
        words = tuple((w, v) for w, v in words if w not in blocked)
    pos = [(w, v) for w, v in words if v >= threshold]
    neg = [(w, v) for w, v in words if v <= -threshold]
    n = min(len(pos), len(neg))
    if n == 0:
        raise TaskError(f"no VADER word reaches |valence| >= {threshold} in both classes; lower threshold=.")

    def strongest(items):
        return sorted(items, key=lambda wv: (-abs(wv[1]), wv[0]))[:n]

    verb = _check_verbalizer(POLARITY_VERBALIZER if verbalizer is None else verbalizer, ["negative", "positive"])
    verb = {label: verb[label] for label in ("positive", "negative")}
    examples = [Example(w, verb["positive"][0], "positive") for w, _ in strongest(pos)]
    examples += [Example(w, verb["negative"][0], "negative") for w, _ in strongest(neg)]
    examples.sort(key=lambda e: e.input)
    return _make_task("polarity", template or POLARITY_TEMPLATE, examples, "classification", verb,
                      seed, split, max_examples)


@lru_cache(maxsize=1)
def _offensive_words() -> frozenset[str]:
    """The lower-cased entries of ``better-profanity``'s word list (read as data; its filter is not used)."""
    lines = _package_lines("better_profanity", "profanity_wordlist.txt", "better-profanity",
                           "the polarity task (to leave out offensive words; offensive=True keeps every word)")
    return frozenset(line.strip().lower() for line in lines if line.strip())


@lru_cache(maxsize=1)
def _vader_words() -> tuple[tuple[str, float], ...]:
    """(word, mean valence) for VADER's dictionary words, in file order.

    vader_lexicon.txt lists emoticons and internet acronyms first ("lol", "wtf", "aayf"), sorted,
    then ordinary words sorted again from "abandon". The acronyms are not words a language model
    can read, so we keep only the second part: it starts where a plain word's first letter drops
    back (the "zzz" -> "abandon" line).
    """
    lines = _package_lines("vaderSentiment", "vader_lexicon.txt", "vadersentiment", "the polarity task")
    words: list[tuple[str, float]] = []
    for line in lines:
        cols = line.split("\t")
        if len(cols) < 2:
            continue
        token = cols[0].strip()
        if not (token.isascii() and token.isalpha() and token.islower()):
            continue  # emoticons, "can't stand", "n00b"
        try:
            words.append((token, float(cols[1])))
        except ValueError:
            continue
    start = next((i for i in range(1, len(words)) if words[i][0][0] < words[i - 1][0][0]), 0)
    seen: set[str] = set()
    out = []
    for w, v in words[start:]:
        if w not in seen:
            seen.add(w)
            out.append((w, v))
    return tuple(out)


register_task("polarity", polarity_task, kind="classification")
