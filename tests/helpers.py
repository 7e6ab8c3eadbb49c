"""Helpers shared by the tests (plain functions and constants; the fixtures live in conftest.py).

Test modules import them as ``from helpers import make_tiny_lm``: pytest puts tests/ on ``sys.path``.
"""
from __future__ import annotations

import torch

# a toy vocabulary (V random token vectors of width D, some long, some short) for the figure and widget tests
TOY_V, TOY_D = 300, 16


def make_tiny_lm(kind: str, tokenizer, dtype=torch.float32, seed: int = 0):
    """A tiny randomly initialised GPT-2 or Llama wrapped in FrozenLM."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from ptuning_lab.frozen_lm import FrozenLM

    torch.manual_seed(seed)
    V = len(tokenizer)
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                          intermediate_size=64, vocab_size=V, max_position_embeddings=128,
                          tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return FrozenLM(model.to(dtype), tokenizer, f"tiny-{kind}")


def word_tokenizer(texts):
    """A word-level tokenizer over the words of ``texts`` (no files: runs where no model is installed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>"] + sorted({w for t in texts for w in t.split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
