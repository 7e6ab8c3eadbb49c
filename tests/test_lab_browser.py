"""One lesson as a student meets it: JupyterLab in headless Chromium, Run All at CI size, then the
vocabulary map and the live training widget must be drawn on the page (not a text fallback such as
"VBox(children=...)" or "Loading widget...").

Like tests/test_report_browser.py it drives the system Chromium (`make browser` installs it) through
Playwright's Python package, and is skipped when Chromium is missing. The lesson runs on a copy in a
temporary folder (outputs are saved there, never into notebooks/), with the embedded model offline.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ptuning_lab import course

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
LESSON = "02_direct_prompt_tuning"        # a PCA map, the live training view (ipywidgets + plotly) and a heatmap
TOKEN = "ptuning-lab-browser-test"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The notebook as JupyterLab's model holds it (the app is exposed by --LabApp.expose_app_in_browser).
NOTEBOOK_STATE = """() => {
  const app = window.jupyterapp, panel = app && app.shell.currentWidget;
  if (!panel || !panel.content || !panel.content.model || !panel.sessionContext.session) return null;
  const cells = panel.content.model.cells, errors = [];
  let code = 0, done = 0;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    code += 1;
    if (cell.executionCount) done += 1;
    for (let j = 0; j < cell.outputs.length; j++) {
      const out = cell.outputs.get(j).toJSON();
      if (out.output_type === 'error') errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
    }
  }
  const kernel = panel.sessionContext.session.kernel;
  return {code, done, errors, status: kernel ? kernel.status : 'none'};
}"""

# every plotly graph inside the notebook's outputs: drawn SVG, traces, scatter points, and whether it
# sits inside an ipywidgets box (the live view) or is a plain figure output (the map)
PLOTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output .plot-container'))
  .map(c => c.parentElement).map(gd => ({
  inWidget: !!gd.closest('.widget-vbox, .widget-box'),
  svgs: gd.querySelectorAll('svg.main-svg').length,
  traces: (gd._fullData || []).length,
  names: (gd._fullData || []).map(t => t.name || ''),
  points: gd.querySelectorAll('.scatterlayer .point').length,
  sliders: gd.querySelectorAll('.slider-container').length,
  width: gd.getBoundingClientRect().width,
}))"""

FIGURES_DRAWN = """(() => { const figs = Array.from(document.querySelectorAll('.jp-OutputArea-output .plot-container'));
  return figs.length >= 3 && figs.every(f => f.querySelector('svg.main-svg')); })()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """JupyterLab serving a copy of the lesson, with its settings, workspaces and runtime files in tmp_path."""
    pytest.importorskip("jupyterlab", reason="jupyterlab is in the notebooks extra: pip install -e '.[all]'")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(course.notebooks_dir() / f"{LESSON}.ipynb", work)
    # JupyterLab draws only the cells in view by default; the test looks at every output
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port = free_port()
    env = dict(os.environ, PTUNING_LAB_SIZE="ci", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               PYTHONPATH=os.pathsep.join([str(Path(course.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
           "--ServerApp.open_browser=False",
           *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])]   # CI containers run as root
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s:\n" + (tmp_path / "lab.log").read_text()[-3000:])
        yield base, work
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_a_lesson_runs_in_jupyterlab_and_draws_its_map_and_live_widget(jupyter_lab):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium is missing at /usr/bin/chromium: run `make browser` (installs Debian's "
                    "chromium and chromium-driver) or `apt-get install chromium chromium-driver`.")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: "
                                   "pip install -e '.[test]'")
    base, work = jupyter_lab
    page_errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            page.goto(f"{base}/lab/tree/{LESSON}.ipynb?token={TOKEN}", wait_until="load")
            page.wait_for_function(f"(() => {{ const s = ({NOTEBOOK_STATE})(); return s && s.status === 'idle'; }})()",
                                   timeout=120_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            deadline, state = time.monotonic() + 600, None
            while time.monotonic() < deadline:
                state = page.evaluate(f"({NOTEBOOK_STATE})()")
                if state["errors"] or (state["done"] == state["code"] and state["status"] == "idle"):
                    break
                time.sleep(2)
            assert not state["errors"], state["errors"]
            assert state["done"] == state["code"] > 10, state
            # figure outputs (jupyterlab-plotly) draw once in view, after the last output arrived
            page.evaluate("document.querySelectorAll('.jp-OutputArea-output .plot-container')"
                          ".forEach(e => e.scrollIntoView())")
            page.wait_for_function(FIGURES_DRAWN, timeout=60_000)
            plots = page.evaluate(PLOTS)
            widget_text = page.evaluate("Array.from(document.querySelectorAll('.jp-OutputArea-output')).map("
                                        "o => o.innerText).join('\\n')")
        finally:
            browser.close()
    # the live training view: an ipywidgets box drawn with its plotly figures inside, not its repr
    live = [p for p in plots if p["inWidget"]]
    assert live and all(p["svgs"] >= 1 and p["width"] > 100 for p in live), plots
    assert "VBox(children=" not in widget_text and "Loading widget" not in widget_text
    # the vocabulary map (the last figure of the lesson body): vocabulary points and the run's prompt drawn
    maps = [p for p in plots if not p["inWidget"] and any(n.startswith("vocabulary (") for n in p["names"])]
    assert len(maps) == 1 and "direct" in maps[0]["names"], plots
    assert maps[0]["points"] >= 100 and maps[0]["sliders"] == 1, maps      # its steps slider drawn too
    assert not page_errors, page_errors
    # the lesson ran on the copy: notebooks/ was never opened by the server
    assert sorted(p.name for p in work.glob("*.ipynb")) == [f"{LESSON}.ipynb"]
