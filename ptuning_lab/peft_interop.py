"""PEFT interoperability: export a ptuning_lab prompt as a Hugging Face PEFT adapter, import one back.

**What PEFT stores.** For P-tuning and prompt tuning, ``PeftModel.save_pretrained`` writes only
``prompt_embeddings`` -- the *computed* prompt ``(num_virtual_tokens, d)`` -- into
``adapter_model.safetensors``, never the encoder's weights. ``PeftModel.from_pretrained`` loads it
in inference mode, where P-tuning's encoder is not even built: ``get_prompt`` returns the saved
embeddings as they are (and PEFT refuses ``is_trainable=True`` for prompt-learning adapters). So a
PEFT adapter is fully described by the computed prompt, and that is what :func:`export_peft` saves.

**Config mapping** (``peft_type="auto"``):

- ``direct`` -> ``PromptTuningConfig``: the prompt is the parameter, in PEFT as in ptuning_lab.
- ``mlp`` with ``MLPConfig(num_layers=3, dropout=0.0, residual=False)`` -> ``PromptEncoderConfig(
  encoder_reparameterization_type="MLP", encoder_hidden_size=h)``: PEFT's MLP is exactly that
  network, parameter names included (PEFT ignores ``encoder_num_layers`` for the MLP; it is left at
  its default 2 so PEFT does not warn).
- ``lstm`` with ``residual=False`` -> ``PromptEncoderConfig(encoder_reparameterization_type="LSTM",
  encoder_hidden_size=h, encoder_num_layers=L, encoder_dropout=p)``. Our dropout also acts on the
  last LSTM layer's output during training; the prompt itself (eval mode) is the same.
- Anything PEFT's encoder cannot express -- the residual form ``x + f(x)`` (ptuning_lab's
  default), an MLP depth other than 3, MLP dropout -- is exported as a ``PromptTuningConfig``
  holding the computed prompt. PEFT's inference uses only that prompt, so the logits are the same;
  labelling it P-tuning would claim an encoder that is not in the file. ``ptuning_lab.json`` says
  which mapping was used and why.

For a P-tuning export the encoder's weights are also written, under PEFT's own parameter names
(``embedding.weight``, ``mlp_head.*``, ``lstm_head.*``), to ``ptuning_lab_encoder.safetensors``.
PEFT does not read that file; :func:`peft_model_for_training` loads it into a trainable PEFT model,
whose encoder then recomputes exactly our prompt -- the only way to continue training the
*encoder* (not just the prompt) in PEFT.

**Templates.** PEFT can only prepend the virtual tokens, so only templates whose ``[P]`` all come
first (``Template.is_prefix``) can be exported, e.g. ``"[P]*6 The capital of [X] is"``; the
others raise :class:`PeftExportError` (never a silently different model). The text after the
virtual tokens is the user's input to PEFT: ``" The capital of France is"`` for the template above
(the leading space matters). Templates with several slots export the same way (all ``[P]`` first,
e.g. ``"[P]*4 [premise] Question: [hypothesis] Answer:"``), each slot filled with its field's text.
ptuning_lab tokenizes the template's pieces separately; tokenizing the
whole text at once usually gives the same ids but not always (``" U.S.'s"``), so
:func:`peft_batch` builds PEFT's ``input_ids`` exactly as ptuning_lab does.

**Padding.** PEFT ignores ``position_ids`` (it warns and drops them): with left padding the text
positions shift and the logits change. Use one input at a time or right padding, as
:func:`peft_batch` does, and read the logits at ``logit_index``.

Example::

    >>> out = export_peft("runs/capital-mlp", "exports/capital-mlp")          # doctest: +SKIP
    >>> from peft import PeftModel                                             # doctest: +SKIP
    >>> peft_model = PeftModel.from_pretrained(lm.model, out)                   # doctest: +SKIP
    >>> b = peft_batch(lm, "[P]*6 The capital of [X] is", ["France"])          # doctest: +SKIP
    >>> logits = peft_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    >>> imported = import_peft("some/peft-adapter", lm)                        # doctest: +SKIP
    >>> imported.prompt.shape                                                  # doctest: +SKIP
    torch.Size([20, 576])
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .frozen_lm import right_pad
from .slots import as_inputs, slot_texts
from .prompts import ALL_METHODS, INPUT_LAYER, KEY_VALUE, METHODS, peft_config_kwargs, produces
from .templates import Template, TemplateError

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
def _mapping(method: str, cfg: dict, peft_type: str) -> tuple[str, list[str]]:
    """(PEFT type, reasons PEFT's P-tuning encoder cannot express this one)."""
    reasons = []
    if method == "mlp":
        if cfg.get("residual", True):
            reasons.append("the MLP encoder is residual (prompt = x + MLP(x)); PEFT's computes MLP(x) only")
        if cfg.get("num_layers") != 3:
            reasons.append(f"the MLP has {cfg.get('num_layers')} Linear layers; PEFT's MLP always has 3")
        if cfg.get("dropout", 0.0):
            reasons.append(f"the MLP uses dropout {cfg['dropout']}; PEFT's MLP has none (it ignores encoder_dropout)")
    elif method == "lstm" and cfg.get("residual", True):
        reasons.append("the LSTM encoder is residual (prompt = x + head(LSTM(x))); PEFT's computes head(LSTM(x))")
    if peft_type == "prompt_tuning" or method == "direct":
        if peft_type == "p_tuning":
            raise PeftExportError("a direct prompt has no encoder, so it has no P-tuning form; its PEFT "
                                  "equivalent is prompt tuning: use peft_type='prompt_tuning' (or 'auto').")
        return "PROMPT_TUNING", reasons
    if reasons and peft_type == "p_tuning":
        raise PeftExportError(
            "this encoder cannot be written as a PEFT P-tuning adapter: " + "; ".join(reasons) + ". Train with "
            "MLPConfig(num_layers=3, dropout=0.0, residual=False) or LSTMConfig(residual=False) for a P-tuning "
            "export, or export with peft_type='auto' / 'prompt_tuning' (same logits: PEFT uses only the prompt).")
    return ("PROMPT_TUNING" if reasons else "P_TUNING"), reasons


def _peft_config(peft_type: str, method: str, n: int, d: int, enc_cfg: dict, base: str | None):
    peft = _require_peft("exporting to PEFT")
    common = dict(task_type="CAUSAL_LM", num_virtual_tokens=n, token_dim=d, num_transformer_submodules=1,
                  inference_mode=True, base_model_name_or_path=base)
    if peft_type == "PROMPT_TUNING":
        return peft.PromptTuningConfig(**common)
    if method == "mlp":
        return peft.PromptEncoderConfig(**common, encoder_reparameterization_type="MLP",
                                        encoder_hidden_size=enc_cfg["encoder_hidden_size"])
    return peft.PromptEncoderConfig(**common, encoder_reparameterization_type="LSTM",
                                    encoder_hidden_size=enc_cfg["encoder_hidden_size"],
                                    encoder_num_layers=enc_cfg["num_layers"], encoder_dropout=enc_cfg["dropout"])


def _default_base(model_name: str | None) -> str | None:
    from .models import EMBEDDED_NAME, embedded_model_dir

    if model_name == EMBEDDED_NAME:
        # the embedded model is a de-quantized GGUF, not the hub checkpoint: point at the converted copy
        return str(embedded_model_dir())
    return model_name


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PeftExportError(f"{out} is a file; give a directory to write the adapter into.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise PeftExportError(f"{out} already holds files; choose another directory or pass overwrite=True "
                                  f"(CLI: --overwrite) to replace an earlier export.")
        if not ((out / INFO_FILE).is_file() or (out / CONFIG_FILE).is_file()):
            raise PeftExportError(f"refusing to replace {out}: it holds files but no {CONFIG_FILE}, so it is "
                                  f"not an adapter directory. Choose an empty or new directory.")


def _install(tmp: Path, out: Path) -> None:
    """Move the finished export into place, so ``out`` is never half written."""
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)


