"""The live training view: a trainer callback that redraws curves and the map at most once per ``every_s`` seconds."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from .. import figures as F
from ..trainer import Callback
from .view import DATA_KEYS, FigureView, _ipywidgets


def _is_fraction(metric: str) -> bool:
    """P@1 and accuracies lie in [0, 1]; a loss does not."""
    return "p_at_1" in metric or "accuracy" in metric


class LiveTrainingView(Callback):
    """Live training curves (and the prompt on the vocabulary map) while ``Trainer.fit`` runs.

    Pass it in ``callbacks=[view]`` and show ``view.widget`` (or ``view``) above the training
    cell. Each hook only records (microseconds); drawing happens at most once per ``every_s``
    seconds of wall time (and at the end), so the cost is bounded by the time of one redraw
    (``redraw_seconds / redraws``, ~10-60 ms on a CPU) divided by ``every_s``: under 10% at the
    default 1 s.

    Args:
        projection: a :class:`ptuning_lab.manifold.VocabProjection`; None: curves only.
        every_s: minimum wall time between two redraws.
        metric: the eval metric of the right-hand panel.
        embedding, token_strings: when given, hovering the current prompt shows its nearest tokens.
        name: the curve's legend name (default: the trainer's encoder method).
        clock: the wall clock (seconds), replaceable in tests.
    Attributes:
        figure: :func:`ptuning_lab.figures.training_curves` of what was recorded so far.
        map_figure: the vocabulary map with traces ``start``, ``path``, current (None without projection).
        history, steps, snapshots: what the hooks recorded.
        redraws, redraw_seconds: how often and how long drawing took (the callback's own cost).
    """

    def __init__(self, projection=None, every_s: float = 1.0, metric: str = "dev_p_at_1", embedding=None,
                 token_strings: Sequence[str] | None = None, name: str | None = None, max_vocab_points: int = 2000,
                 clock: Callable[[], float] = time.perf_counter):
        if not every_s >= 0:
            raise ValueError(f"every_s must be >= 0 seconds (0 redraws on every event), got {every_s}.")
        self.projection, self.every_s, self.metric = projection, float(every_s), metric
        self.embedding, self.token_strings, self.name, self.clock = embedding, token_strings, name, clock
        self.history: dict = {"train": [], "eval": []}
        self.steps: list[int] = []
        self.snapshots: list[np.ndarray] = []
        self._coords: list[np.ndarray] = []
        self.total_steps: int | None = None
        self.redraws, self.redraw_seconds = 0, 0.0
        self._last = -math.inf
        self._drawn_name = name or "training"
        self._views: dict[str, Any] = {}
        self.figure = F.training_curves({name or "training": [self.history]}, metric=metric)
        # one run, no seeds to average; a score in [0, 1] gets that axis (an empty plot autoranges to [-1, 4])
        self.figure.update_layout(title="Training curves (live, one run)")
        if _is_fraction(metric):
            self.figure.update_yaxes(range=[0, 1.02], row=1, col=2)
        self.map_figure = None
        if projection is not None:
            import plotly.graph_objects as go

            fig = F.vocab_map(projection, None, token_strings, max_vocab_points=max_vocab_points, controls=False,
                              title="The prompt on the vocabulary map (live)")
            color = F.color_for(name or "")
            fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="start", showlegend=False,
                                     marker={"size": 8, "symbol": "circle-open", "color": color}))
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="path", showlegend=False, opacity=0.6,
                                     line={"color": color, "width": 1.5}, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=[], y=[], mode="markers+text", name=name or "prompt", textposition="top center",
                                     marker={"size": 11, "color": color}, hovertemplate="%{hovertext}<extra></extra>"))
            self._vocab_xy = np.c_[np.asarray(fig.data[0].x, dtype=float), np.asarray(fig.data[0].y, dtype=float)]
            self.map_figure = fig

    # ------------------------------------------------------------------ trainer hooks (cheap)
    def on_step_end(self, trainer, step: int, loss: float) -> None:
        if self.total_steps is None:
            self.total_steps = getattr(trainer, "total_steps", None)
            if self.name is None:
                self.name = getattr(getattr(trainer, "encoder", None), "method", None)
        self.history["train"].append({"step": int(step), "loss": float(loss)})
        self.maybe_redraw()

    def on_eval(self, trainer, record: dict) -> None:
        self.history["eval"].append(dict(record))
        self.maybe_redraw()

    def on_snapshot(self, trainer, step: int, prompt) -> None:
        self.steps.append(int(step))
        self.snapshots.append(F.prompt_of(prompt))
        self.maybe_redraw()

    def on_train_end(self, trainer, result) -> None:
        self.redraw()

    # ------------------------------------------------------------------ drawing (throttled)
    def maybe_redraw(self) -> bool:
        """Redraw when ``every_s`` seconds passed since the last redraw; True when it did."""
        if self.clock() - self._last < self.every_s:
            return False
        self.redraw()
        return True

    def redraw(self) -> None:
        """Update the figures (and the shown widgets) from what was recorded."""
        start = time.perf_counter()
        name = self.name or "training"
        data = F.training_curve_data([self.history], metric=self.metric)
        for trace, values in zip(self.figure.data, data):
            trace.update(values)
        if name != self._drawn_name:                     # the method is known from the first step on
            color = F.color_for(name)
            for i, trace in enumerate(self.figure.data):
                if i % 2:
                    trace.update(name=name, line_color=color)
                else:
                    trace.update(name=f"{name} ± std", fillcolor=F._rgba(color, 0.18))
            self._drawn_name = name
        if self.map_figure is not None and self.snapshots:
            self._redraw_map(name)
        if self._views:
            self._views["curves"].refresh(keys=DATA_KEYS + ("line", "fillcolor"))
            if "map" in self._views:
                n = len(self.map_figure.data)
                self._views["map"].refresh([n - 3, n - 2, n - 1], layout=("xaxis.range", "yaxis.range"))
            self._views["status"].value = self.status()
        self.redraws += 1
        self.redraw_seconds += time.perf_counter() - start
        self._last = self.clock()

    def _redraw_map(self, name: str) -> None:
        for P in self.snapshots[len(self._coords):]:           # place only the new snapshots
            self._coords.append(np.asarray(self.projection.transform(P), dtype=np.float64))
        coords = np.stack(self._coords)                          # (S, n, 2)
        S, n = coords.shape[:2]
        hover = [[f"<b>{name}</b> [P]{j} · step {self.steps[s]}" for j in range(n)] for s in range(S)]
        if self.embedding is not None:
            from ..manifold import nearest_tokens

            table = nearest_tokens(self.snapshots[-1], self.embedding, self.token_strings, k=3, metrics=("cosine",))
            for j in range(n):
                rows = table[table["virtual_token"] == j]
                near = ", ".join(f"{t} {c:.2f}" for t, c in zip(rows["token"], rows["score"]))
                hover[-1][j] += f"<br>nearest: {near}"
        placed = F.RunOnMap(F.Trajectory(name, self.steps, np.stack(self.snapshots)), coords, hover, F.color_for(name))
        path, now = F.run_traces(placed, self.steps[-1])
        start_tr, path_tr, now_tr = self.map_figure.data[-3:]
        start_tr.update(x=coords[0, :, 0], y=coords[0, :, 1])
        path_tr.update(**path)
        now_tr.update(**now, name=name)
        for c in (start_tr, path_tr, now_tr):
            c.marker.color = c.line.color = F.color_for(name)
        allpts = np.concatenate([self._vocab_xy, coords.reshape(-1, 2)])
        lo, hi = allpts.min(0), allpts.max(0)
        pad = 0.05 * np.maximum(hi - lo, 1e-9)
        self.map_figure.layout.xaxis.range = [lo[0] - pad[0], hi[0] + pad[0]]
        self.map_figure.layout.yaxis.range = [lo[1] - pad[1], hi[1] + pad[1]]

    def status(self) -> str:
        """One line: step, last loss, last dev metric."""
        parts = []
        if self.history["train"]:
            last = self.history["train"][-1]
            parts.append(f"step {last['step']}" + (f"/{self.total_steps}" if self.total_steps else ""))
            parts.append(f"loss {last['loss']:.3f}")
        if self.history["eval"] and self.metric in self.history["eval"][-1]:
            parts.append(f"{self.metric} {self.history['eval'][-1][self.metric]:.3f}")
        return " · ".join(parts) or "waiting for the first step"

    @property
    def widget(self):
        """Status line, curves and (with a projection) the map, as ipywidgets."""
        if "box" in self._views:
            return self._views["box"]
        w = _ipywidgets()
        self._views["status"] = w.HTML(self.status())
        self._views["curves"] = FigureView(self.figure)
        children = [self._views["status"], self._views["curves"].widget]
        if self.map_figure is not None:
            self._views["map"] = FigureView(self.map_figure)
            children.append(self._views["map"].widget)
        self._views["box"] = w.VBox(children)
        return self._views["box"]

    def _ipython_display_(self):  # pragma: no cover - notebook display
        from IPython.display import display

        display(self.widget)


__all__ = ["LiveTrainingView"]
