"""The package as a user installs it: a wheel in a fresh virtual environment, with no checkout in sight.

``python -m build`` makes the sdist and then the wheel from that sdist (so a file missing from the
sdist breaks the wheel too). The fresh environment gets the wheel with ``--no-deps`` and sees the
already-installed dependencies (torch, transformers, the embedded model wheel) through a ``.pth``
file that lists this environment's site-packages. A plain path line in a ``.pth`` only appends the
directory to ``sys.path``; the ``.pth`` files inside it (among them the editable install's finder,
which points at the checkout) are not run, so the checkout stays off ``sys.path``: asserted below.
Every command runs from a directory outside the checkout, without PYTHONPATH.
"""
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import ptuning_lab

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VERSION = ptuning_lab.__version__


def _run(cmd, *, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict:
    """The sdist and the wheel ``python -m build`` makes from this checkout (no network: --no-isolation)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], cwd=REPO)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


@pytest.fixture(scope="module")
def fresh(dist, tmp_path_factory) -> dict:
    """A new virtual environment holding only the wheel; ``env`` and ``cwd`` to run it outside the checkout."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    # no PYTHONPATH: with it pip and python would see the checkout (and its egg-info) again
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env=env)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip())
    shared = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))      # ordered, no repeats
    # the wheel goes in first, while pip sees an empty environment (not the checkout's editable install)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", dist["wheel"]],
         env=env, cwd=root)
    assert (site / "ptuning_lab" / "__init__.py").is_file()
    (site / "_ptuning_lab_test_deps.pth").write_text("".join(f"{p}\n" for p in shared))
    cwd = root / "elsewhere"
    cwd.mkdir()
    return {"venv": venv, "python": python, "cli": venv / "bin" / "ptuning-lab", "env": env, "cwd": cwd}


def test_sdist_holds_the_tests_and_the_notebooks_sources(dist):
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {str(p.relative_to(REPO)) for pattern in ("tests/*.py", "notebooks/*.ipynb", "notebooks/*.py")
                for p in REPO.glob(pattern)}
    assert any(n.startswith("notebooks/") and n.endswith(".ipynb") for n in expected)
    assert "tests/conftest.py" in expected and "notebooks/01_vocabulary_manifold.py" in expected
    assert "notebooks/jupytext.toml" in names                   # the pairing: the course can be edited from it
    assert expected <= names, f"missing from the sdist: {sorted(expected - names)}; add them to MANIFEST.in"
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "ptuning_lab/_version.py"} <= names


def test_wheel_holds_the_package_only(dist):
    assert dist["wheel"].name == f"ptuning_lab-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as whl:
        tops = {n.split("/")[0] for n in whl.namelist()}
        entry_points = whl.read(f"ptuning_lab-{VERSION}.dist-info/entry_points.txt").decode()
    assert tops == {"ptuning_lab", f"ptuning_lab-{VERSION}.dist-info"}
    assert "ptuning-lab = ptuning_lab.cli:main" in entry_points


def test_the_installed_package_is_imported_not_the_checkout(fresh):
    probe = ("import json, sys, importlib.metadata as md, ptuning_lab; print(json.dumps({'file': ptuning_lab.__file__, "
             "'version': ptuning_lab.__version__, 'metadata': md.version('ptuning_lab'), 'path': sys.path, "
             "'editable': sorted(m for m in sys.modules if m.startswith('__editable__'))}))")
    seen = json.loads(_run([fresh["python"], "-c", probe], env=fresh["env"], cwd=fresh["cwd"]).stdout)
    assert Path(seen["file"]).resolve().is_relative_to(fresh["venv"].resolve()), seen["file"]
    assert seen["version"] == VERSION and seen["metadata"] == VERSION
    assert seen["editable"] == []                # the editable install's finder was not run
    # the dependencies' site-packages may sit inside the checkout (a .venv made by make); the sources may not
    deps = [Path(p).resolve() for p in seen["path"] if p and "site-packages" in Path(p).parts]
    on_path = [Path(p).resolve() for p in seen["path"] if p and Path(p).resolve() not in deps]
    assert REPO not in on_path and not any(p.is_relative_to(REPO) for p in on_path), seen["path"]
    assert not any((d / "ptuning_lab").exists() for d in deps if d.is_relative_to(REPO)), seen["path"]


def test_installed_cli_prints_its_version(fresh):
    out = _run([fresh["cli"], "--version"], env=fresh["env"], cwd=fresh["cwd"]).stdout
    assert out.strip() == f"ptuning-lab {VERSION}"


def test_installed_cli_runs_a_baseline_on_the_embedded_model(fresh):
    out = _run([fresh["cli"], "baseline", "--task", "capital", "--model", "smollm2-135m", "--max-examples", "40",
                "--device", "cpu"], env=fresh["env"], cwd=fresh["cwd"]).stdout
    metrics = json.loads(out)
    assert metrics["encoder"] == "manual" and metrics["template"] == "The capital of [X] is"
    # SmolLM2 knows a few capitals from the manual prompt alone (0.27 on the full test split)
    assert 0 < metrics["test_p_at_1"] <= 1


def test_installed_cli_trains_a_tiny_saved_model(fresh, tiny_model_dir):
    run = fresh["cwd"] / "runs" / "tiny"
    out = _run([fresh["cli"], "train", "--task", "capital", "--model", tiny_model_dir, "--encoder", "mlp",
                "--max-examples", "30", "--max-steps", "2", "--eval-every", "2", "--batch-size", "4",
                "--device", "cpu", "--out", "runs/tiny"], env=fresh["env"], cwd=fresh["cwd"]).stdout
    metrics = json.loads(out)
    assert metrics == json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["encoder"] == "mlp" and metrics["stopped"] == "finished"
    history = json.loads((run / "history.json").read_text())
    assert [r["step"] for r in history["train"]] == [1, 2] and [r["step"] for r in history["eval"]] == [2]
    assert {"config.json", "prompt.safetensors", "snapshots.safetensors"} <= {p.name for p in run.iterdir()}
