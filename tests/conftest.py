"""Shared fixtures: the embedded model, and tiny random GPT-2 / Llama models built locally.

The tiny models use the embedded model's byte-level BPE tokenizer (GPT-2 style), so the GPT-2 code
path is exercised without any download.
"""
import os

import pytest
import torch
from helpers import TOY_D, TOY_V, make_tiny_lm  # noqa: F401 (TOY_*: the toy-vocabulary fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def embedded_lm():
    from ptuning_lab.frozen_lm import FrozenLM

    return FrozenLM.load("smollm2-135m", verbose=False)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from ptuning_lab.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random GPT-2 and its tokenizer saved to disk, for ``--model PATH`` (one per test module)."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    make_tiny_lm("gpt2", tokenizer).model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(params=["gpt2", "llama"])
def tiny_lm(request, tokenizer):
    return make_tiny_lm(request.param, tokenizer)


# ---- a toy vocabulary (V random token vectors of width D, some long, some short) for the figure and widget tests


@pytest.fixture(scope="module")
def emb():
    g = torch.Generator().manual_seed(0)
    return torch.randn(TOY_V, TOY_D, generator=g) * torch.rand(TOY_V, 1, generator=g).add(0.3)


@pytest.fixture(scope="module")
def strings():
    return [(" w" if i % 2 else "tok") + str(i) for i in range(TOY_V)]


@pytest.fixture(scope="module")
def projection(emb, strings):
    from ptuning_lab import manifold

    return manifold.fit_projection(emb, strings, model_id="toy", subset=None, cache=False)


# ---- small models on a busy 2-core machine
@pytest.fixture
def one_torch_thread():
    """One intra-op thread: these models are small, and on a busy 2-core machine each op of a 2-thread
    pool waits for the other thread (measured: tiny models ~60x, the embedded model ~8x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gpt2(tokenizer):
    """A tiny random GPT-2 in float64, new for each test (some tests change the model they are given)."""
    return make_tiny_lm("gpt2", tokenizer, dtype=torch.float64)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm64(request, tokenizer):
    """A tiny random GPT-2 and Llama in float64 (exact comparisons)."""
    return make_tiny_lm(request.param, tokenizer, dtype=torch.float64)
