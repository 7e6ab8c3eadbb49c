"""Vocabulary-manifold analysis: decoding vs brute force, drift, snapping, waywardness, caches, maps."""
import math
import time

import numpy as np
import pytest
import torch

from ptuning_lab import manifold as M

V, D = 400, 24


# ------------------------------------------------------------------ fixtures
def _strings(n: int, seed: int = 0) -> list[str]:
    """A fake vocabulary with word-like and non-word-like tokens."""
    rng = np.random.default_rng(seed)
    pieces = ["cat", " dog", " Paris", "ing", ".", " 1999", "a", " ", "<|endoftext|>", " x", "!!", " élan", "ab c"]
    return [pieces[i % len(pieces)] + ("" if i < len(pieces) else "".join(rng.choice(list("abcdefgh"), 2)))
            for i in range(n)]


@pytest.fixture
def emb():
    g = torch.Generator().manual_seed(0)
    # uneven norms make the three metrics disagree, as in real models
    return torch.randn(V, D, generator=g) * torch.rand(V, 1, generator=g).add(0.3)


@pytest.fixture
def strings():
    return _strings(V)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PTUNING_LAB_CACHE", str(tmp_path))
    return tmp_path


def _reference(vectors: np.ndarray, E: np.ndarray, k: int, metric: str, allowed=None):
    """Brute force in float64: (scores (n, k), ids (n, k)); l2 scores are distances."""
    v, e = vectors.astype(np.float64), E.astype(np.float64)
    if metric == "dot":
        s = v @ e.T
    elif metric == "cosine":
        s = (v @ e.T) / np.linalg.norm(v, axis=1)[:, None] / np.linalg.norm(e, axis=1)[None]
    else:
        s = -np.linalg.norm(v[:, None, :] - e[None], axis=-1)
    if allowed is not None:
        s = np.where(allowed[None], s, -np.inf)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(s, ids, 1)
    return (-scores if metric == "l2" else scores), ids


# ------------------------------------------------------------------ 1. decoding
@pytest.mark.parametrize("word_like", [False, True])
def test_nearest_tokens_match_brute_force(emb, strings, word_like, monkeypatch):
    monkeypatch.setattr(M.index, "_CHUNK_ELEMENTS", 3 * V)          # 3 queries per chunk: exercise chunking
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(10, D, generator=g)
    vectors[3] = emb[17] * 0.999                              # near a token: the L2 cancellation case
    table = M.nearest_tokens(vectors, emb, strings, k=6, word_like=word_like)
    assert list(table.columns) == ["virtual_token", "metric", "rank", "token_id", "token", "score"]
    assert len(table) == 10 * 3 * 6
    allowed = M.word_like_mask(strings) if word_like else None
    for metric in M.METRICS:
        ref_scores, ref_ids = _reference(vectors.numpy(), emb.numpy(), 6, metric, allowed)
        sub = table[table["metric"] == metric].sort_values(["virtual_token", "rank"])
        np.testing.assert_array_equal(sub["token_id"].to_numpy().reshape(10, 6), ref_ids)
        np.testing.assert_allclose(sub["score"].to_numpy().reshape(10, 6), ref_scores, rtol=1e-5, atol=1e-5)
    first = table.iloc[0]
    assert first["token"] == strings[first["token_id"]].replace(" ", "␣")


def test_numpy_and_torch_inputs_agree(emb, strings):
    vectors = emb[:5] + 0.1
    a = M.nearest_tokens(vectors, emb, strings, k=3)
    b = M.nearest_tokens(vectors.numpy(), emb.numpy(), strings, k=3)
    np.testing.assert_array_equal(a["token_id"], b["token_id"])
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)


def test_token_embedding_decodes_to_itself(emb, strings):
    t = 42
    table = M.nearest_tokens(emb[t], emb, strings, k=2)
    top = table[table["rank"] == 0].set_index("metric")
    assert top.loc["cosine", "token_id"] == t and top.loc["cosine", "score"] == pytest.approx(1.0, abs=1e-6)
    assert top.loc["l2", "token_id"] == t and top.loc["l2", "score"] == 0.0     # exact, not sqrt(rounding)
    snapped, ids = M.snap_to_vocab(emb[[t, 7]], emb, metric="l2")
    assert ids.tolist() == [t, 7]
    assert torch.equal(snapped, emb[[t, 7]])


