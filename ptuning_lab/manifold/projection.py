"""2-D maps of the vocabulary (PCA or UMAP), fitted once per model and cached, to place prompts on."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..frozen_lm import readable_token
from .cache import _cache_key, _cache_path, _load_cache, _save_cache
from .index import _CHUNK_ELEMENTS, VocabIndex, _as_tensor, _check_strings, _pandas, vocab_index, word_like_mask

log = logging.getLogger(__name__)
# cosine distance below which a vector counts as lying on a fitted token (float32 rounding of cos = 1)
_SAME_DIRECTION = 1e-6


@dataclass
class ProjectionConfig:
    """Settings of a 2-D vocabulary map (part of the cache key)."""

    method: str = field(default="pca", metadata={"help": "'pca' (linear, exact, fast) or 'umap' (non-linear "
                        "neighbourhoods; cosine metric, so it ignores vector lengths)."})
    subset: int | None = field(default=5000, metadata={"help": "Tokens to fit on (a seeded sample); None = all of them."})
    seed: int = field(default=0, metadata={"help": "Seed of the sample and of UMAP."})
    word_like: bool | None = field(default=None, metadata={"help": "Fit on word-like tokens only; None = yes when "
                                   "sampling a subset, no (the full vocabulary) when subset is None."})
    n_neighbors: int = field(default=15, metadata={"help": "UMAP neighbours (also used to place new points)."})
    min_dist: float = field(default=0.1, metadata={"help": "UMAP min_dist."})
    n_epochs: int | None = field(default=None, metadata={"help": "UMAP epochs (None = UMAP's default; small values "
                                 "for tests)."})

    def __post_init__(self):
        if self.method not in ("pca", "umap"):
            raise ValueError(f"unknown projection method {self.method!r}: use 'pca' or 'umap'.")
        if self.subset is not None and self.subset < 3:
            raise ValueError(f"subset must be >= 3 tokens or None (all), got {self.subset}.")
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be >= 2, got {self.n_neighbors}.")
        if self.word_like is None:
            self.word_like = self.subset is not None

    def key(self) -> dict:
        d = asdict(self)
        if self.method == "pca":       # UMAP knobs do not change a PCA map: share its cache file
            for name in ("n_neighbors", "min_dist", "n_epochs"):
                d.pop(name)
        return d


@dataclass
class VocabProjection:
    """A 2-D map of the vocabulary on which prompts and snapshots are placed.

    Attributes (m = fitted tokens):
        config: the settings.
        model_id: the model's name.
        token_ids: (m,) ids of the fitted tokens.
        coords: (m, 2) their map coordinates.
        tokens: m readable token strings (for hover labels), or ids as text.
        mean, components: PCA only: (d,) centre and (d, 2) axes; ``explained_variance_ratio`` (2,).
        reference: UMAP only: (m, d) float32 embeddings of the fitted tokens, unit-normalised (for
            placing new points); re-gathered from the embedding, never stored in the cache.
    """

    config: ProjectionConfig
    model_id: str
    token_ids: np.ndarray
    coords: np.ndarray
    tokens: list[str]
    mean: np.ndarray | None = None
    components: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None
    reference: torch.Tensor | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return self.config.method

    def transform(self, vectors) -> np.ndarray:
        """Place vectors (..., d) on the map -> (..., 2) float64.

        PCA: the fitted linear map, exact (a fitted token lands on its stored point).
        UMAP: an approximation of ``umap.UMAP.transform`` -- its initialisation step, without the
        extra optimisation epochs: find the ``n_neighbors`` nearest fitted tokens (cosine
        distance), weight them by UMAP's fuzzy membership ``exp(-d / sigma)`` with ``sigma``
        solved so the weights sum to log2(n_neighbors) (UMAP's ``smooth_knn_dist`` with
        ``rho = 0``, as in its transform), and average their 2-D coordinates; a vector at cosine
        distance ~0 (< 1e-6) from a fitted token -- any positive multiple of it -- lands exactly
        on that token, as in UMAP. Deterministic, fast, and pickle-free (UMAP's own model object is not).
        """
        X = _as_tensor(vectors, "vectors")
        shape = tuple(X.shape)
        d = self.mean.shape[0] if self.method == "pca" else self.reference.shape[1]
        if X.dim() < 1 or shape[-1] != d:
            raise ValueError(f"vectors of shape {shape} cannot be placed on a map of width-{d} embeddings; "
                             f"pass (..., {d}) vectors of the model the map was fitted on ('{self.model_id}').")
        flat = X.reshape(-1, d)
        if self.method == "pca":
            out = (flat.cpu().numpy().astype(np.float64) - self.mean) @ self.components
        else:
            out = _umap_place(flat, self.reference, self.coords, self.config.n_neighbors)
        return out.reshape(*shape[:-1], 2)

    def frame(self):
        """The fitted tokens as a frame: ``token_id, token, x, y`` (for scatter plots)."""
        pd = _pandas()
        return pd.DataFrame({"token_id": self.token_ids, "token": self.tokens,
                             "x": self.coords[:, 0], "y": self.coords[:, 1]})


def _umap_sigmas(dist: np.ndarray, k: float, n_iter: int = 64) -> np.ndarray:
    """UMAP's ``smooth_knn_dist`` with rho = 0, vectorised: sigma (q,) per row of sorted distances (q, k)."""
    target = math.log2(k)
    lo = np.zeros(dist.shape[0])
    hi = np.full(dist.shape[0], np.inf)
    mid = np.ones(dist.shape[0])
    rest = dist[:, 1:]                                                  # UMAP's sum skips the first neighbour
    for _ in range(n_iter):                                             # bisection (doubling while unbounded)
        with np.errstate(divide="ignore", over="ignore"):
            psum = np.where(rest > 0, np.exp(-rest / mid[:, None]), 1.0).sum(1)
        above = psum > target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2, (lo + hi) / 2)
    # UMAP keeps sigma >= 1e-3 x the mean distance (of the batch; here of the row, so a point's
    # place does not depend on which other points are placed with it)
    return np.maximum(mid, 1e-3 * dist.mean(1))


