"""The course's settings: where the notebooks live online, and how much work a notebook does.

Two things every notebook of ``notebooks/`` needs, kept here so they have one source:

- **Links.** The Colab and Binder badges of each notebook (and the Colab install line) are built
  from ``REPO`` and ``BRANCH``; ``notebooks/build.py`` writes them into the notebooks and
  ``tests/test_notebooks.py`` checks that every badge matches these functions and points to a
  notebook that exists. Moving the repository means changing two constants, then
  ``python notebooks/build.py``.
- **Size.** One environment variable, ``PTUNING_LAB_SIZE``, picks how much a notebook trains:
  ``lesson`` (the default: meaningful numbers, a few minutes per notebook on a laptop CPU) or
  ``ci`` (the same code on a handful of examples and steps, so the test suite can execute every
  notebook in a few minutes). Notebooks read every size-dependent number from :func:`size`.

    >>> from ptuning_lab import course
    >>> SIZE = course.size()               # reads PTUNING_LAB_SIZE (unset -> "lesson")
    >>> SIZE.steps, SIZE.seeds             # doctest: +SKIP
    (60, 3)
    >>> course.colab_url("01_vocabulary_manifold")
    'https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/01_vocabulary_manifold.ipynb'
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import quote

REPO = "ptuning-lab/ptuning_lab"
BRANCH = "main"
NOTEBOOK_DIR = "notebooks"
# The one list of notebooks: every file this glob matches in NOTEBOOK_DIR is a lesson, executed by
# `make test` (pytest collects the same directory) and checked by tests/test_notebooks.py.
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
SIZE_ENV = "PTUNING_LAB_SIZE"

COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"


# ---------------------------------------------------------------------------------------- links
def _stem(name: str) -> str:
    stem = Path(str(name)).name
    stem = stem[:-len(".ipynb")] if stem.endswith(".ipynb") else stem
    if not stem or "/" in stem:
        raise ValueError(f"notebook name {name!r}: give the file name, e.g. '01_vocabulary_manifold'.")
    return stem


def notebook_path(name: str) -> str:
    """The notebook's path inside the repository: ``notebooks/<name>.ipynb``."""
    return f"{NOTEBOOK_DIR}/{_stem(name)}.ipynb"


def colab_url(name: str) -> str:
    """Open the notebook from GitHub in Google Colab."""
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{notebook_path(name)}"


def binder_url(name: str) -> str:
    """Open the notebook in JupyterLab on mybinder.org (the image is built from ``binder/``)."""
    return f"https://mybinder.org/v2/gh/{REPO}/{BRANCH}?labpath={quote(notebook_path(name), safe='')}"


def badges_markdown(name: str) -> str:
    """The two badges of a notebook, as one line of Markdown."""
    return (f"[![Open In Colab]({COLAB_BADGE})]({colab_url(name)}) "
            f"[![Binder]({BINDER_BADGE})]({binder_url(name)})")


def pip_spec(extras: str = "viz") -> str:
    """What Colab installs: this repository's package at ``BRANCH``, with the figure extras."""
    return f"ptuning_lab[{extras}] @ git+https://github.com/{REPO}@{BRANCH}"


def notebooks_dir() -> Path:
    """``notebooks/`` of a source checkout (for building and testing the course)."""
    return Path(__file__).resolve().parents[1] / NOTEBOOK_DIR


def notebook_files() -> list[Path]:
    """Every lesson notebook, sorted: the files matching ``NOTEBOOK_GLOB`` in :func:`notebooks_dir`."""
    return sorted(notebooks_dir().glob(NOTEBOOK_GLOB))