def test_in_place_change_of_the_embedding_is_seen(emb):
    """The memoised norms must follow an in-place edit of the weights (version counter)."""
    E = emb.clone()
    probe = torch.randn(D) * 10
    M.nearest_tokens(probe, E, None, k=1, metrics=["cosine"])
    with torch.no_grad():
        E[5] = probe
    top = M.nearest_tokens(probe, E, None, k=1, metrics=["cosine", "l2"])
    assert top["token_id"].tolist() == [5, 5]


def test_word_like_mask():
    toks = [" Paris", "the", " élan", ".", " 1999", "a", " a", "ing!", "<|endoftext|>", "  two", "ab c", " ", "Ab"]
    assert M.word_like_mask(toks).tolist() == [True, True, True, False, False, False, False, False, False,
                                               False, False, False, True]


def test_metric_agreement(emb, strings):
    # a token's own row: cosine and L2 agree (cosine 1, distance 0); dot prefers long tokens
    longest = int(emb.norm(dim=1).argmax())
    vectors = torch.stack([emb[longest], emb[3]])
    table = M.nearest_tokens(vectors, emb, strings, k=1)
    dot_top = table[table["metric"] == "dot"]["token_id"].tolist()
    agree = M.metric_agreement(table)
    assert agree["cosine=l2"] == 1.0
    expected_dot = np.mean([d == t for d, t in zip(dot_top, [longest, 3])])
    assert agree["cosine=dot"] == agree["l2=dot"] == agree["all"] == pytest.approx(expected_dot)
    assert dot_top[0] == longest
    with pytest.raises(ValueError, match="at least two metrics"):
        M.metric_agreement(M.nearest_tokens(vectors, emb, strings, k=1, metrics=["cosine"]))


def test_clear_errors(emb, strings):
    with pytest.raises(ValueError, match="width 7 .* width 24"):
        M.nearest_tokens(torch.zeros(2, 7), emb, strings)
    with pytest.raises(ValueError, match="unknown metric"):
        M.nearest_tokens(emb[:2], emb, strings, metrics=["manhattan"])
    with pytest.raises(ValueError, match="token_strings has 3 entries"):
        M.nearest_tokens(emb[:2], emb, ["a", "b", "c"])
    with pytest.raises(ValueError, match="k=500"):
        M.nearest_tokens(emb[:2], emb, strings, k=500)