def _umap_place(X: torch.Tensor, reference: torch.Tensor, coords: np.ndarray, n_neighbors: int) -> np.ndarray:
    ref = reference
    C = np.asarray(coords, dtype=np.float64)
    k = min(n_neighbors, ref.shape[0])
    out = []
    chunk = max(1, _CHUNK_ELEMENTS // ref.shape[0])
    for start in range(0, X.shape[0], chunk):
        q = X[start:start + chunk].to(device=ref.device, dtype=torch.float32)
        q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-12)
        dist = (1.0 - q @ ref.T).clamp_min_(0.0)                         # cosine distance (c, m)
        d, idx = dist.topk(k, dim=1, largest=False)
        d, idx = d.double().cpu().numpy(), idx.cpu().numpy()
        sigma = _umap_sigmas(d, float(n_neighbors))
        w = np.where(d > 0, np.exp(-d / sigma[:, None]), 1.0)          # UMAP's membership strengths
        placed = (w[..., None] * C[idx]).sum(1) / w.sum(1, keepdims=True)
        # UMAP puts a point with a weight-1 neighbour (distance 0) on it; 1e-6 absorbs float32
        # rounding of cos = 1 for parallel vectors
        exact = d[:, 0] <= _SAME_DIRECTION
        placed[exact] = C[idx[exact, 0]]
        out.append(placed)
    return np.concatenate(out)


def _projection_ids(token_strings, V: int, config: ProjectionConfig) -> np.ndarray:
    if config.word_like:
        pool = np.flatnonzero(word_like_mask(_check_strings(token_strings, V)))
        if len(pool) < 3:
            raise ValueError("fewer than 3 word-like tokens to fit a map on; pass word_like=False.")
    else:
        pool = np.arange(V)
    if config.subset is None or config.subset >= len(pool):
        return pool.astype(np.int64)
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(pool, size=config.subset, replace=False)).astype(np.int64)


def _fit_pca(X: np.ndarray) -> dict[str, np.ndarray]:
    """Exact 2-component PCA of X (m, d) through the (d, d) covariance, in float64."""
    X = X.astype(np.float64)
    mean = X.mean(0)
    Xc = X - mean
    cov = Xc.T @ Xc / max(len(X) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)                                    # ascending
    comps = vecs[:, ::-1][:, :2].copy()
    # eigenvectors have no sign: make each axis's largest entry positive so maps are reproducible
    signs = np.sign(comps[np.abs(comps).argmax(0), [0, 1]])
    comps *= np.where(signs == 0, 1.0, signs)
    total = vals.sum()
    ratio = vals[::-1][:2] / total if total > 0 else np.zeros(2)
    return {"mean": mean, "components": comps, "explained_variance_ratio": ratio, "coords": Xc @ comps}


