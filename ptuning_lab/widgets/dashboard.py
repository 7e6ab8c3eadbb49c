"""The dashboard of finished runs: one vocabulary map, a run/step/virtual-token choice, the nearest-token table."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import figures as F
from .view import FigureView, _ipywidgets, _trace_json


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
