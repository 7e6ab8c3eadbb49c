"""Distributions: vector norms and nearest-token cosines of prompts against the vocabulary's baselines."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import _go, _subplots, color_for, prompt_of, short_model_name


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
    from ..manifold import nearest_tokens

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
