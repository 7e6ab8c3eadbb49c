"""Resumable training state: one verified checkpoint directory per step, and the settings a resume compares.

A trainer's checkpoint is ``state/step-000120/``: ``trainer.safetensors`` (weights, optimizer moments,
RNG, snapshots), ``trainer.json`` (counters, history, scheduler, the run's config) and
``manifest.json``, written last, naming each file with its size and sha256. The directory is
written under a temporary name and renamed into place, so it is there whole or not at all;
:func:`load_checkpoint` verifies it and falls back to the previous one when the latest is damaged.
:func:`config_differences` lists every setting that differs between a saved run and a resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .checkpoint import (FORMAT, STATE_DIR, CheckpointError, _fsync_dir, _json_bytes, _leftover, _tensors_from_bytes,
                         _write_bytes, clean_leftovers, crash_point, read_json, tensors_bytes)

MANIFEST, KEEP = "manifest.json", 2
_FILES = {"trainer.safetensors", "trainer.json", MANIFEST}
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_dirs(run_dir) -> list[tuple[int, Path]]:
    """The checkpoints of ``run_dir`` as (step, directory), newest first (named like ours; not verified)."""
    state = Path(run_dir) / STATE_DIR
    if not state.is_dir():
        return []
    found = [(int(m.group(1)), Path(e.path)) for e in os.scandir(state)
             if e.is_dir(follow_symlinks=False) and (m := _STEP_DIR.match(e.name))]
    return sorted(found, reverse=True)


def latest_checkpoint(run_dir) -> Path | None:
    """The newest checkpoint directory of ``run_dir`` (``state/step-NNNNNN``), or None."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[0][1] if dirs else None


