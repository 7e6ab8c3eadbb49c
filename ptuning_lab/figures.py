"""Figures: every plot of the course as a function that returns a ``plotly.graph_objects.Figure``.

Nothing here displays anything: a figure is data (``fig.data``, ``fig.frames``, ``fig.layout``),
so tests assert on it, :mod:`ptuning_lab.widgets` updates it in place, and
:mod:`ptuning_lab.report` embeds it in HTML. Show one in a notebook with ``fig.show()``; save it
with ``fig.write_html(...)`` or ``fig.write_image(...)`` (needs kaleido and a Chrome/Chromium).

=============================  ================================================================
:func:`vocab_map`              the 2-D vocabulary map with the prompts of one or several runs and
                               their trajectories over training; a slider and a play button step
                               through the snapshots; hover shows tokens and nearest tokens
:func:`training_curves`        training loss and a dev metric per method, mean +/- std over seeds
:func:`norm_distribution`      vocabulary norms vs the prompt vectors' norms
:func:`nn_cosine_distribution` best cosine to another token (vocabulary), to any token (random
                               vectors, prompts)
:func:`nearest_token_heatmap`  virtual token x rank, coloured by similarity, labelled by token
:func:`waywardness_sweep`      task accuracy and decoded-prompt F1 over the waywardness weight gamma
:func:`comparison_bars`        the ``compare`` summary: test metrics per task and method
=============================  ================================================================

"Runs" may be given as a :class:`ptuning_lab.checkpoint.Run`, a
:class:`ptuning_lab.trainer.TrainResult`, a ``(steps, snapshots (S, n, d))`` tuple or a single
prompt ``(n, d)``; "prompts" as a tensor ``(n, d)`` or anything with a ``.prompt``.
Colours follow the method named in a run's name (``"mlp-seed0"`` -> the MLP colour), so one
method has one colour in every figure.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .frozen_lm import readable_token


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
    if hasattr(obj, "snapshots") or hasattr(obj, "snapshot_steps"):
        snaps = getattr(obj, "snapshots", None)
        steps = list(getattr(obj, "snapshot_steps", None) or [])
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


# ============================================================================ 1. the vocabulary map
@dataclass
class RunOnMap:
    """A run placed on a map: ``coords`` (S, n, 2) and per-point hover text ``hover`` (S, n)."""

    trajectory: Trajectory
    coords: np.ndarray
    hover: list[list[str]]
    color: str

    @property
    def name(self) -> str:
        return self.trajectory.name


def place_runs(projection, runs: Mapping[str, Any], token_strings: Sequence[str] | None = None,
               embedding=None, k_hover: int = 3) -> list[RunOnMap]:
    """Put every snapshot of every run on the map, with hover text (and nearest tokens when ``embedding``)."""
    placed = []
    trajs = [as_trajectory(r, str(name)) for name, r in runs.items()]
    for i, tr in enumerate(trajs):
        S, n, d = tr.snapshots.shape
        coords = np.asarray(projection.transform(tr.snapshots), dtype=np.float64)    # (S, n, 2)
        near = None
        if embedding is not None and k_hover > 0:
            from .manifold import nearest_tokens

            table = nearest_tokens(tr.snapshots.reshape(S * n, d), embedding, token_strings, k=k_hover,
                                   metrics=("cosine",))
            tokens = table["token"].to_numpy().reshape(S, n, k_hover)
            scores = table["score"].to_numpy().reshape(S, n, k_hover)
            near = (tokens, scores)
        hover = []
        for s in range(S):
            row = []
            for j in range(n):
                text = f"<b>{tr.name}</b> [P]{j} · step {tr.steps[s]}"
                if near is not None:
                    text += "<br>nearest: " + ", ".join(f"{t} {c:.2f}" for t, c in zip(near[0][s, j], near[1][s, j]))
                row.append(text)
            hover.append(row)
        placed.append(RunOnMap(tr, coords, hover, color_for(tr.name, i)))
    return placed


def _frame_steps(placed: Sequence[RunOnMap]) -> list[int]:
    return sorted({s for p in placed for s in p.trajectory.steps})


def run_traces(p: RunOnMap, step: int) -> tuple[dict, dict]:
    """The (path, now) trace properties of a run at ``step``: trajectories so far, current positions."""
    idx = p.trajectory.index_at(step)
    n = p.trajectory.num_virtual_tokens
    # one polyline per virtual token, separated by NaN gaps: (n, idx + 2) -> flat
    seg = np.full((n, idx + 2, 2), np.nan)
    seg[:, : idx + 1] = p.coords[: idx + 1].transpose(1, 0, 2)
    path = {"x": seg[..., 0].ravel(), "y": seg[..., 1].ravel()}
    now = {"x": p.coords[idx, :, 0].copy(), "y": p.coords[idx, :, 1].copy(), "hovertext": p.hover[idx],
           "text": [str(j) for j in range(n)]}
    return path, now


def vocab_map(projection, runs: Mapping[str, Any] | None = None, token_strings: Sequence[str] | None = None,
              embedding=None, k_hover: int = 3, max_vocab_points: int = 3000, frame: int = -1,
              controls: bool = True, title: str | None = None):
    """The vocabulary map with the prompts of several runs and their trajectories over training.

    Args:
        projection: a fitted :class:`ptuning_lab.manifold.VocabProjection` (one map for every run,
            so MLP, LSTM and direct are comparable).
        runs: ``{name: Run | TrainResult | (steps, snapshots) | prompt}``; None draws the vocabulary only.
        token_strings: V decoded tokens (``lm.token_strings``): hover labels of the vocabulary and
            of the nearest tokens (the projection's own labels otherwise).
        embedding: (V, d) input embedding; when given, hovering a prompt vector lists its
            ``k_hover`` nearest tokens by cosine.
        max_vocab_points: draw at most this many vocabulary points (an evenly seeded sample).
        frame: which snapshot the figure shows before any interaction (-1: the last).
        controls: add the step slider and the play/pause buttons.
    Returns:
        A Figure. ``data[0]`` is the vocabulary (hover: token); then three traces per run, in the
        order of ``runs``: ``"<name> start"`` (the initial prompt, open circles), ``"<name> path"``
        (one line per virtual token up to the shown step) and ``"<name>"`` (the current vectors,
        labelled 0..n-1; hover: run, virtual token, step, nearest tokens). ``frames[f]`` (named
        ``str(f)``) updates the path and current traces to the f-th step of
        ``layout.meta["steps"]`` (the union of all runs' snapshot steps; a run shows its latest
        snapshot at or before that step).

    >>> fig = vocab_map(fit_projection(lm.embedding, lm.token_strings), {"mlp": result},
    ...                 lm.token_strings, lm.embedding)                  # doctest: +SKIP
    """
    go = _go()
    runs = runs or {}
    coords = np.asarray(projection.coords, dtype=np.float64)
    ids = np.asarray(projection.token_ids)
    labels = ([readable_token(token_strings[i]) for i in ids.tolist()] if token_strings is not None
              else list(projection.tokens))
    keep = np.arange(len(ids))
    if max_vocab_points is not None and len(ids) > max_vocab_points:
        keep = np.sort(np.random.default_rng(0).choice(len(ids), size=max_vocab_points, replace=False))
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=coords[keep, 0], y=coords[keep, 1], mode="markers", name=f"vocabulary ({len(keep)} tokens)",
        marker={"size": 4, "color": "rgba(120,120,120,0.35)"}, hovertext=[labels[i] for i in keep],
        customdata=ids[keep], hovertemplate="%{hovertext} (id %{customdata})<extra></extra>"))

    placed = place_runs(projection, runs, token_strings, embedding, k_hover)
    steps = _frame_steps(placed) or [0]
    shown = range(len(steps))[frame]
    for p in placed:
        path, now = run_traces(p, steps[shown])
        fig.add_trace(go.Scatter(
            x=p.coords[0, :, 0], y=p.coords[0, :, 1], mode="markers", name=f"{p.name} start", legendgroup=p.name,
            showlegend=False, marker={"size": 8, "symbol": "circle-open", "color": p.color, "line": {"width": 1.5}},
            hovertext=p.hover[0], hovertemplate="%{hovertext}<extra>start</extra>"))
        fig.add_trace(go.Scatter(
            **path, mode="lines", name=f"{p.name} path", legendgroup=p.name, showlegend=False,
            line={"color": p.color, "width": 1.5}, opacity=0.6, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            **now, mode="markers+text", name=p.name, legendgroup=p.name, textposition="top center",
            textfont={"size": 9, "color": p.color}, marker={"size": 11, "color": p.color,
                                                            "line": {"width": 1, "color": "white"}},
            hovertemplate="%{hovertext}<extra></extra>"))
    if placed:
        frames = []
        for f, step in enumerate(steps):
            data, traces = [], []
            for r, p in enumerate(placed):
                path, now = run_traces(p, step)
                data += [go.Scatter(**path), go.Scatter(**now)]
                traces += [2 + 3 * r, 3 + 3 * r]
            frames.append(go.Frame(name=str(f), data=data, traces=traces))
        fig.frames = frames

    method = getattr(projection, "method", "pca")
    evr = getattr(projection, "explained_variance_ratio", None)
    if method == "pca" and evr is not None:
        axes = [f"PC{i + 1} ({100 * evr[i]:.1f}% of variance)" for i in range(2)]
    else:
        axes = [f"{method.upper()} 1", f"{method.upper()} 2"]
    model = short_model_name(getattr(projection, "model_id", ""))
    # fixed ranges: an animation must not rescale the axes from frame to frame
    pts = [coords[keep]] + [p.coords.reshape(-1, 2) for p in placed]
    allpts = np.concatenate(pts)
    lo, hi = allpts.min(0), allpts.max(0)
    pad = 0.05 * np.maximum(hi - lo, 1e-9)
    fig.update_layout(
        title=title or f"Prompts on the vocabulary map ({method.upper()}, {model})",
        xaxis={"title": axes[0], "range": [lo[0] - pad[0], hi[0] + pad[0]], "zeroline": False},
        yaxis={"title": axes[1], "range": [lo[1] - pad[1], hi[1] + pad[1]], "zeroline": False},
        template="plotly_white", hovermode="closest", height=620, legend={"itemsizing": "constant"},
        meta={"steps": steps, "runs": [p.name for p in placed]})
    if controls and placed:
        fig.update_layout(
            sliders=[{"active": shown, "currentvalue": {"prefix": "step "}, "x": 0.14, "len": 0.86, "xanchor": "left",
                      "y": 0, "yanchor": "top", "pad": {"t": 50, "b": 10},
                      "steps": [{"label": str(s), "method": "animate",
                                 "args": [[str(f)], {"mode": "immediate", "frame": {"duration": 0, "redraw": False},
                                                     "transition": {"duration": 0}}]}
                                for f, s in enumerate(steps)]}],
            updatemenus=[{"type": "buttons", "direction": "down", "x": 0.12, "y": 0, "xanchor": "right",
                          "yanchor": "top", "pad": {"t": 60, "r": 10}, "showactive": False, "buttons": [
                              {"label": "▶ play", "method": "animate",
                               "args": [None, {"frame": {"duration": 250, "redraw": False}, "fromcurrent": False,
                                               "transition": {"duration": 100}}]},
                              {"label": "❚❚ pause", "method": "animate",
                               "args": [[None], {"mode": "immediate", "frame": {"duration": 0, "redraw": False},
                                                 "transition": {"duration": 0}}]}]}])
    return fig


# ============================================================================ 2. training curves
_METRIC_LABELS = {"dev_p_at_1": "dev P@1", "dev_loss": "dev loss", "train_loss": "train loss (per eval)",
                  "loss": "training loss", "test_p_at_1": "test P@1",
                  "test_candidate_accuracy": "test candidate accuracy"}


def _mean_band(series: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Align seeds by step: (steps, mean, std (sample, 0 for one seed), number of seeds at each step)."""
    import pandas as pd

    if not series:
        return (np.zeros(0),) * 4
    df = pd.concat(series, axis=1).sort_index()
    mean, count = df.mean(axis=1), df.count(axis=1)
    std = df.std(axis=1, ddof=1).fillna(0.0)
    return df.index.to_numpy(dtype=np.float64), mean.to_numpy(), std.to_numpy(), count.to_numpy()


def _series(records: Sequence[dict], key: str, smooth: int):
    import pandas as pd

    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
    if not pts:
        return None
    s = pd.Series([v for _, v in pts], index=[st for st, _ in pts], dtype=np.float64)
    s = s[~s.index.duplicated(keep="last")]
    return s.rolling(smooth, min_periods=1).mean() if smooth > 1 else s


def training_curve_data(histories: Sequence[Mapping], metric: str = "dev_p_at_1", smooth: int = 1) -> list[dict]:
    """The data of one method's four curve traces: ``[loss band, loss mean, metric band, metric mean]``.

    Each is ``{"x", "y"}`` (means also ``"customdata"``: (steps, 2) std and number of seeds), from
    the method's histories (one per seed). :func:`training_curves` draws them; a live view
    updates its traces with them without rebuilding the figure.
    """
    out = []
    for key, part, window in (("loss", "train", smooth), (metric, "eval", 1)):
        series = [_series(h.get(part, []), key, window) for h in histories]
        x, mean, std, count = _mean_band([s for s in series if s is not None])
        out.append({"x": np.concatenate([x, x[::-1]]), "y": np.concatenate([mean + std, (mean - std)[::-1]])})
        out.append({"x": x, "y": mean, "customdata": np.stack([std, count], axis=1) if len(x) else None})
    return out


def training_curves(histories: Mapping[str, Any], metric: str = "dev_p_at_1", smooth: int = 1):
    """Training loss (left) and a dev metric (right) per method: mean line and a +/- 1 std band over seeds.

    Args:
        histories: ``{method: [history, ...]}``, one ``history.json`` dict per seed (``{"train":
            [{step, loss, lr}], "eval": [{step, epoch, train_loss, dev_p_at_1, dev_loss}]}``); a
            single dict, Runs or TrainResults (their ``.history``) work too.
        metric: a key of the eval records (``dev_p_at_1``, ``dev_loss``, ``train_loss``).
        smooth: moving-average window over steps applied to each seed's training loss (1 = raw).
    Returns:
        A two-panel Figure with four traces per method, in order: loss band, loss mean, metric
        band, metric mean (a band is a closed polygon: mean + std forward, mean - std back). The
        seeds are aligned by step; with one seed the band has zero width. A method without data
        still has its four (empty) traces, so the figure's layout is stable while training.
    """
    go = _go()
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories must be a non-empty dict {method: [history dicts, one per seed]}, e.g. "
                         "{'mlp': [load_run(d).history for d in mlp_dirs]}.")
    if smooth < 1:
        raise ValueError(f"smooth must be a window of >= 1 steps, got {smooth}.")
    normalised = {str(m): _history_list(v) for m, v in histories.items()}
    keys = {k for hs in normalised.values() for h in hs for r in h.get("eval", []) for k in r}
    if keys and metric not in keys:
        raise ValueError(f"no eval record has the metric {metric!r}; available: {', '.join(sorted(keys - {'step'}))}.")
    label = _METRIC_LABELS.get(metric, metric)
    fig = _subplots(rows=1, cols=2, subplot_titles=("training loss", label), horizontal_spacing=0.1)
    for i, (method, hs) in enumerate(normalised.items()):
        color = color_for(method, i)
        data = training_curve_data(hs, metric, smooth)
        for col, what, (band, mean) in ((1, "loss", data[:2]), (2, label, data[2:])):
            fig.add_trace(go.Scatter(
                **band, fill="toself", fillcolor=_rgba(color, 0.18), line={"width": 0}, hoverinfo="skip",
                name=f"{method} ± std", legendgroup=method, showlegend=False), row=1, col=col)
            fig.add_trace(go.Scatter(
                **mean, mode="lines+markers" if col == 2 else "lines", name=method, legendgroup=method,
                showlegend=col == 1, line={"color": color, "width": 2}, marker={"size": 5},
                hovertemplate=f"{method} step %{{x}}: {what} %{{y:.3f}} ± %{{customdata[0]:.3f}} "
                              f"(%{{customdata[1]}} seeds)<extra></extra>"), row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text=label, row=1, col=2)
    fig.update_layout(template="plotly_white", height=420, title="Training curves (mean ± std over seeds)",
                      hovermode="closest")
    return fig


