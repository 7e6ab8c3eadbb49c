"""The nearest-token table as a heatmap: one row per virtual token, one column per rank."""
from __future__ import annotations

from typing import Sequence

from .base import _go, prompt_of


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
    from ..manifold import nearest_tokens

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
