"""Generate docs/api.md: every public name of ``ptuning_lab`` (its ``__all__``) with its signature and
the first paragraph of its docstring, grouped by the module that defines it.

    python tools/make_api_docs.py --out docs/api.md      # regenerate after changing the public API
    python tools/make_api_docs.py --check docs/api.md    # exit 1 when the file is out of date

The page is generated, never edited by hand: ``tests/test_apidoc.py`` fails when it differs from a
fresh generation. Classes also list their public methods; dataclass configs list their fields
with the ``help`` text of each.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python tools/make_api_docs.py --out docs/api.md"


class _Annotation(str):
    """A string annotation (``from __future__ import annotations``) shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


WIDTH = 100          # a signature longer than this gets one parameter per line


def signature(obj, name: str = "", drop_first: bool = False, wrap: bool = True) -> str | None:
    """``name(a: int, b=2) -> str`` for a callable; None when Python has none (e.g. exception classes).

    ``drop_first``: leave out a method's ``self``/``cls``; ``wrap``: one parameter a line when long.
    Classes show no ``-> None``.
    """
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    unquote = lambda a: _Annotation(a) if isinstance(a, str) else a           # noqa: E731
    params = [p.replace(annotation=unquote(p.annotation)) for p in sig.parameters.values()]
    if drop_first and params and params[0].name in ("self", "cls"):
        params = params[1:]
    returns = inspect.Signature.empty if inspect.isclass(obj) else unquote(sig.return_annotation)
    sig = sig.replace(parameters=params, return_annotation=returns)
    text = f"{name}{sig}"
    if len(text) <= WIDTH or not wrap:
        return text
    parts, prev = [], None            # str(sig) with one parameter a line: the same "/" and "*" markers
    for p in sig.parameters.values():
        if prev == p.POSITIONAL_ONLY and p.kind != p.POSITIONAL_ONLY:
            parts.append("/")
        if p.kind == p.KEYWORD_ONLY and prev not in (p.KEYWORD_ONLY, p.VAR_POSITIONAL):
            parts.append("*")
        parts.append(str(p))
        prev = p.kind
    if prev == inspect.Parameter.POSITIONAL_ONLY:
        parts.append("/")
    tail = "" if returns is inspect.Signature.empty else f" -> {inspect.formatannotation(returns)}"
    return f"{name}(\n" + "".join(f"    {part},\n" for part in parts) + f"){tail}"


def first_paragraph(obj, name: str) -> str:
    """The docstring's first paragraph on one line ('' when there is none of its own)."""
    doc = inspect.getdoc(obj) or ""
    if dataclasses.is_dataclass(obj) and doc.startswith(f"{name}("):
        doc = ""                                # the signature dataclasses write when a class has no docstring
    return " ".join(doc.split("\n\n")[0].split())


def defining_modules(init_path: Path) -> dict[str, str]:
    """Name -> submodule for each ``from .module import name`` in the package's ``__init__``."""
    found = {}
    for node in ast.walk(ast.parse(init_path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                found[alias.asname or alias.name] = f"ptuning_lab.{node.module}"
    return found


def _methods(cls) -> list[tuple[str, object]]:
    """The public methods and properties a class defines itself (not those it inherits)."""
    out = []
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.isfunction(attr) or isinstance(attr, property):
            out.append((name, attr))
    return sorted(out)


def _describe_class(name: str, cls) -> list[str]:
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    lines = [f"### class `{name}`" + (f" ({', '.join(bases)})" if bases else ""), ""]
    sig = None if issubclass(cls, BaseException) else signature(cls, name)
    if sig is not None:
        lines += ["```python", sig, "```", ""]
    lines += [first_paragraph(cls, name) or "*(no docstring)*", ""]
    if dataclasses.is_dataclass(cls):
        fields = [f for f in dataclasses.fields(cls) if f.init]
        if any(f.metadata.get("help") for f in fields):
            lines += ["| field | default | help |", "|---|---|---|"]
            for f in fields:
                if f.default is not dataclasses.MISSING:
                    default = f"`{f.default!r}`"
                else:
                    default = "(factory)" if f.default_factory is not dataclasses.MISSING else "(required)"
                text = str(f.metadata.get("help", "")).replace("|", "\\|")
                lines.append(f"| `{f.name}` | {default} | {text} |")
            lines.append("")
    for mname, method in _methods(cls):
        if isinstance(method, property):
            doc = first_paragraph(method, mname)
            lines.append(f"- `{mname}` (property)" + (f": {doc}" if doc else ""))
        else:
            doc = first_paragraph(method, mname)
            sig = signature(method, mname, drop_first=True, wrap=False) or f"{mname}(...)"
            lines.append(f"- `{sig}`" + (f": {doc}" if doc else ""))
    if _methods(cls):
        lines.append("")
    return lines


def describe(name: str, obj) -> list[str]:
    """The Markdown for one public name."""
    if inspect.isclass(obj):
        return _describe_class(name, obj)
    if callable(obj):
        return [f"### `{name}`", "", "```python", signature(obj, name) or f"{name}(...)", "```", "",
                first_paragraph(obj, name) or "*(no docstring)*", ""]
    return [f"### `{name}`", "", "```python", f"{name} = {obj!r}", "```", ""]


def generate() -> str:
    """The whole of docs/api.md for the ``ptuning_lab`` that is imported."""
    import ptuning_lab

    where = defining_modules(Path(ptuning_lab.__file__))
    groups: dict[str, list[str]] = {}
    for name in ptuning_lab.__all__:
        groups.setdefault(where.get(name, "ptuning_lab"), []).append(name)
    lines = ["# API reference", "",
             f"<!-- generated by `{COMMAND}`; do not edit by hand -->", "",
             "The public names of `ptuning_lab` (`import ptuning_lab as pl; pl.<name>`), from "
             "`ptuning_lab.__all__`, with each signature and the first paragraph of its docstring. The "
             "full docstrings are one `help(pl.<name>)` away.", ""]
    for module in sorted(groups):
        doc = inspect.getdoc(sys.modules.get(module)) if module in sys.modules else ""
        lines += [f"## `{module}`", ""]
        if doc:
            lines += [" ".join(doc.split("\n\n")[0].split()), ""]
        for name in sorted(groups[module], key=str.lower):
            lines += describe(name, getattr(ptuning_lab, name))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="Write the page here (default: print it).")
    p.add_argument("--check", metavar="PATH", help="Exit 1 when PATH differs from a fresh generation.")
    args = p.parse_args(argv)
    text = generate()
    if args.check:
        path = Path(args.check)
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is out of date with ptuning_lab.__all__; regenerate it: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)                # a half-written page never replaces the old one
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))           # document this checkout's package, not another installed one
    sys.exit(main())
