"""The package's shape: no import circle between its modules, no module over 450 lines (except the
listed ones, each with its reason), prompt methods that import only their base, and the
compatibility modules still giving the same objects."""
import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ptuning_lab"
MAX_LINES = 450
# modules allowed over MAX_LINES for now, and why (each is being split by its own change)
TOO_LONG_FOR_NOW: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """The package's own modules that ``name`` imports when it runs: module-level and inside functions,
    absolute and relative; ``from x import y`` counts ``x.y`` when that is a module, else ``x``. Importing
    ``a.b.c`` from outside ``a.b`` also runs ``a.b/__init__`` (an edge to it)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    # imports under `if TYPE_CHECKING:` never run
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for stmt in node.body for n in ast.walk(stmt)}
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import mod` imports the submodule; `from pkg import name` needs pkg/__init__ run
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                       for alias in node.names]
        for target in targets:
            if target in MODULES and target != name:
                found.add(target)
    # a submodule import also runs every enclosing package the importer is not itself inside
    for target in list(found):
        parts = target.split(".")
        for k in range(1, len(parts)):
            outer = ".".join(parts[:k])
            if outer in MODULES and not (name == outer or name.startswith(outer + ".")):
                found.add(outer)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of module names (first == last), or None."""
    state: dict[str, int] = {}                # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a made-up graph with a circle through three modules is caught and named."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_are_read_from_the_source():
    """Relative, absolute, function-level and package imports are all seen."""
    assert "ptuning_lab.prompts.base" in imports_of("ptuning_lab.prompts.mlp")          # from .base import
    assert "ptuning_lab.kv_cache" in imports_of("ptuning_lab.prompts.prefix")            # from ..kv_cache import
    assert "ptuning_lab.prompts" in imports_of("ptuning_lab.checkpoint")                 # inside Run.encoder()
    assert "ptuning_lab.prompts" in imports_of("ptuning_lab.frozen_lm")


@pytest.mark.parametrize("method", ["direct", "mlp", "lstm", "prefix"])
def test_a_method_file_imports_no_other_method(method):
    """Arrows run prompts/__init__ -> method -> base: a method file knows only the base (and helpers
    outside the prompts package)."""
    own = {n for n in imports_of(f"ptuning_lab.prompts.{method}") if n.startswith("ptuning_lab.prompts")}
    assert own <= {"ptuning_lab.prompts.base"}, own


def test_nothing_in_the_package_imports_the_compatibility_modules():
    users = {name for name in MODULES if {"ptuning_lab.encoders", "ptuning_lab.prefix"} & imports_of(name)}
    assert users == set(), users


def test_no_module_is_too_long():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in TOO_LONG_FOR_NOW}
    assert too_long == {}, f"modules over {MAX_LINES} lines: {too_long}; split them by concept"


def test_compatibility_modules_give_the_same_objects():
    """``ptuning_lab.encoders`` and ``ptuning_lab.prefix`` (used by older code and notebooks) re-export
    ``ptuning_lab.prompts`` exactly, and ``pl.encoders`` / ``pl.prefix`` still resolve."""
    import ptuning_lab as pl
    from ptuning_lab import prompts

    for shim in ("encoders", "prefix"):
        module = importlib.import_module(f"ptuning_lab.{shim}")
        assert getattr(pl, shim) is module
        for name in module.__all__:
            assert getattr(module, name) is getattr(prompts, name), (shim, name)
    assert prompts.METHODS == ("direct", "mlp", "lstm") and prompts.ALL_METHODS == prompts.METHODS + ("prefix",)
    assert pl.build_encoder is prompts.build_encoder and pl.PrefixKV is prompts.PrefixKV
