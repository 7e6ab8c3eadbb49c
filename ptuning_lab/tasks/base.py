"""What every task is made of: :class:`Example`, :class:`Task`, :class:`TaskError`, checks and the seeded split.

A task family builds its examples and hands them to :func:`_make_task`, which checks the
template, shuffles with the seed, caps at ``max_examples`` and splits train/dev/test (stratified
by label for classification).
"""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Sequence

from ..templates import Template, TemplateError

DEFAULT_SPLIT = (0.6, 0.2, 0.2)
SPLIT_NAMES = ("train", "dev", "test")
KINDS = ("relation", "classification", "multiple_choice")
# what evaluate() reports per kind unless a task names its own (ptuning_lab.metrics defines each)
METRICS = ("p_at_1", "exact_match", "accuracy", "f1_macro", "f1a", "em")
DEFAULT_METRICS = {"relation": ("p_at_1", "exact_match"), "classification": ("accuracy",),
                   "multiple_choice": ("accuracy",)}


class TaskError(ValueError):
    """Bad task input (name, file, columns, split...); the message names the problem and the fix."""


class TaskTemplateError(TaskError, TemplateError):
    """A task's template is malformed: both a ``TaskError`` and a ``TemplateError``."""


@dataclass(frozen=True)
class Example:
    """One example: the ``[X]`` text (or named input slots) and the answer that follows the template.

    ``target`` has no leading space ("Paris"); the space is added when tokenizing the answer.
    ``label`` is the class name for classification ("positive"); for multiple choice the gold
    index as a string ("0"); ``None`` for relations.
    ``fields`` fill named template slots (``[premise]``, ``[hypothesis]``); ``[X]`` reads ``input``.
    ``choices`` are the candidate texts of a multiple-choice example (COPA's two alternatives);
    ``group`` ties examples scored together (MultiRC: one question's answers, for exact match).
    """

    input: str = ""
    target: str = ""
    label: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict, hash=False)   # hash: input, target, label, choices
    choices: tuple[str, ...] = ()
    group: str | None = None

    def __post_init__(self):
        # read-only, so a frozen Example cannot be changed through its fields either
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))
        object.__setattr__(self, "choices", tuple(self.choices))

    def slot(self, name: str) -> str:
        """The text of template slot ``name``: ``"X"`` (or ``"input"``) is :attr:`input`, others are fields."""
        if name in ("X", "input"):
            return self.input
        try:
            return self.fields[name]
        except KeyError:
            have = ", ".join(sorted(self.fields)) or "none (only [X])"
            raise TaskError(f"the template has a slot [{name}] but the example has no field {name!r}; its fields: "
                            f"{have}. Rename the slot or add the field to the data.") from None


@dataclass
class Task:
    """A named task: a manual template, three disjoint splits and the candidate answers."""

    name: str = field(metadata={"help": "task name: a built-in name or the file's stem"})
    template: str = field(metadata={"help": "LAMA-style manual template with one [X], e.g. 'The capital of [X] is'"})
    train: list[Example] = field(metadata={"help": "training examples"})
    dev: list[Example] = field(metadata={"help": "development examples (early stopping, model choice)"})
    test: list[Example] = field(metadata={"help": "held-out test examples"})
    answers: list[str] = field(metadata={"help": "sorted candidate answers: distinct targets, or the verbalizer words"})
    kind: str = field(default="relation", metadata={"help": "'relation', 'classification' or 'multiple_choice'"})
    verbalizer: dict[str, tuple[str, ...]] | None = field(
        default=None, metadata={"help": "classification only: label -> its label words, e.g. "
                                        "{'positive': ('great', 'good')}; a plain str is one word"})
    metrics: tuple[str, ...] = field(
        default=(), metadata={"help": "what evaluation reports, e.g. ('accuracy', 'f1_macro'); () = the kind's default"})
    source: str = field(default="", metadata={"help": "where the data comes from (package, file or hub id)"})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TaskError(f"task kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}.")
        if self.verbalizer is not None:
            # {'positive': 'good'} (one word per label, the older form) is ('good',)
            self.verbalizer = {label: (words,) if isinstance(words, str) else tuple(words)
                               for label, words in self.verbalizer.items()}
        self.metrics = tuple(self.metrics) or DEFAULT_METRICS[self.kind]
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise TaskError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}.")

    @property
    def examples(self) -> list[Example]:
        """All examples: train, then dev, then test."""
        return [*self.train, *self.dev, *self.test]

    @property
    def labels(self) -> list[str]:
        """Classification labels in verbalizer order (empty for a relation)."""
        return list(self.verbalizer) if self.verbalizer else []

    @property
    def label_words(self) -> list[str]:
        """Every label word, label by label, in verbalizer order (empty for a relation)."""
        return [w for words in (self.verbalizer or {}).values() for w in words]

    def summary(self) -> str:
        """One line: name, kind, split sizes, template, number of answers (and the verbalizer)."""
        line = (f"{self.name} ({self.kind}): {len(self.train)}/{len(self.dev)}/{len(self.test)} train/dev/test"
                f" | template {self.template!r} | {len(self.answers)} answers")
        if self.verbalizer:
            line += " | verbalizer " + ", ".join(f"{k}->{'|'.join(v)}" for k, v in self.verbalizer.items())
        return line


