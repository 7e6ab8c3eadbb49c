"""Transformers key/value caches: read the per-layer keys/values out of one, build a fresh one.

Each transformers release keeps a cache's tensors under other names (``cache.layers`` from 4.56,
``key_cache``/``value_cache`` in 4.36-4.55, tuples before); this module is the one place that
knows. Prefix tuning (``ptuning_lab.prompts.prefix``) and the fast path (``ptuning_lab.fast``) use it.
"""
from __future__ import annotations

from typing import Iterable

import torch


def layer_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(keys, values)``, each ``(B, heads, T, head_dim)``, from a cache of any release."""
    if hasattr(cache, "layers"):                                   # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):                                # transformers 4.36 - 4.55
        return list(zip(cache.key_cache, cache.value_cache))
    return [(kv[0], kv[1]) for kv in cache]                        # legacy tuples


def make_cache(layers: Iterable[tuple[torch.Tensor, torch.Tensor]], config=None):
    """A fresh ``DynamicCache`` holding ``layers``: per layer ``(keys, values)``, each ``(B, heads, K, head_dim)``.

    ``config`` (the model's config) lets recent releases choose each layer's cache type from it.
    """
    from transformers import DynamicCache

    if config is None:
        cache = DynamicCache()
    else:
        try:
            cache = DynamicCache(config=config)
        except TypeError:             # transformers < 4.56: no per-layer types from the config
            cache = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache


def output_cache(out, cache_arg: str):
    """The cache a model's forward returned (``out.<cache_arg>``, else ``out.past_key_values``)."""
    cache = getattr(out, cache_arg, None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise RuntimeError("the model returned no key/value cache")
    return cache


def has_dynamic_cache() -> bool:
    """Whether this transformers release has ``DynamicCache`` (every release the lab supports does)."""
    try:
        from transformers import DynamicCache  # noqa: F401
    except ImportError:                      # pragma: no cover - very old transformers
        return False
    return True


def unsupported_reason(model) -> str | None:
    """Why the fast path cannot reuse ``model``'s keys/values (None when it can)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported by the fast path"
    if not has_dynamic_cache():             # pragma: no cover - very old transformers
        return "this transformers release has no DynamicCache"
    return None
