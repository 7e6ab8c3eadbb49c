"""The report of `ptuning-lab compare`, written for real and opened in headless Chromium.

`make test` installs Chromium first (the Makefile's `browser` target: Debian's chromium and
chromium-driver). Playwright's Python package drives the system browser; its own browser download
is never used.
"""
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import make_tiny_lm
from ptuning_lab import checkpoint as ckpt
from ptuning_lab.cli import main
from ptuning_lab.manifold import fit_projection
from ptuning_lab.report import find_runs, write_report

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ENCODERS = ("direct", "mlp", "lstm")

# per plot: its size, number of traces, and marks actually drawn in its SVG (scatter paths and
# points, bars, heatmap images, histogram bars)
PLOT_STATE = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const r = gd.getBoundingClientRect();
  return {id: gd.id, width: r.width, height: r.height, traces: (gd._fullData || []).length,
          svgs: gd.querySelectorAll('svg.main-svg').length,
          marks: gd.querySelectorAll('.scatterlayer path.js-line, .scatterlayer .point, .barlayer .point path, '
                                     + '.heatmaplayer image').length};
})"""


@pytest.fixture(scope="module")
def report(tmp_path_factory, tokenizer):
    """A real `compare` on a tiny GPT-2 saved to disk: 3 methods x 1 seed, 10 steps (snapshots at 0, 5, 10)."""
    root = tmp_path_factory.mktemp("report")
    model_dir = root / "tiny-gpt2"
    lm = make_tiny_lm("gpt2", tokenizer)
    lm.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = root / "cmp"
    old = os.environ.get("PTUNING_LAB_CACHE")
    os.environ["PTUNING_LAB_CACHE"] = str(root / "cache")        # the map's cache file stays in the test dir
    try:
        assert main(["compare", "--task", "capital", "--encoders", ",".join(ENCODERS), "--seeds", "1", "--model",
                     str(model_dir), "--max-steps", "10", "--eval-every", "5", "--batch-size", "4", "--max-examples",
                     "20", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    finally:
        if old is None:
            os.environ.pop("PTUNING_LAB_CACHE", None)
        else:
            os.environ["PTUNING_LAB_CACHE"] = old
    return out / "report.html"


def test_report_is_self_contained_html(report):
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    # plotly.js inlined exactly once (offline), one div per figure: bars + per task curves, map, 3 heatmaps
    assert text.count("Plotly.newPlot(") == 1 + 1 + 1 + len(ENCODERS)
    assert "<script src=" not in text and text.count("plotly.js v") >= 1
    summary = json.loads((report.parent / "summary.json").read_text())
    for row in summary["summary"]:                              # the comparison table shows every method
        assert f"<td>{row['encoder']}</td>" in text


def save(path, method, prompt, snaps=None):
    steps = list(range(0, 5 * len(snaps), 5)) if snaps is not None else None
    history = {"train": [{"step": s, "loss": 3.0 / s} for s in range(1, 11)],
               "eval": [{"step": 10, "dev_p_at_1": 0.5, "dev_loss": 1.0}]}
    ckpt.save_run(path, config={"encoder": {"method": method, "num_virtual_tokens": prompt.shape[0]},
                                "hidden_size": prompt.shape[1], "vocab_size": 300},
                  encoder_state={}, prompt=prompt, history=history, snapshot_steps=steps, snapshots=snaps)


def test_report_reads_the_runs_back_and_skips_what_has_no_map(tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 16, generator=g)
    lm = SimpleNamespace(name="toy", embedding=emb, token_strings=[f"t{i}" for i in range(300)], hidden_size=16)
    for seed in (0, 1):
        snaps = torch.randn(3, 4, 16, generator=g)
        save(tmp_path / "capital" / f"mlp-seed{seed}", "mlp", snaps[-1], snaps)
    save(tmp_path / "capital" / "prefix-seed0", "prefix", torch.randn(4, 96, generator=g))    # K/V prefix
    (tmp_path / "capital" / "lstm-seed0").mkdir()                     # unfinished: no config.json
    assert {t: sorted(r) for t, r in find_runs(tmp_path).items()} == {"capital": ["mlp-seed0", "mlp-seed1",
                                                                                  "prefix-seed0"]}
    summary = [{"task": "capital", "encoder": "mlp", "seeds": 2, "test_p_at_1": 0.5, "test_p_at_1_std": 0.1,
                "test_candidate_accuracy": 0.7, "test_candidate_accuracy_std": 0.0, "trainable_params": 64,
                "train_seconds": 1.0}]
    proj = fit_projection(emb, lm.token_strings, model_id="toy", subset=None, cache=False)
    text = write_report(tmp_path, lm=lm, summary=summary, rows=[], projection=proj).read_text()
    # bars, curves, the map (mlp seed 0 only) and one heatmap; the prefix run is named, not drawn
    assert text.count("Plotly.newPlot(") == 4 and "figure unavailable" not in text
    assert "Not on the map: prefix" in text and '"runs":["mlp-seed0"]' in text.replace(" ", "")
    assert "<td>0.500 ± 0.100</td>" in text and "Mean ± std over 2 seeds" in text
    # without the model: table, bars and curves only
    text = write_report(tmp_path, lm=None, summary=summary, rows=[]).read_text()
    assert text.count("Plotly.newPlot(") == 2 and "No model was given" in text


@pytest.mark.browser
def test_report_renders_in_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium is missing at /usr/bin/chromium: run `make browser` (installs Debian's "
                    "chromium and chromium-driver) or `apt-get install chromium chromium-driver`.")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: "
                                   "pip install -e '.[test]'")
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 6", timeout=20000)
            state = page.evaluate(PLOT_STATE)
            assert len(state) == 1 + 1 + 1 + len(ENCODERS)
            for plot in state:
                assert plot["width"] > 200 and plot["height"] > 150, plot
                assert plot["svgs"] >= 1 and plot["traces"] >= 1, plot
                assert plot["marks"] > 0, f"nothing drawn in {plot}"
            # the map: vocabulary + 3 traces per method; the slider sits on the last step
            map_id = next(s["id"] for s in state if "vocabulary-map" in s["id"])
            assert next(s["traces"] for s in state if s["id"] == map_id) == 1 + 3 * len(ENCODERS)
            assert page.locator(f"#{map_id} .slider-container").count() == 1
            assert page.evaluate(f"document.getElementById('{map_id}').layout.sliders[0].active") == 2
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            page.locator(f"#{map_id}").screenshot(path=str(tmp_path / "vocab_map.png"))
            # stepping the animation to frame 0 moves each prompt back to its start (traces: start, path, now)
            mlp = 1 + 3 * page.evaluate(f"document.getElementById('{map_id}').layout.meta.runs.indexOf('mlp-seed0')")
            xs = f"Array.from(document.getElementById('{map_id}')._fullData[{{}}].x)"
            final_x = page.evaluate(xs.format(mlp + 2))
            page.wait_for_timeout(300)                  # nothing plays by itself: still the final step
            assert page.evaluate(xs.format(mlp + 2)) == final_x
            assert final_x != pytest.approx(page.evaluate(xs.format(mlp)))
            page.evaluate(f"""Plotly.animate('{map_id}', ['0'], {{mode: 'immediate', frame: {{duration: 0,
                          redraw: false}}, transition: {{duration: 0}}}})""")
            page.wait_for_timeout(200)
            start_x, now_x = page.evaluate(xs.format(mlp)), page.evaluate(xs.format(mlp + 2))
            assert now_x == pytest.approx(start_x) and now_x != pytest.approx(final_x)
        finally:
            browser.close()
    assert errors == []
    for name in ("report.png", "vocab_map.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
