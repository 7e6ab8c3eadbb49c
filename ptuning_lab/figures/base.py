"""What every figure shares: the plotly import, one colour per method, and turning runs into arrays.

"Runs" may be given as a :class:`ptuning_lab.checkpoint.Run`, a
:class:`ptuning_lab.trainer.TrainResult` (both are :class:`RunLike`), a ``(steps, snapshots
(S, n, d))`` tuple or a single prompt ``(n, d)``; "prompts" as a tensor ``(n, d)`` or anything
with a ``.prompt``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch


def _go():
    try:
        import plotly.graph_objects as go
    except ImportError as err:  # pragma: no cover - plotly ships with the viz extra
        raise ImportError("ptuning_lab.figures draws with plotly: pip install 'ptuning_lab[viz]' "
                          "(or pip install plotly).") from err
    return go


def _subplots(**kwargs):
    from plotly.subplots import make_subplots

    return make_subplots(**kwargs)


# ============================================================================ colours
METHOD_COLORS = {"manual": "#7f7f7f", "mlp": "#1f77b4", "lstm": "#d62728", "direct": "#2ca02c",
                 "prefix": "#9467bd"}
# for names that carry no known method: plotly's default sequence minus the method colours
_OTHER_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#636efa", "#00cc96", "#ab63fa")


def method_of(name: str) -> str | None:
    """The method a run name refers to: ``"mlp-seed0"`` -> ``"mlp"``, ``"capital/lstm"`` -> ``"lstm"``."""
    parts = re.split(r"[^a-z0-9]+", str(name).lower())
    return next((p for p in parts if p in METHOD_COLORS), None)


def color_for(name: str, i: int = 0) -> str:
    """The colour of a run or method: the method's colour when the name has one, else the i-th other colour."""
    method = method_of(name)
    return METHOD_COLORS[method] if method else _OTHER_COLORS[i % len(_OTHER_COLORS)]


def short_model_name(model_id) -> str:
    """A model name fit for a title: a local path shows its last folder, a hub id stays as it is."""
    text = str(model_id or "")
    return text.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] if text.startswith(("/", ".", "~")) else text


def _rgba(color: str, alpha: float) -> str:
    h = color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# ============================================================================ inputs
def _numpy(x, name: str) -> np.ndarray:
    """A float32 COPY: a trainer's prompt may share storage with a parameter that keeps training."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32, copy=True).numpy()
    try:
        return np.array(x, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or an array, got {type(x).__name__}.") from err


def prompt_of(obj, name: str = "prompt") -> np.ndarray:
    """A prompt (n, d) from a tensor/array, or from anything with ``.prompt`` (Run, TrainResult)."""
    X = _numpy(getattr(obj, "prompt", obj), name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be one prompt of shape (n, d), got shape {X.shape}; pass run.prompt "
                         f"(for training snapshots (S, n, d) use vocab_map).")
    return X


@runtime_checkable
class RunLike(Protocol):
    """A run with a prompt history: :class:`ptuning_lab.checkpoint.Run` and :class:`ptuning_lab.trainer.TrainResult` are.

    ``snapshots``: (S, n, d), None or empty when the run kept none (its ``.prompt`` (n, d) is
    shown instead); ``snapshot_steps``: the S training steps.
    """

    snapshots: torch.Tensor | None
    snapshot_steps: Sequence[int]


@dataclass
class Trajectory:
    """A run's prompt over training: ``snapshots`` (S, n, d) at ``steps`` (S,)."""

    name: str
    steps: list[int]
    snapshots: np.ndarray

    @property
    def num_virtual_tokens(self) -> int:
        return self.snapshots.shape[1]

    def index_at(self, step: int) -> int:
        """Index of the latest snapshot taken at or before ``step`` (the first one before training)."""
        return max(0, int(np.searchsorted(self.steps, step, side="right")) - 1)


def as_trajectory(obj, name: str = "run") -> Trajectory:
    """Normalise a run: Run/TrainResult (``snapshot_steps``, ``snapshots``), ``(steps, snapshots)``, or a tensor.

    A run saved without snapshots counts as one snapshot (its final prompt); a bare (S, n, d)
    tensor gets steps 0..S-1 and a bare (n, d) prompt step 0.
    """
    if isinstance(obj, Trajectory):
        return obj if obj.name == name else Trajectory(name, obj.steps, obj.snapshots)
    if isinstance(obj, RunLike):
        snaps = obj.snapshots
        steps = list(obj.snapshot_steps or [])
        if snaps is None or (isinstance(snaps, torch.Tensor) and snaps.numel() == 0) or not steps:
            if getattr(obj, "prompt", None) is None:
                raise ValueError(f"run '{name}' has neither snapshots nor a prompt to show.")
            step = int(getattr(obj, "best_step", 0) or 0)
            return Trajectory(name, [step], prompt_of(obj, name)[None])
        X = _numpy(snaps, f"the snapshots of '{name}'")
    elif isinstance(obj, tuple) and len(obj) == 2:
        steps, X = [int(s) for s in obj[0]], _numpy(obj[1], f"the snapshots of '{name}'")
    else:
        X = _numpy(obj, f"run '{name}'")
        if X.ndim == 2:
            X = X[None]
        steps = list(range(X.shape[0])) if X.ndim == 3 else []
    if X.ndim != 3:
        raise ValueError(f"run '{name}': snapshots must be (S, n, d), got shape {X.shape}; pass a Run, a "
                         f"TrainResult, (run.snapshot_steps, run.snapshots) or a prompt (n, d).")
    steps = [int(s) for s in steps]
    if len(steps) != X.shape[0]:
        raise ValueError(f"run '{name}': {len(steps)} steps for {X.shape[0]} snapshots; pass "
                         f"(run.snapshot_steps, run.snapshots) together.")
    if any(b < a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"run '{name}': snapshot steps must be in training order, got {steps}.")
    return Trajectory(name, steps, X)


def _history_list(value) -> list[dict]:
    """One method's histories: a list of history dicts, one dict, or Runs/TrainResults (``.history``)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for h in items:
        h = getattr(h, "history", h)
        if not isinstance(h, Mapping):
            raise TypeError(f"a history must be a dict with 'train' and 'eval' lists (history.json, run.history), "
                            f"got {type(h).__name__}.")
        out.append(h)
    return out


_METRIC_LABELS = {"dev_p_at_1": "dev P@1", "dev_loss": "dev loss", "train_loss": "train loss (per eval)",
                  "loss": "training loss", "test_p_at_1": "test P@1",
                  "test_candidate_accuracy": "test candidate accuracy"}