# ============================================================================ 3. distributions
def _prompts(prompts: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(prompts, Mapping):
        raise TypeError("prompts must be a dict {name: prompt (n, d) | Run | TrainResult}, e.g. {'mlp': run.prompt}.")
    return {str(k): prompt_of(v, f"prompt '{k}'") for k, v in prompts.items()}


def _strip_layout(fig, n_prompts: int, x_title: str, title: str):
    fig.update_xaxes(title_text=x_title, row=2, col=1)
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_yaxes(type="category", row=2, col=1, autorange="reversed")
    fig.update_layout(template="plotly_white", barmode="overlay", title=title, hovermode="closest",
                      height=420 + 22 * max(n_prompts - 3, 0))


def norm_distribution(stats, prompts: Mapping[str, Any]):
    """Histogram of the vocabulary's embedding norms (top) and each prompt's vector norms (bottom strip).

    Args:
        stats: the model's :class:`ptuning_lab.manifold.VocabStats` (``vocab_stats(lm.embedding, lm.name)``).
        prompts: ``{name: prompt (n, d) | Run | TrainResult}``.
    Returns:
        Figure: ``data[0]`` the vocabulary histogram (x = all V norms, probability density), then
        one strip trace per prompt (x = its n norms, y = its name; hover: virtual token, norm,
        ratio to the mean token norm, percentile among tokens). A dashed line marks the mean norm.
    """
    go = _go()
    ps = _prompts(prompts)
    fig = _subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.05)
    norms = np.asarray(stats.norms, dtype=np.float64)
    fig.add_trace(go.Histogram(x=norms, nbinsx=80, histnorm="probability density", name=f"vocabulary ({len(norms)})",
                               marker={"color": "rgba(120,120,120,0.6)"}), row=1, col=1)
    for i, (name, P) in enumerate(ps.items()):
        pn = np.linalg.norm(P.astype(np.float64), axis=1)
        pct = stats.norm_percentile(pn)
        hover = [f"<b>{name}</b> [P]{j}: |p| = {v:.3f} ({v / stats.mean_norm:.2f} × mean token norm, "
                 f"{q:.0f}th percentile)" for j, (v, q) in enumerate(zip(pn, pct))]
        fig.add_trace(go.Scatter(x=pn, y=[name] * len(pn), mode="markers", name=name, hovertext=hover,
                                 hovertemplate="%{hovertext}<extra></extra>",
                                 marker={"size": 10, "color": color_for(name, i), "symbol": "line-ns-open",
                                         "line": {"width": 2, "color": color_for(name, i)}}), row=2, col=1)
    fig.add_vline(x=stats.mean_norm, line_dash="dash", line_color="black", annotation_text="mean token norm",
                  row=1, col=1)
    _strip_layout(fig, len(ps), "L2 norm",
                  f"Vector lengths: vocabulary vs prompts ({short_model_name(stats.model_id)})")
    return fig


