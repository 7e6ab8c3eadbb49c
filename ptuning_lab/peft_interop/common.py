"""What export and import share: file names, errors, and the input text PEFT reads."""
from __future__ import annotations


import torch

from ..frozen_lm import right_pad
from ..slots import as_inputs, slot_texts
from ..templates import Template, TemplateError

EXPORT_FORMAT = "ptuning_lab/peft-export/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
INFO_FILE = "ptuning_lab.json"
ENCODER_FILE = "ptuning_lab_encoder.safetensors"
PEFT_TYPES = ("auto", "p_tuning", "prompt_tuning")
IMPORTABLE = {"P_TUNING": "P-tuning", "PROMPT_TUNING": "prompt tuning"}
EXAMPLE_TEMPLATE = "[P]*6 The capital of [X] is"


def _prompt_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max difference of two prompts relative to their scale: ~1e-7 when one encoder recomputes its
    own prompt in float32 (another device adds ~1e-6); an encoder that does not match is far off."""
    return (a.float() - b.float()).abs().max().item() / max(1.0, b.float().abs().max().item())


_SAME_PROMPT = 1e-4


class PeftExportError(ValueError):
    """A run cannot be exported as a PEFT adapter without changing what the model computes."""


class PeftImportError(ValueError):
    """A directory is not a PEFT adapter ptuning_lab can import; the message says what to do."""


def _require_peft(what: str):
    try:
        import peft
    except ImportError as err:
        raise PeftExportError(f"{what} needs the 'peft' package, which is not installed. Install it with "
                              f"pip install 'ptuning_lab[peft]'.") from err
    return peft


# ============================================================================ templates and inputs
def _prefix_template(template) -> Template:
    """The parsed template, refused unless all its [P] come first (the only layout PEFT has)."""
    try:
        t = Template.parse(template)
    except TemplateError as err:
        raise PeftExportError(f"the run's template is invalid ({err}).") from err
    if not t.is_prefix:
        n = max(t.num_virtual_tokens, 1)
        raise PeftExportError(
            f"template {t.text!r} cannot be exported to PEFT: PEFT only prepends its virtual tokens to the "
            f"input, so a [P] after text or after [X] has no PEFT equivalent and the exported model would "
            f"compute something else. Train with a prefix template, all [P] first, e.g. "
            f"\"[P]*{n} The capital of [X] is\" (like {EXAMPLE_TEMPLATE!r}).")
    return t


def peft_input_format(template) -> str:
    """The text a PEFT user feeds after the virtual tokens, with ``[X]`` (or ``[premise]``...) where inputs go.

    ``"[P]*6 The capital of [X] is"`` -> ``" The capital of [X] is"`` (leading space included: it
    is part of what ptuning_lab tokenizes); ``"[P]*4 [premise] Question: [hypothesis]"`` ->
    ``" [premise] Question: [hypothesis]"``. Raises :class:`PeftExportError` for non-prefix templates.
    """
    t = _prefix_template(template)
    return _fill_parts(t, [f"[{n}]" for n in t.slot_names])


def peft_input_text(template, input_text) -> str:
    """``peft_input_format`` filled with one input (stripped, as ptuning_lab does).

    ``input_text``: the ``[X]`` text, or an Example / mapping name -> text for named slots.
    """
    t = _prefix_template(template)
    return _fill_parts(t, slot_texts(t, input_text))


def _fill_parts(t: Template, texts) -> str:
    """The template's parts after its virtual tokens, each slot replaced by its text (with the slot's space)."""
    fill = iter(texts)
    return "".join(value if kind == "text" else (" " if t.slot_has_space(value) else "") + next(fill)
                   for kind, value in t.parts[t.num_virtual_tokens:])


def peft_batch(lm, template, inputs) -> dict[str, torch.Tensor]:
    """PEFT's inputs for ``template`` filled with ``inputs``, token for token what ptuning_lab runs.

    Returns ``input_ids`` (B, T) right-padded with the pad id, ``attention_mask`` (B, T), and
    ``logit_index`` (B,): where the next-token logits are in PEFT's output, whose sequence is
    ``num_virtual_tokens`` longer (``logits[arange(B), logit_index]`` is (B, vocab)).
    """
    t = _prefix_template(template)
    if lm.prefix_ids:
        raise PeftExportError(_bos_message(lm))
    seqs = [[i for i in ids if i >= 0] for ids, _ in lm.sequences(t, as_inputs(inputs))]
    input_ids, mask = right_pad(seqs, lm.pad_id)
    logit_index = t.num_virtual_tokens + mask.sum(1) - 1
    return {"input_ids": input_ids.to(lm.device), "attention_mask": mask.to(lm.device),
            "logit_index": logit_index.to(lm.device)}


def _bos_message(lm) -> str:
    return (f"the tokenizer of '{lm.name}' puts special tokens {lm.prefix_ids} (e.g. a BOS) at the start; "
            f"ptuning_lab places them before the virtual tokens but PEFT always puts its virtual tokens "
            f"first, so the exported model would see a different sequence. Export is only exact for "
            f"tokenizers that add no leading special tokens (GPT-2, SmolLM2).")


# ============================================================================ export
