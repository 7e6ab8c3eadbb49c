"""The course's settings: where the notebooks live online, and how much work a notebook does.

Two things every notebook of ``notebooks/`` needs, kept here so they have one source:

- **Links.** The Colab and Binder badges of each notebook and its first code cell (the Colab set-up,
  :func:`setup_cell`) are built from ``REPO`` and ``BRANCH``; ``tests/test_notebooks.py`` checks that
  every notebook carries them and that each badge points to a notebook that exists. Moving the
  repository means changing two constants and pasting what the failing test prints.
- **Colab.** The set-up cell installs the package alone, then runs this file as a script
  (``python course.py colab-install``: only the standard library, since the dependencies are not
  there yet), which installs the dependencies while keeping every version Colab ships that satisfies
  them, then calls :func:`colab_session` (the custom widget manager on, GPT-2 as the model).
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
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import quote

# Only the standard library at module level: the Colab set-up cell runs this file as a script
# before the package's dependencies are installed.

REPO = "ptuning-lab/ptuning_lab"
BRANCH = "main"
NOTEBOOK_DIR = "notebooks"
# The one list of notebooks: every file this glob matches in NOTEBOOK_DIR is a lesson, executed by
# `make test` (pytest collects the same directory) and checked by tests/test_notebooks.py.
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
SIZE_ENV = "PTUNING_LAB_SIZE"
SOURCE_ENV = "PTUNING_LAB_SOURCE"
MODEL_ENV = "PTUNING_LAB_MODEL"

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


def default_source() -> str:
    """Where Colab installs ptuning_lab from by default: this repository at ``BRANCH``."""
    return f"git+https://github.com/{REPO}@{BRANCH}"


def pip_spec(extras: str = "viz") -> str:
    """What Colab installs: this repository's package at ``BRANCH``, with the figure extras."""
    return f"ptuning_lab[{extras}] @ {default_source()}"


def notebooks_dir() -> Path:
    """``notebooks/`` of a source checkout (for building and testing the course)."""
    return Path(__file__).resolve().parents[1] / NOTEBOOK_DIR


