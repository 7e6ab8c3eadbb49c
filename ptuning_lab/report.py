"""The HTML report of ``ptuning-lab compare``: one self-contained file that opens offline.

``report.html`` holds the comparison table, the test metrics as bars, and per task the training
curves (mean +/- std over seeds), every method's prompt on one vocabulary map with its trajectory
over training (slider and play button), and the nearest tokens of each method's final prompt.
plotly's JavaScript is inlined once (~4.5 MB), so the file needs no network.

The runs are read back from the ``compare`` output directory (``out/<task>/<encoder>-seed<k>/``),
so a report can be rebuilt from finished runs at any time::

    >>> write_report(Path("runs/compare"), lm=lm, summary=summary, rows=rows)   # doctest: +SKIP
"""
from __future__ import annotations

import html
import logging
import math
import re
from pathlib import Path
from typing import Sequence

from . import checkpoint as ckpt

log = logging.getLogger(__name__)

_RUN_DIR = re.compile(r"^(?P<encoder>.+)-seed(?P<seed>\d+)$")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .35rem .7rem; text-align: right; }
th { background: #f5f5f5; } td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) { text-align: left; }
.note { color: #666; font-size: .9rem; } .figure { margin: 1rem 0 2rem; }
.missing { color: #a33; font-style: italic; }
"""


def find_runs(out: Path) -> dict[str, dict[str, ckpt.Run]]:
    """The finished runs under a compare directory: ``{task: {"<encoder>-seed<k>": Run}}`` (sorted).

    A directory without ``config.json`` (unfinished) or that fails to load is skipped with a warning.
    """
    found: dict[str, dict[str, ckpt.Run]] = {}
    for cfg in sorted(Path(out).glob("*/*/config.json")):
        run_dir = cfg.parent
        if not _RUN_DIR.match(run_dir.name):
            continue
        try:
            run = ckpt.load_run(run_dir)
        except ckpt.CheckpointError as err:
            log.warning("ptuning_lab report: skipping %s (%s)", run_dir, err)
            continue
        found.setdefault(run_dir.parent.name, {})[run_dir.name] = run
    return found


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def summary_table(summary: Sequence[dict]) -> str:
    """The comparison table (task, method, seeds, test P@1 and candidate accuracy with std, params, time)."""
    head = ("task", "method", "seeds", "test P@1", "test cand. acc.", "trainable params", "train s / run")
    rows = []
    for r in summary:
        def pm(key):
            return f"{_fmt(r.get(key))} ± {_fmt(r.get(key + '_std'))}" if r.get(key + "_std") is not None \
                else _fmt(r.get(key))
        cells = (_fmt(r.get("task")), _fmt(r.get("encoder")), _fmt(r.get("seeds", 1)), pm("test_p_at_1"),
                 pm("test_candidate_accuracy"), _fmt(r.get("trainable_params")), _fmt(r.get("train_seconds"), 1))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table class='summary'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def runs_table(rows: Sequence[dict]) -> str:
    """Every run's metrics (one row per task x method x seed, plus the manual baselines)."""
    keys = ("task", "encoder", "seed", "test_p_at_1", "test_candidate_accuracy", "dev_p_at_1", "steps", "best_step",
            "stopped", "train_seconds")
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return ("<table class='runs'><thead><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr></thead><tbody>"
            + body + "</tbody></table>")


class _Figures:
    """Collects figure sections; plotly's JavaScript goes with the first figure only."""

    def __init__(self):
        self.parts: list[str] = []
        self.count = 0

    def add(self, title: str, make, note: str = "") -> None:
        slug = f"fig-{self.count}-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
        try:
            fig = make()
        except Exception as err:  # a failing figure must not cost the whole report of a long compare
            log.warning("ptuning_lab report: figure %r failed (%s: %s)", title, type(err).__name__, err)
            self.parts.append(f"<h3>{html.escape(title)}</h3><p class='missing'>figure unavailable: "
                              f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</p>")
            return
        # auto_play=False: the map opens on the final step (plotly would replay every frame on load)
        div = fig.to_html(full_html=False, include_plotlyjs=self.count == 0, div_id=slug, auto_play=False,
                          config={"displaylogo": False, "responsive": True})
        self.count += 1
        note_html = f"<p class='note'>{note}</p>" if note else ""
        self.parts.append(f"<div class='figure'><h3>{html.escape(title)}</h3>{note_html}{div}</div>")


def _input_layer(run: ckpt.Run, lm) -> bool:
    """True when the run's prompt is input-layer vectors (n, d) of ``lm`` (not a K/V prefix)."""
    from .prompts import ALL_METHODS, INPUT_LAYER, produces

    width = getattr(lm, "hidden_size", None)
    method = run.config.get("encoder", {}).get("method")
    return (run.prompt.dim() == 2 and (width is None or run.prompt.shape[1] == width)
            and method in ALL_METHODS and produces(method) == INPUT_LAYER)


def write_report(out: Path, *, lm=None, summary: Sequence[dict], rows: Sequence[dict],
                 projection=None, max_vocab_points: int = 3000) -> Path:
    """Write ``out/report.html`` (atomically) and return its path.

    Args:
        out: the ``compare`` output directory (runs are read from ``out/<task>/<encoder>-seed<k>``).
        lm: the :class:`ptuning_lab.frozen_lm.FrozenLM` the runs were trained on (the map and the
            nearest tokens need its embedding; without it they are left out).
        summary, rows: what :func:`ptuning_lab.experiments.compare` computed (``summary.json``).
        projection: a fitted :class:`ptuning_lab.manifold.VocabProjection` (default: the model's
            cached PCA map, ``fit_projection(lm.embedding, lm.token_strings, model_id=lm.name)``).
    Figures, in order: comparison bars; then per task: training curves, vocabulary map (the
    lowest seed of every method, on one shared map), one nearest-token heatmap per method.
    """
    from . import figures as F

    out = Path(out)
    runs = find_runs(out)
    model = getattr(lm, "name", None) or "unknown model"
    figs = _Figures()
    if summary:
        figs.add("Test metrics", lambda: F.comparison_bars(summary),
                 "First-token P@1 over the whole vocabulary, and accuracy among the task's answers.")
    embedding = lm.embedding.detach() if lm is not None else None
    strings = lm.token_strings if lm is not None else None
    if lm is not None and projection is None and runs:
        from .manifold import fit_projection

        try:
            projection = fit_projection(embedding, strings, model_id=lm.name)
        except Exception as err:  # the report is still useful without the map
            log.warning("ptuning_lab report: no vocabulary map (%s: %s)", type(err).__name__, err)
    for task, task_runs in runs.items():
        figs.parts.append(f"<h2>Task: {html.escape(task)}</h2>")
        by_method: dict[str, list[tuple[int, str, ckpt.Run]]] = {}
        for name, run in task_runs.items():
            m = _RUN_DIR.match(name)
            by_method.setdefault(m["encoder"], []).append((int(m["seed"]), name, run))
        for entries in by_method.values():
            entries.sort(key=lambda e: e[0])
        histories = {m: [r.history for _, _, r in e] for m, e in by_method.items()}
        figs.add(f"Training curves ({task})", lambda: F.training_curves(histories, smooth=5),
                 (f"Mean ± std over {max(len(e) for e in by_method.values())} seeds"
                  if any(len(e) > 1 for e in by_method.values()) else "One seed per method (no ± std band)")
                 + "; the training loss is a moving average over 5 steps.")
        first = {m: e[0][2] for m, e in by_method.items() if _input_layer(e[0][2], lm)}
        if len(first) < len(by_method):
            figs.parts.append("<p class='note'>Not on the map: " + ", ".join(sorted(set(by_method) - set(first)))
                              + " (no input-layer prompt: its virtual tokens live in every layer's keys/values)."
                              "</p>")
        if projection is not None and first:
            figs.add(f"Prompts on the vocabulary map ({task})",
                     lambda: F.vocab_map(projection, {f"{m}-seed{by_method[m][0][0]}": r for m, r in first.items()},
                                         strings, embedding, max_vocab_points=max_vocab_points),
                     "Grey: vocabulary tokens. Open circles: initial prompt; filled: the prompt at the chosen step "
                     "(labels = virtual token index). Use the slider or ▶ to follow training; hover for the "
                     "nearest tokens.")
        if embedding is not None:
            for m, run in first.items():
                figs.add(f"Nearest tokens of the final {m} prompt ({task})",
                         lambda run=run, m=m: F.nearest_token_heatmap(run.prompt, embedding, strings, k=5,
                                                                      title=f"{m}: nearest tokens (cosine)"))
    if lm is None and runs:
        figs.parts.append("<p class='note'>No model was given: the vocabulary map and nearest tokens are left out.</p>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ptuning_lab comparison report</title><style>{_CSS}</style></head>
<body>
<h1>P-tuning comparison</h1>
<p class="note">model: <b>{html.escape(model)}</b> · tasks: {html.escape(', '.join(runs) or '–')} ·
written by <code>ptuning-lab compare</code>; summary.json holds the same numbers.</p>
<h2>Summary</h2>
{summary_table(summary)}
<details><summary>every run</summary>{runs_table(rows)}</details>
{''.join(figs.parts)}
</body></html>
"""
    path = out / "report.html"
    ckpt.write_text(path, page)
    return path


__all__ = ["find_runs", "summary_table", "runs_table", "write_report"]
