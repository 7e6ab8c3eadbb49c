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

Layout (arrows point one way): ``dashboard`` and ``live`` import ``view`` (:class:`FigureView`,
which shows a figure and pushes its changes), never each other.
"""
from __future__ import annotations

from .. import figures as F  # noqa: F401  (ptuning_lab.widgets.F, as before the split)
from .dashboard import RunDashboard
from .live import LiveTrainingView
from .view import DATA_KEYS, FigureView

__all__ = ["FigureView", "RunDashboard", "LiveTrainingView"]
