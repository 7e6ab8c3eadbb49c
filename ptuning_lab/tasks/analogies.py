"""Relations from a real external set: the analogy questions shipped with gensim, as LAMA-style facts.

``gensim/test/test_data/questions-words.txt`` (Mikolov et al. 2013) holds lines ``a b c d`` (a is to b
as c is to d) in sections. Every section is a relation between its pairs: each line gives two pairs
(a, b) and (c, d). We keep each pair once, drop a subject that has two objects (Glendale is in Arizona
and in California), turn each section into subject -> object facts with a manual template, and hand
them to the same seeded train/dev/test split as the country relations. gensim is installed
``--no-deps`` and never imported: only its data file is read.

=============================  ========================================  ============================
task                           manual template                            example
=============================  ========================================  ============================
analogy-capital                ``The capital of [X] is``                  Greece -> Athens
analogy-currency               ``The currency of [X] is the``             Angola -> kwanza
analogy-city-in-state          ``[X] is a city in the state of``          Akron -> Ohio
analogy-nationality            ``A citizen of [X] is``                    Albania -> Albanian
analogy-family                 ``The feminine form of "[X]" is``          king -> queen
analogy-opposite               ``The opposite of "[X]" is``               aware -> unaware
analogy-comparative            ``The comparative of "[X]" is``            big -> bigger
analogy-superlative            ``The superlative of "[X]" is``            big -> biggest
analogy-adverb                 ``The adverb of "[X]" is``                 calm -> calmly
analogy-present-participle     ``They [X]. Right now they are``           dance -> dancing
analogy-past-tense             ``Today they are [X]. Yesterday they``     dancing -> danced
analogy-plural                 ``One [X], two``                           bird -> birds
analogy-plural-verbs           ``I [X] and she``                          eat -> eats
=============================  ========================================  ============================

The grammatical relations have 23-41 facts each, so their test splits are small (5-8 facts): read
their P@1 with its seed-to-seed spread.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Sequence

from .base import DEFAULT_SPLIT, Example, Task, TaskError, _make_task
from .files import _package_file
from .registry import register_task

QUESTIONS_WORDS = "gensim/test/test_data/questions-words.txt"


@dataclass(frozen=True)
class Analogy:
    """One relation: the file's sections it reads, their pair order, and a manual template."""

    sections: tuple[str, ...]
    template: str
    reverse: bool = False          # the file lists (capital, country); the fact is country -> capital


ANALOGIES = {
    "analogy-capital": Analogy(("capital-common-countries", "capital-world"), "The capital of [X] is", reverse=True),
    "analogy-currency": Analogy(("currency",), "The currency of [X] is the"),
    "analogy-city-in-state": Analogy(("city-in-state",), "[X] is a city in the state of"),
    "analogy-nationality": Analogy(("gram6-nationality-adjective",), "A citizen of [X] is"),
    "analogy-family": Analogy(("family",), 'The feminine form of "[X]" is'),
    "analogy-opposite": Analogy(("gram2-opposite",), 'The opposite of "[X]" is'),
    "analogy-comparative": Analogy(("gram3-comparative",), 'The comparative of "[X]" is'),
    "analogy-superlative": Analogy(("gram4-superlative",), 'The superlative of "[X]" is'),
    "analogy-adverb": Analogy(("gram1-adjective-to-adverb",), 'The adverb of "[X]" is'),
    "analogy-present-participle": Analogy(("gram5-present-participle",), "They [X]. Right now they are"),
    "analogy-past-tense": Analogy(("gram7-past-tense",), "Today they are [X]. Yesterday they"),
    "analogy-plural": Analogy(("gram8-plural",), "One [X], two"),
    "analogy-plural-verbs": Analogy(("gram9-plural-verbs",), "I [X] and she"),
}


def parse_questions_words(lines: Sequence[str], where: str = QUESTIONS_WORDS) -> dict[str, list[tuple[str, str]]]:
    """Section name -> its distinct (first, second) word pairs, in file order."""
    sections: dict[str, dict[tuple[str, str], None]] = {}
    current = None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            current = sections.setdefault(line[1:].strip(), {})
            continue
        words = line.split()
        if len(words) != 4 or current is None:
            raise TaskError(f"{where}, line {number}: expected ': section' or four words 'a b c d', got {line[:60]!r}.")
        current[(words[0], words[1])] = None
        current[(words[2], words[3])] = None
    return {name: list(pairs) for name, pairs in sections.items()}


@lru_cache(maxsize=1)
def _sections() -> dict[str, list[tuple[str, str]]]:
    path = _package_file("gensim", QUESTIONS_WORDS, "gensim", "the analogy relations")
    return parse_questions_words(path.read_text(encoding="utf-8").splitlines(), str(path))


def facts(relation: Analogy, sections: dict[str, list[tuple[str, str]]]) -> list[Example]:
    """The relation's subject -> object facts; a subject with two different objects is dropped."""
    objects: dict[str, dict[str, None]] = {}
    for name in relation.sections:
        if name not in sections:
            raise TaskError(f"questions-words has no section {name!r} (it has {', '.join(sections)}).")
        for a, b in sections[name]:
            subject, obj = (b, a) if relation.reverse else (a, b)
            objects.setdefault(subject, {})[obj] = None
    return [Example(subject, next(iter(objs))) for subject, objs in objects.items() if len(objs) == 1]


def analogy_task(name: str, seed: int = 0, template: str | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                 max_examples: int | None = None) -> Task:
    """One relation of gensim's analogy questions (``ANALOGIES``), split with ``seed``."""
    relation = ANALOGIES[name]
    task = _make_task(name, template or relation.template, facts(relation, _sections()), "relation", None,
                      seed, split, max_examples)
    task.source = f"gensim {QUESTIONS_WORDS} ({', '.join(relation.sections)})"
    return task


for _name in ANALOGIES:
    register_task(_name, partial(analogy_task, _name), kind="relation")

__all__ = ["ANALOGIES", "Analogy", "QUESTIONS_WORDS", "analogy_task", "parse_questions_words", "facts"]
