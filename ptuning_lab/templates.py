"""Templates with virtual-token slots.

Syntax: ``[P]`` is one virtual token, ``[P]*N`` is N of them, ``[X]`` is the input text
(the subject of a relation, or the sentence to classify). A lower-case name in brackets --
``[premise]``, ``[hypothesis]``, ``[passage]``, ``[choice1]`` -- is a *named slot*, filled from the
example's field of that name (``Example.slot(name)``). Everything else is literal text, tokenized
normally. The model predicts the next token after the template.

    >>> t = Template.parse("The capital of [X] is [P][P]")
    >>> t.num_virtual_tokens, t.has_input, t.slot_names
    (2, True, ('X',))
    >>> Template.parse("[premise] Question: [hypothesis] True, False or Neither? [P]*3").slot_names
    ('premise', 'hypothesis')

Slots (``[X]`` and named ones) may appear once each, in any order, with virtual tokens between
them. A named slot is a lower-case identifier of two or more characters (``[a-z][a-z0-9_]+``):
single letters stay errors, because ``[x]`` and ``[p]`` are almost always typos of ``[X]`` and ``[P]``.

Whitespace rules (so BPE sees the spaces it expects): a space just before a slot moves into the
slot's text (" France" is one token; a newline before a slot stays in the text), and whitespace
just before a ``[P]`` is dropped.

Long inputs: when a filled template does not fit the model's context, the template's truncation
policy (:meth:`Template.with_truncation`) decides what is cut. The default, ``"longest"`` from the
``"end"``, cuts the longest slot's last tokens first (as PET and Hugging Face's ``longest_first``
do) and warns how many examples were cut; ``"error"`` refuses instead, a slot name cuts only that slot.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from functools import cached_property
from dataclasses import dataclass, replace

# the repeat count is captured loosely ("*x", "*-1", "*²") so a malformed one is an error, not literal text
_MARKER = re.compile(r"\[([^\[\]]*)\](?:\*(-?\w*))?")
# more virtual tokens than any model's context holds: refused before the parts are built (memory)
MAX_VIRTUAL_TOKENS = 4096
_SLOT_NAME = re.compile(r"[a-z][a-z0-9_]+")        # a named slot; one letter ([x], [p]) is a typo
TRUNCATE_SIDES = ("end", "start")


class TemplateError(ValueError):
    """A template string is malformed; the message says what to change."""


@dataclass(frozen=True)
class Template:
    """A parsed template: a tuple of parts, each ``("text", str)``, ``("x", slot name)`` or ``("p", "")``.

    A slot part's value is its name: ``"X"`` for ``[X]``, ``"premise"`` for ``[premise]``.
    ``truncate``/``truncate_side``: what is cut when a filled template is longer than the model's
    context (see :meth:`with_truncation`; default: the longest slot, from its end).
    """

    text: str
    parts: tuple
    truncate: str = "longest"
    truncate_side: str = "end"

    @classmethod
    def parse(cls, text: "str | Template") -> "Template":
        if isinstance(text, Template):
            return text
        if not isinstance(text, str):
            raise TemplateError(f"a template must be a string, got {type(text).__name__} {text!r:.40}. Example: "
                                "\"The capital of [X] is [P][P]\" ([X] = the input, [P] = one virtual token).")
        if not text.strip():
            raise TemplateError("the template is empty. Example: \"The capital of [X] is [P][P]\" "
                                "([X] = the input, [P] = one virtual token).")
        parts: list = []
        pos = virtual = 0
        for m in _MARKER.finditer(text):
            if m.start() > pos:
                parts.append(("text", text[pos:m.start()]))
            name, count = m.group(1), m.group(2)
            if name == "P":
                # ASCII digits only: '²'.isdigit() is True but int('²') fails, and '٣' would pass silently
                if count is not None and not (count.isascii() and count.isdigit()):
                    raise TemplateError(f"'{m.group(0)}': the repeat count must be a whole number in ASCII digits; "
                                        "write [P]*N with N >= 1, e.g. [P]*3.")
                n = int(count) if count is not None and len(count) <= 6 else (1 if count is None else MAX_VIRTUAL_TOKENS + 1)
                if n < 1:
                    raise TemplateError(f"'{m.group(0)}' asks for {n} virtual tokens; use [P]*N with N >= 1.")
                virtual += n
                if virtual > MAX_VIRTUAL_TOKENS:
                    raise TemplateError(f"'{m.group(0)}': the template asks for more than {MAX_VIRTUAL_TOKENS} virtual "
                                        "tokens, more than any model's context holds; 3-20 is typical.")
                parts.extend([("p", "")] * n)
            elif name == "X" or _SLOT_NAME.fullmatch(name):
                parts.append(("x", _slot(name, count, m.group(0), [v for k, v in parts if k == "x"], text)))
            else:
                raise TemplateError(_unknown_marker(name, text))
            pos = m.end()
        if pos < len(text):
            parts.append(("text", text[pos:]))
        # whitespace before a virtual token is dropped; spaces before a slot move into the slot's
        # text (slot_has_space), while a newline before a slot stays in the text
        cleaned: list = []
        for i, (kind, value) in enumerate(parts):
            if kind == "text":
                nxt = parts[i + 1][0] if i + 1 < len(parts) else None
                if nxt == "p":
                    value = value.rstrip()
                elif nxt == "x":
                    value = value.rstrip(" ")
                if value:
                    cleaned.append(("text", value))
            else:
                cleaned.append((kind, value))
        return cls(text=text, parts=tuple(cleaned))

    @property
    def num_virtual_tokens(self) -> int:
        return sum(kind == "p" for kind, _ in self.parts)

    @cached_property
    def slot_names(self) -> tuple[str, ...]:
        """The input slots in template order: ``"X"`` for ``[X]``, else the slot's name (computed once: every
        example of every step asks)."""
        return tuple(value for kind, value in self.parts if kind == "x")

    @property
    def has_input(self) -> bool:
        """Whether the template has any input slot (``[X]`` or a named one)."""
        return any(kind == "x" for kind, _ in self.parts)

    @property
    def is_prefix(self) -> bool:
        """True when all virtual tokens come first (the only layout PEFT can express)."""
        kinds = [k for k, _ in self.parts]
        n = self.num_virtual_tokens
        return n > 0 and kinds[:n] == ["p"] * n

    def x_has_space(self) -> bool:
        """Whether the input is preceded by a space in the raw template (the input then starts with one)."""
        return self.slot_has_space("X")

    def slot_has_space(self, name: str) -> bool:
        """Whether slot ``name`` is preceded by a space in the raw template (its text then starts with one)."""
        m = re.search(r"( *)\[" + re.escape(name) + r"\]", self.text)
        return bool(m and m.group(1))

    def with_truncation(self, truncate: str = "longest", side: str = "end") -> "Template":
        """This template with another policy for inputs longer than the model's context.

        ``truncate``: ``"longest"`` (cut the longest slot first, token by token, until it fits),
        a slot name (``"passage"``, ``"X"``: cut only that slot), or ``"error"`` (refuse, naming the
        fix). ``side``: ``"end"`` (keep a slot's start) or ``"start"`` (keep its end). Every cut
        warns, counting the examples that were cut.

        >>> Template.parse("[P]*2 [passage] Question: [question]?").with_truncation("passage").truncate
        'passage'
        """
        if truncate not in ("longest", "error") and truncate not in self.slot_names:
            slots = ", ".join(f"'{n}'" for n in self.slot_names) or "none"
            raise TemplateError(f"truncate={truncate!r}: give 'longest', 'error' or one of the template's slots "
                                f"({slots}).")
        if side not in TRUNCATE_SIDES:
            raise TemplateError(f"side={side!r}: give 'end' (keep the start of the slot) or 'start' (keep its end).")
        return replace(self, truncate=truncate, truncate_side=side)

    def manual_text(self) -> str:
        """The template with virtual tokens removed: what a manual prompt would read."""
        out = re.sub(r"\s*\[P\](?:\*\d+)?", "", self.text)
        return out.strip()

    def validate(self, *, need_virtual: bool, need_input: bool = True) -> "Template":
        if need_input and not self.has_input:
            raise TemplateError(f"template {self.text!r} has no [X]: add [X] where the input goes, "
                                "e.g. \"The capital of [X] is [P][P]\" (or named slots such as [premise] and "
                                "[hypothesis] for examples with several fields).")
        if need_virtual and self.num_virtual_tokens == 0:
            raise TemplateError(f"template {self.text!r} has no [P]: a trained prompt needs at least one "
                                "virtual token, e.g. \"[P]*3 [X] [P]*3\" or \"The capital of [X] is [P][P]\".")
        return self

    def __str__(self) -> str:
        return self.text

    def unused_fields(self, examples) -> list[str]:
        """Sorted fields of ``examples`` (``Example.fields`` or mapping keys) that no slot of this template reads."""
        names = set(self.slot_names)
        if "X" in names or "input" in names:
            names |= {"X", "input"}
        seen: set[str] = set()
        for ex in examples:
            seen.update(ex if isinstance(ex, Mapping) else getattr(ex, "fields", None) or {})
            if getattr(ex, "input", ""):          # an Example's [X] text, read only by [X]
                seen.add("input")
        return sorted(seen - names)


_WARNED_FIELDS: set = set()


def warn_unused_fields(template, examples, task: str | None = None) -> list[str]:
    """Warn (once per template and set of fields) about data fields no slot of ``template`` uses.

    The trainer and ``evaluate`` call it where they first see a task's examples; returns the fields.
    """
    t = Template.parse(template)
    unused = t.unused_fields(examples)
    key = (t.text, tuple(unused))
    if unused and key not in _WARNED_FIELDS:
        if len(_WARNED_FIELDS) > 10_000:
            _WARNED_FIELDS.clear()
        _WARNED_FIELDS.add(key)
        where = f"task {task!r}: " if task else ""
        slots = " ".join(f"[{f}]" for f in unused)
        warnings.warn(f"{where}the examples have fields {unused} that template {t.text!r} does not use; add "
                      f"{slots} to the template if the model should see them.", UserWarning, stacklevel=2)
    return unused


def _slot(name: str, count, marker: str, earlier: list[str], text: str) -> str:
    """Check one slot marker (no repeat count, not seen before) and return its name."""
    if count is not None:
        raise TemplateError(f"'{marker}': [{name}] cannot be repeated; use a single [{name}].")
    if name in earlier:
        if name == "X":
            raise TemplateError(f"template {text!r} has more than one [X]; use exactly one.")
        raise TemplateError(f"template {text!r} has slot [{name}] more than once; a slot may appear once "
                            "(give the text a second field if it should appear twice).")
    return name


def _unknown_marker(name: str, text: str) -> str:
    hint = ""
    if len(name) == 1 and name.isalpha():
        hint = (f" Single letters are reserved: did you mean [{name.upper()}]?" if name.upper() in "XP"
                else " Single letters are reserved for [X] and [P].")
    return (f"unknown marker '[{name}]' in template {text!r}.{hint} Only [X] (the input), [P] (one virtual token, "
            f"or [P]*N) and named slots (lower-case words such as [premise] or [passage], filled from the "
            f"example's fields) are markers; write other brackets as plain text.")
