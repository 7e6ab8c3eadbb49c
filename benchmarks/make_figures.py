"""Static PNGs of the key figures (README and docs), from a short real run on the embedded model.

    HF_HUB_OFFLINE=1 python benchmarks/make_figures.py                  # ~5 min on 2 idle CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/make_figures.py --steps 20 --encoders mlp,direct

Trains MLP, LSTM and direct prompts on ``capital`` for 30 steps (seed 0, the CLI's default template
and init, lr 1e-2 so that a short run already moves the prompts visibly), then writes to ``--out``
(default ``docs/``):

    vocab_map.png        the three prompts and their trajectories on the shared PCA map
    training_curves.png  loss and dev P@1 per method
    nearest_tokens.png   the nearest-token heatmap of the MLP prompt
    norms.png            vocabulary norms vs prompt norms
    nn_cosine.png        best cosine to a token: vocabulary, random vectors, prompts
    comparison.png       test metrics per method (manual baseline included)

Images are rendered by kaleido, which drives the system Chrome/Chromium (Debian: ``apt-get install
chromium``, or ``make browser``); when kaleido is missing or fails, the figure is written as HTML
and photographed with Playwright driving ``/usr/bin/chromium``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def save_png(fig, path: Path, width: int, height: int, engine: str = "auto") -> str:
    """Write ``fig`` as a PNG; returns the engine that did it ("kaleido" or "playwright")."""
    fig.update_layout(width=width, height=height)
    if engine in ("auto", "kaleido"):
        try:
            fig.write_image(str(path), width=width, height=height, scale=1.5)
            return "kaleido"
        except Exception as err:  # kaleido absent, or no Chrome it can start
            if engine == "kaleido":
                raise
            print(f"  kaleido failed ({type(err).__name__}: {err}); using playwright + chromium", flush=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp) / "figure.html"
        fig.write_html(str(page_path), include_plotlyjs=True, full_html=True, auto_play=False,
                       config={"staticPlot": True})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            try:
                page = browser.new_page(viewport={"width": width + 40, "height": height + 40}, device_scale_factor=1.5)
                page.goto(page_path.as_uri(), wait_until="load")
                page.wait_for_selector(".js-plotly-plot .main-svg")
                page.locator(".js-plotly-plot").first.screenshot(path=str(path))
            finally:
                browser.close()
    return "playwright"


def snapshot_keeper():
    """A trainer callback that keeps its own COPY of every snapshot (steps, prompts (n, d)).

    On a CPU the trainer's snapshot of a direct prompt is the parameter itself (no copy), so all of
    them end up equal to the final prompt; copies keep the trajectory.
    """
    from ptuning_lab.trainer import Callback

    class KeepSnapshots(Callback):
        def __init__(self):
            self.steps, self.prompts = [], []

        def on_snapshot(self, trainer, step, prompt):
            self.steps.append(step)
            self.prompts.append(prompt.detach().clone())

    return KeepSnapshots()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="Model to train on (default: the embedded SmolLM2-135M).")
    ap.add_argument("--task", default="capital")
    ap.add_argument("--encoders", default="mlp,lstm,direct")
    ap.add_argument("--steps", type=int, default=30, help="Training steps per encoder.")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-examples", type=int, default=80, help="Examples of the task kept (train/dev/test split).")
    ap.add_argument("--out", default="docs", help="Folder for the PNGs.")
    ap.add_argument("--engine", default="auto", choices=("auto", "kaleido", "playwright"))
    args = ap.parse_args(argv)

    import torch

    from ptuning_lab import figures as F
    from ptuning_lab.experiments import baseline, summarize, train_one
    from ptuning_lab.frozen_lm import FrozenLM
    from ptuning_lab.manifold import fit_projection, vocab_stats
    from ptuning_lab.tasks import load_task

    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = FrozenLM.load(args.model, verbose=False)
    task = load_task(args.task, max_examples=args.max_examples)
    print(f"model {lm.name}, task {task.summary()}", flush=True)
    t = time.perf_counter()
    rows, results, trajectories = [baseline(lm, task)], {}, {}
    print(f"  manual  test P@1 {rows[0]['test_p_at_1']:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
    for enc in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        t = time.perf_counter()
        keep = snapshot_keeper()
        run = train_one(lm, task, encoder=enc, template=None, init="auto", seed=0, progress=False,
                        callbacks=[keep],
                        train={"max_steps": args.steps, "batch_size": args.batch_size,
                               "eval_every": max(1, args.steps // 4), "snapshot_every": max(1, args.steps // 10),
                               "lr": 1e-2})
        results[enc] = run
        trajectories[enc] = (keep.steps, torch.stack(keep.prompts))
        rows.append(run.metrics)
        print(f"  {enc:<7} {args.steps} steps in {time.perf_counter() - t:.0f} s: test P@1 "
              f"{run.metrics['test_p_at_1']:.3f}, dev P@1 {run.metrics['dev_p_at_1']:.3f}", flush=True)

    E = lm.embedding.detach()
    projection = fit_projection(E, lm.token_strings, model_id=lm.name)
    stats = vocab_stats(E, model_id=lm.name)
    prompts = {enc: r.prompt for enc, r in results.items()}
    figures = {
        "vocab_map.png": (F.vocab_map(projection, trajectories, lm.token_strings, E, controls=False,
                                      title=f"Prompts on the vocabulary map: {args.task}, {args.steps} steps "
                                            f"({F.short_model_name(lm.name)}, PCA)"), 1000, 640),
        "training_curves.png": (F.training_curves({enc: [r.history] for enc, r in results.items()}), 1000, 420),
        "nearest_tokens.png": (F.nearest_token_heatmap(next(iter(results.values())).prompt, E, lm.token_strings, k=5,
                                                       title=f"Nearest tokens of the {next(iter(results))} prompt "
                                                             "(cosine)"), 900, 420),
        "norms.png": (F.norm_distribution(stats, prompts), 900, 460),
        "nn_cosine.png": (F.nn_cosine_distribution(stats, prompts, E), 900, 460),
        "comparison.png": (F.comparison_bars(summarize(rows)), 900, 400),
    }
    for name, (fig, w, h) in figures.items():
        engine = save_png(fig, out / name, w, h, args.engine)
        print(f"  wrote {out / name} ({engine}, {(out / name).stat().st_size // 1024} KB)", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
