"""Crash-safe run directories: tensors in safetensors, everything else in JSON, no pickle.

A run directory holds:
    config.json          what was trained: model, task, template, encoder spec, training config
    prompt.safetensors   the encoder weights ("encoder.*") AND the computed prompt ("prompt", (n, d))
    history.json         training curve and evaluations
    snapshots.safetensors  prompt snapshots over training: "prompts" (S, n, d), "steps" (S,)
    metrics.json         final metrics (written by the CLI)
    state/               what an exact resume needs: current weights, optimizer, RNG, counters

Every file is written to a temporary name and renamed into place, so a crash mid-write leaves the
previous version intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A run directory is missing, partial, corrupt, or from another model; the message says what to do."""


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> None:
    """Write JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_text(path, text: str) -> None:
    """Write a text file (e.g. a report) atomically."""
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors with safetensors, atomically (contiguous CPU copies)."""
    # clone: a direct encoder's weight and its prompt share storage, which safetensors refuses
    clean = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run directory is partial or not a ptuning_lab run. "
                              "Train again or point to a complete run directory.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); the run cannot be loaded. Train again, or resume "
                              "from an earlier copy.") from err


def read_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run directory is partial. Train again or point to a "
                              "complete run directory.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({err}). Train again, or resume from an "
                              "earlier copy.") from err


@dataclass
class Run:
    """A loaded run: its config, prompt (n, d), encoder weights, history and snapshots."""

    path: Path
    config: dict
    prompt: torch.Tensor
    encoder_state: dict[str, torch.Tensor]
    history: dict = field(default_factory=dict)
    snapshot_steps: list[int] = field(default_factory=list)
    snapshots: torch.Tensor | None = None          # (S, n, d)
    metrics: dict = field(default_factory=dict)

    def encoder(self):
        """Rebuild the trained prompt encoder (weights loaded, eval mode)."""
        from .prompts import encoder_from_config

        enc = encoder_from_config(self.config["encoder"], self.config["hidden_size"])
        enc.load_state_dict(self.encoder_state)
        return enc.eval()

    def check_model(self, lm) -> None:
        """Refuse a model whose vocabulary size or width differs from the one the run was trained on."""
        want_v, want_d = self.config.get("vocab_size"), self.config.get("hidden_size")
        if (want_v, want_d) != (lm.vocab_size, lm.hidden_size):
            raise CheckpointError(
                f"the run at {self.path} was trained on model '{self.config.get('model')}' (vocab {want_v}, "
                f"width {want_d}) but the loaded model '{lm.name}' has vocab {lm.vocab_size}, width "
                f"{lm.hidden_size}. Load it with --model {self.config.get('model')}.")


def save_run(path, *, config: dict, encoder_state: dict, prompt: torch.Tensor, history: dict,
             snapshot_steps=None, snapshots: torch.Tensor | None = None) -> None:
    """Write (or update) a run directory; each file atomically."""
    path = Path(path)
    tensors = {f"encoder.{k}": v for k, v in encoder_state.items()}
    tensors["prompt"] = prompt
    write_tensors(path / "prompt.safetensors", tensors, {"format": "ptuning_lab/1"})
    if snapshots is not None and len(snapshot_steps or []):
        write_tensors(path / "snapshots.safetensors",
                      {"prompts": snapshots, "steps": torch.tensor(list(snapshot_steps), dtype=torch.long)})
    write_json(path / "history.json", history)
    write_json(path / "config.json", config)          # last: its presence marks a complete run


def load_run(path) -> Run:
    """Load a run directory written by :func:`save_run` (clear errors when partial or corrupt)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no run directory at {path}. Give the --out directory of a finished "
                              "`ptuning-lab train` run.")
    config = read_json(path / "config.json")
    for key in ("encoder", "hidden_size", "vocab_size"):
        if key not in config:
            raise CheckpointError(f"{path / 'config.json'} lacks '{key}': not a ptuning_lab run, or written "
                                  "by an incompatible version. Train again.")
    tensors = read_tensors(path / "prompt.safetensors")
    if "prompt" not in tensors:
        raise CheckpointError(f"{path / 'prompt.safetensors'} has no 'prompt' tensor: the checkpoint is partial.")
    n, d = config["encoder"]["num_virtual_tokens"], config["hidden_size"]
    d = config["encoder"].get("prompt_width", d)   # K/V prefixes store (n, layers * 2 * kv width); see prompts/prefix.py
    if tuple(tensors["prompt"].shape) != (n, d):
        raise CheckpointError(f"the stored prompt has shape {tuple(tensors['prompt'].shape)} but config.json "
                              f"says ({n}, {d}): the run directory mixes two runs. Train again.")
    encoder_state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    history = read_json(path / "history.json") if (path / "history.json").exists() else {}
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    steps, snaps = [], None
    if (path / "snapshots.safetensors").exists():
        s = read_tensors(path / "snapshots.safetensors")
        steps, snaps = s["steps"].tolist(), s["prompts"]
    return Run(path, config, tensors["prompt"], encoder_state, history, steps, snaps, metrics)


# ---------------------------------------------------------------- resume state
def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a torch optimizer state_dict into safetensors-able tensors and a JSON part."""
    tensors, meta = {}, {"param_groups": state["param_groups"], "state_keys": {}}
    for idx, entry in state["state"].items():
        meta["state_keys"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{key}"] = value
                meta["state_keys"][str(idx)][key] = "tensor"
            else:
                meta["state_keys"][str(idx)][key] = value
    return tensors, meta


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for idx, keys in meta["state_keys"].items():
        state[int(idx)] = {k: (tensors[f"opt.{idx}.{k}"] if v == "tensor" else v) for k, v in keys.items()}
    return {"state": state, "param_groups": meta["param_groups"]}
