"""Cache files of the manifold baselines and maps: one safetensors file per model and settings.

Files live under ``ptuning_lab.models.cache_dir() / "manifold"`` with the cache key as JSON
metadata (no pickle). The key holds the model id, ``V``, ``d``, a cheap fingerprint of the
embedding and the settings; a file whose key differs (stale) or that cannot be read (corrupt) is
rebuilt and replaced atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from ..models import cache_dir
from .index import VocabIndex, vocab_index

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def embedding_fingerprint(embedding) -> str:
    """A cheap fingerprint (16 hex) of an embedding matrix: ~500 rows' exact bytes + every column's sum.

    Not cryptographic: it tells "same weights" from "other or edited weights" for the cache key
    in ~30 ms on a 50k x 576 matrix. Memoised with the :class:`VocabIndex`.
    """
    index = vocab_index(embedding)
    cached = getattr(index, "_fingerprint", None)
    if cached is not None:
        return cached
    E = index.embedding.detach().cpu().numpy()
    V = E.shape[0]
    h = hashlib.sha256(np.asarray(E.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(E[:: max(1, V // 512)]).tobytes())
    h.update(np.ascontiguousarray(E[-1]).tobytes())
    h.update(E.sum(0, dtype=np.float64).tobytes())          # numpy's sum is deterministic (no threads)
    index._fingerprint = h.hexdigest()[:16]
    return index._fingerprint


def _cache_key(kind: str, model_id: str, index: VocabIndex, settings: dict) -> dict:
    return {"kind": kind, "version": CACHE_VERSION, "model_id": str(model_id), "vocab_size": index.vocab_size,
            "hidden_size": index.hidden_size, "embedding": embedding_fingerprint(index), "settings": settings}


def _cache_path(kind: str, model_id: str, key: dict) -> Path:
    # one file per model and settings: a changed embedding overwrites it instead of piling up files
    ident = {k: key[k] for k in ("kind", "model_id", "settings")}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model_id))[:60]
    return cache_dir() / "manifold" / f"{kind}-{slug}-{digest}.safetensors"


def _load_cache(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file whose stored key equals ``key``; None when missing, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as fh:
            stored = json.loads((fh.metadata() or {}).get("key", "null"))
            if stored != json.loads(json.dumps(key)):
                log.info("ptuning_lab: cache %s is stale (another model, embedding or settings); rebuilding", path)
                return None
            return {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as err:  # any unreadable file is rebuilt, never trusted
        log.warning("ptuning_lab: cache file %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None


def _save_cache(path: Path, key: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays atomically (temp file + rename); a failed write only costs a rebuild later."""
    from ..checkpoint import write_tensors

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    try:
        write_tensors(path, tensors, metadata={"key": json.dumps(key, sort_keys=True), "format": "ptuning_lab.manifold/1"})
    except OSError as err:
        log.warning("ptuning_lab: could not write the cache file %s (%s); continuing without it", path, err)
