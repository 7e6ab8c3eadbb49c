"""Templates with virtual-token slots.

Syntax: ``[P]`` is one virtual token, ``[P]*N`` is N of them, ``[X]`` is the input text
(the subject of a relation, or the sentence to classify). Everything else is literal text,
tokenized normally. The model predicts the next token after the template.

    >>> t = Template.parse("The capital of [X] is [P][P]")
    >>> t.num_virtual_tokens, t.has_input
    (2, True)

Whitespace rules (so BPE sees the spaces it expects): a space just before ``[X]`` moves into the
input (" France" is one token; a newline before ``[X]`` stays in the text), and whitespace just
before a ``[P]`` is dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# the repeat count is captured loosely ("*x", "*-1", "*²") so a malformed one is an error, not literal text
_MARKER = re.compile(r"\[([^\[\]]*)\](?:\*(-?\w*))?")
# more virtual tokens than any model's context holds: refused before the parts are built (memory)
MAX_VIRTUAL_TOKENS = 4096


class TemplateError(ValueError):
    """A template string is malformed; the message says what to change."""


@dataclass(frozen=True)
class Template:
    """A parsed template: a tuple of parts, each ``("text", str)``, ``("x", "")`` or ``("p", "")``."""

    text: str
    parts: tuple

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
            elif name == "X":
                if count is not None:
                    raise TemplateError(f"'{m.group(0)}': [X] cannot be repeated; use a single [X].")
                parts.append(("x", ""))
            else:
                raise TemplateError(
                    f"unknown marker '[{name}]' in template {text!r}. Only [X] (the input) and [P] "
                    f"(one virtual token, or [P]*N) are markers; write other brackets as plain text.")
            pos = m.end()
        if pos < len(text):
            parts.append(("text", text[pos:]))
        if sum(kind == "x" for kind, _ in parts) > 1:
            raise TemplateError(f"template {text!r} has more than one [X]; use exactly one.")
        # whitespace before a virtual token is dropped; spaces before [X] move into the input
        # (x_has_space), while a newline before [X] stays in the text
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
                cleaned.append((kind, ""))
        return cls(text=text, parts=tuple(cleaned))

    @property
    def num_virtual_tokens(self) -> int:
        return sum(kind == "p" for kind, _ in self.parts)

    @property
    def has_input(self) -> bool:
        return any(kind == "x" for kind, _ in self.parts)

    @property
    def is_prefix(self) -> bool:
        """True when all virtual tokens come first (the only layout PEFT can express)."""
        kinds = [k for k, _ in self.parts]
        n = self.num_virtual_tokens
        return n > 0 and kinds[:n] == ["p"] * n

    def x_has_space(self) -> bool:
        """Whether the input is preceded by a space in the raw template (the input then starts with one)."""
        m = re.search(r"( *)\[X\]", self.text)
        return bool(m and m.group(1))

    def manual_text(self) -> str:
        """The template with virtual tokens removed: what a manual prompt would read."""
        out = re.sub(r"\s*\[P\](?:\*\d+)?", "", self.text)
        return out.strip()

    def validate(self, *, need_virtual: bool, need_input: bool = True) -> "Template":
        if need_input and not self.has_input:
            raise TemplateError(f"template {self.text!r} has no [X]: add [X] where the input goes, "
                                "e.g. \"The capital of [X] is [P][P]\".")
        if need_virtual and self.num_virtual_tokens == 0:
            raise TemplateError(f"template {self.text!r} has no [P]: a trained prompt needs at least one "
                                "virtual token, e.g. \"[P]*3 [X] [P]*3\" or \"The capital of [X] is [P][P]\".")
        return self

    def __str__(self) -> str:
        return self.text