def _fit_umap(X: np.ndarray, config: ProjectionConfig) -> dict[str, np.ndarray]:
    try:
        import umap
    except ImportError as err:  # pragma: no cover - umap-learn ships with the viz extra
        raise ImportError("method='umap' needs umap-learn: pip install 'ptuning_lab[viz]'.") from err
    reducer = umap.UMAP(n_components=2, n_neighbors=config.n_neighbors, min_dist=config.min_dist, metric="cosine",
                        n_epochs=config.n_epochs, random_state=config.seed, n_jobs=1, verbose=False)
    return {"coords": np.asarray(reducer.fit_transform(X.astype(np.float32)), dtype=np.float64)}


def fit_projection(embedding, token_strings: Sequence[str] | None, model_id: str = "model", method: str = "pca",
                   subset: int | None = 5000, seed: int = 0, cache: bool = True, word_like: bool | None = None,
                   n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int | None = None) -> VocabProjection:
    """Fit (or load from the cache) a 2-D map of the vocabulary.

    Args:
        embedding: (V, d) input embedding matrix.
        token_strings: V decoded tokens (needed for the word-like sample and for labels).
        model_id: the model's name (part of the cache key, with V, d and an embedding fingerprint).
        method: "pca" or "umap".
        subset: fit on a seeded sample of this many tokens (word-like by default); None = all.
        Other arguments: see :class:`ProjectionConfig`.
    Returns:
        :class:`VocabProjection`. A cached map loads in well under a second; the UMAP of 5000
        tokens takes ~10-30 s on 2 CPU cores the first time (numba compiles once per process).
    """
    config = ProjectionConfig(method=method, subset=subset, seed=seed, word_like=word_like,
                              n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs)
    index = vocab_index(embedding)
    V = index.vocab_size
    if token_strings is not None:
        _check_strings(token_strings, V)
    key = _cache_key(f"projection-{method}", model_id, index, config.key())
    path = _cache_path(f"projection-{method}", model_id, key)
    arrays = _load_cache(path, key) if cache else None
    if arrays is not None and not _projection_arrays_ok(arrays, config, index):
        log.warning("ptuning_lab: the projection cache %s is inconsistent; rebuilding it", path)
        arrays = None
    if arrays is None:
        ids = _projection_ids(token_strings, V, config)
        X = index.embedding[torch.from_numpy(ids).to(index.embedding.device)].cpu().numpy()
        arrays = _fit_pca(X) if method == "pca" else _fit_umap(X, config)
        arrays["token_ids"] = ids
        if cache:
            _save_cache(path, key, arrays)
    ids = np.asarray(arrays["token_ids"], dtype=np.int64)
    tokens = ([readable_token(token_strings[i]) for i in ids.tolist()] if token_strings is not None
              else [str(i) for i in ids.tolist()])
    proj = VocabProjection(config=config, model_id=model_id, token_ids=ids,
                           coords=np.asarray(arrays["coords"], dtype=np.float64), tokens=tokens)
    if method == "pca":
        proj.mean = np.asarray(arrays["mean"], dtype=np.float64)
        proj.components = np.asarray(arrays["components"], dtype=np.float64)
        proj.explained_variance_ratio = np.asarray(arrays["explained_variance_ratio"], dtype=np.float64)
    else:
        ref = index.embedding[torch.from_numpy(ids).to(index.embedding.device)]
        proj.reference = ref / index.norms[torch.from_numpy(ids).to(ref.device)].clamp_min(1e-12).unsqueeze(1)
    return proj


def _projection_arrays_ok(arrays: dict, config: ProjectionConfig, index: VocabIndex) -> bool:
    if "token_ids" not in arrays or "coords" not in arrays:
        return False
    ids, coords = arrays["token_ids"], arrays["coords"]
    m = len(ids)
    ok = (ids.ndim == 1 and m >= 3 and coords.shape == (m, 2) and np.isfinite(coords).all()
          and ids.min() >= 0 and ids.max() < index.vocab_size)
    if ok and config.method == "pca":
        d = index.hidden_size
        ok = (arrays.get("mean", np.empty(0)).shape == (d,) and arrays.get("components", np.empty(0)).shape == (d, 2)
              and arrays.get("explained_variance_ratio", np.empty(0)).shape == (2,))
    return bool(ok)
