"""Filling a template's slots from inputs, and cutting slots that do not fit the model's context.

An input is a string (fills ``[X]``), an :class:`~ptuning_lab.tasks.Example` (``Example.slot(name)``),
a mapping name -> text, or a tuple of texts in slot order; :func:`slot_texts` turns one into the
text of each slot. :func:`truncate_slots` applies a template's truncation policy
(``Template.with_truncation``) to the slots' token ids. ``FrozenLM.sequences`` uses both.
"""
from __future__ import annotations

from collections.abc import Mapping

from .tasks.base import Example, TaskError
from .templates import Template


def as_inputs(inputs) -> list:
    """``inputs`` as a list of examples: one string, Example or mapping becomes a list of one."""
    if isinstance(inputs, (str, Example, Mapping)):
        return [inputs]
    return list(inputs)


def slot_texts(template: Template, item) -> tuple[str, ...]:
    """The stripped text of each slot of ``template`` for one input (see ``FrozenLM.slot_values``)."""
    names = template.slot_names
    if isinstance(item, str):
        if names in ((), ("X",)):
            return (item.strip(),) * len(names)
        raise TaskError(f"template {template.text!r} has named slots {_brackets(names)}; a plain string only fills "
                        f"[X]. Pass Examples or dicts such as {{{', '.join(repr(n) + ': ...' for n in names)}}}.")
    if isinstance(item, Example):
        if "X" in names and not item.input and item.fields:
            raise TaskError(f"template {template.text!r} has [X] but the example has no input text; its fields: "
                            f"{', '.join(sorted(item.fields))}. Use them as slots, e.g. [{min(item.fields)}].")
        return tuple(str(item.slot(n)).strip() for n in names)
    if isinstance(item, Mapping):
        out = []
        for n in names:
            if n in item:
                out.append(str(item[n]).strip())
            elif n == "X" and "input" in item:
                out.append(str(item["input"]).strip())
            elif n == "X":
                have = ", ".join(sorted(map(str, item))) or "none"
                raise TaskError(f"the template has [X] but the input has no 'X' or 'input' key; its keys: {have}. "
                                "Add the key, or use the keys as named slots.")
            else:
                Example(fields={str(k): str(v) for k, v in item.items()}).slot(n)    # raises, listing the fields
        return tuple(out)
    if isinstance(item, tuple) and len(item) == len(names) and all(isinstance(v, str) for v in item):
        return tuple(v.strip() for v in item)
    raise TaskError(f"cannot fill template {template.text!r} (slots {_brackets(names) or 'none'}) from a "
                    f"{type(item).__name__}: give a string (for [X]), an Example, a dict name -> text, or a tuple "
                    f"of {len(names)} texts in slot order.")


def _brackets(names) -> str:
    return ", ".join(f"[{n}]" for n in names)


def cut_lengths(lengths: list[int], excess: int, cuttable: list[int]) -> list[int]:
    """New slot lengths after cutting ``excess`` tokens, longest cuttable slot first (ties: the earliest).

    Lowers the longest slot to the next one's length, then both together, and so on, like
    cutting one token at a time from whichever is longest: ``[10, 4], 8 -> [3, 3]``.
    """
    keep = list(lengths)
    while excess > 0:
        top = max(keep[j] for j in cuttable)
        at_top = [j for j in cuttable if keep[j] == top]
        below = max([keep[j] for j in cuttable if keep[j] < top], default=0)
        room = (top - below) * len(at_top)
        if room <= excess:
            for j in at_top:
                keep[j] = below
            excess -= room
        else:                       # cut part way: evenly, the earlier slots one token more
            per, extra = divmod(excess, len(at_top))
            for r, j in enumerate(at_top):
                keep[j] = top - per - (1 if r < extra else 0)
            excess = 0
    return keep


def truncate_slots(template: Template, slot_ids: list[list[int]], excess: int, fixed: int, max_positions: int,
                   model: str = "model") -> list[list[int]]:
    """Each slot's token ids, cut by ``excess`` tokens in all by the template's policy.

    ``slot_ids``: per slot (template order) its token ids; ``fixed``: the tokens that cannot be
    cut (text, virtual tokens, special tokens, an appended answer). Raises ``ValueError`` naming
    the fix when the policy is ``"error"`` or cutting cannot make it fit.
    """
    policy, names = template.truncate, template.slot_names
    total = fixed + sum(map(len, slot_ids))
    if policy == "error" or not names:
        raise ValueError(f"a templated input is {total} tokens long but the model '{model}' accepts "
                         f"{max_positions}; shorten the input or use fewer virtual tokens, or let a slot "
                         f"be cut: Template.parse(...).with_truncation('longest').")
    lengths = [len(ids) for ids in slot_ids]
    cuttable = range(len(names)) if policy == "longest" else [names.index(policy)]
    room = sum(lengths[j] for j in cuttable)
    if room < excess:
        what = "every slot" if policy == "longest" else f"slot [{policy}]"
        raise ValueError(f"a templated input is {total} tokens long but the model '{model}' accepts "
                         f"{max_positions}, and even {what} cut to nothing leaves {total - room}: "
                         "shorten the template's text or its answer, use fewer virtual tokens"
                         + (", or cut truncate='longest'." if policy != "longest" else "."))
    keep = cut_lengths(lengths, excess, list(cuttable))
    end = template.truncate_side == "end"
    return [ids[:k] if end else ids[len(ids) - k:] for ids, k in zip(slot_ids, keep)]


__all__ = ["as_inputs", "cut_lengths", "slot_texts", "truncate_slots"]
