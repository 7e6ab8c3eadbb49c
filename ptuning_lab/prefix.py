"""Compatibility: prefix tuning now lives in :mod:`ptuning_lab.prompts.prefix` (the method) and
:mod:`ptuning_lab.prompts.prefix_view` (what can be shown of it).

``from ptuning_lab.prefix import PrefixKV`` keeps working; new code imports from ``ptuning_lab.prompts``.
"""
from .prompts import (METHOD, NOT_IN_VOCAB_SPACE, Geometry, PrefixConfig, PrefixEncoder, PrefixKV, activations_kv,
                      build_prefix_encoder, format_prefix_norms, model_geometry, peft_config_kwargs,
                      prefix_encoder_from_spec, prefix_from_run, prefix_norm_table, prefix_norms)

__all__ = ["METHOD", "NOT_IN_VOCAB_SPACE", "PrefixConfig", "Geometry", "PrefixKV", "PrefixEncoder",
           "activations_kv", "model_geometry", "build_prefix_encoder", "prefix_encoder_from_spec",
           "prefix_from_run", "peft_config_kwargs", "prefix_norms", "prefix_norm_table", "format_prefix_norms"]
