"""The table of named tasks: each task family registers its tasks here with one :func:`register_task` call.

The registry knows names, builders and kinds only; :func:`ptuning_lab.tasks.load_task` is the one
place that dispatches on them. A builder is called as ``build(seed, template=..., split=...,
max_examples=...)``, plus ``verbalizer=...`` for a classification or multiple-choice task and any
options of its own (``data_dir=`` of a FewGLUE task), and returns a :class:`~ptuning_lab.tasks.base.Task`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import Task, TaskError

KINDS = ("relation", "classification", "multiple_choice")


@dataclass(frozen=True)
class TaskSpec:
    """One registered task: its name, its builder and its kind (one of :data:`KINDS`)."""

    name: str
    build: Callable[..., Task]
    kind: str


_TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, build: Callable[..., Task], kind: str) -> TaskSpec:
    """Make ``load_task(name)`` call ``build``; names are lower-case and unique."""
    if kind not in KINDS:
        raise TaskError(f"task {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    if name != name.strip().lower() or not name:
        raise TaskError(f"task name {name!r} must be lower-case with no surrounding spaces, e.g. 'capital'.")
    if name in _TASKS and _origin(_TASKS[name].build) != _origin(build):     # the same one again: a reload
        raise TaskError(f"a task named {name!r} is already registered; choose another name.")
    spec = TaskSpec(name, build, kind)
    _TASKS[name] = spec
    return spec


def _origin(build) -> tuple:
    func = getattr(build, "func", build)                                  # functools.partial
    return (getattr(func, "__module__", None), getattr(func, "__qualname__", repr(func)), getattr(build, "args", ()))


def task_names() -> tuple[str, ...]:
    """The registered task names: relations first, then classification, each in registration order.

    Sorting by kind keeps the listing (CLI help, course, tests) independent of the order in which
    the family modules happen to be imported.
    """
    return tuple(sorted(_TASKS, key=lambda name: KINDS.index(_TASKS[name].kind)))


def task_spec(name: str) -> TaskSpec | None:
    """The registered :class:`TaskSpec` of ``name`` (lower-case), or None."""
    return _TASKS.get(name)
