"""Import a PEFT prompt adapter as a ptuning_lab run (for decoding and the vocabulary tools)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checkpoint as ckpt

from .common import CONFIG_FILE, IMPORTABLE, INFO_FILE, WEIGHTS_FILE, PeftImportError


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
