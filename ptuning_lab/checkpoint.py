"""Crash-safe run directories: tensors in safetensors, everything else in JSON, no pickle.

A run directory holds:
    config.json          what was trained: model, task, template, encoder spec, training config
    prompt.safetensors   the encoder weights ("encoder.*") AND the computed prompt ("prompt", (n, d))
    history.json         training curve and evaluations
    snapshots.safetensors  prompt snapshots over training: "prompts" (S, n, d), "steps" (S,)
    metrics.json         final metrics (written by the CLI)
    state/               what an exact resume needs: current weights, optimizer, RNG, counters

Every file is written to a temporary name and renamed into place, so a crash mid-write leaves the
previous version intact. Tensor files carry a sha256 of their data; a checkpoint under state/ is one
directory per step with a manifest (sizes and hashes), verified when a run resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

_HASH_KEY = "sha256"
STATE_DIR = "state"          # a run's checkpoints (ptuning_lab.resume)
FORMAT = "ptuning_lab/1"


class CheckpointError(ValueError):
    """A run directory is missing, partial, corrupt, or from another model; the message says what to do."""


# ---------------------------------------------------------------- crash injection (tests)
# PTUNING_LAB_CRASH_AT=n kills this process with SIGKILL at the n-th file operation of this module:
# tests/test_crash.py stops a training run at each step of a checkpoint in turn and checks the resume.
_OPS = [0]


def crash_point(what: str) -> None:
    at = os.environ.get("PTUNING_LAB_CRASH_AT")
    if not at:
        return
    _OPS[0] += 1
    if os.environ.get("PTUNING_LAB_CRASH_LOG"):
        with open(os.environ["PTUNING_LAB_CRASH_LOG"], "a") as fh:
            fh.write(f"{_OPS[0]} {what}\n")
    if _OPS[0] == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- atomic files
def _write_bytes(path: Path, blob: bytes) -> None:
    """Write and fsync (the caller renames: a file is never seen half-written under its real name)."""
    crash_point(f"write {path.name}")
    with open(path, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return                       # not every platform can open a directory; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_bytes(path, blob: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_bytes(Path(tmp), blob)
        crash_point(f"rename {path.name}")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode()


def write_json(path, obj) -> None:
    """Write JSON atomically."""
    _atomic_bytes(path, _json_bytes(obj))


def write_text(path, text: str) -> None:
    """Write a text file (e.g. a report) atomically."""
    _atomic_bytes(path, text.encode("utf-8"))


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file whose metadata holds the sha256 of its tensor data (safetensors has no checksum).

    The data block depends only on the tensors, so it is serialised once to hash it, then again with the
    hash in the header; :func:`read_tensors` recomputes it and refuses a file whose bytes changed.
    """
    # clone: a direct encoder's weight and its prompt share storage, which safetensors refuses
    clean = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.pop(_HASH_KEY, None)
    first = st_save(clean, metadata=meta or None)
    meta[_HASH_KEY] = hashlib.sha256(first[8 + int.from_bytes(first[:8], "little"):]).hexdigest()
    return st_save(clean, metadata=meta)


def write_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors with safetensors (contiguous CPU copies, a hash of the data in the header), atomically."""
    _atomic_bytes(path, tensors_bytes(tensors, metadata))


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def _damaged(path, what: str) -> CheckpointError:
    return CheckpointError(f"this run's {Path(path).name} is damaged: {what}; start a new run or restore it "
                           f"(file: {path}).")


def read_json(path, expect: type | None = dict):
    """Read a JSON file of a run (a dict unless ``expect`` says otherwise); CheckpointError when missing/damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run directory is partial or not a ptuning_lab run. "
                              "Train again or point to a complete run directory.")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, f"it is not valid JSON ({err})") from err
    if expect is not None and not isinstance(value, expect):
        raise _damaged(path, f"it holds a JSON {type(value).__name__}, not an object")
    return value


