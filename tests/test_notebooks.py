"""The course notebooks as files: one list of them, each paired with a jupytext script and in sync
with it, no stored outputs, badges that match ptuning_lab.course and lead to notebooks that exist,
and code that names real API.

An instructor edits a lesson in JupyterLab (jupytext saves the .ipynb and its .py together) or edits
``notebooks/NAME.py`` in any editor and runs ``jupytext --sync notebooks/NAME.py``. Executing the
notebooks is nbval's job (`make test` collects notebooks/ with --nbval-lax); these tests need no model
and run in a second.
"""
import ast
import fnmatch
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import jupytext
import pytest
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file

import ptuning_lab as pl
from ptuning_lab import course

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
CHECK = "# NBVAL_CHECK_OUTPUT"
PAIRING = "ipynb,py:percent"
LINK = re.compile(r"\[(?P<text>!\[[^\]]*\]\([^)]*\)|[^\]]*)\]\((?P<url>[^)\s]+)\)")

NOTEBOOKS = course.notebook_files()


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def code_cells(nb):
    return [source(c) for c in nb["cells"] if c["cell_type"] == "code"]


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


def lesson_scripts() -> list[Path]:
    """The .py files of notebooks/ that are lessons (not a helper such as a conftest.py)."""
    return sorted(p for p in NB_DIR.glob("*.py") if p.name != "conftest.py")


# ------------------------------------------------------------------ one list of notebooks
def test_the_course_lists_every_notebook_on_disk():
    names = [p.name for p in NOTEBOOKS]
    assert names, f"course.notebook_files() found nothing in {course.notebooks_dir()}"
    # numbered 01, 02, ... without gaps: a new lesson is a new pair of files, no test to edit
    assert [n[:3] for n in names] == [f"{i:02d}_" for i in range(1, len(names) + 1)], names
    # pytest collects every .ipynb under notebooks/: any notebook outside the course's list would run unlisted
    every = sorted(rel(p) for p in NB_DIR.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    listed = [rel(p) for p in NOTEBOOKS]
    assert every == listed, (f"notebooks on disk {sorted(set(every) - set(listed))} are not in "
                             f"course.notebook_files() (glob {course.NOTEBOOK_GLOB!r} in notebooks/): rename them "
                             f"NN_name.ipynb or move them out of notebooks/")


def test_makefile_runs_the_notebook_directory_under_nbval():
    test_line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "pytest" in line and "nbval" in line)
    assert " notebooks " in test_line and "--nbval-lax" in test_line
    assert "--nbval-sanitize-with notebooks/sanitize.cfg" in test_line and (NB_DIR / "sanitize.cfg").is_file()


def test_lesson_scripts_are_not_collected_as_test_modules(request):
    # `pytest tests notebooks` must run the .ipynb (nbval) only: importing a lesson script would train a model
    patterns = request.config.getini("python_files")
    for script in lesson_scripts():
        hit = [pat for pat in patterns if fnmatch.fnmatch(script.name, pat)]
        assert not hit, f"{rel(script)} matches pytest's python_files {hit}: pytest would import it as a test"


# ------------------------------------------------------------------ edited as jupytext pairs
def test_jupytext_pairs_every_notebook_with_a_percent_script():
    # the CLI and JupyterLab's contents manager look for the file from the notebook's folder upwards, and
    # Lab stops at its root: inside notebooks/ it is found also by `jupyter lab notebooks/` (make lab)
    config_file = find_jupytext_configuration_file(str(NB_DIR))
    assert config_file and Path(config_file).resolve() == (NB_DIR / "jupytext.toml").resolve(), config_file
    config = load_jupytext_configuration_file(config_file)
    for path in NOTEBOOKS:
        assert config.default_formats(str(path)) == PAIRING