def nn_cosine_distribution(stats, prompts: Mapping[str, Any], embedding):
    """How close to a real token is "close"? Best-cosine distributions of tokens, random vectors and prompts.

    Args:
        stats: :class:`ptuning_lab.manifold.VocabStats` of the model.
        prompts: ``{name: prompt (n, d) | Run | TrainResult}``.
        embedding: (V, d) input embedding (the prompts' best cosine to ANY token is computed here).
    Returns:
        Figure: ``data[0]`` tokens' best cosine to another token (``stats.nn_cosine``),
        ``data[1]`` random vectors' best cosine to any token (``stats.random_best_cosine``), both
        as density histograms; then one strip trace per prompt (x = each virtual token's best
        cosine to any token; hover: the nearest token and the percentiles among tokens/random).
    """
    go = _go()
    from .manifold import nearest_tokens

    ps = _prompts(prompts)
    fig = _subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.05)
    fig.add_trace(go.Histogram(x=np.asarray(stats.nn_cosine, dtype=np.float64), nbinsx=80,
                               histnorm="probability density", name="token → nearest other token",
                               marker={"color": "rgba(120,120,120,0.6)"}), row=1, col=1)
    fig.add_trace(go.Histogram(x=np.asarray(stats.random_best_cosine, dtype=np.float64), nbinsx=60,
                               histnorm="probability density", name="random vector → nearest token",
                               marker={"color": "rgba(255,127,14,0.5)"}), row=1, col=1)
    for i, (name, P) in enumerate(ps.items()):
        table = nearest_tokens(P, embedding, None, k=1, metrics=("cosine",))
        best = table["score"].to_numpy()
        tokens = table["token_id"].tolist()
        hover = [f"<b>{name}</b> [P]{j}: best cosine {c:.3f} (token id {t}); above "
                 f"{stats.nn_cosine_percentile(c):.0f}% of tokens, {stats.random_cosine_percentile(c):.0f}% of random"
                 for j, (c, t) in enumerate(zip(best, tokens))]
        fig.add_trace(go.Scatter(x=best, y=[name] * len(best), mode="markers", name=name, hovertext=hover,
                                 hovertemplate="%{hovertext}<extra></extra>",
                                 marker={"size": 10, "color": color_for(name, i), "symbol": "line-ns-open",
                                         "line": {"width": 2, "color": color_for(name, i)}}), row=2, col=1)
    _strip_layout(fig, len(ps), "best cosine similarity to a token",
                  f"On the manifold? Nearest-token cosines ({short_model_name(stats.model_id)})")
    return fig


