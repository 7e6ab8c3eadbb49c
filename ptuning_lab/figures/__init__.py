"""Figures: every plot of the course as a function that returns a ``plotly.graph_objects.Figure``.

Nothing here displays anything: a figure is data (``fig.data``, ``fig.frames``, ``fig.layout``),
so tests assert on it, :mod:`ptuning_lab.widgets` updates it in place, and
:mod:`ptuning_lab.report` embeds it in HTML. Show one in a notebook with ``fig.show()``; save it
with ``fig.write_html(...)`` or ``fig.write_image(...)`` (needs kaleido and a Chrome/Chromium).

=============================  ================================================================
:func:`vocab_map`              the 2-D vocabulary map with the prompts of one or several runs and
                               their trajectories over training; a slider and a play button step
                               through the snapshots; hover shows tokens and nearest tokens
:func:`training_curves`        training loss and a dev metric per method, mean +/- std over seeds
:func:`norm_distribution`      vocabulary norms vs the prompt vectors' norms
:func:`nn_cosine_distribution` best cosine to another token (vocabulary), to any token (random
                               vectors, prompts)
:func:`nearest_token_heatmap`  virtual token x rank, coloured by similarity, labelled by token
:func:`waywardness_sweep`      task accuracy and decoded-prompt F1 over the waywardness weight gamma
:func:`comparison_bars`        the ``compare`` summary: test metrics per task and method
=============================  ================================================================

"Runs" may be given as a :class:`ptuning_lab.checkpoint.Run`, a
:class:`ptuning_lab.trainer.TrainResult`, a ``(steps, snapshots (S, n, d))`` tuple or a single
prompt ``(n, d)``; "prompts" as a tensor ``(n, d)`` or anything with a ``.prompt``.
Colours follow the method named in a run's name (``"mlp-seed0"`` -> the MLP colour), so one
method has one colour in every figure.

Layout (arrows point one way: every figure module imports only ``base``):

- ``base``          -- plotly import, method colours, :class:`RunLike`, :func:`prompt_of`, :func:`as_trajectory`
- ``maps``          -- :func:`vocab_map`, :func:`place_runs`, :func:`run_traces`
- ``curves``        -- :func:`training_curves`, :func:`training_curve_data`
- ``distributions`` -- :func:`norm_distribution`, :func:`nn_cosine_distribution`
- ``heatmaps``      -- :func:`nearest_token_heatmap`, :func:`set_heatmap_highlight`
- ``results``       -- :func:`waywardness_sweep`, :func:`comparison_bars`
"""
from __future__ import annotations

from .base import (_METRIC_LABELS, METHOD_COLORS, RunLike, Trajectory, _rgba, as_trajectory, color_for, method_of,
                   prompt_of, short_model_name)
from .curves import training_curve_data, training_curves
from .distributions import nn_cosine_distribution, norm_distribution
from .heatmaps import nearest_token_heatmap, set_heatmap_highlight
from .maps import RunOnMap, place_runs, run_traces, vocab_map
from .results import comparison_bars, waywardness_sweep

__all__ = [
    "METHOD_COLORS", "method_of", "color_for", "prompt_of", "RunLike", "Trajectory", "as_trajectory", "RunOnMap",
    "place_runs", "run_traces", "short_model_name", "vocab_map", "training_curve_data", "training_curves",
    "norm_distribution", "nn_cosine_distribution",
    "nearest_token_heatmap", "set_heatmap_highlight", "waywardness_sweep", "comparison_bars",
]