# ------------------------------------------------------------------ 2/3. baselines and drift
def test_vocab_stats_match_brute_force(emb, cache):
    stats = M.vocab_stats(emb, "toy", subset=None, n_random=50, seed=3)
    e = emb.double().numpy()
    norms = np.linalg.norm(e, axis=1)
    cos = (e @ e.T) / norms[:, None] / norms[None]
    np.fill_diagonal(cos, -np.inf)
    dist = np.linalg.norm(e[:, None] - e[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_array_equal(stats.subset_ids, np.arange(V))
    np.testing.assert_allclose(stats.norms, norms, rtol=1e-6)
    np.testing.assert_allclose(stats.nn_cosine, cos.max(1), rtol=1e-5)
    np.testing.assert_allclose(stats.nn_l2, dist.min(1), rtol=1e-5)
    assert stats.median_nn_l2 == pytest.approx(np.median(dist.min(1)), rel=1e-5)
    # random vectors at the vocabulary's per-dim scale, best cosine to any token
    assert stats.random_best_cosine.shape == (50,) and (np.abs(stats.random_best_cosine) <= 1 + 1e-6).all()
    again = M.vocab_stats(emb, "toy", subset=None, n_random=50, seed=3, cache=False)
    np.testing.assert_array_equal(again.random_best_cosine, stats.random_best_cosine)      # seeded
    sub = M.vocab_stats(emb, "toy", subset=60, n_random=50, seed=3, cache=False)
    assert len(sub.subset_ids) == 60 and len(set(sub.subset_ids.tolist())) == 60
    np.testing.assert_allclose(sub.nn_cosine, cos.max(1)[sub.subset_ids], rtol=1e-5)


def test_drift_on_constructed_prompt(emb, strings, cache):
    stats = M.vocab_stats(emb, "toy", n_random=100)
    t, u = 42, 9
    prompt = torch.stack([emb[t], 2 * emb[t], emb[u]])      # a token, the same token twice as long, another
    drift = M.drift_metrics(prompt, emb, stats, strings, relevant={"self": t, "other": u})
    tab = drift.table
    norms = emb.norm(dim=1).double().numpy()
    assert tab["nearest_id"].tolist() == [t, t, u]
    np.testing.assert_allclose(tab["max_cosine"], 1.0, atol=1e-6)
    np.testing.assert_allclose(tab["norm_ratio"], [norms[t] / norms.mean(), 2 * norms[t] / norms.mean(),
                                                   norms[u] / norms.mean()], rtol=1e-5)
    assert tab["norm_percentile"][0] == pytest.approx(100 * np.mean(norms <= norms[t]), abs=100 / V)
    assert tab["norm_percentile"][2] == pytest.approx(100 * np.mean(norms <= norms[u]), abs=100 / V)
    # L2: the doubled vector is |e_t| away from e_t unless another token is nearer
    d_double = np.linalg.norm(2 * emb[t].double().numpy() - emb.double().numpy(), axis=1).min()
    np.testing.assert_allclose(tab["nn_l2"], [0.0, d_double, 0.0], atol=1e-5)
    np.testing.assert_allclose(tab["nn_l2_ratio"], tab["nn_l2"] / stats.median_nn_l2)
    assert tab["max_cosine_pct_vocab"].tolist() == pytest.approx(
        [100 * np.mean(stats.nn_cosine <= c) for c in tab["max_cosine"]])
    assert tab["rank:self"].tolist()[:2] == [0, 0] and tab["rank:other"][2] == 0
    cos_tu = float(torch.cosine_similarity(emb[t], emb[u], dim=0))
    expected_pair = np.array([[1, 1, cos_tu], [1, 1, cos_tu], [cos_tu, cos_tu, 1]])
    np.testing.assert_allclose(drift.pairwise_cosine, expected_pair, atol=1e-6)
    assert drift.mean_pairwise_cosine == pytest.approx((2 + 4 * cos_tu) / 6, abs=1e-6)
    assert drift.duplicate_nearest == 1
    assert tab["shares_nearest"].tolist() == [1, 1, 0]
    assert tab["nearest_token"][0] == strings[t].replace(" ", "␣")


def test_rank_of_relevant_tokens_matches_sort(emb, cache):
    stats = M.vocab_stats(emb, "toy", n_random=20)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randn(4, D, generator=g)
    drift = M.drift_metrics(prompt, emb, stats, relevant=[3, 100, 250])
    cos = torch.nn.functional.normalize(prompt, dim=1) @ torch.nn.functional.normalize(emb, dim=1).T
    order = cos.argsort(dim=1, descending=True)
    for j, tid in enumerate([3, 100, 250]):
        expected = (order == tid).nonzero()[:, 1].tolist()
        assert drift.table[f"rank:{tid}"].tolist() == expected


def test_drift_over_training_matches_per_step(emb, strings, cache):
    stats = M.vocab_stats(emb, "toy", n_random=20)
    g = torch.Generator().manual_seed(2)
    snaps = torch.randn(3, 4, D, generator=g)
    snaps[2, 1] = snaps[2, 0]                                   # a collapse at the last step
    frame = M.drift_over_training(snaps, emb, steps=[0, 5, 10], stats=stats, token_strings=strings)
    assert len(frame) == 12 and frame["step"].tolist() == [0] * 4 + [5] * 4 + [10] * 4
    for s, step in enumerate([0, 5, 10]):
        one = M.drift_metrics(snaps[s], emb, stats, strings)
        part = frame[frame["step"] == step].reset_index(drop=True)
        np.testing.assert_allclose(part["max_cosine"], one.table["max_cosine"], rtol=1e-6)
        np.testing.assert_allclose(part["mean_pairwise_cosine"], one.mean_pairwise_cosine, rtol=1e-6)
        assert part["duplicate_nearest"].tolist() == [one.duplicate_nearest] * 4
    assert frame[frame["step"] == 10]["duplicate_nearest"].iloc[0] >= 1
    with pytest.raises(ValueError, match="2 steps for 3 snapshots"):
        M.drift_over_training(snaps, emb, steps=[0, 1], stats=stats)


# ------------------------------------------------------------------ 4. faithfulness
def test_snap_report(emb, strings):
    target = emb[11]

    def evaluate(prompt):                    # higher is better: closeness of row 0 to token 11
        return -float((prompt[0] - target).norm())

    prompt = torch.stack([emb[11] * 1.5, emb[2] + 0.01])
    rep = M.snap_report(evaluate, prompt, emb, metrics=("cosine", "l2"), token_strings=strings)
    assert rep["original"] == pytest.approx(-float((emb[11] * 0.5).norm()), rel=1e-6)
    assert rep["token_ids"]["cosine"][0] == 11 and rep["snapped"]["cosine"] == 0.0
    assert rep["drop"]["cosine"] == pytest.approx(rep["original"] - rep["snapped"]["cosine"])
    assert rep["tokens"]["cosine"][0] == strings[11].replace(" ", "␣")
    l2_first = int(((emb - emb[11] * 1.5).norm(dim=1)).argmin())
    assert rep["token_ids"]["l2"][0] == l2_first


def test_waywardness_penalty_value_and_gradient():
    prompt = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    pen = M.waywardness_penalty(prompt, target)
    assert pen.item() == pytest.approx((4 + 5 + 9) / 3)
    pen.backward()
    torch.testing.assert_close(prompt.grad, 2 * (prompt.detach() - target) / 3)
    with pytest.raises(ValueError, match="must both be"):
        M.waywardness_penalty(prompt, target[:2])


@pytest.mark.parametrize("decoded, target, expected", [
    ([" The", " capital", " of"], "the capital of", 1.0),
    ([" the", " capital", " city"], "The capital of", 2 / 3),
    ([" cap", "ital", " city"], "capital", 2 * (1 / 2) * 1 / (1 / 2 + 1)),       # subwords join: "capital city"
    (["␣Paris,", "␣paris", "␣the"], "Paris is the capital", 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)),
    ([" a", " a", " a"], "a b", 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),        # counts clip at the target's
    ([" dog"], "cat", 0.0),
    ([], "", 1.0),
    ([" ."], "word", 0.0),
])
def test_decoded_f1(decoded, target, expected):
    assert M.decoded_f1(decoded, target) == pytest.approx(expected)


# ------------------------------------------------------------------ caches
def test_vocab_stats_cache_reuse_and_invalidation(emb, cache, monkeypatch):
    first = M.vocab_stats(emb, "toy", subset=50, n_random=30)
    files = list((cache / "manifold").glob("vocab_stats-toy-*.safetensors"))
    assert len(files) == 1
    real = M.stats._compute_vocab_stats

    def boom(*a, **k):
        raise AssertionError("recomputed although the cache is valid")

    monkeypatch.setattr(M.stats, "_compute_vocab_stats", boom)
    again = M.vocab_stats(emb, "toy", subset=50, n_random=30)
    np.testing.assert_array_equal(again.nn_cosine, first.nn_cosine)
    np.testing.assert_array_equal(again.random_best_cosine, first.random_best_cosine)

    calls = []

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(M.stats, "_compute_vocab_stats", counting)
    changed = emb.clone()
    changed[123, 4] += 0.5                                    # one entry of the embedding changed
    rebuilt = M.vocab_stats(changed, "toy", subset=50, n_random=30)
    assert calls == [1]
    assert rebuilt.norms[123] != pytest.approx(first.norms[123])
    assert list((cache / "manifold").glob("vocab_stats-toy-*.safetensors")) == files   # same file, overwritten

    files[0].write_bytes(b"\x00garbage, not a safetensors file")
    fixed = M.vocab_stats(changed, "toy", subset=50, n_random=30)
    assert calls == [1, 1]
    np.testing.assert_array_equal(fixed.nn_cosine, rebuilt.nn_cosine)
    M.vocab_stats(changed, "toy", subset=50, n_random=30)     # the rebuilt file is trusted again
    assert calls == [1, 1]

    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])              # truncated mid-write by another tool
    M.vocab_stats(changed, "toy", subset=50, n_random=30)
    assert calls == [1, 1, 1]
    M.vocab_stats(changed, "toy", subset=51, n_random=30)     # other settings: its own entry
    assert calls == [1, 1, 1, 1]
    assert not list((cache / "manifold").glob(".*tmp"))       # no temp file left behind