def fewglue_dir() -> str | None:
    """Where a lesson finds the FewGLUE_32dev files: ``$PTUNING_LAB_FEWGLUE``, else ``shared/data/fewglue_32dev``
    beside the repository (the layout of this project's machines), else None (``load_task`` then tries the hub)."""
    from .tasks.superglue import FEWGLUE_ENV

    places = [os.environ.get(FEWGLUE_ENV), notebooks_dir().parent.parent / "shared" / "data" / "fewglue_32dev",
              Path.cwd().parent / "shared" / "data" / "fewglue_32dev"]
    for place in places:
        if place and (Path(place) / "CB").is_dir():
            return str(place)
    return None


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
    compare_steps: int = field(metadata={"help": "Training steps of each run of the seeded comparison (notebook 04; "
                                                 "at 40 it took 359 s on 2 idle cores, over the 5-minute budget; "
                                                 "dev P@1 reached 90% of its best by step 13-20)."})
    sweep_steps: int = field(metadata={"help": "Training steps of each run of the waywardness sweep (notebook 05)."})
    sentence_steps: int = field(metadata={"help": "Training steps of the sentence-level runs (reviews, CB: notebook 06)."})
    sentence_batch_size: int = field(metadata={"help": "Examples per step of those runs: CB's long premises at 8 per "
                                                       "step peaked at 2.5 GB, over Binder's 2 GB; at 4, 1.9 GB."})
    eval_every: int = field(metadata={"help": "Score the dev split every k steps (the curves' resolution)."})
    batch_size: int = field(metadata={"help": "Examples per training step."})
    seeds: int = field(metadata={"help": "Seeds per method in the comparison (notebook 04)."})
    gammas: tuple[float, ...] = field(metadata={"help": "Waywardness weights swept in notebook 05."})
    stats_subset: int = field(metadata={"help": "Token rows of the vocabulary statistics (vocab_stats subset)."})
    map_subset: int = field(metadata={"help": "Tokens the 2-D PCA map is fitted on (fit_projection subset)."})
    umap_subset: int = field(metadata={"help": "Tokens of the UMAP map in notebook 01."})
    umap_epochs: int | None = field(metadata={"help": "UMAP epochs (None = UMAP's default)."})
    map_points: int = field(metadata={"help": "Vocabulary points drawn on a map figure."})

    def train_kwargs(self, steps: int | None = None, batch_size: int | None = None) -> dict:
        """``TrainConfig`` fields for a run of ``steps`` (default :attr:`steps`) at this size."""
        steps = self.steps if steps is None else steps
        return {"max_steps": steps, "eval_every": min(self.eval_every, steps),
                "batch_size": self.batch_size if batch_size is None else batch_size,
                "snapshot_every": max(1, steps // 12)}

    def sentence_kwargs(self) -> dict:
        """``TrainConfig`` fields of a sentence-level run (:attr:`sentence_steps` of :attr:`sentence_batch_size`)."""
        return self.train_kwargs(self.sentence_steps, self.sentence_batch_size)

    def describe(self) -> str:
        return (f"size '{self.name}': {self.max_examples or 'all'} examples per task, {self.steps} steps per run, "
                f"{self.seeds} seed(s) per method in the comparison (set {SIZE_ENV}=ci or lesson to change)")


# Lesson: runs that show real effects (P-tuning beats the manual prompt) in a few minutes on 2 CPU cores.
# The subsets equal fit_projection's and vocab_stats' defaults, which `ptuning-lab warm-cache` (and
# binder/postBuild) compute ahead of time, so a lesson finds them in the cache.
LESSON = Size(name="lesson", max_examples=150, steps=60, compare_steps=30, sweep_steps=40, sentence_steps=30,
              sentence_batch_size=4, eval_every=10,
              batch_size=16, seeds=3, gammas=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0), stats_subset=5000,
              map_subset=5000, umap_subset=3000, umap_epochs=None, map_points=3000)
# CI: the same cells on a few examples and steps: checks that every notebook runs, not what it finds.
CI = Size(name="ci", max_examples=40, steps=4, compare_steps=3, sweep_steps=3, sentence_steps=3,
          sentence_batch_size=2, eval_every=2, batch_size=8,
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
    return "google.colab" in sys.modules


# ---------------------------------------------------------------------------------------- handouts
SOLUTION_TAG = "solution"
HANDOUTS_MARKER = ".ptuning_lab_handouts"


def build_handouts(out, notebooks=None) -> dict[str, list[Path]]:
    """Write the student and the solution version of every lesson into ``out/student`` and ``out/solutions``.

    The student version drops every cell tagged ``solution`` (nbconvert's TagRemovePreprocessor); the
    solution version keeps them, opened. Outputs are cleared in both. ``out`` is replaced only if this
    function wrote it (it holds ``.ptuning_lab_handouts``); anything else there is refused, untouched.
    The new copy is written beside ``out`` and renamed into place. Returns the files per version.
    """
    import shutil

    import nbformat
    from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

    out = Path(out).resolve()
    if out.exists() and not (out / HANDOUTS_MARKER).is_file():
        raise FileExistsError(f"{out} exists and was not written by build_handouts: choose another --out, "
                              "or remove it yourself")
    old = out.with_name(f".{out.name}-old")        # left by a swap cut short: removed only if a build of ours
    if old.exists() and not (old / HANDOUTS_MARKER).is_file():
        raise FileExistsError(f"{old} is in the way of replacing {out} and was not written by build_handouts; "
                              "move it away.")
    notebooks = list(notebook_files() if notebooks is None else notebooks)
    if not notebooks:
        raise FileNotFoundError(f"no lessons ({NOTEBOOK_GLOB}) found to build handouts from")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:                            # a failure part way removes the staging copy (ours alone); out stays whole
        remove = TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG})
        clear = ClearOutputPreprocessor()
        written: dict[str, list[Path]] = {"student": [], "solutions": []}
        for path in notebooks:
            for version in written:
                nb = nbformat.read(path, as_version=4)
                nb, _ = clear.preprocess(nb, {})
                if version == "student":
                    nb, _ = remove.preprocess(nb, {})
                else:
                    for cell in nb.cells:
                        cell.metadata.get("jupyter", {}).pop("source_hidden", None)
                target = staging / version / Path(path).name
                target.parent.mkdir(exist_ok=True)
                nbformat.write(nb, target)
                written[version].append(out / version / target.name)
        (staging / HANDOUTS_MARKER).write_text("written by ptuning_lab.course.build_handouts; replaced on each build\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old)         # checked above: a build of ours
    if out.exists():
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
    return written


# ---------------------------------------------------------------------------------------- colab
_SETUP_CELL = """\
# Setup. On Colab: installs ptuning_lab from PTUNING_LAB_SOURCE (default: the line below), keeping the
# versions Colab ships where they suffice. Locally (`make lab`) and on Binder it is installed already.
import os, subprocess, sys
if "google.colab" in sys.modules:
    SOURCE = os.environ.get("PTUNING_LAB_SOURCE", "{source}")
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", SOURCE]).returncode:
        raise RuntimeError(f"pip could not install ptuning_lab from {{SOURCE}} (its message is above): check "
                           "the address, or set os.environ['PTUNING_LAB_SOURCE'] and run this cell again")
    import importlib, importlib.util; importlib.invalidate_caches()   # the package alone is there now
    installer = os.path.join(importlib.util.find_spec("ptuning_lab").submodule_search_locations[0], "course.py")
    if subprocess.run([sys.executable, installer, "colab-install"]).returncode:   # its dependencies
        raise RuntimeError("ptuning_lab's set-up stopped: the message above says why and what to do")
    from ptuning_lab import course; course.colab_session()   # widgets on, GPT-2 as the model"""


def setup_cell() -> str:
    """The first code cell of every notebook: installs the package on Colab, does nothing elsewhere.

    It stays a stand-alone snippet because on Colab the package is not importable when it starts: it
    installs the package alone (``--no-deps``, nothing else changes), runs this file as a script for
    the dependencies (:func:`colab_install`), then calls :func:`colab_session`.
    """
    return _SETUP_CELL.format(source=default_source())


class ColabSetupError(RuntimeError):
    """The Colab install could not finish; the message says why and what to do."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """``{normalized distribution name: version}`` of everything importable in this interpreter."""
    import importlib.metadata as md

    found = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and _norm(name) not in found:           # the first on sys.path is the one imported
            found[_norm(name)] = dist.version
    return found


def requirements_for(extras=("viz",), package: str = "ptuning_lab") -> list[str]:
    """The installed ``package``'s requirements with ``extras`` (pip requirement strings, extra markers removed)."""
    import importlib.metadata as md

    wanted, out = set(extras), []
    for line in md.requires(package) or []:
        req, _, marker = line.partition(";")
        extra = re.fullmatch(r"\s*extra\s*==\s*[\"']([^\"']+)[\"']\s*", marker)
        if _norm(re.split(r"[\s\[<>=!~@(]", req.strip(), maxsplit=1)[0]) == _norm(package):
            continue                                     # ptuning_lab[...] of the "all" extra
        if not marker.strip():
            out.append(req.strip())
        elif extra:
            if extra.group(1) in wanted:
                out.append(req.strip())
        else:
            out.append(line.strip())                     # pip evaluates other markers itself
    return out


def colab_install(extras=("viz",), run=subprocess.run, installed=installed_versions,
                  requirements=requirements_for) -> list[str]:
    """Install the installed package's dependencies without changing what Colab ships, where possible.

    First with every installed distribution pinned to its version (a pip constraints file): this adds
    what is missing and upgrades nothing. Only when that cannot be resolved (a requirement newer than
    Colab's copy, e.g. ``ipywidgets>=8`` over Colab's 7.x) pip installs again without the pins, upgrading
    only what does not satisfy a requirement. Returns the preinstalled distributions whose version
    changed, as ``"name old -> new"``: the kernel may hold their old code, so the session needs a restart.
    Raises :class:`ColabSetupError` when pip fails.
    """
    before, reqs = installed(), requirements(extras)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    with tempfile.NamedTemporaryFile("w", suffix="-colab-versions.txt", delete=False) as f:
        f.write("".join(f"{n}=={v}\n" for n, v in sorted(before.items()) if n != "ptuning-lab"))
    try:
        if run(pip + ["-c", f.name, *reqs]).returncode == 0:
            return []
    finally:
        os.unlink(f.name)
    print("ptuning_lab needs newer versions of some packages than this runtime has: installing them "
          "(pip upgrades only those)", flush=True)
    if run(pip + reqs).returncode != 0:
        raise ColabSetupError("pip could not install ptuning_lab's dependencies (its message is above). Run "
                              "Runtime > Disconnect and delete runtime, then run the notebook again from the top; "
                              "if it fails again, open an issue with pip's message.")
    after = installed()
    return [f"{n} {before[n]} -> {after[n]}" for n in sorted(before) if n in after and after[n] != before[n]]


def restart_note(changed: list[str]) -> str:
    """What to tell the student when :func:`colab_install` had to upgrade a preinstalled package."""
    return ("ptuning_lab is installed, but it upgraded packages this runtime had already: " + ", ".join(changed)
            + ". Restart the session once (Runtime > Restart session), then run the notebook from the top: this "
            "cell then finds everything installed and changes nothing.")


def colab_session(model: str = "gpt2") -> None:
    """After the install, in the notebook's kernel: widgets that render on Colab, and the model to load.

    Colab draws ipywidgets and plotly's widgets only with its custom widget manager. ``auto`` would
    probe the hub and fall back to the embedded model, which is not installed on Colab, so
    ``PTUNING_LAB_MODEL`` is set to GPT-2 unless the student set it already.
    """
    from google.colab import output

    output.enable_custom_widget_manager()
    os.environ.setdefault(MODEL_ENV, model)


def _main(argv: list[str]) -> int:
    # `python course.py colab-install`: run by the set-up cell, before the dependencies exist;
    # `python -m ptuning_lab.course handouts DIR`: run by `make handouts`
    if len(argv) == 2 and argv[0] == "handouts":
        try:
            written = build_handouts(argv[1])
        except (FileExistsError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for version, files in written.items():
            print(f"{version}: {len(files)} notebooks in {files[0].parent}")
        return 0
    if argv != ["colab-install"]:
        print("usage: python course.py colab-install | python -m ptuning_lab.course handouts DIR", file=sys.stderr)
        return 2
    try:
        changed = colab_install()
    except ColabSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if changed:
        print(restart_note(changed), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__ = ["REPO", "BRANCH", "NOTEBOOK_DIR", "NOTEBOOK_GLOB", "SIZE_ENV", "Size", "LESSON", "CI", "SIZES", "size",
           "size_fields", "colab_url", "binder_url", "badges_markdown", "pip_spec", "notebook_path", "notebooks_dir",
           "notebook_files", "prewarm", "on_colab", "SOURCE_ENV", "MODEL_ENV", "default_source", "setup_cell",
           "ColabSetupError", "installed_versions", "requirements_for", "colab_install", "restart_note",
           "colab_session", "SOLUTION_TAG", "build_handouts"]

