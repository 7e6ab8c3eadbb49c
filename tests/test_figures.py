"""Figures: the data each plotly figure carries (trace counts, coordinates, hover text), on small synthetic runs."""
import math

import numpy as np
import pytest
import torch

from helpers import TOY_D as D
from helpers import TOY_V as V
from ptuning_lab import checkpoint as ckpt
from ptuning_lab import figures as F
from ptuning_lab import manifold as M
from ptuning_lab.trainer import TrainResult

N = 3


@pytest.fixture(scope="module")
def stats(emb):
    return M.vocab_stats(emb, model_id="toy", subset=None, n_random=200, cache=False)


def snapshots(S, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(S, N, D, generator=g)


@pytest.fixture
def runs(tmp_path):
    """An MLP Run saved and loaded from disk (snapshots at 0, 5, 10, 15) and a direct TrainResult (0, 10)."""
    mlp = snapshots(4, 1)
    ckpt.save_run(tmp_path / "mlp-seed0", config={"encoder": {"method": "mlp", "num_virtual_tokens": N},
                                                  "hidden_size": D, "vocab_size": V},
                  encoder_state={}, prompt=mlp[-1], history={}, snapshot_steps=[0, 5, 10, 15], snapshots=mlp)
    direct = snapshots(2, 2)
    result = TrainResult(encoder=None, prompt=direct[-1], history={}, snapshot_steps=[0, 10], snapshots=direct,
                         best_step=10, best_dev={}, stopped="finished", seconds=0.0)
    return {"mlp-seed0": ckpt.load_run(tmp_path / "mlp-seed0"), "direct": result}


def brute_cosine_top(vectors, E, k):
    v = vectors.double() / vectors.double().norm(dim=1, keepdim=True)
    e = E.double() / E.double().norm(dim=1, keepdim=True)
    top = (v @ e.T).topk(k, dim=1)
    return top.values.numpy(), top.indices.numpy()


# ------------------------------------------------------------------ vocabulary map
def test_vocab_map_traces_coordinates_and_hover(projection, runs, emb, strings):
    fig = F.vocab_map(projection, runs, strings, emb, k_hover=2)
    assert len(fig.data) == 1 + 3 * 2
    assert [t.name for t in fig.data[1:]] == ["mlp-seed0 start", "mlp-seed0 path", "mlp-seed0",
                                              "direct start", "direct path", "direct"]
    # the vocabulary: every fitted token, hover = its readable string
    vocab = fig.data[0]
    np.testing.assert_allclose(np.c_[vocab.x, vocab.y], projection.coords)
    assert list(vocab.hovertext[:3]) == ["tok0", "␣w1", "tok2"]
    # the figure shows the last step: every run at its final snapshot, starts at the first
    mlp = runs["mlp-seed0"].snapshots
    np.testing.assert_allclose(np.c_[fig.data[3].x, fig.data[3].y], projection.transform(mlp[-1]), atol=1e-9)
    np.testing.assert_allclose(np.c_[fig.data[1].x, fig.data[1].y], projection.transform(mlp[0]), atol=1e-9)
    assert list(fig.data[3].text) == ["0", "1", "2"]
    # hover: run, virtual token, step and the nearest tokens by cosine (brute force)
    scores, ids = brute_cosine_top(mlp[-1], emb, 2)
    for j, text in enumerate(fig.data[3].hovertext):
        assert text.startswith(f"<b>mlp-seed0</b> [P]{j} · step 15<br>nearest: ")
        assert f"{M.readable_token(strings[ids[j, 0]])} {scores[j, 0]:.2f}, " in text
        assert f"{M.readable_token(strings[ids[j, 1]])} {scores[j, 1]:.2f}" in text


def test_vocab_map_frames_step_through_training(projection, runs, emb, strings):
    fig = F.vocab_map(projection, runs, strings)                    # no embedding: no nearest tokens
    steps = [0, 5, 10, 15]                                          # the union of both runs' steps
    assert fig.layout.meta["steps"] == steps and fig.layout.meta["runs"] == ["mlp-seed0", "direct"]
    assert [f.name for f in fig.frames] == ["0", "1", "2", "3"]
    assert [s["label"] for s in fig.layout.sliders[0].steps] == ["0", "5", "10", "15"]
    assert fig.layout.sliders[0].active == 3
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
    direct = runs["direct"].snapshots
    for f, step in enumerate(steps):
        frame = fig.frames[f]
        assert list(frame.traces) == [2, 3, 5, 6]                   # paths and current vectors only
        # direct has snapshots at 0 and 10 only: at step 5 it still shows step 0
        d_idx = 0 if step < 10 else 1
        now = frame.data[3]
        np.testing.assert_allclose(np.c_[now.x, now.y], projection.transform(direct[d_idx]), atol=1e-9)
        assert now.hovertext[0] == f"<b>direct</b> [P]0 · step {[0, 10][d_idx]}"
        # the mlp path: one polyline per virtual token (f + 1 points), separated by a NaN gap
        path = np.asarray(frame.data[0].x, dtype=float)
        assert len(path) == N * (f + 2) and np.isnan(path[f + 1]) and np.isfinite(path[: f + 1]).all()
        want = projection.transform(runs["mlp-seed0"].snapshots[: f + 1, 1])
        np.testing.assert_allclose(path[f + 2: 2 * f + 3], want[:, 0], atol=1e-9)


def test_vocab_map_inputs(projection, emb, strings, tmp_path):
    S = snapshots(3, 3)
    # a (steps, snapshots) tuple, a bare (S, n, d) tensor and a prompt (n, d) are all runs
    fig = F.vocab_map(projection, {"a": ([0, 2, 4], S), "b": S, "c": S[0]}, strings, frame=0)
    assert fig.layout.meta["steps"] == [0, 1, 2, 4] and fig.layout.sliders[0].active == 0
    np.testing.assert_allclose(np.c_[fig.data[3].x, fig.data[3].y], projection.transform(S[0]), atol=1e-9)
    # a run saved without snapshots counts as its final prompt
    ckpt.save_run(tmp_path / "r", config={"encoder": {"method": "direct", "num_virtual_tokens": N}, "hidden_size": D,
                                                   "vocab_size": V},
                  encoder_state={}, prompt=S[1], history={})
    fig = F.vocab_map(projection, {"r": ckpt.load_run(tmp_path / "r")}, controls=False)
    assert len(fig.data) == 4 and len(fig.frames) == 1 and not fig.layout.sliders
    # only the vocabulary, sampled down to max_vocab_points (hover still matches each point)
    fig = F.vocab_map(projection, None, strings, max_vocab_points=50)
    assert len(fig.data) == 1 and len(fig.data[0].x) == 50 and not fig.frames
    for x, y, text in zip(fig.data[0].x[:5], fig.data[0].y[:5], fig.data[0].hovertext[:5]):
        i = int(np.flatnonzero((projection.coords[:, 0] == x) & (projection.coords[:, 1] == y))[0])
        assert text == M.readable_token(strings[projection.token_ids[i]])
    with pytest.raises(ValueError, match="2 steps for 3 snapshots"):
        F.vocab_map(projection, {"bad": ([0, 1], S)})
    with pytest.raises(ValueError, match="width-16"):
        F.vocab_map(projection, {"wide": torch.zeros(2, 3, D + 1)})


def test_runs_and_train_results_are_run_like(runs):
    """Run and TrainResult are recognised by their type (RunLike), a tensor or a tuple is not."""
    for name, run in runs.items():
        assert isinstance(run, F.RunLike)
        traj = F.as_trajectory(run, name)
        assert traj.steps == list(run.snapshot_steps)
        np.testing.assert_array_equal(traj.snapshots, run.snapshots.numpy())
    S = snapshots(2, 4)
    assert not isinstance(S, F.RunLike) and not isinstance(([0, 1], S), F.RunLike)


def test_snapshots_are_copied(projection):
    """A trainer's prompt may BE a parameter that keeps training: figures keep a copy."""
    p = torch.zeros(N, D)
    traj = F.as_trajectory(p, "x")
    p += 1
    assert traj.snapshots.sum() == 0


# ------------------------------------------------------------------ training curves
def history(losses, evals):
    return {"train": [{"step": i + 1, "loss": v, "lr": 0.1} for i, v in enumerate(losses)],
            "eval": [{"step": s, "epoch": 1.0, "train_loss": 0.0, "dev_p_at_1": p, "dev_loss": 1 - p}
                     for s, p in evals]}


def test_training_curves_mean_and_band_over_seeds():
    h1 = history([4.0, 3.0, 2.0], [(2, 0.2), (3, 0.4)])
    h2 = history([2.0, 1.0], [(2, 0.6), (3, 0.8)])            # a shorter seed: step 3 has one value
    fig = F.training_curves({"mlp": [h1, h2], "lstm": h1})
    assert len(fig.data) == 8
    assert [t.name for t in fig.data[:4]] == ["mlp ± std", "mlp", "mlp ± std", "mlp"]
    loss_band, loss, dev_band, dev = fig.data[:4]
    np.testing.assert_allclose(loss.x, [1, 2, 3])
    np.testing.assert_allclose(loss.y, [3.0, 2.0, 2.0])
    std = np.array([np.std([4, 2], ddof=1), np.std([3, 1], ddof=1), 0.0])
    np.testing.assert_allclose(loss_band.x, [1, 2, 3, 3, 2, 1])
    np.testing.assert_allclose(loss_band.y, np.r_[[3, 2, 2] + std, ([3, 2, 2] - std)[::-1]])
    np.testing.assert_allclose(np.asarray(loss.customdata)[:, 1], [2, 2, 1])           # seeds per step
    np.testing.assert_allclose(dev.y, [0.4, 0.6])
    np.testing.assert_allclose(dev_band.y[:2], [0.4 + np.std([0.2, 0.6], ddof=1), 0.6 + np.std([0.4, 0.8], ddof=1)])
    assert fig.data[1].line.color == F.METHOD_COLORS["mlp"] and fig.data[5].line.color == F.METHOD_COLORS["lstm"]
    # one seed: zero-width band; the legend lists each method once
    np.testing.assert_allclose(fig.data[4].y, [4, 3, 2, 2, 3, 4])
    assert [t.name for t in fig.data if t.showlegend] == ["mlp", "lstm"]


def test_training_curves_options_and_errors():
    h = history([4.0, 2.0, 0.0, 2.0], [(4, 0.5)])
    fig = F.training_curves({"direct": [h]}, metric="dev_loss", smooth=2)
    np.testing.assert_allclose(fig.data[1].y, [4.0, 3.0, 1.0, 1.0])
    np.testing.assert_allclose(fig.data[3].y, [0.5])
    assert fig.layout.annotations[1].text == "dev loss"
    # no data yet (a live view before the first step): the four traces exist, empty
    fig = F.training_curves({"live": [{"train": [], "eval": []}]})
    assert len(fig.data) == 4 and all(len(t.x) == 0 for t in fig.data)
    with pytest.raises(ValueError, match="available: dev_loss, dev_p_at_1, epoch, train_loss"):
        F.training_curves({"mlp": [h]}, metric="accuracy")
    with pytest.raises(ValueError, match="non-empty dict"):
        F.training_curves({})


# ------------------------------------------------------------------ distributions
def test_norm_distribution(stats, runs):
    prompt = runs["mlp-seed0"].prompt
    fig = F.norm_distribution(stats, {"mlp-seed0": prompt, "direct": runs["direct"]})
    assert len(fig.data) == 3
    np.testing.assert_allclose(fig.data[0].x, stats.norms)
    norms = prompt.double().norm(dim=1).numpy()
    np.testing.assert_allclose(fig.data[1].x, norms)
    assert list(fig.data[1].y) == ["mlp-seed0"] * N and list(fig.data[2].y) == ["direct"] * N
    pct = stats.norm_percentile(norms)
    assert fig.data[1].hovertext[0].startswith(f"<b>mlp-seed0</b> [P]0: |p| = {norms[0]:.3f} "
                                               f"({norms[0] / stats.mean_norm:.2f} × mean token norm, {pct[0]:.0f}th")
    assert fig.layout.shapes[0].x0 == pytest.approx(stats.mean_norm)


def test_nn_cosine_distribution(stats, runs, emb):
    prompt = runs["mlp-seed0"].prompt
    fig = F.nn_cosine_distribution(stats, {"mlp": prompt}, emb)
    assert len(fig.data) == 3
    np.testing.assert_allclose(fig.data[0].x, stats.nn_cosine)
    np.testing.assert_allclose(fig.data[1].x, stats.random_best_cosine)
    scores, ids = brute_cosine_top(prompt, emb, 1)
    np.testing.assert_allclose(fig.data[2].x, scores[:, 0], atol=1e-5)
    assert f"(token id {ids[2, 0]})" in fig.data[2].hovertext[2]


def test_virtual_tokens_at_one_place_get_one_label(emb, strings, projection):
    # "The capital of is is is": the last three virtual tokens start as one word, so one point
    start = emb[[4, 8, 15, 16, 16, 16]]
    fig = F.vocab_map(projection, {"mlp": start}, strings)
    assert list(fig.data[3].text) == ["0", "1", "2", "3,4,5", "", ""]
    assert F.maps.point_labels(np.array([[0.0, 1.0], [0.0, 1.0 + 1e-9], [2.0, 0.0]])) == ["0,1", "", "2"]


def test_vocab_map_writes_common_words_on_the_map(emb, strings, projection):
    fig = F.vocab_map(projection, None, strings, label_tokens=5)
    word = M.word_like_mask(strings, min_length=3)
    expected = [i for i in sorted(projection.token_ids) if word[i]][:5]
    assert [a.text for a in fig.layout.annotations] == [M.readable_token(strings[i]) for i in expected]
    at = {int(t): i for i, t in enumerate(projection.token_ids)}
    assert [(a.x, a.y) for a in fig.layout.annotations] == [tuple(projection.coords[at[i]]) for i in expected]
    assert not F.vocab_map(projection, None, strings, label_tokens=0).layout.annotations


# ------------------------------------------------------------------ nearest-token heatmap
def test_nearest_token_heatmap(emb, strings, runs):
    prompt = runs["mlp-seed0"].prompt
    fig = F.nearest_token_heatmap(prompt, emb, strings, k=4, highlight=1)
    (h,) = fig.data
    scores, ids = brute_cosine_top(prompt, emb, 4)
    np.testing.assert_allclose(np.asarray(h.z), scores, atol=1e-5)
    assert [list(r) for r in h.text] == [[M.readable_token(strings[i]) for i in row] for row in ids]
    assert list(h.y) == ["[P]0", "[P]1", "[P]2"] and list(h.x) == ["1", "2", "3", "4"]
    assert fig.layout.meta["token_ids"] == ids.tolist()
    assert (fig.layout.shapes[0].y0, fig.layout.shapes[0].y1) == (0.5, 1.5)
    # L2: distances, so the colour scale is reversed (nearer = brighter) and the best is the smallest
    fig = F.nearest_token_heatmap(runs["direct"], emb, strings, k=3, metric="l2")
    z = np.asarray(fig.data[0].z)
    assert fig.data[0].reversescale and (np.diff(z, axis=1) >= 0).all() and not fig.layout.shapes
    d = torch.cdist(runs["direct"].prompt.double(), emb.double())
    np.testing.assert_allclose(z[:, 0], d.min(1).values.numpy(), atol=1e-4)


def test_nearest_token_heatmap_has_a_fixed_scale_and_shows_the_baseline(emb, strings, monkeypatch, tmp_path):
    monkeypatch.setenv("PTUNING_LAB_CACHE", str(tmp_path))
    stats = M.vocab_stats(emb, "toy", subset=None, n_random=100)
    # a prompt that is half real tokens, half vectors pointing away from every token (the mean's opposite)
    far = -emb.mean(0, keepdim=True).repeat(2, 1) + 1e-3 * torch.arange(2.0)[:, None]
    prompt = torch.cat([emb[[5, 9]], far])
    fig = F.nearest_token_heatmap(prompt, emb, strings, k=3, stats=stats)
    h = fig.data[0]
    assert (h.zmin, h.zmax) == (0.0, 1.0)                  # cosine: the same scale whatever the prompt
    base = M.decoding_baseline(prompt, emb, stats)
    assert fig.layout.meta["random_percentile"] == base.random_percentile.tolist()
    assert fig.layout.meta["meaningful"] == [True, True, False, False]
    assert [a.text for a in fig.layout.annotations] == [f"{p:.0f}% of random" for p in base.random_percentile]
    assert "2 of 4 rows" in fig.layout.title.text
    lost = F.nearest_token_heatmap(far, emb, strings, k=3, stats=stats)
    assert "not meaningful" in lost.layout.title.text
    # L2's range comes from the vocabulary, not from the prompt
    l2 = F.nearest_token_heatmap(prompt * 10, emb, strings, k=3, metric="l2").data[0]
    assert (l2.zmin, l2.zmax) == pytest.approx((0.0, 2 * float(emb.norm(dim=1).mean())))


# ------------------------------------------------------------------ waywardness and comparison
def test_waywardness_sweep():
    rows = [{"gamma": g, "accuracy": a, "f1": f, "seed": s} for g, a, f, s in
            [(0.1, 0.5, 0.6, 0), (0.1, 0.3, 0.8, 1), (0.0, 0.7, 0.1, 0), (1.0, 0.2, 1.0, 0)]]
    fig = F.waywardness_sweep(rows)
    assert len(fig.data) == 3
    acc, f1, trade = fig.data
    assert list(acc.x) == ["0", "0.1", "1"]
    np.testing.assert_allclose(acc.y, [0.7, 0.4, 0.2])
    np.testing.assert_allclose(acc.error_y.array, [0.0, np.std([0.5, 0.3], ddof=1), 0.0])
    np.testing.assert_allclose(f1.y, [0.1, 0.7, 1.0])
    np.testing.assert_allclose(trade.x, f1.y)
    np.testing.assert_allclose(trade.y, acc.y)
    assert list(trade.text) == ["γ=0", "γ=0.1", "γ=1"]
    assert list(fig.layout.xaxis.categoryarray) == ["0", "0.1", "1"]
    fig = F.waywardness_sweep([{**r, "method": m} for r in rows for m in ("mlp", "direct")])
    assert len(fig.data) == 6 and fig.data[3].line.color == F.METHOD_COLORS["direct"]
    with pytest.raises(ValueError, match=r"missing \['f1'\]"):
        F.waywardness_sweep([{"gamma": 0, "accuracy": 1}])


def test_comparison_bars():
    summary = [{"task": "capital", "encoder": "mlp", "seeds": 3, "test_p_at_1": 0.5, "test_p_at_1_std": 0.1,
                "test_candidate_accuracy": 0.6, "test_candidate_accuracy_std": 0.05},
               {"task": "capital", "encoder": "manual", "seeds": 1, "test_p_at_1": 0.2, "test_p_at_1_std": math.nan,
                "test_candidate_accuracy": 0.3},
               {"task": "continent", "encoder": "mlp", "seeds": 3, "test_p_at_1": 0.9, "test_p_at_1_std": 0.0,
                "test_candidate_accuracy": 0.95, "test_candidate_accuracy_std": 0.01}]
    fig = F.comparison_bars(summary)
    assert [(t.name, t.showlegend) for t in fig.data] == [("manual", True), ("manual", False), ("mlp", True),
                                                          ("mlp", False)]
    assert list(fig.data[2].x) == ["capital", "continent"]
    assert list(fig.data[2].y) == [0.5, 0.9] and list(fig.data[2].error_y.array) == [0.1, 0.0]
    assert list(fig.data[0].y) == [0.2, None] and list(fig.data[0].error_y.array) == [0.0, 0.0]
    assert fig.data[3].hovertext[0] == "mlp on capital: 0.600 ± 0.050 (3 seed(s))"
    assert fig.data[2].marker.color == F.METHOD_COLORS["mlp"]
    with pytest.raises(ValueError, match="no summary row has"):
        F.comparison_bars(summary, metrics=("dev_p_at_1",))


def test_colours_follow_the_method():
    assert F.method_of("mlp-seed0") == "mlp" and F.method_of("capital/lstm") == "lstm" and F.method_of("x") is None
    assert F.color_for("direct-seed2") == F.METHOD_COLORS["direct"]
    assert F.color_for("mine", 0) != F.color_for("mine", 1)