# ------------------------------------------------------------------ 5. projections
def test_pca_projection_matches_svd_and_places_tokens(emb, strings, cache, monkeypatch):
    proj = M.fit_projection(emb, strings, "toy", method="pca", subset=None, word_like=False)
    np.testing.assert_array_equal(proj.token_ids, np.arange(V))
    x = emb.double().numpy()
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:2].T
    np.testing.assert_allclose(np.abs(proj.coords), np.abs(ref), atol=1e-5)            # axes up to sign
    np.testing.assert_allclose(proj.explained_variance_ratio, (s ** 2 / (s ** 2).sum())[:2], rtol=1e-6)
    # a vocabulary row lands on its own stored point; (..., d) shapes are kept
    np.testing.assert_allclose(proj.transform(emb[[5, 77]]), proj.coords[[5, 77]], atol=1e-5)
    assert proj.transform(emb[:6].reshape(2, 3, D)).shape == (2, 3, 2)
    assert proj.frame()["token"][5] == strings[5].replace(" ", "␣")

    monkeypatch.setattr(M.projection, "_fit_pca", lambda X: (_ for _ in ()).throw(AssertionError("refit")))
    start = time.perf_counter()
    cached = M.fit_projection(emb, strings, "toy", method="pca", subset=None, word_like=False)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(cached.coords, proj.coords)
    np.testing.assert_array_equal(cached.transform(emb[:3]), proj.transform(emb[:3]))