def _cells(path: Path) -> list[tuple[str, str, tuple]]:
    """(type, source, tags) of each cell as jupytext reads the file (.ipynb or percent .py)."""
    nb = jupytext.read(path)
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def pair_problem(notebook: Path, root: Path = ROOT) -> str | None:
    """Why ``notebook`` and its .py differ, with the command (run from ``root``) that fixes it; None when in sync."""
    script = notebook.with_suffix(".py")
    nb_name, py_name = rel(notebook, root), rel(script, root)
    if not script.is_file():
        return f"{py_name} is missing: run `jupytext --sync {nb_name}` (it writes the .py from the notebook)"
    nb_cells, py_cells = _cells(notebook), _cells(script)
    if nb_cells == py_cells:
        return None
    newer, older = (py_name, nb_name) if script.stat().st_mtime > notebook.stat().st_mtime else (nb_name, py_name)
    i = next((k for k, (a, b) in enumerate(zip(nb_cells, py_cells)) if a != b), min(len(nb_cells), len(py_cells)))
    if i == len(nb_cells) or i == len(py_cells):
        where = f"{nb_name} has {len(nb_cells)} cells, {py_name} {len(py_cells)}"
    elif nb_cells[i][1] == py_cells[i][1]:
        where = f"cell {i}: {nb_name} is {nb_cells[i][0]} {nb_cells[i][2]}, {py_name} {py_cells[i][0]} {py_cells[i][2]}"
    else:
        a, b = nb_cells[i][1].splitlines(), py_cells[i][1].splitlines()
        j = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        line = lambda lines: repr(lines[j]) if j < len(lines) else "(no such line)"  # noqa: E731
        where = f"cell {i}, line {j + 1}: {nb_name} has {line(a)}, {py_name} has {line(b)}"
    return (f"{nb_name} and {py_name} are out of sync ({where}). {newer} is newer: "
            f"run `jupytext --sync {newer}`, which copies its cells into {older}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_and_its_script_hold_the_same_cells(path):
    problem = pair_problem(path)
    assert problem is None, problem


def test_every_lesson_script_has_its_notebook():
    for script in lesson_scripts():
        notebook = script.with_suffix(".ipynb")
        assert notebook in NOTEBOOKS, (f"{rel(script)} has no notebook in the course: run `jupytext --sync "
                                       f"{rel(script)}` (named NN_name.py) or remove the script")


def test_a_stale_or_missing_pair_is_reported_with_the_command_to_run(tmp_path):
    notebook = tmp_path / NOTEBOOKS[0].name
    shutil.copy(NOTEBOOKS[0], notebook)
    script = notebook.with_suffix(".py")
    assert pair_problem(notebook, tmp_path) == (f"{script.name} is missing: run `jupytext --sync {notebook.name}` "
                                                "(it writes the .py from the notebook)")
    shutil.copy(NOTEBOOKS[0].with_suffix(".py"), script)
    assert pair_problem(notebook, tmp_path) is None
    script.write_text(script.read_text().replace("import torch\n", "import torch  # edited\n", 1))
    os.utime(script, (notebook.stat().st_mtime + 5,) * 2)         # edited in an editor after the last sync
    problem = pair_problem(notebook, tmp_path)
    assert "cell 2, line 2: " in problem and "has 'import torch  # edited'" in problem
    assert f"{script.name} is newer: run `jupytext --sync {script.name}`, which copies its cells into" in problem


def test_saving_in_jupyterlab_with_jupytext_writes_both_files(tmp_path):
    # the contents manager jupytext installs into JupyterLab (what a Save does), rooted like `make lab`
    manager = pytest.importorskip("jupytext.sync_contentsmanager", reason="needs jupyter_server").TextFileContentsManager
    shutil.copy(NB_DIR / "jupytext.toml", tmp_path)
    name = NOTEBOOKS[0].name
    shutil.copy(NOTEBOOKS[0], tmp_path / name)
    cm = manager(root_dir=str(tmp_path))
    model = cm.get(name)
    model["content"].cells[1].source += "\n# an instructor's note"
    cm.save(model, name)
    assert "# an instructor's note" in (tmp_path / name).with_suffix(".py").read_text()
    ipynb = read(tmp_path / name)
    assert source(ipynb["cells"][1]).endswith("# an instructor's note")
    assert [c.get("outputs") for c in ipynb["cells"]] == [c.get("outputs") for c in read(NOTEBOOKS[0])["cells"]]


# ------------------------------------------------------------------ stored without outputs
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_outputs_are_stored_except_the_expected_text_of_checked_cells(path):
    nb = read(path)
    assert "widgets" not in nb["metadata"], "saved widget state: turn off Settings > Save Widget State Automatically and save again"
    checked = 0
    for cell in nb["cells"]:
        assert not cell.get("attachments"), "attachments are stored outputs too"
        if cell["cell_type"] != "code":
            continue
        if source(cell).startswith(CHECK):
            checked += 1
            # the reference nbval compares with: plain expected stdout, marked as run
            assert cell["execution_count"] == checked
            assert [o["output_type"] for o in cell["outputs"]] == ["stream"]
            assert cell["outputs"][0]["name"] == "stdout" and "".join(cell["outputs"][0]["text"]).strip()
        else:
            assert cell["outputs"] == [] and cell["execution_count"] is None, source(cell)[:80]
    assert checked >= 1, "each notebook checks at least one printed result (# NBVAL_CHECK_OUTPUT)"


# ------------------------------------------------------------------ badges and links
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badges_match_course_urls_and_point_to_existing_notebooks(path):
    header = source(read(path)["cells"][0])
    expected = course.badges_markdown(path.stem)
    assert expected in header.splitlines(), (
        f"the badges of {path.name} (first cell) differ from ptuning_lab.course: replace the badge line of "
        f"the first cell of notebooks/{path.stem}.py (or of the notebook in JupyterLab) with\n{expected}\n"
        f"then run `jupytext --sync notebooks/{path.stem}.py`")
    urls = [m["url"] for m in LINK.finditer(header) if m["text"].startswith("![")]
    assert urls == [course.colab_url(path.stem), course.binder_url(path.stem)]
    colab_path = urls[0].split(f"/blob/{course.BRANCH}/", 1)[1]
    binder_path = unquote(urls[1].split("labpath=", 1)[1])
    for repo_path in (colab_path, binder_path):
        assert repo_path == f"notebooks/{path.name}" and (ROOT / repo_path).is_file()
    assert f"github/{course.REPO}/" in urls[0] and f"/gh/{course.REPO}/{course.BRANCH}?" in urls[1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_relative_links_lead_to_existing_notebooks(path):
    text = "\n".join(source(c) for c in read(path)["cells"] if c["cell_type"] == "markdown")
    local = [m["url"] for m in LINK.finditer(text) if m["url"].endswith(".ipynb") and "://" not in m["url"]]
    assert local, "each notebook links to the next one"
    for url in local:
        assert (NB_DIR / url).is_file(), url


def test_urls_come_from_one_setting(monkeypatch):
    assert course.colab_url("01_x") == ("https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/"
                                        "notebooks/01_x.ipynb")
    assert course.binder_url("01_x.ipynb") == ("https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main"
                                               "?labpath=notebooks%2F01_x.ipynb")
    monkeypatch.setattr(course, "REPO", "me/fork")
    monkeypatch.setattr(course, "BRANCH", "dev")
    assert "github/me/fork/blob/dev/notebooks/01_x.ipynb" in course.colab_url("01_x")
    assert "/gh/me/fork/dev?labpath=" in course.binder_url("01_x")
    badges = course.badges_markdown("01_x")
    assert course.colab_url("01_x") in badges and course.binder_url("01_x") in badges
    assert course.pip_spec() == "ptuning_lab[viz] @ git+https://github.com/me/fork@dev"
    with pytest.raises(ValueError, match="file name"):
        course.colab_url("")


# ------------------------------------------------------------------ the shape of a lesson
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_lesson_opens_with_goals_and_setup_and_closes_with_exercises(path):
    cells = read(path)["cells"]
    assert cells[0]["cell_type"] == "markdown" and "**What you will learn**" in source(cells[0])
    assert "shut down any other lesson's kernel first" in source(cells[0])      # Binder's ~2 GB holds one
    # the Colab set-up (tests/test_course.py runs it with Colab simulated), the same in every lesson
    assert cells[1]["cell_type"] == "code" and source(cells[1]) == course.setup_cell(), (
        f"the first code cell of {path.name} differs from ptuning_lab.course.setup_cell(): replace it in "
        f"notebooks/{path.stem}.py with\n{course.setup_cell()}\nthen run `jupytext --sync notebooks/{path.stem}.py`")
    load = source(cells[2])
    assert "SIZE = course.size()" in load and "pl.FrozenLM.load()" in load
    exercises = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and source(c).startswith("## Exercises")]
    assert len(exercises) == 1
    # solutions are cells tagged `solution` (make handouts drops them; nbval runs them in make test),
    # one block right after the exercises, opening with its heading; their code starts collapsed
    tagged = [i for i, c in enumerate(cells) if course.SOLUTION_TAG in tags(c)]
    assert tagged and tagged == list(range(exercises[0] + 1, tagged[-1] + 1)), "solution cells form one block after ## Exercises"
    assert source(cells[tagged[0]]).startswith("## Solutions")
    code = [cells[i] for i in tagged if cells[i]["cell_type"] == "code"]
    assert len(code) >= 3, "a solution cell per exercise"
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") is True for c in code)
    assert not any("<details>" in source(c) for c in cells), "solutions are tagged cells now, not a <details> block"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_short_and_sizes_come_from_course(path):
    for text in code_cells(read(path)):
        assert len(text.splitlines()) <= 16, f"a long cell belongs in the library:\n{text[:200]}"
        # numbers that scale the work are read from SIZE, never written into a cell
        assert not re.search(r"max_steps\s*=|max_examples\s*=\s*\d", text), text[:200]


# ------------------------------------------------------------------ code that can run
ROOTS = {"pl": pl}


def _attribute_chains(tree):
    """('pl', 'manifold', 'decode_prompt') for every attribute access whose root is a plain name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            chain = []
            cur = node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                yield (cur.id, *reversed(chain))


def _mark_parents(tree):
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child._parent = node
    return tree


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_and_solutions_compile_and_name_real_library_api(path):
    from ptuning_lab import cli, figures, widgets

    modules = {"pl": pl, "cli": cli, "course": course, "figures": figures, "widgets": widgets}
    for text in code_cells(read(path)):                 # the solution cells are code cells too
        tree = _mark_parents(ast.parse(text))          # a SyntaxError fails the test with the cell shown
        for root, *attrs in _attribute_chains(tree):
            obj = modules.get(root)
            if obj is None:
                continue
            for a in attrs:
                if not hasattr(obj, a):
                    if isinstance(obj, type) or callable(obj):   # an instance attribute or a method call result
                        break
                    pytest.fail(f"{path.name}: {root}.{'.'.join(attrs)} does not exist ({a!r} missing)")
                obj = getattr(obj, a)


# ------------------------------------------------------------------ sizes
def test_size_reads_one_environment_variable(monkeypatch):
    monkeypatch.delenv(course.SIZE_ENV, raising=False)
    assert course.size() is course.LESSON
    monkeypatch.setenv(course.SIZE_ENV, " CI ")
    assert course.size() is course.CI
    monkeypatch.setenv(course.SIZE_ENV, "")
    assert course.size() is course.LESSON
    assert course.size("lesson") is course.LESSON
    monkeypatch.setenv(course.SIZE_ENV, "huge")
    with pytest.raises(ValueError, match="PTUNING_LAB_SIZE='huge'.*lesson, ci"):
        course.size()


def test_ci_does_less_work_than_a_lesson_in_every_dimension():
    lesson, ci = course.LESSON, course.CI
    for name in ("max_examples", "steps", "compare_steps", "sweep_steps", "sentence_steps", "sentence_batch_size",
                 "seeds", "stats_subset", "map_subset", "umap_subset", "map_points"):
        assert getattr(ci, name) < getattr(lesson, name), name
    assert len(ci.gammas) < len(lesson.gammas) and ci.seeds >= 2      # a std across seeds still exists
    # the lesson's map and statistics are the ones `ptuning-lab warm-cache` (binder/postBuild) precomputes
    import inspect

    from ptuning_lab import manifold

    assert lesson.map_subset == inspect.signature(manifold.fit_projection).parameters["subset"].default
    assert lesson.stats_subset == inspect.signature(manifold.vocab_stats).parameters["subset"].default


def test_train_kwargs_are_valid_trainer_settings():
    for size in course.SIZES.values():
        for steps in (size.steps, size.compare_steps, size.sweep_steps):
            config = pl.TrainConfig(**size.train_kwargs(steps))
            assert config.max_steps == steps and config.eval_every <= steps and config.batch_size == size.batch_size
            # several snapshots per run, so the map shows a trajectory
            assert steps // config.snapshot_every >= min(steps, 12)
        sentence = pl.TrainConfig(**size.sentence_kwargs())
        assert (sentence.max_steps, sentence.batch_size) == (size.sentence_steps, size.sentence_batch_size)


def test_prewarm_fills_the_caches_the_notebooks_read(tmp_path, monkeypatch, tokenizer):
    from helpers import make_tiny_lm

    monkeypatch.setenv("PTUNING_LAB_CACHE", str(tmp_path))
    lm = make_tiny_lm("gpt2", tokenizer)
    info = course.prewarm(lm, size=course.CI, umap=False)
    cache = tmp_path / "manifold"
    stamps = {f.name: f.stat().st_mtime_ns for f in cache.iterdir()}
    assert info["model"] == lm.name and len(stamps) == 2          # the statistics and the PCA map
    # the calls of the notebooks' set-up cells at that size read those files and rewrite nothing
    E = lm.embedding.detach()
    stats = pl.vocab_stats(E, lm.name, subset=course.CI.stats_subset)
    projection = pl.fit_projection(E, lm.token_strings, lm.name, subset=course.CI.map_subset)
    assert {f.name: f.stat().st_mtime_ns for f in cache.iterdir()} == stamps
    assert len(stats.subset_ids) == course.CI.stats_subset and len(projection.token_ids) == course.CI.map_subset