def save_checkpoint(run_dir, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = KEEP) -> Path:
    """Write ``state/step-<step>/`` as one unit (see above); remove older checkpoints beyond ``keep``."""
    state = Path(run_dir) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    final = state / f"step-{step:06d}"
    blobs = {"trainer.safetensors": tensors_bytes(tensors, {"format": FORMAT, "step": str(step)}),
             "trainer.json": _json_bytes(meta)}
    manifest = {"format": FORMAT, "step": step,
                "files": {name: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for name, b in blobs.items()}}
    crash_point("mkdir checkpoint")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=state))
    try:
        for name, blob in blobs.items():
            _write_bytes(tmp / name, blob)
        _write_bytes(tmp / MANIFEST, _json_bytes(manifest))     # last: names every file, so a partial one is visible
        _fsync_dir(tmp)
        if final.exists():          # a damaged checkpoint of this step, skipped by the resume: set it aside
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", suffix=".tmp", dir=state))
            crash_point("rename old checkpoint aside")
            os.replace(final, aside / final.name)        # removed with the leftovers below
        crash_point("rename checkpoint")
        os.replace(tmp, final)
        _fsync_dir(state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(run_dir, keep, protect=final)
    clean_leftovers(run_dir)
    return final


def _prune(run_dir, keep: int, protect: Path) -> None:
    """Remove checkpoints beyond the newest ``keep`` (never ``protect``, never a directory holding other files)."""
    for _, old in checkpoint_dirs(run_dir)[keep:]:
        if old != protect and set(os.listdir(old)) <= _FILES:      # only ever remove what this module wrote
            crash_point("remove old checkpoint")
            shutil.rmtree(old)


def _verify(directory: Path) -> str | None:
    """What is wrong with a checkpoint directory, or None when every file matches its manifest."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        assert isinstance(files, dict) and set(files) == {"trainer.safetensors", "trainer.json"}
    except FileNotFoundError:
        return f"it has no {MANIFEST} (its writing was cut short)"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"its {MANIFEST} is damaged"
    for name, want in files.items():
        try:
            blob = (directory / name).read_bytes()
        except OSError:
            return f"{name} is missing"
        size = want.get("size") if isinstance(want, dict) else None
        if len(blob) != size:
            return f"{name} is damaged: it changed after it was written ({len(blob)} bytes, the manifest says {size})"
        if hashlib.sha256(blob).hexdigest() != want.get("sha256"):
            return f"{name} is damaged: it changed after it was written (its sha256 differs from the manifest's)"
    return None


def load_checkpoint(run_dir, check=None) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """The newest complete checkpoint of ``run_dir``: (tensors, trainer.json, directory).

    A damaged or incomplete checkpoint is skipped with a warning naming what is wrong, and the previous
    one is used; ``check(tensors, meta, path)`` may raise CheckpointError to reject one as well.
    Raises CheckpointError when no checkpoint can be used.
    """
    run_dir = Path(run_dir)
    problems = []
    for step, directory in checkpoint_dirs(run_dir):
        why = _verify(directory)
        if why is None:
            try:
                tensors = _tensors_from_bytes((directory / "trainer.safetensors").read_bytes(),
                                              directory / "trainer.safetensors")
                meta = read_json(directory / "trainer.json")
                if check is not None:
                    check(tensors, meta, directory)
            except CheckpointError as err:
                why = str(err)
        if why is None:
            _prune(run_dir, KEEP, protect=directory)           # a kill may have cut the last save's pruning short
            if problems:
                warnings.warn(f"skipped the damaged checkpoint(s) {'; '.join(problems)}; resuming from step {step} "
                              f"({directory}).", stacklevel=2)
            return tensors, meta, directory
        problems.append(f"{directory.relative_to(run_dir)}: {why}")
    if problems:
        raise CheckpointError(f"cannot resume {run_dir}: no usable checkpoint ({'; '.join(problems)}). Start a new "
                              "run (another --out, or --overwrite to replace this one) or restore it.")
    state = run_dir / STATE_DIR
    if (state / "trainer.json").exists():
        raise CheckpointError(f"{state} was written by an older ptuning_lab (no verified checkpoints): it cannot be "
                              "resumed safely. Start a new run (another --out, or --overwrite).")
    unfinished = sorted(e.name for e in os.scandir(state) if _leftover(e.name)) if state.is_dir() else []
    if unfinished:
        raise CheckpointError(f"nothing to resume in {run_dir}: its only checkpoint was never completed (the "
                              f"process stopped while writing {STATE_DIR}/{unfinished[0]}). Start the run again "
                              "without --resume (--overwrite replaces this directory, or choose another --out).")
    raise CheckpointError(f"nothing to resume in {run_dir}: it holds no checkpoint ({STATE_DIR}/step-*): the run stopped "
                          "before its first one, or trained without checkpoint_every. Start it again without --resume "
                          "(--overwrite replaces this directory), with --checkpoint-every K to make it resumable.")


def check_trainer_state(tensors: dict, meta: dict, path, total_steps: int, encoder_keys) -> None:
    """Refuse a checkpoint whose trainer.json or tensors do not hold what ``Trainer.load_state`` reads."""
    where = Path(path) / "trainer.json"
    kinds = {"step": int, "history": dict, "snapshot_steps": list, "best_step": int, "best_key": list,
             "best_dev": dict, "bad_evals": int, "scheduler": dict, "optimizer": dict, "config": dict}
    for key, kind in kinds.items():
        if key not in meta:
            raise CheckpointError(f"this run's trainer.json is damaged: it has no '{key}'; start a new run "
                              f"or restore it (file: {where}).")
        if isinstance(meta[key], bool) or not isinstance(meta[key], kind):
            raise CheckpointError(f"this run's trainer.json is damaged: '{key}' is "
                              f"{type(meta[key]).__name__}, not {kind.__name__}; start a new run or "
                              f"restore it (file: {where}).")
    if not 0 <= meta["step"] <= total_steps or f"step-{meta['step']:06d}" != Path(path).name:
        raise CheckpointError(f"this run's trainer.json is damaged: step {meta['step']} does not match "
                              f"{Path(path).name} of {total_steps} steps (file: {where}).")
    needed = {"rng", "snapshots"} | {f"current.{k}" for k in encoder_keys}
    missing = sorted(needed - set(tensors))
    snaps = tensors.get("snapshots")
    if missing or snaps is None or snaps.shape[0] != len(meta["snapshot_steps"]):
        raise CheckpointError(f"this run's trainer.safetensors does not belong to its trainer.json "
                              f"(missing {missing[:3]}, or {0 if snaps is None else snaps.shape[0]} snapshots "
                              f"for {len(meta['snapshot_steps'])} steps); start a new run or restore it.")
    for key in ("state_keys", "param_groups"):
        if key not in meta["optimizer"]:
            raise CheckpointError(f"this run's trainer.json is damaged: 'optimizer' has no '{key}' "
                              f"(file: {where}).")


# settings that do not change what a run computes: they may differ between a run and its resume
RESUME_MAY_DIFFER = {"train.checkpoint_every"}


def task_fingerprint(task) -> dict:
    """The identity of a task's data: split sizes and a sha256 of the template, answers and ordered splits.

    Another task file, data seed or ``max_examples`` changes it (they change which examples land where).
    """
    h = hashlib.sha256()
    h.update(json.dumps([task.template, task.kind, task.verbalizer, list(task.answers)], ensure_ascii=False).encode())
    for split in (task.train, task.dev, task.test):
        h.update(json.dumps([[ex.input, ex.target, ex.label] for ex in split], ensure_ascii=False).encode())
        h.update(b"\x00")
    return {"sizes": [len(task.train), len(task.dev), len(task.test)], "sha256": h.hexdigest()[:16]}


def config_differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """'<key> differs (saved X, now Y)' for every setting of two run configs that differs (nested keys dotted)."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        name = f"{prefix}{key}"
        a, b = saved.get(key, "(not recorded)"), now.get(key, "(not recorded)")
        if name in RESUME_MAY_DIFFER or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key != "task_data":
            out.extend(config_differences(a, b, f"{name}."))
        elif key == "task_data":
            out.append(f"the task's data differs (saved {_data(a)}, now {_data(b)}: another task file, data seed or "
                       "max examples)")
        else:
            out.append(f"{name} differs (saved {json.dumps(a, default=str)[:80]}, now {json.dumps(b, default=str)[:80]})")
    return out


def _data(fp) -> str:
    if not isinstance(fp, dict):
        return str(fp)
    return f"{'/'.join(map(str, fp.get('sizes', [])))} train/dev/test examples, sha256 {fp.get('sha256')}"


__all__ = ["MANIFEST", "KEEP", "checkpoint_dirs", "latest_checkpoint", "save_checkpoint", "load_checkpoint",
           "check_trainer_state", "task_fingerprint", "config_differences", "RESUME_MAY_DIFFER"]
