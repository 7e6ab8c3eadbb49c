"""Task metrics on predicted and gold labels: accuracy, macro-F1 (CB), F1a and EM (MultiRC).

Pure functions of label lists, so they are checked on hand-made predictions. The names match
``Task.metrics`` and the keys :func:`ptuning_lab.evaluation.evaluate` reports.

    >>> f1_macro(["a", "b", "b"], ["a", "b", "a"])
    0.6666666666666666
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

# the label MultiRC's F1a counts as "this answer option is correct" (SuperGLUE writes 1 / True)
POSITIVE_LABELS = ("1", "true", "yes", "positive")


def accuracy(gold: Sequence, pred: Sequence) -> float:
    """Fraction of positions where ``pred`` equals ``gold``."""
    _same_length(gold, pred)
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def f1_binary(gold: Sequence, pred: Sequence, positive) -> float:
    """F1 of class ``positive``: 2 TP / (2 TP + FP + FN); 0 when the class is never gold nor predicted."""
    _same_length(gold, pred)
    tp = sum(g == positive and p == positive for g, p in zip(gold, pred))
    fp = sum(g != positive and p == positive for g, p in zip(gold, pred))
    fn = sum(g == positive and p != positive for g, p in zip(gold, pred))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def f1_macro(gold: Sequence, pred: Sequence, labels: Sequence | None = None) -> float:
    """Mean over ``labels`` (default: every label gold or predicted) of each label's F1 (CB's metric)."""
    labels = sorted(set(gold) | set(pred)) if labels is None else list(labels)
    return sum(f1_binary(gold, pred, label) for label in labels) / len(labels)


def f1a(gold: Sequence, pred: Sequence, positive) -> float:
    """MultiRC's F1a: F1 of the ``positive`` label over all answer options, every question pooled."""
    return f1_binary(gold, pred, positive)


def exact_match_groups(gold: Sequence, pred: Sequence, groups: Sequence) -> float:
    """MultiRC's EM: fraction of groups (questions) whose every answer option is predicted right."""
    _same_length(gold, pred)
    if len(groups) != len(gold):
        raise ValueError(f"{len(groups)} groups for {len(gold)} predictions; give one group per example.")
    right: dict = defaultdict(lambda: True)
    for g, p, q in zip(gold, pred, groups):
        right[q] = right[q] and g == p
    return sum(right.values()) / len(right)


def positive_label(labels: Sequence[str]) -> str:
    """The label F1a counts as positive: the one named 1/true/yes/positive (any case)."""
    found = [label for label in labels if str(label).lower() in POSITIVE_LABELS]
    if len(found) != 1:
        raise ValueError(f"F1a needs one label meaning 'this answer is correct' ({'/'.join(POSITIVE_LABELS)}); "
                         f"the task's labels are {list(labels)}. Rename it, or report accuracy instead.")
    return found[0]


def label_metrics(names: Sequence[str], gold: Sequence[str], pred: Sequence[str], labels: Sequence[str],
                  groups: Sequence | None = None) -> dict[str, float]:
    """The metrics ``names`` (among accuracy, f1_macro, f1a, em) of label predictions."""
    out = {}
    for name in names:
        if name == "accuracy":
            out[name] = accuracy(gold, pred)
        elif name == "f1_macro":
            out[name] = f1_macro(gold, pred, labels)
        elif name == "f1a":
            out[name] = f1a(gold, pred, positive_label(labels))
        elif name == "em":
            if groups is None or any(g is None for g in groups):
                raise ValueError("EM is per question: every example needs its group (Example.group, e.g. the "
                                 "MultiRC question id).")
            out[name] = exact_match_groups(gold, pred, groups)
    return out


def _same_length(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred) or not gold:
        raise ValueError(f"{len(pred)} predictions for {len(gold)} gold labels; give one per example (and at least one).")
