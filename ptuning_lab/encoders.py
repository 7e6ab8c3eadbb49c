"""Compatibility: the input-layer prompt encoders now live in :mod:`ptuning_lab.prompts` (one file per method).

``from ptuning_lab.encoders import build_encoder`` and ``pl.encoders.initial_prompt`` keep working;
new code imports from ``ptuning_lab.prompts``.
"""
from .prompts import (CONFIGS, INIT_FORMS, METHODS, DirectConfig, DirectPromptEncoder, EncoderError, LSTMConfig,
                      LSTMPromptEncoder, MLPConfig, MLPPromptEncoder, PromptEncoder, Tokenize, build_encoder,
                      check_method, config_from_dict, encoder_from_config, initial_prompt, parse_init)

__all__ = ["METHODS", "EncoderError", "DirectConfig", "MLPConfig", "LSTMConfig", "PromptEncoder",
           "DirectPromptEncoder", "MLPPromptEncoder", "LSTMPromptEncoder", "parse_init",
           "initial_prompt", "build_encoder", "encoder_from_config", "check_method", "config_from_dict",
           "CONFIGS", "INIT_FORMS", "Tokenize"]
