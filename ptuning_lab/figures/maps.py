"""The vocabulary map: prompts of several runs and their trajectories over training, on one 2-D map."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..frozen_lm import readable_token
from .base import Trajectory, _go, as_trajectory, color_for, short_model_name


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
            from ..manifold import nearest_tokens

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


def point_labels(xy: np.ndarray, decimals: int = 6) -> list[str]:
    """Marker labels of n points (n, 2): ``"j"``, or ``"3,4,5"`` on the first of points drawn at one place.

    Virtual tokens that start as the same word (``"is is is"``) coincide; one label naming all of
    them says so instead of three markers hiding each other. The others get ``""``.
    """
    keys = [tuple(np.round(np.asarray(p, dtype=np.float64), decimals)) for p in xy]
    first: dict = {}
    for j, key in enumerate(keys):
        first.setdefault(key, []).append(j)
    return [",".join(map(str, first[key])) if first[key][0] == j else "" for j, key in enumerate(keys)]


def _vocab_labels(labels: Sequence[str], ids: np.ndarray, keep: np.ndarray, token_strings, count: int) -> list[int]:
    """Up to ``count`` positions of ``keep`` worth a text label: word-like tokens, most common first.

    BPE gives its earliest merges (frequent words) the smallest ids, so the smallest word-like ids are
    words a reader recognises.
    """
    if count <= 0 or token_strings is None:
        return []
    from ..manifold import word_like_mask

    word = word_like_mask(token_strings, min_length=3)
    order = keep[np.argsort(ids[keep], kind="stable")]
    return [int(i) for i in order if word[ids[i]]][:count]


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
           "text": point_labels(p.coords[idx])}
    return path, now


def vocab_map(projection, runs: Mapping[str, Any] | None = None, token_strings: Sequence[str] | None = None,
              embedding=None, k_hover: int = 3, max_vocab_points: int = 3000, frame: int = -1,
              controls: bool = True, title: str | None = None, label_tokens: int = 40):
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
        label_tokens: write this many vocabulary tokens on the map (common word-like ones, as
            annotations; needs ``token_strings``); 0: hover only.
    Returns:
        A Figure. ``data[0]`` is the vocabulary (hover: token); then three traces per run, in the
        order of ``runs``: ``"<name> start"`` (the initial prompt, open circles), ``"<name> path"``
        (one line per virtual token up to the shown step) and ``"<name>"`` (the current vectors,
        labelled 0..n-1, points at one place labelled once: ``"3,4,5"``; hover: run, virtual
        token, step, nearest tokens). ``frames[f]`` (named
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

    for i in _vocab_labels(labels, ids, keep, token_strings, label_tokens):
        fig.add_annotation(x=coords[i, 0], y=coords[i, 1], text=labels[i], showarrow=False,
                           font={"size": 9, "color": "rgba(60,60,60,0.8)"})
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
