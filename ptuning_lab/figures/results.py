"""Results across runs: the waywardness sweep and the ``compare`` summary bars."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .base import _METRIC_LABELS, _go, _subplots, color_for


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