# ============================================================================ 4. nearest-token table
def nearest_token_heatmap(vectors, embedding, token_strings: Sequence[str] | None, k: int = 5,
                          metric: str = "cosine", word_like: bool = False, highlight: int | None = None,
                          title: str | None = None):
    """The nearest-token table as a heatmap: one row per virtual token, one column per rank.

    Args:
        vectors: prompt (n, d) (or a Run/TrainResult: its ``.prompt``).
        embedding: (V, d) input embedding.
        token_strings: V decoded tokens (cells show ids without them).
        k: ranks shown.
        metric: ``"cosine"``, ``"l2"`` (distance: the colour scale is reversed so nearer stays
            brighter) or ``"dot"``.
        word_like: only word-like tokens (see :func:`ptuning_lab.manifold.word_like_mask`).
        highlight: a virtual token whose row is outlined (the dashboard's selection).
    Returns:
        Figure with one Heatmap: ``z`` (n, k) scores, ``text`` (n, k) readable tokens, ``x`` ranks
        1..k, ``y`` ``"[P]0"``.. ``"[P]n-1"`` (top to bottom). ``layout.meta["token_ids"]`` (n, k).
    """
    go = _go()
    from .manifold import nearest_tokens

    P = prompt_of(vectors, "vectors")
    table = nearest_tokens(P, embedding, token_strings, k=k, metrics=(metric,), word_like=word_like)
    n = P.shape[0]
    z = table["score"].to_numpy().reshape(n, k)
    text = table["token"].to_numpy().reshape(n, k).tolist()
    ids = table["token_id"].to_numpy().reshape(n, k)
    rows = [f"[P]{j}" for j in range(n)]
    label = {"cosine": "cosine", "l2": "L2 distance", "dot": "dot product"}[metric]
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(r + 1) for r in range(k)], y=rows, text=text, texttemplate="%{text}", textfont={"size": 12},
        colorscale="Viridis", reversescale=metric == "l2", colorbar={"title": {"text": label}},
        customdata=ids, hovertemplate="%{y} rank %{x}: %{text} (id %{customdata})<br>" + label
                                      + " %{z:.3f}<extra></extra>"))
    fig.update_layout(template="plotly_white", title=title or f"Nearest tokens ({label})",
                      xaxis={"title": "rank", "side": "top"}, yaxis={"autorange": "reversed"},
                      height=170 + 38 * n, margin={"t": 120}, meta={"token_ids": ids.tolist()})
    set_heatmap_highlight(fig, highlight)
    return fig


