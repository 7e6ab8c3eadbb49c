"""The nearest-token table as a heatmap: one row per virtual token, one column per rank."""
from __future__ import annotations

from typing import Sequence

from .base import _go, prompt_of


def colour_range(metric: str, embedding) -> tuple[float, float]:
    """The fixed colour range of a metric, so a figure's brightness means the same in every figure.

    cosine: [0, 1] (a real token's own row is 1); l2: [0, 2 x the mean token norm]; dot:
    [-m^2, m^2] with m the mean token norm. ``embedding``: (V, d) or a VocabIndex.
    """
    if metric == "cosine":
        return 0.0, 1.0
    from ..manifold import vocab_index

    m = float(vocab_index(embedding).norms.float().mean())
    return (0.0, 2.0 * m) if metric == "l2" else (-m * m, m * m)


def nearest_token_heatmap(vectors, embedding, token_strings: Sequence[str] | None, k: int = 5,
                          metric: str = "cosine", word_like: bool = False, highlight: int | None = None,
                          title: str | None = None, stats=None):
    """The nearest-token table as a heatmap: one row per virtual token, one column per rank.

    The colour scale is fixed per metric (:func:`colour_range`): a prompt far from every token
    looks dark instead of being stretched to the full scale. With ``stats`` (the model's
    :class:`~ptuning_lab.manifold.VocabStats`) each row also shows its baseline, the percent of
    random vectors of the same norm that are no nearer to their nearest token
    (:func:`~ptuning_lab.manifold.decoding_baseline`), and the title says when decoding is not
    meaningful (no row nearer than 95% of random vectors).

    Args:
        vectors: prompt (n, d) (or a Run/TrainResult: its ``.prompt``).
        embedding: (V, d) input embedding.
        token_strings: V decoded tokens (cells show ids without them).
        k: ranks shown.
        metric: ``"cosine"``, ``"l2"`` (distance: the colour scale is reversed so nearer stays
            brighter) or ``"dot"``.
        word_like: only word-like tokens (see :func:`ptuning_lab.manifold.word_like_mask`).
        highlight: a virtual token whose row is outlined (the dashboard's selection).
        stats: VocabStats for the baselines (None: no baselines).
    Returns:
        Figure with one Heatmap: ``z`` (n, k) scores, ``text`` (n, k) readable tokens, ``x`` ranks
        1..k, ``y`` ``"[P]0"``.. ``"[P]n-1"`` (top to bottom), ``zmin``/``zmax`` fixed.
        ``layout.meta["token_ids"]`` (n, k); with ``stats`` also ``layout.meta["random_percentile"]``
        (n,) and ``layout.meta["meaningful"]`` (n,) and one annotation per row.
    """
    go = _go()
    from ..manifold import nearest_tokens

    P = prompt_of(vectors, "vectors")
    table = nearest_tokens(P, embedding, token_strings, k=k, metrics=(metric,), word_like=word_like)
    n = P.shape[0]
    z = table["score"].to_numpy().reshape(n, k)
    text = table["token"].to_numpy().reshape(n, k).tolist()
    ids = table["token_id"].to_numpy().reshape(n, k)
    rows = [f"[P]{j}" for j in range(n)]
    label = {"cosine": "cosine", "l2": "L2 distance", "dot": "dot product"}[metric]
    zmin, zmax = colour_range(metric, embedding)
    meta = {"token_ids": ids.tolist()}
    heading = title or f"Nearest tokens ({label})"
    if stats is not None:
        from ..manifold import decoding_baseline

        base = decoding_baseline(P, embedding, stats, metric=metric)
        meta.update(random_percentile=base.random_percentile.tolist(), meaningful=base.meaningful.tolist())
        verdict = ("decoding not meaningful: no row is nearer than 95% of random vectors" if not base.n_meaningful
                   else f"{base.n_meaningful} of {n} rows nearer than 95% of random vectors")
        heading += f"<br><sub>{verdict} (random median {float(base.random_median[0]):.2f})</sub>"
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(r + 1) for r in range(k)], y=rows, text=text, texttemplate="%{text}", textfont={"size": 12},
        zmin=zmin, zmax=zmax,
        colorscale="Viridis", reversescale=metric == "l2", colorbar={"title": {"text": label}, "x": 1.18},
        customdata=ids, hovertemplate="%{y} rank %{x}: %{text} (id %{customdata})<br>" + label
                                      + " %{z:.3f}<extra></extra>"))
    fig.update_layout(template="plotly_white", title=heading,
                      xaxis={"title": "rank", "side": "top"}, yaxis={"autorange": "reversed"},
                      height=170 + 38 * n, margin={"t": 120, "r": 150}, meta=meta)
    if stats is not None:
        for j, pct in enumerate(base.random_percentile):
            fig.add_annotation(x=1.01, xref="paper", y=rows[j], yref="y", xanchor="left", showarrow=False,
                               text=f"{pct:.0f}% of random", font={"color": "black" if base.meaningful[j] else "grey"})
    set_heatmap_highlight(fig, highlight)
    return fig


def set_heatmap_highlight(fig, row: int | None) -> None:
    """Outline one row of a :func:`nearest_token_heatmap` (None: no outline)."""
    fig.layout.shapes = ()
    if row is not None:
        fig.add_shape(type="rect", xref="x domain", yref="y", x0=0, x1=1, y0=row - 0.5, y1=row + 0.5,
                      line={"color": "red", "width": 3})
