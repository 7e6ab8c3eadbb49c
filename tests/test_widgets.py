"""Widgets without a front-end: the dashboard's callbacks and the live training view update their figures."""
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import TOY_D as D
from helpers import make_tiny_lm
from ptuning_lab import manifold as M
from ptuning_lab import widgets as W
from ptuning_lab.encoders import build_encoder
from ptuning_lab.tasks import Example, Task
from ptuning_lab.trainer import Callback, TrainConfig, Trainer

N = 3


@pytest.fixture(scope="module")
def runs():
    g = torch.Generator().manual_seed(1)
    return {"mlp": ([0, 5, 10, 15], torch.randn(4, N, D, generator=g)),
            "direct": ([0, 10], torch.randn(2, N + 1, D, generator=g))}


def top_k(vectors, E, k):
    v = vectors.double() / vectors.double().norm(dim=1, keepdim=True)
    e = E.double() / E.double().norm(dim=1, keepdim=True)
    top = (v @ e.T).topk(k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def xy(trace):
    return np.c_[np.asarray(trace.x, dtype=float), np.asarray(trace.y, dtype=float)]


# ------------------------------------------------------------------ the dashboard
def test_dashboard_callbacks_update_map_and_table(projection, emb, strings, runs):
    dash = W.RunDashboard(runs, projection, emb, strings, k=4)
    fig = dash.map_figure
    assert len(fig.data) == 1 + 3 * 2 + 1 and fig.data[-1].name == "selected"
    assert not fig.frames and not fig.layout.sliders and dash.steps == [0, 5, 10, 15]
    # start: first run, last step, [P]0
    assert (dash.run_name, dash.step, dash.token) == ("mlp", 15, 0)
    mlp, direct = runs["mlp"][1], runs["direct"][1]
    np.testing.assert_allclose(xy(fig.data[-1]), projection.transform(mlp[-1])[:1], atol=1e-9)
    np.testing.assert_allclose(np.asarray(dash.table_figure.data[0].z), top_k(mlp[-1], emb, 4)[0], atol=1e-5)

    dash.select("direct")
    assert [fig.data[i].opacity for i in (3, 6)] == [0.3, 1.0]
    np.testing.assert_allclose(xy(fig.data[-1]), projection.transform(direct[-1])[:1], atol=1e-9)
    assert len(dash.table_figure.data[0].y) == N + 1
    np.testing.assert_allclose(np.asarray(dash.table_figure.data[0].z), top_k(direct[-1], emb, 4)[0], atol=1e-5)

    dash.set_step(1)                        # step 5: direct has only snapshots 0 and 10, so it shows step 0
    assert dash.step == 5 and dash.snapshot_index == 0
    np.testing.assert_allclose(xy(fig.data[6]), projection.transform(direct[0]), atol=1e-9)
    np.testing.assert_allclose(xy(fig.data[3]), projection.transform(mlp[1]), atol=1e-9)
    assert "step 0" in dash.table_figure.layout.title.text

    dash.set_token(3)
    np.testing.assert_allclose(xy(fig.data[-1]), projection.transform(direct[0])[3:4], atol=1e-9)
    assert (dash.table_figure.layout.shapes[0].y0, dash.table_figure.layout.shapes[0].y1) == (2.5, 3.5)
    scores, ids = top_k(direct[0], emb, 4)
    near = dash.nearest
    assert near["token_id"].tolist() == ids[3].tolist()
    assert near["token"].tolist() == [M.readable_token(strings[i]) for i in ids[3]]
    np.testing.assert_allclose(near["score"], scores[3], atol=1e-5)

    dash.select("mlp")                      # mlp has 3 virtual tokens: [P]3 falls back to [P]0
    assert dash.token == 0
    dash.set_step(-1)
    assert dash.step == 15
    with pytest.raises(ValueError, match=r"choose one of \['mlp', 'direct'\]"):
        dash.select("gru")
    with pytest.raises(ValueError, match="4 snapshot steps"):
        dash.set_step(4)
    with pytest.raises(ValueError, match=r"\[P\]0..\[P\]2"):
        dash.set_token(3)


@pytest.mark.parametrize("front_end", ["figurewidget", "output"])
def test_dashboard_widget_without_a_front_end(projection, emb, strings, runs, monkeypatch, front_end):
    if front_end == "output":
        monkeypatch.setitem(sys.modules, "anywidget", None)      # as if anywidget were not installed
    else:
        pytest.importorskip("anywidget", reason="plotly's FigureWidget needs anywidget (in the test extra)")
    dash = W.RunDashboard(runs, projection, emb, strings, k=3)
    box = dash.widget
    assert dash.widget is box
    run, step, token = dash._controls
    assert dash._views["map"].kind == front_end
    # moving a control calls the callback (the traitlets events fire without a browser)
    run.value = "direct"
    assert dash.run_name == "direct" and len(token.options) == N + 1
    step.value = 2
    assert dash.step == 10
    token.value = 2
    assert dash.token == 2
    # calling a method moves the control
    dash.set_token(1)
    assert token.value == 1
    if front_end == "figurewidget":         # the shown figure follows the state
        shown = dash._views["map"].widget
        np.testing.assert_allclose(xy(shown.data[-1]), xy(dash.map_figure.data[-1]))
        np.testing.assert_allclose(xy(shown.data[6]), projection.transform(runs["direct"][1][1]), atol=1e-9)
        assert dash._views["table"].widget.layout.shapes[0].y0 == 0.5


# ------------------------------------------------------------------ live training
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_live_view_is_throttled_by_wall_time():
    clock = FakeClock()
    view = W.LiveTrainingView(every_s=1.0, clock=clock)
    trainer = SimpleNamespace(total_steps=10, encoder=SimpleNamespace(method="lstm"))
    drawn = []
    for step, t in enumerate([0.0, 0.5, 0.9, 1.2, 1.3, 2.5], start=1):
        clock.t = t
        view.on_step_end(trainer, step, 5.0 - step)
        drawn.append(view.redraws)
    assert drawn == [1, 1, 1, 2, 2, 3]                     # at 0 (first), 1.2 and 2.5 s
    # what was recorded in between is drawn at the next redraw
    assert list(view.figure.data[1].y) == [4.0, 3.0, 2.0, 1.0, 0.0, -1.0]
    assert view.figure.data[1].name == "lstm" and view.figure.data[1].line.color == W.F.METHOD_COLORS["lstm"]
    clock.t = 2.6
    view.on_eval(trainer, {"step": 6, "dev_p_at_1": 0.25, "dev_loss": 2.0})
    assert view.redraws == 3 and len(view.figure.data[3].x) == 0   # throttled: not drawn yet
    view.on_train_end(trainer, None)                       # the end always draws
    assert view.redraws == 4 and list(view.figure.data[3].y) == [0.25]
    assert view.status() == "step 6/10 · loss -1.000 · dev_p_at_1 0.250"
    assert view.map_figure is None and len(view.widget.children) == 2
    with pytest.raises(ValueError, match="every_s"):
        W.LiveTrainingView(every_s=-1)


def test_live_view_says_one_run_and_keeps_p_at_1_in_its_range():
    view = W.LiveTrainingView(every_s=0.0)
    assert "one run" in view.figure.layout.title.text and "seeds" not in view.figure.layout.title.text
    assert tuple(view.figure.layout.yaxis2.range) == (0, 1.02)        # dev P@1, not autoranged to [-1, 4]
    assert W.LiveTrainingView(metric="dev_loss").figure.layout.yaxis2.range is None


def toy_task(n=24):
    words = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light"]
    answers = ["north", "south", "east", "west"]
    exs = [Example(words[i % len(words)] + str(i), answers[i % 4]) for i in range(n)]
    return Task("toy", "Direction of [X] is", exs[: n // 2], exs[n // 2: 3 * n // 4], exs[3 * n // 4:], sorted(answers))


class StepClock(Callback):
    """Wall time of each training step (to compare with the view's drawing time)."""

    def __init__(self):
        self.last, self.seconds = None, []

    def on_step_end(self, trainer, step, loss):
        now = time.perf_counter()
        if self.last is not None:
            self.seconds.append(now - self.last)
        self.last = now


def test_live_view_follows_a_real_trainer(tokenizer):
    lm = make_tiny_lm("gpt2", tokenizer)
    proj = M.fit_projection(lm.embedding.detach(), lm.token_strings, model_id="tiny", subset=500, cache=False)
    view = W.LiveTrainingView(proj, every_s=0.0, embedding=lm.embedding.detach(), token_strings=lm.token_strings)
    shown = view.widget                                     # built before training, as in a notebook
    enc = build_encoder("mlp", 3, lm.embedding.detach(), init="vocab", seed=0)
    trainer = Trainer(lm, enc, toy_task(), "[P][P] Direction of [X] is [P]", progress=False, callbacks=[view],
                      config=TrainConfig(lr=1e-2, batch_size=4, max_steps=6, eval_every=3, snapshot_every=2))
    result = trainer.fit()
    assert [r["loss"] for r in view.history["train"]] == [r["loss"] for r in result.history["train"]]
    np.testing.assert_allclose(view.figure.data[1].y, [r["loss"] for r in result.history["train"]])
    np.testing.assert_allclose(view.figure.data[3].y, [r["dev_p_at_1"] for r in result.history["eval"]])
    assert view.steps == result.snapshot_steps == [0, 2, 4, 6]
    np.testing.assert_allclose(np.stack(view.snapshots), result.snapshots.numpy(), atol=1e-6)
    start, path, now = view.map_figure.data[-3:]
    np.testing.assert_allclose(xy(now), proj.transform(view.snapshots[-1]), atol=1e-9)
    np.testing.assert_allclose(xy(start), proj.transform(view.snapshots[0]), atol=1e-9)
    assert len(path.x) == 3 * (4 + 1) and now.name == "mlp"
    top = M.nearest_tokens(view.snapshots[-1], lm.embedding, lm.token_strings, k=1, metrics=("cosine",))
    assert f"nearest: {top['token'][0]} " in now.hovertext[0]
    # every event redrew (every_s=0): steps + snapshots + evaluations + the end
    assert view.redraws == 6 + 4 + 2 + 1
    # the shown widgets follow
    status, curves, map_view = shown.children
    assert status.value.startswith("step 6/6 · loss ")
    if view._views["curves"].kind == "figurewidget":
        np.testing.assert_allclose(curves.data[1].y, view.figure.data[1].y)
        np.testing.assert_allclose(xy(map_view.data[-1]), xy(now))


def test_live_view_costs_little_at_the_default_interval(tokenizer):
    """The bound behind "under 10%": one redraw costs far less than every_s (1 s by default)."""
    lm = make_tiny_lm("gpt2", tokenizer)
    proj = M.fit_projection(lm.embedding.detach(), lm.token_strings, model_id="tiny", subset=2000, cache=False)
    view = W.LiveTrainingView(proj, every_s=0.0)
    view.widget
    stub = SimpleNamespace(total_steps=200, encoder=SimpleNamespace(method="mlp"))
    g = torch.Generator().manual_seed(0)
    for step in range(1, 201):                               # a long run's worth of history
        view.history["train"].append({"step": step, "loss": float(torch.rand(1, generator=g))})
        if step % 5 == 0:
            view.on_snapshot(stub, step, torch.randn(6, 32, generator=g))
        if step % 20 == 0:
            view.history["eval"].append({"step": step, "dev_p_at_1": step / 200})
    view.redraws, view.redraw_seconds = 0, 0.0
    cpu = time.process_time()
    for _ in range(5):
        view.redraw()
    # CPU time: on a shared machine the wall time also counts waiting for a core
    per_redraw = (time.process_time() - cpu) / 5
    print(f"LiveTrainingView redraw: {1000 * per_redraw:.1f} ms CPU, {1000 * view.redraw_seconds / 5:.1f} ms wall "
          f"(share of training at every_s=1: {100 * per_redraw:.1f}%)")
    assert per_redraw < 0.1
