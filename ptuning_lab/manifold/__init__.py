"""Where do learned prompts live? The vocabulary manifold: nearest tokens, drift, snapping, maps.

A trained prompt is a ``(num_virtual_tokens, d)`` tensor in the same space as the model's input
embedding matrix ``(vocab, d)``. This module answers, with pure functions (arrays in, arrays /
pandas frames / dataclasses out), how that prompt relates to the real tokens:

- **Nearest-token decoding** -- :func:`nearest_tokens` lists, per virtual token and per metric,
  the top-k vocabulary tokens. Three metrics, because they disagree off the manifold:
  ``"cosine"`` (direction only), ``"l2"`` (Euclidean distance; the score is the distance, smaller
  is nearer) and ``"dot"`` (the raw inner product: with tied embeddings this is the logit the
  model's head would give the token). :func:`metric_agreement` says how often their top-1 agree;
  :func:`decoding_baseline` says whether a vector is nearer to its token than random vectors of
  the same norm are to theirs (when it is not, the decoded token means nothing).
- **Drift** -- :func:`drift_metrics` / :func:`drift_over_training`: how long the vectors are
  relative to real tokens, how close they are to *any* token compared with how close tokens are to
  each other (and to random vectors), whether several virtual tokens collapse onto one token, and
  the rank of task tokens (``" capital"``) among each vector's neighbours. The baselines come from
  :class:`VocabStats`, computed once per model and cached on disk.
- **Faithfulness** -- :func:`snap_to_vocab` replaces each vector by its nearest token's embedding
  and :func:`snap_report` measures what that costs; :func:`waywardness_penalty` and
  :func:`decoded_f1` implement the waywardness analysis of Khashabi et al. (2022): a prompt can
  solve a task while decoding to an arbitrary, unrelated text.
- **Maps** -- :func:`fit_projection` fits a 2-D PCA or UMAP map of the vocabulary once per model
  (cached); :meth:`VocabProjection.transform` places prompts and training snapshots on that one
  map so trajectories of all methods are comparable.

Conventions: ``V`` = vocabulary size, ``d`` = embedding width, ``n`` = number of vectors. Inputs
may be torch tensors or numpy arrays; searches run in float32 on the embedding's device, in
chunks of queries so memory stays bounded (~64 MB of scores at a time).

Cache files live under ``ptuning_lab.models.cache_dir() / "manifold"``, one file per model and
settings, in safetensors with the cache key as JSON metadata (no pickle). The key holds the model
id, ``V``, ``d``, a cheap fingerprint of the embedding and the settings; a file whose key differs
(stale) or that cannot be read (corrupt) is rebuilt and replaced atomically.

Layout (arrows point one way; a module imports only modules above it in this list):

- ``index``        -- :class:`VocabIndex`, :func:`word_like_mask` and the one nearest-neighbour scan
- ``cache``        -- cache files (key, fingerprint, atomic write); imports index
- ``stats``        -- :class:`VocabStats` baselines; imports index, cache
- ``drift``        -- :func:`drift_metrics`, :func:`drift_over_training`; imports index, stats
- ``faithfulness`` -- snapping, waywardness, decoded F1; imports index
- ``decoding``     -- :func:`nearest_tokens`, :func:`decode_prompt`, :func:`decode_run`; imports index, faithfulness
- ``baselines``    -- :func:`decoding_baseline`: each nearest-token score beside random vectors' and tokens';
  imports index, stats
- ``projection``   -- :func:`fit_projection`, :class:`VocabProjection`; imports index, cache

This ``__init__`` only re-exports, so ``ptuning_lab.manifold.X`` keeps working for every public
name. To replace a private helper in a test, patch it in the submodule that uses it (e.g.
``ptuning_lab.manifold.projection._fit_pca``): a name re-exported here is a copy of the binding.
"""
from __future__ import annotations

from ..frozen_lm import readable_token
from .baselines import MEANINGFUL_PERCENTILE, DecodingBaseline, decoding_baseline
from .cache import CACHE_VERSION, embedding_fingerprint
from .decoding import decode_prompt, decode_run, metric_agreement, nearest_tokens
from .drift import Drift, drift_metrics, drift_over_training
from .faithfulness import decoded_f1, snap_report, snap_to_vocab, waywardness_penalty
from .index import _INDEX_MEMO, _WORD_MEMO, METRICS, VocabIndex, vocab_index, word_like_mask
from .projection import ProjectionConfig, VocabProjection, fit_projection
from .stats import VocabStats, VocabStatsConfig, vocab_stats

__all__ = [
    "METRICS", "VocabIndex", "vocab_index", "word_like_mask", "nearest_tokens", "metric_agreement", "decode_prompt",
    "VocabStatsConfig", "VocabStats", "vocab_stats", "Drift", "drift_metrics", "drift_over_training",
    "snap_to_vocab", "snap_report", "waywardness_penalty", "decoded_f1", "ProjectionConfig", "VocabProjection",
    "fit_projection", "embedding_fingerprint", "decode_run", "MEANINGFUL_PERCENTILE", "DecodingBaseline",
    "decoding_baseline",
]