def test_projection_subset_is_seeded_and_word_like(emb, strings, cache):
    a = M.fit_projection(emb, strings, "toy", subset=40, seed=1)
    b = M.fit_projection(emb, strings, "toy", subset=40, seed=1, cache=False)
    c = M.fit_projection(emb, strings, "toy", subset=40, seed=2, cache=False)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    assert a.token_ids.tolist() != c.token_ids.tolist()
    mask = M.word_like_mask(strings)
    assert len(a.token_ids) == 40 and mask[a.token_ids].all()
    assert a.config.word_like is True
    assert M.fit_projection(emb, strings, "toy", subset=None, cache=False).config.word_like is False


def test_projection_cache_corrupt_or_stale_is_rebuilt(emb, strings, cache, monkeypatch):
    proj = M.fit_projection(emb, strings, "toy", subset=50)
    (path,) = (cache / "manifold").glob("projection-pca-toy-*.safetensors")
    calls = []
    real = M.projection._fit_pca
    monkeypatch.setattr(M.projection, "_fit_pca", lambda X: calls.append(1) or real(X))
    path.write_bytes(b"{}")
    again = M.fit_projection(emb, strings, "toy", subset=50)
    assert calls == [1]
    np.testing.assert_allclose(again.coords, proj.coords)
    M.fit_projection(emb * 1.01, strings, "toy", subset=50)   # other weights under the same name
    assert calls == [1, 1]