def set_heatmap_highlight(fig, row: int | None) -> None:
    """Outline one row of a :func:`nearest_token_heatmap` (None: no outline)."""
    fig.layout.shapes = ()
    if row is not None:
        fig.add_shape(type="rect", xref="x domain", yref="y", x0=0, x1=1, y0=row - 0.5, y1=row + 0.5,
                      line={"color": "red", "width": 3})


# ============================================================================ 5. waywardness
def waywardness_sweep(rows: Sequence[Mapping[str, Any]]):
    """Task accuracy vs decoded-prompt F1 over the waywardness weight gamma (Khashabi et al., 2022).

    Args:
        rows: one dict per trained prompt: ``gamma``, ``accuracy`` (task metric), ``f1``
            (:func:`ptuning_lab.manifold.decoded_f1` of its decoded prompt vs the target text),
            optionally ``method`` (one line per method) -- several rows per gamma (seeds) are
            averaged, with their std as error bars.
    Returns:
        A two-panel Figure, three traces per method: accuracy vs gamma, F1 vs gamma (left; gamma
        as evenly spaced categories, since it is swept on a log scale that includes 0), and the
        trade-off accuracy vs F1, each point labelled with its gamma (right).
    """
    go = _go()
    import pandas as pd

    if not rows:
        raise ValueError("waywardness_sweep needs rows like {'gamma': 0.01, 'accuracy': 0.6, 'f1': 0.3}.")
    df = pd.DataFrame(list(rows))
    missing = {"gamma", "accuracy", "f1"} - set(df.columns)
    if missing:
        raise ValueError(f"each row needs gamma, accuracy and f1; missing {sorted(missing)}.")
    if "method" not in df.columns:
        df["method"] = "prompt"
    gammas = sorted(df["gamma"].astype(float).unique())
    cats = [f"{g:g}" for g in gammas]
    fig = _subplots(rows=1, cols=2, subplot_titles=("accuracy and decoded F1 vs γ", "trade-off"),
                    horizontal_spacing=0.12)
    for i, (method, g) in enumerate(df.groupby("method", sort=False)):
        color = color_for(str(method), i)
        agg = g.groupby("gamma").agg(acc=("accuracy", "mean"), acc_sd=("accuracy", "std"), f1=("f1", "mean"),
                                     f1_sd=("f1", "std")).reindex(gammas).dropna(subset=["acc"]).fillna(0.0)
        x = [f"{v:g}" for v in agg.index]
        fig.add_trace(go.Scatter(x=x, y=agg["acc"], error_y={"array": agg["acc_sd"]}, mode="lines+markers",
                                 name=f"{method} accuracy", line={"color": color}, legendgroup=str(method)),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=agg["f1"], error_y={"array": agg["f1_sd"]}, mode="lines+markers",
                                 name=f"{method} decoded F1", line={"color": color, "dash": "dash"},
                                 marker={"symbol": "square"}, legendgroup=str(method)), row=1, col=1)
        fig.add_trace(go.Scatter(x=agg["f1"], y=agg["acc"], mode="lines+markers+text", text=[f"γ={v}" for v in x],
                                 textposition="top right", name=f"{method} trade-off", showlegend=False,
                                 line={"color": color}, legendgroup=str(method),
                                 hovertemplate="γ=%{text}: F1 %{x:.3f}, accuracy %{y:.3f}<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=cats, title_text="γ (waywardness weight)",
                     row=1, col=1)
    fig.update_xaxes(title_text="decoded-prompt F1 vs the target text", row=1, col=2)
    fig.update_yaxes(title_text="score", row=1, col=1)
    fig.update_yaxes(title_text="task accuracy", row=1, col=2)
    fig.update_layout(template="plotly_white", height=420, title="Waywardness: does the prompt mean what it says?")
    return fig


# ============================================================================ 6. comparison
def comparison_bars(summary: Sequence[Mapping[str, Any]],
                    metrics: Sequence[str] = ("test_p_at_1", "test_candidate_accuracy")):
    """The ``compare`` summary as grouped bars: one panel per metric, x = task, one bar per method.

    Args:
        summary: rows of :func:`ptuning_lab.cli.summarize` (``task``, ``encoder``, ``seeds``, each
            metric and ``<metric>_std``), e.g. ``json.load(open("summary.json"))["summary"]``.
        metrics: the columns to plot; error bars are ``<metric>_std`` (0 when missing or NaN).
    Returns:
        Figure with ``len(methods) * len(metrics)`` Bar traces, method-major (``manual`` first).
    """
    go = _go()
    if not summary:
        raise ValueError("comparison_bars needs the summary rows of `ptuning-lab compare` (summary.json 'summary').")
    missing = [m for m in metrics if not any(m in r for r in summary)]
    if missing:
        raise ValueError(f"no summary row has {missing}; available: {sorted(set().union(*summary))}.")
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    methods = list(dict.fromkeys(r["encoder"] for r in summary))
    methods.sort(key=lambda m: m != "manual")
    fig = _subplots(rows=1, cols=len(metrics), subplot_titles=[_METRIC_LABELS.get(m, m) for m in metrics])
    for i, method in enumerate(methods):
        by_task = {r["task"]: r for r in summary if r["encoder"] == method}
        for c, metric in enumerate(metrics):
            ys, errs, hover = [], [], []
            for t in tasks:
                r = by_task.get(t, {})
                y = r.get(metric)
                sd = r.get(f"{metric}_std")
                ys.append(None if y is None or (isinstance(y, float) and math.isnan(y)) else y)
                errs.append(0.0 if sd is None or (isinstance(sd, float) and math.isnan(sd)) else sd)
                hover.append(f"{method} on {t}: {y if y is None else f'{y:.3f}'} ± {errs[-1]:.3f} "
                             f"({r.get('seeds', 1)} seed(s))")
            fig.add_trace(go.Bar(x=tasks, y=ys, error_y={"type": "data", "array": errs}, name=method,
                                 legendgroup=method, showlegend=c == 0, marker={"color": color_for(method, i)},
                                 hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"), row=1, col=c + 1)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(template="plotly_white", barmode="group", height=400,
                      title="Test metrics per method (mean ± std over seeds)")
    return fig


__all__ = [
    "METHOD_COLORS", "method_of", "color_for", "prompt_of", "Trajectory", "as_trajectory", "RunOnMap", "place_runs",
    "run_traces", "short_model_name", "vocab_map", "training_curve_data", "training_curves", "norm_distribution",
    "nn_cosine_distribution",
    "nearest_token_heatmap", "set_heatmap_highlight", "waywardness_sweep", "comparison_bars",
]
