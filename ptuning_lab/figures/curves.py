"""Training curves: loss and a dev metric per method, mean +/- std over seeds."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .base import _METRIC_LABELS, _go, _history_list, _rgba, _subplots, color_for


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