def test_umap_transform_is_umaps_initialisation(emb):
    """Our pickle-free placement equals UMAP's own transform initialisation (its pure-Python code)."""
    from scipy.sparse import coo_matrix
    from umap import umap_

    g = torch.Generator().manual_seed(4)
    ids = np.arange(0, V, 2)
    coords = torch.randn(len(ids), 2, generator=g).double().numpy()
    ref = torch.nn.functional.normalize(emb[ids], dim=1)
    proj = M.VocabProjection(config=M.ProjectionConfig(method="umap", n_neighbors=10), model_id="toy",
                             token_ids=ids, coords=coords, tokens=[str(i) for i in ids], reference=ref)
    queries = torch.randn(5, D, generator=g)
    queries[4] = 3 * emb[ids[7]]                              # on a fitted token's direction (cosine distance 0)
    ours = proj.transform(queries)
    qn = torch.nn.functional.normalize(queries, dim=1)
    for i in range(len(queries)):                             # one point per call: UMAP's sigma floor is per batch
        dist = (1 - qn[i:i + 1] @ ref.T).clamp_min(0).numpy().astype(np.float32)
        knn = np.argsort(dist, axis=1, kind="stable")[:, :10]
        kd = np.ascontiguousarray(np.take_along_axis(dist, knn, 1))
        sigmas, rhos = umap_.smooth_knn_dist.py_func(kd, 10.0, local_connectivity=0.0)
        rows, cols, vals, _ = umap_.compute_membership_strengths.py_func(knn, kd, sigmas, rhos, bipartite=True)
        graph = coo_matrix((vals, (rows, cols)), shape=(1, len(ids))).tocsr()
        expected = umap_.init_graph_transform(graph, coords)
        np.testing.assert_allclose(ours[i], expected[0], rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(ours[4], coords[7])
    np.testing.assert_array_equal(proj.transform(emb[ids[[3, 9]]]), coords[[3, 9]])


@pytest.mark.slow
def test_umap_fit_is_deterministic_and_cached(emb, strings, cache, monkeypatch):
    proj = M.fit_projection(emb, strings, "toy", method="umap", subset=None, word_like=False,
                            n_neighbors=8, n_epochs=30)
    assert proj.coords.shape == (V, 2) and np.isfinite(proj.coords).all()
    np.testing.assert_array_equal(proj.transform(emb[[0, 10]]), proj.coords[[0, 10]])
    monkeypatch.setattr(M.projection, "_fit_umap", lambda *a: (_ for _ in ()).throw(AssertionError("refit")))
    cached = M.fit_projection(emb, strings, "toy", method="umap", subset=None, word_like=False,
                              n_neighbors=8, n_epochs=30)
    np.testing.assert_array_equal(cached.coords, proj.coords)
    monkeypatch.undo()
    refit = M.fit_projection(emb, strings, "toy", method="umap", subset=None, word_like=False,
                             n_neighbors=8, n_epochs=30, cache=False)
    np.testing.assert_allclose(refit.coords, proj.coords, atol=1e-5)


# ------------------------------------------------------------------ the embedded model
@pytest.mark.slow
def test_embedded_model_decodes_paris(embedded_lm):
    lm = embedded_lm
    (paris,) = lm.tokenize(" Paris")
    (capital,) = lm.tokenize(" capital")
    vec = lm.embedding[paris].detach().clone()
    table = M.nearest_tokens(vec, lm.embedding, lm.token_strings, k=3, word_like=True)
    top = table[table["rank"] == 0].set_index("metric")["token"]
    assert top["cosine"] == top["l2"] == "␣Paris"
    _, ids = M.snap_to_vocab(vec + 0.01 * torch.randn_like(vec), lm.embedding)
    assert ids.tolist() == [paris]
    assert M.decode_prompt(vec.unsqueeze(0), lm.embedding, lm.token_strings) == [" Paris"]
    drift = M.drift_metrics(vec.unsqueeze(0), lm.embedding, M.vocab_stats(lm.embedding, lm.name, cache=False,
                                                                        subset=500, n_random=50),
                            lm.token_strings, relevant={"paris": paris, "capital": capital})
    assert drift.table["rank:paris"][0] == 0 and drift.table["rank:capital"][0] > 0
    assert math.isnan(drift.mean_pairwise_cosine)


def test_decode_run_report(emb, strings):
    """`ptuning-lab decode` prints one block per virtual token, each metric's top-k, and the agreement."""
    from types import SimpleNamespace

    run = SimpleNamespace(path="runs/x", prompt=torch.stack([emb[42], 3 * emb[7]]))
    lm = SimpleNamespace(embedding=emb, token_strings=strings, name="toy")
    text = M.decode_run(run, lm, k=2)
    lines = text.splitlines()
    assert lines[0].startswith("run: runs/x   model: toy   2 virtual tokens")
    ratio = 3 * float(emb[7].norm() / emb.norm(dim=1).mean())
    assert f"[P]1  |p| / mean |e| = {ratio:.2f}   best cosine 1.000" in lines
    cosine_line = next(line for line in lines if line.strip().startswith("cosine"))
    assert cosine_line.split()[1] == strings[42].replace(" ", "␣")
    assert lines[-1].startswith("top-1 agreement: all ")


# ------------------------------------------------------------------ decoding baselines
def test_decoding_baseline_places_each_score_among_random_vectors_and_tokens(emb, cache):
    stats = M.vocab_stats(emb, "toy", subset=None, n_random=200, seed=1)
    g = torch.Generator().manual_seed(5)
    noise = emb.mean(0) + emb.std(0) * torch.randn(2, emb.shape[1], generator=g)
    prompt = torch.cat([emb[[7, 42]] * 3.0, noise])          # two tokens (scaled: cosine 1), two random vectors
    b = M.decoding_baseline(prompt, emb, stats)
    cos = torch.nn.functional.normalize(prompt.double(), dim=1) @ torch.nn.functional.normalize(emb.double(), dim=1).T
    best = cos.max(1).values.numpy()
    np.testing.assert_allclose(b.best, best, atol=1e-5)
    rand = stats.random_best_cosine
    np.testing.assert_allclose(b.random_percentile, [100 * np.mean(rand <= c) for c in best])
    np.testing.assert_allclose(b.token_percentile, [100 * np.mean(stats.nn_cosine <= c) for c in best])
    np.testing.assert_allclose(b.random_median, np.median(rand))
    assert b.meaningful.tolist()[:2] == [True, True] and b.random_percentile[:2].tolist() == [100.0, 100.0]
    assert b.n_meaningful == int((b.random_percentile >= M.MEANINGFUL_PERCENTILE).sum())
    # random vectors like the baseline's own land in its middle, not above the 95th percentile
    assert (b.random_percentile[2:] < 95).all() and not b.meaningful[2:].any()
    assert "2 of 4" in b.summary()


def test_decoding_baseline_l2_draws_random_vectors_at_each_querys_norm(emb, cache):
    stats = M.vocab_stats(emb, "toy", subset=None, n_random=50, seed=1)
    prompt = torch.cat([emb[[3]], emb[[3]] * 40.0])           # a token, and the same direction 40x too long
    b = M.decoding_baseline(prompt, emb, stats, metric="l2", n_random=100, seed=2)
    np.testing.assert_allclose(b.best[0], 0.0, atol=1e-4)
    assert b.random_percentile[0] == 100.0 and b.meaningful[0]
    d = torch.cdist(prompt.double(), emb.double()).min(1).values.numpy()
    np.testing.assert_allclose(b.best, d, rtol=1e-4, atol=1e-4)
    # the long vector's random references are as long as it: their distances are of its scale, not the tokens'
    assert b.random_median[1] > 10 * b.random_median[0]
    np.testing.assert_allclose(b.token_percentile, [100 * np.mean(stats.nn_l2 >= x) for x in b.best])
    dot = M.decoding_baseline(prompt, emb, stats, metric="dot", n_random=20)
    assert np.isnan(dot.token_percentile).all()
    with pytest.raises(ValueError, match="metric"):
        M.decoding_baseline(prompt, emb, stats, metric="manhattan")