# ---------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Size:
    """How much work a notebook does. Every notebook takes its numbers from here, never hard-codes them."""

    name: str = field(metadata={"help": "'lesson' or 'ci'."})
    max_examples: int | None = field(metadata={"help": "Examples per task (a seeded sample, split 60/20/20); None = all."})
    steps: int = field(metadata={"help": "Training steps of a single run (notebooks 02, 03, 05, 06, 07)."})
    compare_steps: int = field(metadata={"help": "Training steps of each run of the seeded comparison (notebook 04)."})
    sweep_steps: int = field(metadata={"help": "Training steps of each run of the waywardness sweep (notebook 05)."})
    eval_every: int = field(metadata={"help": "Score the dev split every k steps (the curves' resolution)."})
    batch_size: int = field(metadata={"help": "Examples per training step."})
    seeds: int = field(metadata={"help": "Seeds per method in the comparison (notebook 04)."})
    gammas: tuple[float, ...] = field(metadata={"help": "Waywardness weights swept in notebook 05."})
    stats_subset: int = field(metadata={"help": "Token rows of the vocabulary statistics (vocab_stats subset)."})
    map_subset: int = field(metadata={"help": "Tokens the 2-D PCA map is fitted on (fit_projection subset)."})
    umap_subset: int = field(metadata={"help": "Tokens of the UMAP map in notebook 01."})
    umap_epochs: int | None = field(metadata={"help": "UMAP epochs (None = UMAP's default)."})
    map_points: int = field(metadata={"help": "Vocabulary points drawn on a map figure."})

    def train_kwargs(self, steps: int | None = None) -> dict:
        """``TrainConfig`` fields for a run of ``steps`` (default :attr:`steps`) at this size."""
        steps = self.steps if steps is None else steps
        return {"max_steps": steps, "eval_every": min(self.eval_every, steps), "batch_size": self.batch_size,
                "snapshot_every": max(1, steps // 12)}

    def describe(self) -> str:
        return (f"size '{self.name}': {self.max_examples or 'all'} examples per task, {self.steps} steps per run, "
                f"{self.seeds} seed(s) per method in the comparison (set {SIZE_ENV}=ci or lesson to change)")


# Lesson: runs that show real effects (P-tuning beats the manual prompt) in a few minutes on 2 CPU cores.
# The subsets equal fit_projection's and vocab_stats' defaults, which `ptuning-lab warm-cache` (and
# binder/postBuild) compute ahead of time, so a lesson finds them in the cache.
LESSON = Size(name="lesson", max_examples=150, steps=60, compare_steps=40, sweep_steps=40, eval_every=10,
              batch_size=16, seeds=3, gammas=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0), stats_subset=5000,
              map_subset=5000, umap_subset=3000, umap_epochs=None, map_points=3000)
# CI: the same cells on a few examples and steps: checks that every notebook runs, not what it finds.
CI = Size(name="ci", max_examples=40, steps=4, compare_steps=3, sweep_steps=3, eval_every=2, batch_size=8,
          seeds=2, gammas=(0.0, 1.0), stats_subset=1000, map_subset=1000, umap_subset=300, umap_epochs=30,
          map_points=500)
SIZES = {s.name: s for s in (LESSON, CI)}


def size(name: str | None = None) -> Size:
    """The size named by ``name``, else by the ``PTUNING_LAB_SIZE`` environment variable, else ``lesson``."""
    raw = name if name is not None else os.environ.get(SIZE_ENV, "")
    key = str(raw).strip().lower() or LESSON.name
    if key not in SIZES:
        raise ValueError(f"{SIZE_ENV}={raw!r} is not a size; use one of {', '.join(SIZES)} "
                         f"(unset means '{LESSON.name}').")
    return SIZES[key]


def size_fields() -> list[str]:
    """The names of :class:`Size`'s fields (documentation and tests)."""
    return [f.name for f in fields(Size)]


def prewarm(lm=None, model: str = "auto", size: Size | None = None, umap: bool | None = None) -> dict:
    """Compute once what the notebooks load at start, so a fresh session (Binder) trains at once.

    Loads the model (``lm`` or ``FrozenLM.load(model)``: the embedded model is converted to
    safetensors once, a hub model is downloaded into the Hugging Face cache) and caches, under
    ``PTUNING_LAB_CACHE``, the vocabulary statistics, the PCA map and the UMAP map of notebook 01
    with exactly the settings of ``size`` (default: the lesson size), i.e. the calls the notebooks
    make. ``umap``: None fits the UMAP map when umap-learn is installed, False skips it.
    Returns ``{"model": name, "umap": bool (fitted), "seconds": float}``.
    ``ptuning-lab warm-cache`` (run by ``binder/postBuild``) calls it.
    """
    import importlib.util
    import time

    from .manifold import fit_projection, vocab_stats

    start = time.perf_counter()
    size = size or LESSON
    if lm is None:
        from .frozen_lm import FrozenLM

        lm = FrozenLM.load(model)
    if umap is None:
        umap = importlib.util.find_spec("umap") is not None
    E, strings = lm.embedding.detach(), lm.token_strings
    vocab_stats(E, lm.name, subset=size.stats_subset)
    fit_projection(E, strings, lm.name, subset=size.map_subset)
    if umap:
        fit_projection(E, strings, lm.name, method="umap", subset=size.umap_subset, n_epochs=size.umap_epochs)
    return {"model": lm.name, "umap": bool(umap), "seconds": round(time.perf_counter() - start, 1)}


def on_colab() -> bool:
    """True inside Google Colab."""
    import sys

    return "google.colab" in sys.modules


__all__ = ["REPO", "BRANCH", "NOTEBOOK_DIR", "NOTEBOOK_GLOB", "SIZE_ENV", "Size", "LESSON", "CI", "SIZES", "size",
           "size_fields", "colab_url", "binder_url", "badges_markdown", "pip_spec", "notebook_path", "notebooks_dir",
           "notebook_files", "prewarm", "on_colab"]

