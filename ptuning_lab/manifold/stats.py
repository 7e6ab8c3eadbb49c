"""Vocabulary baselines: what "close to the manifold" means for one model (cached per model)."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .cache import _cache_key, _cache_path, _load_cache, _save_cache
from .index import VocabIndex, _scan, vocab_index

log = logging.getLogger(__name__)


@dataclass
class VocabStatsConfig:
    """Settings of the vocabulary baselines (part of the cache key)."""

    subset: int | None = field(default=5000, metadata={"help": "Token rows (seeded sample) whose nearest-neighbour "
                               "cosine/L2 to ANOTHER token is computed, against the full vocabulary; None = all V "
                               "rows (~10x slower for a 50k vocabulary)."})
    n_random: int = field(default=1000, metadata={"help": "Random vectors, drawn with the vocabulary's per-dimension "
                          "mean and std, whose best cosine to any token gives the 'chance' baseline."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset and of the random vectors."})

    def __post_init__(self):
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"subset must be a positive number of tokens or None (all), got {self.subset}.")
        if self.n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {self.n_random}.")


def _percentile(sorted_ref: np.ndarray, x) -> np.ndarray:
    """Percent (0-100) of the reference values <= x."""
    return 100.0 * np.searchsorted(sorted_ref, np.asarray(x, dtype=np.float64), side="right") / len(sorted_ref)


@dataclass
class VocabStats:
    """Baselines of one model's vocabulary: what "close to the manifold" means for it.

    Attributes (V = vocab, m = subset rows, R = random vectors):
        model_id: the model's name.
        norms: (V,) L2 norm of every token embedding.
        subset_ids: (m,) token ids whose nearest-neighbour statistics were computed.
        nn_cosine: (m,) best cosine of each subset token to ANOTHER token of the full vocabulary.
        nn_l2: (m,) L2 distance of each subset token to its nearest other token.
        random_best_cosine: (R,) best cosine to any token of random vectors drawn from
            N(vocab mean, vocab std) per dimension: the chance level of "looks like a token".
        config: the settings used.
    """

    model_id: str
    norms: np.ndarray
    subset_ids: np.ndarray
    nn_cosine: np.ndarray
    nn_l2: np.ndarray
    random_best_cosine: np.ndarray
    config: VocabStatsConfig

    def __post_init__(self):
        self._sorted = {name: np.sort(np.asarray(getattr(self, name), dtype=np.float64))
                        for name in ("norms", "nn_cosine", "nn_l2", "random_best_cosine")}

    @property
    def vocab_size(self) -> int:
        return len(self.norms)

    @property
    def mean_norm(self) -> float:
        return float(np.mean(self.norms, dtype=np.float64))

    @property
    def median_nn_l2(self) -> float:
        return float(np.median(self.nn_l2))

    def norm_percentile(self, norm) -> np.ndarray:
        """Percent of vocabulary tokens whose norm is <= ``norm``."""
        return _percentile(self._sorted["norms"], norm)

    def nn_cosine_percentile(self, cosine) -> np.ndarray:
        """Percent of tokens whose best cosine to another token is <= ``cosine``."""
        return _percentile(self._sorted["nn_cosine"], cosine)

    def random_cosine_percentile(self, cosine) -> np.ndarray:
        """Percent of random vectors whose best cosine to a token is <= ``cosine``."""
        return _percentile(self._sorted["random_best_cosine"], cosine)


def _compute_vocab_stats(index: VocabIndex, config: VocabStatsConfig) -> dict[str, np.ndarray]:
    """The arrays of :class:`VocabStats` (the expensive part: (m + R) x V cosines)."""
    E = index.embedding
    V, d = E.shape
    rng = np.random.default_rng(config.seed)
    subset_ids = (np.arange(V) if config.subset is None or config.subset >= V
                  else np.sort(rng.choice(V, size=config.subset, replace=False)))
    ids_t = torch.from_numpy(subset_ids).to(E.device)
    with torch.no_grad():
        res = _scan(E[ids_t], index, 1, ("cosine", "l2"), exclude=ids_t)
        mean, std = E.mean(0), E.std(0, correction=0)                     # same scale as the "random" init
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        R = (mean.cpu() + std.cpu() * torch.randn(config.n_random, d, generator=gen)).to(E.device)
        rand = _scan(R, index, 1, ("cosine",))
    return {
        "norms": index.norms.cpu().numpy().astype(np.float32),
        "subset_ids": subset_ids.astype(np.int64),
        "nn_cosine": res["cosine"][0][:, 0].cpu().numpy(),
        "nn_l2": res["l2"][0][:, 0].cpu().numpy(),
        "random_best_cosine": rand["cosine"][0][:, 0].cpu().numpy(),
    }


def vocab_stats(embedding, model_id: str = "model", subset: int | None = 5000, n_random: int = 1000,
                seed: int = 0, cache: bool = True) -> VocabStats:
    """The :class:`VocabStats` baselines of a model, cached on disk per model and settings.

    Nearest-neighbour statistics use a seeded sample of ``subset`` token rows (5000 by default,
    each compared with the FULL vocabulary) because all V x V pairs cost minutes on a CPU; 5000
    rows pin the percentiles to within about a percentage point. ``subset=None`` uses every row.
    First build on SmolLM2 (49k x 576, 2 CPU cores): a few seconds; a cached load: milliseconds.
    """
    config = VocabStatsConfig(subset=subset, n_random=n_random, seed=seed)
    index = vocab_index(embedding)
    key = _cache_key("vocab_stats", model_id, index, asdict(config))
    path = _cache_path("vocab_stats", model_id, key)
    arrays = _load_cache(path, key) if cache else None
    if arrays is not None and not _stats_arrays_ok(arrays, index.vocab_size):
        log.warning("ptuning_lab: the vocabulary-stats cache %s is inconsistent; rebuilding it", path)
        arrays = None
    if arrays is None:
        arrays = _compute_vocab_stats(index, config)
        if cache:
            _save_cache(path, key, arrays)
    return VocabStats(model_id=model_id, config=config, **{k: np.asarray(arrays[k]) for k in
                      ("norms", "subset_ids", "nn_cosine", "nn_l2", "random_best_cosine")})


def _stats_arrays_ok(arrays: dict, V: int) -> bool:
    need = ("norms", "subset_ids", "nn_cosine", "nn_l2", "random_best_cosine")
    if any(k not in arrays for k in need):
        return False
    m = len(arrays["subset_ids"])
    return (arrays["norms"].shape == (V,) and arrays["nn_cosine"].shape == (m,) and arrays["nn_l2"].shape == (m,)
            and m > 0 and len(arrays["random_best_cosine"]) > 0
            and all(np.isfinite(arrays[k]).all() for k in need))