def _tensors_from_bytes(blob: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n]) if len(blob) >= 8 + n else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupt or truncated (unreadable safetensors header). Train again, or "
                              "resume from an earlier copy.")
    want = (header.get("__metadata__") or {}).get(_HASH_KEY)
    if want is not None and hashlib.sha256(blob[8 + n:]).hexdigest() != want:
        raise CheckpointError(f"{path} is corrupt: its tensor data does not match the sha256 stored when it "
                              "was written (bytes changed on disk). Train again, or resume from an earlier copy.")
    try:
        return st_load(blob)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({err}). Train again, or resume from an "
                              "earlier copy.") from err


def read_tensors(path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, checking the data hash :func:`write_tensors` stored (files without one load as is)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run directory is partial. Train again or point to a "
                              "complete run directory.")
    return _tensors_from_bytes(path.read_bytes(), path)


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


def _leftover(name: str) -> bool:
    """A temporary name of this module's writes (``.prompt.safetensors.x1y2.tmp``, ``.step-000010.ab.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def clean_leftovers(path) -> list[str]:
    """Remove temporary files/directories a killed writer left in run directory ``path`` (only ours)."""
    removed = []
    for where in (Path(path), Path(path) / STATE_DIR):
        if not where.is_dir():
            continue
        for entry in os.scandir(where):
            if not _leftover(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False) and where.name == STATE_DIR:
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
            removed.append(os.path.relpath(entry.path, path))
    return removed


def check_config(config, path) -> dict:
    """Refuse a config.json whose fields a run needs are missing or of the wrong type (hand-edited, truncated)."""
    def bad(what):
        return _damaged(path, what)

    if not isinstance(config, dict):
        raise bad(f"it holds a JSON {type(config).__name__}, not an object")
    for key in ("encoder", "hidden_size", "vocab_size"):
        if key not in config:
            raise CheckpointError(f"{path} lacks '{key}': not a ptuning_lab run, or written by an incompatible "
                                  "version. Train again.")
    encoder = config["encoder"]
    if not isinstance(encoder, dict):
        raise bad(f"'encoder' is {json.dumps(encoder)[:40]}, not an object like {{\"method\": \"mlp\", ...}}")
    if not isinstance(encoder.get("method"), str):
        raise bad(f"'encoder.method' is {json.dumps(encoder.get('method'))[:40]}, not a method name")
    for where, holder, key in (("", config, "hidden_size"), ("", config, "vocab_size"),
                               ("encoder.", encoder, "num_virtual_tokens"), ("encoder.", encoder, "prompt_width")):
        if key == "prompt_width" and key not in holder:
            continue
        value = holder.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"'{where}{key}' is {json.dumps(value)[:40]}, not a positive whole number")
    return config


def save_run(path, *, config: dict, encoder_state: dict, prompt: torch.Tensor, history: dict,
             snapshot_steps=None, snapshots: torch.Tensor | None = None) -> None:
    """Write (or update) a run directory; each file atomically, config.json last."""
    path = Path(path)
    tensors = {f"encoder.{k}": v for k, v in encoder_state.items()}
    tensors["prompt"] = prompt
    write_tensors(path / "prompt.safetensors", tensors, {"format": FORMAT})
    if snapshots is not None and len(snapshot_steps or []):
        if len(snapshot_steps) != snapshots.shape[0]:
            raise ValueError(f"{snapshots.shape[0]} snapshots but {len(snapshot_steps)} snapshot steps")
        write_tensors(path / "snapshots.safetensors",
                      {"prompts": snapshots, "steps": torch.tensor(list(snapshot_steps), dtype=torch.long)})
    write_json(path / "history.json", history)
    write_json(path / "config.json", config)          # last: its presence marks a complete run
    clean_leftovers(path)


def load_run(path) -> Run:
    """Load a run directory written by :func:`save_run` (clear errors when partial or corrupt)."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"load_run needs the path of a run directory (a str or Path), got "
                              f"{type(path).__name__}; e.g. load_run('runs/capital-mlp').")
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no run directory at {path}. Give the --out directory of a finished "
                              "`ptuning-lab train` run.")
    config = check_config(read_json(path / "config.json"), path / "config.json")
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
        if set(s) != {"prompts", "steps"} or s["prompts"].dim() != 3 or s["steps"].shape != s["prompts"].shape[:1]:
            raise _damaged(path / "snapshots.safetensors", "it does not hold one prompt per snapshot step")
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
