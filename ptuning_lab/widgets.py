"""Widgets: thin ipywidgets layers over :mod:`ptuning_lab.figures` for notebooks.

- :class:`RunDashboard` -- finished runs on one vocabulary map: choose the run, the training step
  and a virtual token; the map highlights it and the nearest-token table follows.
- :class:`LiveTrainingView` -- a trainer :class:`~ptuning_lab.trainer.Callback` that redraws the
  training curves and the map while ``Trainer.fit`` runs, at most once per ``every_s`` seconds
  of wall time, so drawing costs a bounded share of training time.

Both keep their state in plain ``plotly.graph_objects.Figure`` objects (``.map_figure``,
``.table_figure``, ``.figure``) and change it through ordinary methods (``select``,
``set_step``, ``set_token``; the callback hooks), so they work -- and are tested -- without any
widget front-end: outside Jupyter the figures still update and return. ``.widget`` builds the
ipywidgets controls on first use; a figure is shown as a ``plotly`` ``FigureWidget`` when
anywidget is installed (updates only what changed) and re-drawn in an ``Output`` otherwise.

    >>> dash = RunDashboard({"mlp": load_run("runs/mlp"), "lstm": load_run("runs/lstm")},
    ...                     projection, lm.embedding, lm.token_strings)          # doctest: +SKIP
    >>> dash.widget                                                              # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import figures as F
from .trainer import Callback


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets ships with the viz extra
        raise ImportError("the interactive controls need ipywidgets: pip install 'ptuning_lab[viz]'. The figures "
                          "themselves (.map_figure, .table_figure, .figure) work without it.") from err
    return ipywidgets


def _trace_json(trace) -> dict:
    d = trace.to_plotly_json()
    d.pop("type", None)
    d.pop("uid", None)
    return d


# what callbacks change: copying only these keeps a refresh cheap (plotly validates every property)
DATA_KEYS = ("x", "y", "z", "text", "hovertext", "customdata", "opacity", "name")


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class FigureView:
    """Shows a Figure in a widget and pushes later changes of it to the front-end.

    ``FigureWidget`` (needs anywidget): :meth:`refresh` copies only the listed traces' data keys
    and layout properties. Without anywidget: an ``ipywidgets.Output`` in which the figure is
    drawn again (only inside a Jupyter kernel; elsewhere there is nothing to draw on).
    """

    def __init__(self, fig):
        widgets = _ipywidgets()
        self.figure = fig
        try:
            import anywidget  # noqa: F401  (plotly's FigureWidget is built on it)
            import plotly.graph_objects as go

            self.widget = go.FigureWidget(fig)
            self.kind = "figurewidget"
        except ImportError:
            self.widget = widgets.Output()
            self.kind = "output"
            self.refresh()

    def refresh(self, traces: Sequence[int] | None = None, layout: Sequence[str] = (),
                keys: Sequence[str] = DATA_KEYS) -> None:
        """Push the ``keys`` of ``traces`` (all when None) and the ``layout`` properties (paths like
        ``"xaxis.range"``) of ``self.figure`` to the shown widget."""
        if self.kind == "figurewidget":
            fw = self.widget
            with fw.batch_update():
                for i in range(len(fw.data)) if traces is None else traces:
                    src = self.figure.data[i]
                    fw.data[i].update({k: src[k] for k in keys if k in src and src[k] is not None})
                for key in layout:
                    fw.layout[key] = self.figure.layout[key]
        elif _in_kernel():
            from IPython.display import clear_output, display

            with self.widget:
                clear_output(wait=True)
                display(self.figure)


# ============================================================================ finished runs
class RunDashboard:
    """Browse finished runs: run/method, training step and virtual token -> map highlight + nearest tokens.

    Args:
        runs: ``{name: Run | TrainResult | (steps, snapshots)}`` (e.g. ``{"mlp": load_run(...)}``).
        projection: a :class:`ptuning_lab.manifold.VocabProjection` shared by all runs.
        embedding: (V, d) input embedding (nearest tokens).
        token_strings: V decoded tokens.
        k: ranks in the nearest-token table; ``metric``: its metric.

    State: ``run_name``, ``step_index`` (into ``steps``, the union of all runs' snapshot steps;
    a run shows its latest snapshot at or before that step) and ``token``. Figures:
    ``map_figure`` (:func:`ptuning_lab.figures.vocab_map` without its own slider, plus a last
    trace ``"selected"`` ringing the chosen vector; the chosen run drawn opaque, the others faded)
    and ``table_figure`` (:func:`ptuning_lab.figures.nearest_token_heatmap` of the chosen run's
    prompt at that step, the chosen virtual token's row outlined).
    """

    def __init__(self, runs: Mapping[str, Any], projection, embedding, token_strings: Sequence[str] | None,
                 k: int = 5, metric: str = "cosine", k_hover: int = 3, max_vocab_points: int = 3000):
        if not runs:
            raise ValueError("RunDashboard needs at least one run, e.g. "
                             "{'mlp': load_run('runs/compare/capital/mlp-seed0')}.")
        self.names = [str(n) for n in runs]
        self.trajectories = {str(n): F.as_trajectory(r, str(n)) for n, r in runs.items()}
        self.embedding, self.token_strings, self.k, self.metric = embedding, token_strings, k, metric
        fig = F.vocab_map(projection, self.trajectories, token_strings, embedding, k_hover=k_hover,
                          max_vocab_points=max_vocab_points, controls=False)
        self._frames = list(fig.frames)
        self.steps: list[int] = list(fig.layout.meta["steps"])
        fig.frames = ()
        import plotly.graph_objects as go

        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="selected", hoverinfo="skip",
                                 marker={"size": 24, "symbol": "circle-open", "color": "black", "line": {"width": 3}}))
        self.map_figure = fig
        self.table_figure = None
        self._table_key = None
        self.run_name, self.step_index, self.token = self.names[0], len(self.steps) - 1, 0
        self._views: dict[str, FigureView] = {}
        self._controls = None
        self._syncing = False
        self._update(table=True)

    # ------------------------------------------------------------------ state
    @property
    def step(self) -> int:
        """The training step shown."""
        return self.steps[self.step_index]

    @property
    def trajectory(self) -> F.Trajectory:
        return self.trajectories[self.run_name]

    @property
    def snapshot_index(self) -> int:
        """Index of the chosen run's snapshot shown at :attr:`step`."""
        return self.trajectory.index_at(self.step)

    @property
    def vectors(self) -> np.ndarray:
        """The chosen run's prompt (n, d) at the shown step."""
        return self.trajectory.snapshots[self.snapshot_index]

    @property
    def nearest(self):
        """The chosen virtual token's nearest tokens: a frame ``rank, token_id, token, score``."""
        import pandas as pd

        h = self.table_figure.data[0]
        j = self.token
        return pd.DataFrame({"rank": range(self.k), "token_id": self.table_figure.layout.meta["token_ids"][j],
                             "token": list(h.text[j]), "score": np.asarray(h.z[j], dtype=np.float64)})

    # ------------------------------------------------------------------ callbacks
    def select(self, run_name: str) -> None:
        """Choose the run; the virtual token is kept when the run has it (else [P]0)."""
        if run_name not in self.trajectories:
            raise ValueError(f"unknown run {run_name!r}; choose one of {self.names}.")
        self.run_name = run_name
        if self.token >= self.trajectory.num_virtual_tokens:
            self.token = 0
        self._update(table=True)

    def set_step(self, index: int) -> None:
        """Show the ``index``-th step of :attr:`steps` (negative counts from the end)."""
        n = len(self.steps)
        if not -n <= int(index) < n:
            raise ValueError(f"step index {index} is out of range: the runs have {n} snapshot steps "
                             f"({self.steps[0]}..{self.steps[-1]}); use 0..{n - 1}.")
        self.step_index = int(index) % n
        self._update(table=True)

    def set_token(self, j: int) -> None:
        """Highlight virtual token ``j`` of the chosen run."""
        n = self.trajectory.num_virtual_tokens
        if not 0 <= int(j) < n:
            raise ValueError(f"virtual token {j} does not exist: run '{self.run_name}' has {n} ([P]0..[P]{n - 1}).")
        self.token = int(j)
        self._update(table=False)

    # ------------------------------------------------------------------ drawing
    def _update(self, table: bool) -> None:
        fig = self.map_figure
        changed = []
        frame = self._frames[self.step_index] if self._frames else None
        if frame is not None:
            for idx, tr in zip(frame.traces, frame.data):
                fig.data[idx].update(_trace_json(tr))
                changed.append(idx)
        chosen = self.names.index(self.run_name)
        for r in range(len(self.names)):
            on = r == chosen
            fig.data[1 + 3 * r].opacity = 1.0 if on else 0.25
            fig.data[2 + 3 * r].opacity = 0.7 if on else 0.15
            fig.data[3 + 3 * r].opacity = 1.0 if on else 0.3
            changed += [1 + 3 * r, 2 + 3 * r, 3 + 3 * r]
        now = fig.data[3 + 3 * chosen]
        fig.data[-1].update(x=[now.x[self.token]], y=[now.y[self.token]])
        changed.append(len(fig.data) - 1)
        key = (self.run_name, self.snapshot_index)
        if table and key != self._table_key:
            title = f"Nearest tokens of {self.run_name} at step {self.trajectory.steps[self.snapshot_index]}"
            new = F.nearest_token_heatmap(self.vectors, self.embedding, self.token_strings, k=self.k,
                                          metric=self.metric, title=title)
            if self.table_figure is None:
                self.table_figure = new
            else:
                self.table_figure.data[0].update(_trace_json(new.data[0]), overwrite=True)
                self.table_figure.layout.update(title=new.layout.title, height=new.layout.height, meta=new.layout.meta)
            self._table_key = key
        F.set_heatmap_highlight(self.table_figure, self.token)
        if "map" in self._views:
            self._views["map"].refresh(changed)
            self._views["table"].refresh([0], layout=("shapes", "title.text", "height", "meta"))
        self._sync_controls()

    def _sync_controls(self) -> None:
        if self._controls is None:
            return
        run, step, token = self._controls
        self._syncing = True
        try:
            run.value = self.run_name
            step.value = self.step_index
            n = self.trajectory.num_virtual_tokens
            if len(token.options) != n:
                token.options = [(f"[P]{j}", j) for j in range(n)]
            token.value = self.token
        finally:
            self._syncing = False

    @property
    def widget(self):
        """The dashboard as ipywidgets: run dropdown, step slider, virtual-token buttons, map, table."""
        if "box" in self._views:
            return self._views["box"]
        w = _ipywidgets()
        run = w.Dropdown(options=self.names, value=self.run_name, description="run")
        step = w.SelectionSlider(options=[(str(s), i) for i, s in enumerate(self.steps)], value=self.step_index,
                                 description="step", continuous_update=False, layout={"width": "480px"})
        token = w.ToggleButtons(options=[(f"[P]{j}", j) for j in range(self.trajectory.num_virtual_tokens)],
                                value=self.token, description="token", style={"button_width": "48px"})

        def on(method: Callable[[Any], None]):
            def handler(change):
                if not self._syncing and change["new"] is not None:
                    method(change["new"])
            return handler

        run.observe(on(self.select), "value")
        step.observe(on(self.set_step), "value")
        token.observe(on(self.set_token), "value")
        self._controls = (run, step, token)
        self._views["map"] = FigureView(self.map_figure)
        self._views["table"] = FigureView(self.table_figure)
        box = w.VBox([w.HBox([run, step]), token, self._views["map"].widget, self._views["table"].widget])
        self._views["box"] = box
        return box

    def _ipython_display_(self):  # pragma: no cover - notebook display
        from IPython.display import display

        display(self.widget)


# ============================================================================ live training
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
            from .manifold import nearest_tokens

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


__all__ = ["FigureView", "RunDashboard", "LiveTrainingView"]