def export_peft(run, out_dir, base_model_name_or_path: str | None = None, *, lm=None,
                peft_type: str = "auto", overwrite: bool = False) -> Path:
    """Write ``run``'s prompt as a PEFT adapter that ``PeftModel.from_pretrained(base, out_dir)`` loads.

    Args:
        run: a run directory (path) or a loaded :class:`~ptuning_lab.checkpoint.Run`.
        out_dir: directory to write (created; refused if it holds files, unless ``overwrite``).
        base_model_name_or_path: recorded in ``adapter_config.json`` (``AutoPeftModelForCausalLM``
            loads it); default the run's model (the converted local copy for the embedded model).
        lm: the :class:`FrozenLM` the run was trained on, optional: checks its vocabulary and width
            and that its tokenizer adds no leading special token (which PEFT would put after the
            virtual tokens). The CLI always passes it.
        peft_type: ``"auto"`` (see the module docstring), ``"p_tuning"`` (refused when PEFT's encoder
            cannot express ours) or ``"prompt_tuning"``.
    Files written: ``adapter_config.json`` and ``adapter_model.safetensors`` (``prompt_embeddings``
    (n, d) float32) in PEFT's format; ``ptuning_lab.json`` (template, input text format, mapping,
    how to use); for P-tuning also ``ptuning_lab_encoder.safetensors`` (see
    :func:`peft_model_for_training`). Returns ``out_dir`` as a Path.
    Raises :class:`PeftExportError` when the export would not reproduce the run's logits.
    """
    if peft_type not in PEFT_TYPES:
        raise PeftExportError(f"peft_type={peft_type!r}; use one of {', '.join(PEFT_TYPES)}.")
    run = run if isinstance(run, ckpt.Run) else ckpt.load_run(run)
    config = run.config
    spec = config["encoder"]
    method = spec.get("method")
    made = produces(method) if method in ALL_METHODS else None       # what the run's method produced
    if made == KEY_VALUE:
        return _export_prefix(run, out_dir, base_model_name_or_path, lm=lm, overwrite=overwrite)
    if made != INPUT_LAYER:
        raise PeftExportError(f"the run's encoder is {method!r}; only input-layer prompts ({', '.join(METHODS)}) "
                              f"have a PEFT P-tuning / prompt-tuning form.")
    if "template" not in config:
        raise PeftExportError(f"{run.path}/config.json has no 'template'; the export needs it to tell PEFT users "
                              f"what text follows the virtual tokens. Train again with ptuning_lab.")
    template = _prefix_template(config["template"])
    n, d = int(spec["num_virtual_tokens"]), int(config["hidden_size"])
    if template.num_virtual_tokens != n:
        raise PeftExportError(f"the template has {template.num_virtual_tokens} [P] but the prompt has {n} rows: "
                              f"the run directory is inconsistent. Train again.")
    if lm is not None:
        try:
            run.check_model(lm)
        except ckpt.CheckpointError as err:
            raise PeftExportError(str(err)) from err
        if lm.prefix_ids:
            raise PeftExportError(_bos_message(lm))
    prompt = run.prompt.detach().float().cpu().contiguous()
    if not torch.isfinite(prompt).all():
        raise PeftExportError(f"the prompt of {run.path} holds NaN or inf values; there is nothing sound to export.")
    enc_cfg = spec.get("config") or {}
    kind, reasons = _mapping(method, enc_cfg, peft_type)
    encoder_state = None
    if kind == "P_TUNING":
        encoder = run.encoder()
        with torch.no_grad():
            gap = _prompt_gap(encoder().cpu(), prompt)
        if gap > _SAME_PROMPT:
            raise PeftExportError(f"the saved encoder recomputes a prompt that differs from the saved prompt by "
                                  f"{gap:.2e}; the run directory is inconsistent. Export with "
                                  f"peft_type='prompt_tuning' (it uses the saved prompt) or train again.")
        encoder_state = {k: v.detach().float().cpu().contiguous() for k, v in encoder.state_dict().items()}
    base = base_model_name_or_path if base_model_name_or_path is not None else _default_base(config.get("model"))
    peft_config = _peft_config(kind, method, n, d, enc_cfg, base)

    extra = {ENCODER_FILE: encoder_state} if encoder_state is not None else {}
    return _write_export(out_dir, overwrite, peft_config, prompt, extra,
                         _export_info(run, template, kind, reasons, base, n, d, encoder_state is not None))


