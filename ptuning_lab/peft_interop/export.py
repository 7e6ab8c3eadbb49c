"""Export a ptuning_lab run as a PEFT adapter (P-tuning, prompt tuning or prefix tuning)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..prompts import ALL_METHODS, INPUT_LAYER, KEY_VALUE, METHODS, peft_config_kwargs, produces
from ..templates import Template

from .common import (CONFIG_FILE, ENCODER_FILE, EXPORT_FORMAT, INFO_FILE, PEFT_TYPES, WEIGHTS_FILE,
                     PeftExportError, peft_input_format, peft_input_text)
from .common import _SAME_PROMPT, _bos_message, _prefix_template, _prompt_gap, _require_peft


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
    from ..models import EMBEDDED_NAME, embedded_model_dir

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
