"""The Colab set-up as a student meets it, with Colab simulated: a fake ``google.colab`` module and
every subprocess call intercepted, so what pip would be asked to do is asserted without a network.

The cell is executed exactly as the notebooks hold it (``course.setup_cell()``, which
tests/test_notebooks.py checks every notebook carries)."""
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ptuning_lab import course

COURSE_PY = Path(course.__file__)


class FakeColab:
    """``google.colab`` with the one call the set-up makes, recorded."""

    def __init__(self, monkeypatch):
        self.widget_manager = 0
        colab = types.ModuleType("google.colab")
        colab.output = types.SimpleNamespace(enable_custom_widget_manager=self._enable)
        google = types.ModuleType("google")
        google.colab = colab
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", colab)

    def _enable(self):
        self.widget_manager += 1


class FakeRun:
    """``subprocess.run`` that records each command and answers with the next return code."""

    def __init__(self, *codes):
        self.codes, self.calls = list(codes), []

    def __call__(self, cmd, *args, **kwargs):
        self.calls.append([str(c) for c in cmd])
        return subprocess.CompletedProcess(cmd, self.codes.pop(0) if self.codes else 0)


def run_setup_cell(monkeypatch, *codes) -> FakeRun:
    fake = FakeRun(*codes)
    monkeypatch.setattr(subprocess, "run", fake)
    exec(compile(course.setup_cell(), "setup-cell", "exec"), {"__name__": "__main__"})  # noqa: S102 - the cell as a notebook runs it
    return fake