def _export_prefix(run, out_dir, base_model_name_or_path, *, lm=None, overwrite=False) -> Path:
    """A prefix-tuning run as PEFT's ``PrefixTuningConfig`` adapter.

    The run stores the prefix flattened exactly as PEFT's ``prompt_embeddings`` (n, layers x 2 x kv
    width), which PEFT uses as-is in inference mode, so every parameterisation exports exactly.
    The template has no [P]: PEFT puts the prefix before the text, as ptuning_lab does.
    """
    from peft import PrefixTuningConfig

    if lm is not None:
        try:
            run.check_model(lm)
        except ckpt.CheckpointError as err:
            raise PeftExportError(str(err)) from err
    prompt = run.prompt.detach().float().cpu().contiguous()
    if not torch.isfinite(prompt).all():
        raise PeftExportError(f"the prompt of {run.path} holds NaN or inf values; there is nothing sound to export.")
    base = base_model_name_or_path if base_model_name_or_path is not None else _default_base(run.config.get("model"))
    peft_config = PrefixTuningConfig(task_type="CAUSAL_LM", inference_mode=True, base_model_name_or_path=base,
                                     **peft_config_kwargs(run.config["encoder"]))
    info = {"format": EXPORT_FORMAT, "peft_type": "PREFIX_TUNING", "method": "prefix",
            "template": run.config.get("template"), "model": run.config.get("model"), "base_model": base,
            "why": "the stored prefix is PEFT's prompt_embeddings layout; PEFT uses it as-is at inference.",
            "input_text": "the template with [X] filled in; PEFT prepends the key/value prefix at every layer"}
    return _write_export(out_dir, overwrite, peft_config, prompt, {}, info)


def _write_export(out_dir, overwrite: bool, peft_config, prompt, extra_tensors: dict, info: dict) -> Path:
    """Write an adapter directory in a temporary folder and move it into place (never half written)."""
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        peft_config.save_pretrained(str(tmp))
        ckpt.write_tensors(tmp / WEIGHTS_FILE, {"prompt_embeddings": prompt}, {"format": "pt"})
        for name, tensors in extra_tensors.items():
            ckpt.write_tensors(tmp / name, tensors, {"format": "pt"})
        ckpt.write_json(tmp / INFO_FILE, info)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_info(run, template: Template, kind: str, reasons: list[str], base, n: int, d: int,
                 has_encoder: bool) -> dict:
    fmt = peft_input_format(template)
    # how a user fills the slots: [X] with an example word, named slots with a variable of that name
    fills = [(f"[{n}]", "'France'" if n == "X" else n.upper()) for n in template.slot_names]
    method = run.config["encoder"]["method"]
    if kind == "P_TUNING":
        why = f"PEFT's P-tuning encoder is exactly this {method} encoder (same layers and parameter names)."
        if method == "lstm" and run.config["encoder"].get("config", {}).get("dropout"):
            why += (" Only training differs: ptuning_lab's dropout also acts on the last LSTM layer's output, "
                    "PEFT's only between layers; the prompt is the same.")
    elif method == "direct":
        why = "a direct prompt is PEFT's prompt tuning."
    else:
        why = ("; ".join(reasons) or "peft_type='prompt_tuning' was asked for") + \
              ". PEFT uses only the saved prompt at inference, so it is exported as prompt tuning: same logits."
    files = {CONFIG_FILE: "PEFT's adapter config",
             WEIGHTS_FILE: f"'prompt_embeddings' ({n}, {d}) float32: the computed prompt, all PEFT reads",
             INFO_FILE: "this file"}
    if has_encoder:
        files[ENCODER_FILE] = ("the encoder's weights under PEFT's names (embedding.weight, mlp_head.*, "
                               "lstm_head.*); PEFT ignores it, ptuning_lab.peft_interop.peft_model_for_training "
                               "loads it to continue training the encoder in PEFT")
    return {
        "format": EXPORT_FORMAT,
        "what": "A ptuning_lab prompt exported as a Hugging Face PEFT adapter.",
        "source_run": str(run.path),
        "model": run.config.get("model"),
        "base_model_name_or_path": base,
        "vocab_size": run.config.get("vocab_size"),
        "hidden_size": d,
        "task": run.config.get("task"),
        "template": template.text,
        "num_virtual_tokens": n,
        "method": method,
        "encoder": run.config["encoder"],
        "peft_type": kind,
        "why_this_peft_type": why,
        "input_text_format": fmt,
        "example_input_text": peft_input_text(template, {n: "France" if n == "X" else f"<{n}>"
                                                          for n in template.slot_names}),
        "how_to_use": [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"model = AutoModelForCausalLM.from_pretrained({base!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({base!r})",
            "peft_model = PeftModel.from_pretrained(model, EXPORT_DIR)",
            f"text = {fmt!r}" + "".join(f".replace({m!r}, {v})" for m, v in fills) + "   # keep the leading space",
            "ids = tokenizer(text, add_special_tokens=False, return_tensors='pt')",
            "next_token_logits = peft_model(**ids).logits[:, -1]",
        ],
        "tokenization": ("ptuning_lab tokenizes the template's text pieces and the input separately, without "
                         "special tokens; tokenizing the whole text at once gives the same ids in the common "
                         "case (words separated by spaces) but can differ where the input touches punctuation "
                         "(\" U.S.'s\"). ptuning_lab.peft_interop.peft_batch(lm, template, inputs) gives the "
                         "exact ids."),
        "padding": (f"PEFT prepends the {n} virtual tokens and drops position_ids: give one input at a time or "
                    f"pad on the RIGHT and read the logits at {n} + length - 1. Left padding shifts the text "
                    f"positions and changes the logits."),
        "files": files,
    }


def peft_model_for_training(base_model, export_dir, adapter_name: str = "default"):
    """A *trainable* PEFT model that starts from an export, encoder included.

    ``PeftModel.from_pretrained`` loads prompt-learning adapters for inference only, and a PEFT
    P-tuning adapter does not contain its encoder. This builds ``get_peft_model(base_model, config)``
    with ``inference_mode=False`` and loads our encoder weights (P-tuning) or the prompt (prompt
    tuning), then checks that PEFT's own recomputation gives the exported prompt.
    """
    peft = _require_peft("building a PEFT model")
    export_dir = Path(export_dir)
    config = peft.PeftConfig.from_pretrained(str(export_dir))
    config.inference_mode = False
    prompt = ckpt.read_tensors(export_dir / WEIGHTS_FILE)["prompt_embeddings"]
    peft_model = peft.get_peft_model(base_model, config, adapter_name=adapter_name)
    encoder = peft_model.prompt_encoder[adapter_name]
    if config.peft_type == "P_TUNING":
        if not (export_dir / ENCODER_FILE).is_file():
            raise PeftExportError(f"{export_dir} has no {ENCODER_FILE}: PEFT saves only the computed prompt, so "
                                  f"the encoder cannot be rebuilt. Re-export from the ptuning_lab run, or continue "
                                  f"as prompt tuning (export with peft_type='prompt_tuning').")
        state = ckpt.read_tensors(export_dir / ENCODER_FILE)
        encoder.load_state_dict({k: v.to(encoder.embedding.weight.dtype) for k, v in state.items()})
    else:
        with torch.no_grad():
            encoder.embedding.weight.copy_(prompt)
    with torch.no_grad():
        gap = _prompt_gap(peft_model.get_prompt_embedding_to_save(adapter_name), prompt)
    if gap > _SAME_PROMPT:
        raise PeftExportError(f"PEFT's encoder recomputes a prompt {gap:.2e} away from the exported one; the "
                              f"export at {export_dir} is inconsistent. Export it again.")
    return peft_model


# ============================================================================ import
@dataclass
class ImportedPrompt(ckpt.Run):
    """A prompt trained elsewhere (a PEFT adapter), shaped like a :class:`~ptuning_lab.checkpoint.Run`.

    ``prompt`` (n, d) float32; ``config`` holds ``method`` (how it was trained: "mlp" / "lstm" for
    PEFT P-tuning, "direct" for prompt tuning; a ptuning_lab export records its original method, so a
    residual MLP exported as prompt tuning comes back as "mlp"), ``num_virtual_tokens``, ``model`` (the base model),
    ``hidden_size``, ``vocab_size`` (None when unknown), ``template`` (None unless the adapter came
    from ptuning_lab) and ``encoder``: a direct encoder holding the prompt, since PEFT does not save
    its encoder. ``peft_config`` is the adapter's ``adapter_config.json``.
    """

    peft_config: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def num_virtual_tokens(self) -> int:
        return self.config["num_virtual_tokens"]

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.peft_config.get("base_model_name_or_path")

    def check_model(self, lm) -> None:
        """Refuse a model of another width (or vocabulary, when it is known)."""
        _check_lm(self.prompt, self.config.get("vocab_size"), lm, self.path)


def _check_lm(prompt: torch.Tensor, vocab_size, lm, path) -> None:
    if prompt.shape[1] != lm.hidden_size:
        raise PeftImportError(f"the adapter at {path} holds a prompt of width {prompt.shape[1]} but model "
                              f"'{lm.name}' has width {lm.hidden_size}: it was trained for another model. Load "
                              f"its base model (adapter_config.json: base_model_name_or_path).")
    if vocab_size is not None and vocab_size != lm.vocab_size:
        raise PeftImportError(f"the adapter at {path} was exported from a model with a vocabulary of "
                              f"{vocab_size} tokens but '{lm.name}' has {lm.vocab_size}; nearest-token decoding "
                              f"would read the wrong tokens. Load the model it was trained on.")


def _read_adapter_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PeftImportError(f"{path} is corrupt ({err}); {what}") from err
    if not isinstance(data, dict):
        raise PeftImportError(f"{path} is not a JSON object; {what}")
    return data


def import_peft(adapter_dir, lm=None) -> ImportedPrompt:
    """Read a PEFT P-tuning or prompt-tuning adapter directory (``save_pretrained`` output).

    Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (``prompt_embeddings``); no
    ``peft`` import needed. ``lm``: the model the prompt is for, optional; when given, its width
    (and, for ptuning_lab exports, its vocabulary) must match, and it fills ``config["vocab_size"]``.
    Returns an :class:`ImportedPrompt`; :func:`save_imported` writes it as a run directory.
    """
    path = Path(adapter_dir)
    fix = "give the directory written by PeftModel.save_pretrained (with adapter_config.json and " \
          "adapter_model.safetensors)."
    if not path.is_dir():
        raise PeftImportError(f"{path} is {'a file' if path.exists() else 'not there'}, not a directory; {fix} "
                              f"Hub ids are not fetched: download the adapter first.")
    if not (path / CONFIG_FILE).is_file():
        raise PeftImportError(f"{path} has no {CONFIG_FILE}: it is not a PEFT adapter directory; {fix}")
    cfg = _read_adapter_json(path / CONFIG_FILE, "save the adapter again with save_pretrained.")
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type not in IMPORTABLE:
        extra = (" Prefix tuning stores key/value prefixes for every layer, not input-layer virtual tokens."
                 if peft_type == "PREFIX_TUNING" else "")
        raise PeftImportError(f"{path} is a {cfg.get('peft_type') or 'typeless'} adapter; only P-tuning (P_TUNING) "
                              f"and prompt tuning (PROMPT_TUNING) adapters can be imported, because only they "
                              f"hold a prompt of virtual-token embeddings.{extra}")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise PeftImportError(f"{path} holds adapter_model.bin (a pickle) and no {WEIGHTS_FILE}; ptuning_lab "
                                  f"does not unpickle files. Re-save it in PEFT with "
                                  f"save_pretrained(dir, safe_serialization=True).")
        raise PeftImportError(f"{path} has no {WEIGHTS_FILE}: the adapter is incomplete; {fix}")
    try:
        tensors = ckpt.read_tensors(weights)
    except ckpt.CheckpointError as err:
        raise PeftImportError(f"{weights} is corrupt or truncated; save the adapter again. ({err})") from err
    if "prompt_embeddings" not in tensors:
        raise PeftImportError(f"{weights} has no 'prompt_embeddings' tensor (found {sorted(tensors)[:5]}); it "
                              f"was not written by PEFT for a prompt-learning adapter. Save it again with "
                              f"PeftModel.save_pretrained.")
    prompt = tensors["prompt_embeddings"]
    n = cfg.get("num_virtual_tokens")
    subs = cfg.get("num_transformer_submodules") or 1
    if subs != 1:
        raise PeftImportError(f"{path} is an encoder-decoder adapter (num_transformer_submodules={subs}); "
                              f"ptuning_lab runs decoder-only causal LMs.")
    if isinstance(n, int) and not isinstance(n, bool) and n < 1:
        raise PeftImportError(f"{CONFIG_FILE} says num_virtual_tokens={n}: the adapter holds no virtual tokens, so "
                              "there is no prompt to import. Train the adapter with num_virtual_tokens >= 1.")
    if prompt.dim() != 2 or not isinstance(n, int) or prompt.shape[0] != n:
        raise PeftImportError(f"{weights} holds prompt_embeddings of shape {tuple(prompt.shape)} but "
                              f"{CONFIG_FILE} says num_virtual_tokens={n}: the files are from different "
                              f"adapters. Save the adapter again.")
    if cfg.get("token_dim") not in (None, prompt.shape[1]):
        raise PeftImportError(f"{CONFIG_FILE} says token_dim={cfg['token_dim']} but the prompt has width "
                              f"{prompt.shape[1]}: the files are from different adapters. Save it again.")
    prompt = prompt.float()
    if not torch.isfinite(prompt).all():
        raise PeftImportError(f"{weights} holds NaN or inf values: the training diverged or the file is damaged.")
    info = {}
    if (path / INFO_FILE).is_file():
        info = _read_adapter_json(path / INFO_FILE, "delete it to import the adapter without it.")
    vocab = info.get("vocab_size")
    if lm is not None:
        _check_lm(prompt, vocab, lm, path)
        vocab = lm.vocab_size
    method = "direct" if peft_type == "PROMPT_TUNING" else \
        str(cfg.get("encoder_reparameterization_type", "MLP")).lower()
    # ptuning_lab exports record how the prompt was really trained (a residual MLP goes out as prompt tuning)
    method = info.get("method", method)
    n, d = prompt.shape
    config = {
        "model": (lm.name if lm is not None else info.get("model") or cfg.get("base_model_name_or_path")),
        "template": info.get("template"),
        "task": info.get("task"),
        "vocab_size": vocab,
        "hidden_size": d,
        "method": method,
        "num_virtual_tokens": n,
        "encoder": {"method": "direct", "num_virtual_tokens": n, "hidden_size": d, "init": "random", "seed": 0,
                    "config": {}},
        "source": {"format": "peft", "path": str(path), "peft_type": peft_type,
                   "base_model_name_or_path": cfg.get("base_model_name_or_path")},
    }
    return ImportedPrompt(path=path, config=config, prompt=prompt, encoder_state={"embedding.weight": prompt},
                          peft_config=cfg)


def save_imported(imported: ImportedPrompt, out_dir, lm=None, overwrite: bool = False) -> Path:
    """Write an imported prompt as a ptuning_lab run directory (a direct encoder holding the prompt).

    ``ptuning-lab decode OUT`` then works on it. The run must know its model's vocabulary: pass
    ``lm`` (checked and recorded) unless ``import_peft`` was already given one.
    """
    config = dict(imported.config)
    if lm is not None:
        imported.check_model(lm)
        config["model"], config["vocab_size"] = lm.name, lm.vocab_size
    if config.get("vocab_size") is None or not config.get("model"):
        raise PeftImportError("the imported prompt does not record which model it is for; pass lm= (the base "
                              "model, FrozenLM.load(...)) so the run directory can be decoded later.")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise PeftImportError(f"{out} already exists and holds files; choose another directory or pass "
                                  f"overwrite=True (CLI: --overwrite).")
        if out.is_dir() and not (out / "config.json").is_file():
            raise PeftImportError(f"refusing to replace {out}: it is not a ptuning_lab run directory.")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    history = {"train": [], "eval": [], "imported_from": str(imported.path)}
    ckpt.save_run(out, config=config, encoder_state=imported.encoder_state, prompt=imported.prompt,
                  history=history)
    return out


__all__ = ["PeftExportError", "PeftImportError", "ImportedPrompt", "export_peft", "import_peft", "save_imported",
           "peft_input_format", "peft_input_text", "peft_batch", "peft_model_for_training"]
