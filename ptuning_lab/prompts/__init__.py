"""Prompt methods: one file per method, registered here, built from a name or a saved spec.

The shape of Hugging Face PEFT's ``tuners/``: every method file (``direct``, ``mlp``, ``lstm``,
``prefix``) ends with one ``register(...)`` call and imports only :mod:`.base`; this module is the
only one that imports them all. Callers ask what a method *produces* (``encoder.produces``:
``INPUT_LAYER`` vectors for the template's ``[P]`` slots, or ``KEY_VALUE`` prefixes that are
:class:`LayerPrompt` objects), never its name.

- ``"direct"`` -- the prompt *is* the parameter (prompt tuning, Lester et al. 2021).
- ``"mlp"``    -- learnable inputs ``x (n, d)`` go through an MLP (P-tuning, Liu et al. 2021).
- ``"lstm"``   -- learnable inputs go through a bidirectional LSTM and an MLP head: the original
  P-tuning design, which lets every virtual token see its neighbours.
- ``"prefix"`` -- trainable keys/values at every layer (prefix tuning, Li & Liang 2021).

Example::

    >>> enc = build_encoder("lstm", 4, lm.embedding, init="text:The capital of",
    ...                     tokenize=lm.tokenize)                         # doctest: +SKIP
    >>> enc().shape                                                      # doctest: +SKIP
    torch.Size([4, 576])
"""
from __future__ import annotations

import torch

from .base import (INIT_FORMS, INPUT_LAYER, KEY_VALUE, EncoderError, LayerPrompt, PromptEncoder, PromptMethod,
                   Tokenize, check_positive_int, config_from_dict, initial_prompt, method_class, parse_init,
                   registered_methods, stored_tensor)
from .direct import DirectConfig, DirectPromptEncoder
from .mlp import MLPConfig, MLPPromptEncoder
from .lstm import LSTMConfig, LSTMPromptEncoder
from .prefix import (METHOD, Geometry, PrefixConfig, PrefixEncoder, PrefixKV, activations_kv, build_prefix_encoder,
                     model_geometry, peft_config_kwargs, prefix_encoder_from_spec)
from .prefix_view import NOT_IN_VOCAB_SPACE, format_prefix_norms, prefix_from_run, prefix_norm_table, prefix_norms

METHODS = registered_methods(INPUT_LAYER)         # ("direct", "mlp", "lstm"): the input-layer methods
ALL_METHODS = registered_methods()                # every registered method, "prefix" included
CONFIGS = {m: method_class(m).config_class for m in ALL_METHODS}


def check_method(method, allow_prefix: bool = False) -> str:
    """``method`` if it names a registered method (an input-layer one unless ``allow_prefix``), else an
    error with a suggestion."""
    return method_class(method, input_layer_only=not allow_prefix).method


def produces(method: str) -> str:
    """What a registered ``method`` produces: ``INPUT_LAYER`` or ``KEY_VALUE``."""
    return method_class(method).produces


def build_encoder(method: str, num_virtual_tokens: int, embedding: torch.Tensor | None = None, *,
                  init: str = "random", tokenize: Tokenize | None = None, seed: int = 0, config=None,
                  lm=None) -> PromptMethod:
    """A fresh prompt encoder of a registered ``method``.

    Input-layer methods: the initial output is ``initial_prompt(init, ...)`` (residual forms);
    ``embedding`` is the frozen ``(vocab, d)`` matrix (only the init rows are copied, the encoder
    holds no reference to it). ``config``: ``None`` (defaults), a dict of fields, or the method's
    dataclass. The encoder lives on ``embedding.device`` in float32; same seed, same encoder.
    ``method="prefix"`` (K/V prefixes at every layer) needs the frozen model ``lm`` instead.
    """
    cls = method_class(method)
    return cls.build(num_virtual_tokens, embedding=embedding, init=init, tokenize=tokenize, seed=seed,
                     config=config, lm=lm)


def encoder_from_config(spec: dict, hidden_size: int) -> PromptMethod:
    """An untrained encoder with the shapes of ``spec`` (from ``encoder.spec()``).

    For loading checkpoints: its weights are placeholders until ``load_state_dict``.
    ``hidden_size`` is the width d of the model the prompt is for and must match the spec's.
    """
    if not isinstance(spec, dict) or "method" not in spec or "num_virtual_tokens" not in spec:
        raise EncoderError("spec must be the dict from encoder.spec() (with 'method' and "
                           "'num_virtual_tokens'); save and load it as JSON next to the weights.")
    check_positive_int(hidden_size, "hidden_size", "pass the model width, e.g. lm.hidden_size.")
    if spec.get("hidden_size", hidden_size) != hidden_size:
        raise EncoderError(f"the encoder was saved for a model of width {spec['hidden_size']} but this "
                           f"model has width {hidden_size}; load it with the model it was trained on.")
    return method_class(spec["method"]).from_spec(spec, hidden_size)


__all__ = ["METHODS", "ALL_METHODS", "CONFIGS", "INPUT_LAYER", "KEY_VALUE", "INIT_FORMS", "EncoderError",
           "LayerPrompt", "PromptMethod", "PromptEncoder", "DirectConfig", "MLPConfig", "LSTMConfig", "PrefixConfig",
           "DirectPromptEncoder", "MLPPromptEncoder", "LSTMPromptEncoder", "PrefixEncoder", "PrefixKV", "Geometry",
           "METHOD", "NOT_IN_VOCAB_SPACE", "Tokenize", "build_encoder", "build_prefix_encoder", "check_method",
           "config_from_dict", "encoder_from_config", "initial_prompt", "parse_init", "produces", "stored_tensor",
           "activations_kv", "model_geometry", "peft_config_kwargs", "prefix_encoder_from_spec", "prefix_from_run",
           "prefix_norms", "prefix_norm_table", "format_prefix_norms"]