@pytest.fixture
def clean_env(monkeypatch):
    # set, then delete: monkeypatch then restores the variables' absence after the test, even when the code
    # under test sets them (colab_session sets PTUNING_LAB_MODEL, which later notebook kernels would inherit)
    for name in (course.SOURCE_ENV, course.MODEL_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


# ------------------------------------------------------------------ the cell
def test_outside_colab_the_cell_does_nothing(monkeypatch, clean_env):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert run_setup_cell(monkeypatch).calls == []


def test_on_colab_the_package_alone_then_its_installer_then_widgets_and_gpt2(monkeypatch, clean_env):
    colab = FakeColab(monkeypatch)
    calls = run_setup_cell(monkeypatch, 0, 0).calls
    assert calls[0] == [sys.executable, "-m", "pip", "install", "-q", "--no-deps", course.default_source()]
    assert course.default_source() == f"git+https://github.com/{course.REPO}@{course.BRANCH}"
    # the installer is this very file, run as a script (the dependencies are not importable yet)
    assert calls[1][0] == sys.executable and Path(calls[1][1]).resolve() == COURSE_PY.resolve()
    assert calls[1][2:] == ["colab-install"] and len(calls) == 2
    assert not any("-U" in c or "--upgrade" in c for c in calls)
    assert colab.widget_manager == 1
    import os

    assert os.environ[course.MODEL_ENV] == "gpt2"


def test_one_setting_says_where_the_package_comes_from(monkeypatch, clean_env):
    FakeColab(monkeypatch)
    monkeypatch.setenv(course.SOURCE_ENV, "git+https://example.invalid/me/fork@dev")
    monkeypatch.setenv(course.MODEL_ENV, "smollm2-135m")            # a student's choice is kept
    calls = run_setup_cell(monkeypatch).calls
    assert calls[0][-1] == "git+https://example.invalid/me/fork@dev"
    import os

    assert os.environ[course.MODEL_ENV] == "smollm2-135m"


def test_a_failed_install_says_so_and_stops_before_anything_else(monkeypatch, clean_env):
    colab = FakeColab(monkeypatch)
    monkeypatch.setenv(course.SOURCE_ENV, "git+https://example.invalid/nobody@x")
    with pytest.raises(RuntimeError) as err:
        run_setup_cell(monkeypatch, 1)
    assert "could not install ptuning_lab from git+https://example.invalid/nobody@x" in str(err.value)
    assert "PTUNING_LAB_SOURCE" in str(err.value) and colab.widget_manager == 0


@pytest.mark.parametrize("code", [1, 3], ids=["pip failed", "restart needed"])
def test_when_the_installer_stops_the_notebook_stops(monkeypatch, clean_env, code):
    colab = FakeColab(monkeypatch)
    with pytest.raises(RuntimeError, match="set-up stopped: the message above"):
        run_setup_cell(monkeypatch, 0, code)
    assert colab.widget_manager == 0


# ------------------------------------------------------------------ the installer
COLAB = {"torch": "2.8.0", "ipywidgets": "7.7.1", "plotly": "5.24.1", "numpy": "2.0.2", "ptuning-lab": "0.3.0"}
REQS = ["torch>=2.2", "numpy>=1.24", "plotly>=5.20", "ipywidgets>=8.0", "anywidget>=0.9"]


def constraints_of(cmd) -> list[str]:
    return Path(cmd[cmd.index("-c") + 1]).read_text().splitlines()


def test_the_first_attempt_pins_every_version_colab_ships_and_upgrades_nothing():
    seen = []

    def run(cmd, *a, **k):
        seen.append((cmd, constraints_of(cmd)))       # read while the constraints file exists
        return subprocess.CompletedProcess(cmd, 0)

    assert course.colab_install(run=run, installed=lambda: dict(COLAB), requirements=lambda e: REQS) == []
    (cmd, pins), = seen
    assert cmd[:5] == [sys.executable, "-m", "pip", "install", "-q"] and cmd[-len(REQS):] == REQS
    assert not {"-U", "--upgrade", "--force-reinstall"} & set(cmd)
    assert pins == ["ipywidgets==7.7.1", "numpy==2.0.2", "plotly==5.24.1", "torch==2.8.0"]   # not itself
    assert not Path(cmd[cmd.index("-c") + 1]).exists()                                         # cleaned up


def test_only_when_colab_is_too_old_pip_upgrades_and_the_student_is_told_to_restart(capsys):
    state = dict(COLAB)
    calls = []

    def run(cmd, *a, **k):
        calls.append(cmd)
        if "-c" in cmd:                                   # ipywidgets>=8 against the pinned 7.7.1
            return subprocess.CompletedProcess(cmd, 1)
        state.update(ipywidgets="8.1.5", anywidget="0.9.13")
        return subprocess.CompletedProcess(cmd, 0)

    changed = course.colab_install(run=run, installed=lambda: dict(state), requirements=lambda e: REQS)
    assert changed == ["ipywidgets 7.7.1 -> 8.1.5"]       # anywidget is new, not a change of what Colab had
    assert calls[1] == [sys.executable, "-m", "pip", "install", "-q", *REQS]     # no -U: only what is too old
    assert "upgrades only those" in capsys.readouterr().out
    note = course.restart_note(changed)
    assert "ipywidgets 7.7.1 -> 8.1.5" in note and "Runtime > Restart session" in note


def test_a_failing_pip_is_one_clear_error():
    with pytest.raises(course.ColabSetupError, match="could not install ptuning_lab's dependencies"):
        course.colab_install(run=FakeRun(1, 1), installed=lambda: dict(COLAB), requirements=lambda e: REQS)


def test_requirements_are_the_installed_package_metadata_with_the_extra():
    reqs = course.requirements_for(("viz",))
    names = [r.split(">")[0].split("=")[0] for r in reqs]
    assert "torch" in names and "ipywidgets" in names and "jupyterlab" not in names and "peft" not in names
    assert not any("extra" in r or r.startswith("ptuning") for r in reqs)
    assert "jupyterlab" in " ".join(course.requirements_for(("notebooks",)))


def test_the_installer_runs_as_a_file_without_the_package_or_its_dependencies(tmp_path):
    # what the cell runs on Colab: `python course.py colab-install`, here with ptuning_lab and torch made
    # unimportable and pip replaced by a script that records its arguments
    log = tmp_path / "pip.log"
    probe = (f"import sys, subprocess; sys.modules['ptuning_lab'] = sys.modules['torch'] = None\n"
             f"def run(cmd, *a, **k):\n    open({str(log)!r}, 'a').write(' '.join(cmd) + '\\n')\n"
             f"    return subprocess.CompletedProcess(cmd, 0)\n"
             f"subprocess.run = run\nimport runpy\nsys.argv = [{str(COURSE_PY)!r}, 'colab-install']\n"
             f"runpy.run_path({str(COURSE_PY)!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    (line,) = log.read_text().splitlines()
    assert " -m pip install -q -c " in line and "ipywidgets" in line
    bad = subprocess.run([sys.executable, str(COURSE_PY), "colab-instal"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "usage: python course.py colab-install |" in bad.stderr


def test_no_module_of_the_package_shadows_the_standard_library():
    # `python ptuning_lab/course.py` puts ptuning_lab/ first on sys.path
    names = {p.stem for p in COURSE_PY.parent.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)


# ------------------------------------------------------------------ handouts
def test_handouts_drop_the_solutions_for_students_and_open_them_for_the_key(tmp_path):
    import nbformat

    out = tmp_path / "handouts"
    written = course.build_handouts(out)
    lessons = course.notebook_files()
    assert [p.name for p in written["student"]] == [p.name for p in lessons] == [p.name for p in written["solutions"]]
    for lesson, student, key in zip(lessons, written["student"], written["solutions"]):
        original = nbformat.read(lesson, as_version=4).cells
        is_solution = [course.SOLUTION_TAG in c.metadata.get("tags", []) for c in original]
        s_cells, k_cells = nbformat.read(student, as_version=4).cells, nbformat.read(key, as_version=4).cells
        # the student copy is the lesson minus exactly its solution cells, in order
        assert [c.source for c in s_cells] == [c.source for c, sol in zip(original, is_solution) if not sol]
        assert sum(is_solution) >= 4 and not any("## Solutions" in c.source for c in s_cells)
        # the key holds every cell, the solutions opened, and no stored output
        assert [c.source for c in k_cells] == [c.source for c in original]
        assert not any(c.metadata.get("jupyter", {}).get("source_hidden") for c in k_cells)
        assert all(c.get("outputs", []) == [] for c in s_cells + k_cells)


def test_a_failed_build_leaves_the_earlier_handouts_whole_and_no_staging(tmp_path, monkeypatch):
    lesson = course.notebook_files()[:1]
    out = tmp_path / "h"
    course.build_handouts(out, lesson)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    import nbformat

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(nbformat, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        course.build_handouts(out, lesson)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["h"]                 # the staging copy was removed


def test_handouts_replace_only_what_they_wrote(tmp_path):
    lesson = course.notebook_files()[:1]
    mine = tmp_path / "my_notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by build_handouts"):
        course.build_handouts(mine, lesson)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "h"
    course.build_handouts(out, lesson)
    (out / "student" / "stale.ipynb").write_text("{}")
    course.build_handouts(out, lesson)                              # a rebuild replaces the earlier build whole
    assert sorted(p.name for p in (out / "student").iterdir()) == [lesson[0].name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", "my_notes"]   # no staging folder left
    # a folder named like our leftover of a cut swap, but not ours: refused before anything is written
    foreign = tmp_path / ".h-old"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"\.h-old is in the way"):
        course.build_handouts(out, lesson)
    assert (foreign / "keep.txt").read_text() == "mine" and (out / course.HANDOUTS_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".h-old", "h", "my_notes"]
    foreign.rename(tmp_path / "moved")
    done = subprocess.run([sys.executable, "-m", "ptuning_lab.course", "handouts", str(mine)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