def _check_template(template) -> str:
    if not isinstance(template, str):
        raise TaskTemplateError(f"template must be a string like \"The capital of [X] is\", "
                                f"got {type(template).__name__}.")
    # the answer follows after one space, so trailing whitespace would give two
    template = template.rstrip()
    try:
        Template.parse(template).validate(need_virtual=False, need_input=True)
    except TemplateError as e:
        raise TaskTemplateError(str(e)) from e
    return template


def _check_verbalizer(verbalizer, labels: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``label -> (word, ...)`` for every label, in ``labels`` order; a plain str value is one word.

    Errors name the fix: a label without label words, an empty word, a word given to two labels.
    """
    if not isinstance(verbalizer, dict):
        raise TaskError(f"verbalizer must be a dict label -> label words, e.g. {{'positive': ('great', 'good')}}; "
                        f"got {type(verbalizer).__name__}.")
    uncovered = [label for label in labels if label not in verbalizer]
    if uncovered:
        example = ", ".join(f"{label!r}: '...'" for label in uncovered[:3])
        raise TaskError(f"labels {uncovered} have no verbalizer word (it covers {sorted(map(str, verbalizer))}); "
                        f"add them, e.g. verbalizer={{..., {example}}}, or drop verbalizer= to use each label as "
                        "its own word.")
    out = {}
    for label in labels:
        words = verbalizer[label]
        words = (words,) if isinstance(words, str) else words
        if not isinstance(words, (tuple, list)) or not words:
            raise TaskError(f"label {label!r} has no label words ({words!r}); give one or more, e.g. "
                            f"{{{label!r}: ('great', 'good')}}.")
        clean = []
        for word in words:
            if not isinstance(word, str) or not word.strip():
                raise TaskError(f"verbalizer word for label {label!r} is {word!r}; give a non-empty word such as "
                                "'good'.")
            if word.strip() not in clean:            # the same word twice would count its probability twice
                clean.append(word.strip())
        out[label] = tuple(clean)
    words = Counter(w for ws in out.values() for w in ws)
    clash = [w for w, n in words.items() if n > 1]
    if clash:
        raise TaskError(f"verbalizer maps several labels to {clash}; give each label its own words.")
    return out


def parse_label_words(specs: "str | Sequence[str]") -> dict[str, tuple[str, ...]]:
    """``"positive=great,good negative=terrible,bad"`` (or its items as a list) -> ``{label: (word, ...)}``.

    The form of the CLI's ``--label-words`` and of a task file's ``# label words:`` line.
    """
    items = specs.split() if isinstance(specs, str) else [i for spec in specs for i in str(spec).split()]
    if not items:
        raise TaskError("no label words given; write LABEL=WORD[,WORD...] per label, e.g. "
                        "positive=great,good negative=terrible,bad.")
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        label, eq, words = item.partition("=")
        if not eq or not label:
            raise TaskError(f"label words {item!r}: write LABEL=WORD[,WORD...], e.g. positive=great,good "
                            "(a label without label words cannot be scored).")
        clean = tuple(w.strip() for w in words.split(","))
        if not words.strip() or not all(clean):
            raise TaskError(f"label words {item!r}: empty label word for {label!r}; give words separated by commas "
                            f"without gaps, e.g. {label}=word1,word2.")
        if label in out:
            raise TaskError(f"label {label!r} is given label words twice; list all its words once: "
                            f"{label}={','.join(out[label] + clean)}.")
        out[label] = clean
    return out


def check_labels_present(verbalizer: dict, task: "Task") -> None:
    """Refuse label words for a label the task's data does not have (a typo would otherwise go unnoticed)."""
    have = {ex.label for ex in task.examples}
    extra = sorted(set(verbalizer) - have)
    if extra:
        raise TaskError(f"label words given for {extra}, but the data of '{task.name}' has the labels "
                        f"{sorted(map(str, have))}; fix the label names.")


def _check_choices(name: str, examples: Sequence[Example]) -> list[Example]:
    """Multiple choice: every example has two or more choices and a gold index; ``target`` = the gold text."""
    out = []
    for i, ex in enumerate(examples):
        where = f"task {name!r}, example {i} ({(ex.input or next(iter(ex.fields.values()), ''))[:40]!r})"
        if len(ex.choices) < 2 or not all(isinstance(c, str) and c.strip() for c in ex.choices):
            raise TaskError(f"{where}: a multiple-choice example needs its candidate texts, two or more non-empty "
                            f"strings in choices=(...); it has {ex.choices!r}.")
        if ex.label is None or not str(ex.label).isdigit() or int(ex.label) >= len(ex.choices):
            raise TaskError(f"{where}: label must be the gold choice's index as a string, '0'..'{len(ex.choices) - 1}'"
                            f"; got {ex.label!r}.")
        gold = ex.choices[int(ex.label)].strip()
        out.append(ex if ex.target == gold else replace(ex, target=gold))
    return out


def _check_split(split) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or not all(math.isfinite(f) and f > 0 for f in fractions) \
            or abs(sum(fractions) - 1) > 1e-6:
        raise TaskError(f"split={split!r}: give three positive train/dev/test fractions summing to 1, "
                        "e.g. (0.6, 0.2, 0.2).")
    return fractions  # type: ignore[return-value]


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    # round half up (Python's round() rounds half to even, which makes sizes jump with n)
    dev, test = (math.floor(n * f + 0.5) for f in fractions[1:])
    return n - dev - test, dev, test


def _needed(fractions: tuple[float, float, float]) -> int:
    n = 1
    while min(_split_sizes(n, fractions)) < 1:
        n += 1
    return n


def _make_task(name: str, template: str, examples: list[Example], kind: str, verbalizer: dict | None,
               seed: int, split, max_examples: int | None) -> Task:
    """Shuffle with ``seed``, cap at ``max_examples``, split (stratified by label for classification)."""
    template = _check_template(template)
    fractions = _check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, int):
        # random.Random(None) would seed from the clock and silently break reproducibility
        raise TaskError(f"seed={seed!r}: give an integer; the same seed always gives the same split.")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise TaskError(f"max_examples={max_examples!r}: give a positive integer, or None for all examples.")
    if not examples:
        raise TaskError(f"task {name!r} has no examples; give a file with at least {_needed(fractions)} rows.")
    if kind == "multiple_choice":
        examples = _check_choices(name, examples)
    if kind == "classification":
        verbalizer = _check_verbalizer(verbalizer, list(verbalizer) if isinstance(verbalizer, dict) else [])
        missing = sorted({str(ex.label) for ex in examples} - set(verbalizer))
        if missing:
            raise TaskError(f"task {name!r}: labels {missing} in the data have no label words (the verbalizer "
                            f"covers {sorted(verbalizer)}); add them.")
        # the target is the gold label's first word (what P@1 and the first-token loss read)
        examples = [ex if ex.target == verbalizer[ex.label][0] else replace(ex, target=verbalizer[ex.label][0])
                    for ex in examples]
    rng = random.Random(seed)
    if kind == "classification":
        groups: dict[str, list[Example]] = defaultdict(list)
        for ex in examples:
            groups[ex.label].append(ex)
        order = sorted(groups)
        for label in order:
            rng.shuffle(groups[label])
        if max_examples is not None and max_examples < len(examples):
            quotas = _proportional(max_examples, [len(groups[label]) for label in order])
            groups = {label: groups[label][:q] for label, q in zip(order, quotas)}
        splits: list[list[Example]] = [[], [], []]
        for label in order:
            start = 0
            for part, size in zip(splits, _split_sizes(len(groups[label]), fractions)):
                part.extend(groups[label][start:start + size])
                start += size
        for part in splits:  # labels interleaved, not in blocks
            rng.shuffle(part)
    else:
        pool = list(examples)
        rng.shuffle(pool)
        pool = pool[:max_examples] if max_examples is not None else pool
        sizes = _split_sizes(len(pool), fractions)
        splits = [pool[:sizes[0]], pool[sizes[0]:sizes[0] + sizes[1]], pool[sizes[0] + sizes[1]:]]
    total = sum(map(len, splits))
    empty = [s for s, part in zip(SPLIT_NAMES, splits) if not part]
    if empty:
        raise TaskError(f"task {name!r}: split {fractions} of {total} examples leaves {' and '.join(empty)} empty; "
                        f"need at least {_needed(fractions)} examples (raise max_examples=, add rows, "
                        "or change split=).")
    if kind == "classification":
        # each label's first word: the example targets, which P@1 and candidate accuracy read
        answers = sorted(words[0] for words in verbalizer.values())
    elif kind == "multiple_choice":
        answers = []                                  # each example brings its own candidates (choices)
    else:
        answers = sorted({ex.target for ex in splits[0] + splits[1] + splits[2]})
    return Task(name=name, template=template, train=splits[0], dev=splits[1], test=splits[2],
                answers=answers, kind=kind, verbalizer=verbalizer)


def _proportional(total: int, counts: list[int]) -> list[int]:
    """Split ``total`` over groups in proportion to ``counts`` (largest remainder, ties to the first)."""
    whole = sum(counts)
    exact = [total * c / whole for c in counts]
    quotas = [math.floor(e) for e in exact]
    for i in sorted(range(len(counts)), key=lambda i: -(exact[i] - quotas[i]))[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas
