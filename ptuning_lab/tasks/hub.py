"""Rows of a data set on the Hugging Face hub (or a local copy in the hub's layout) through ``datasets``.

The online path of the built-in real tasks (``super_glue``, ``rotten_tomatoes``): the task families
turn these rows into :class:`~ptuning_lab.tasks.base.Example` exactly as they do the offline files.
``datasets`` is optional; without it the online path says how to get it and the offline files work.

    >>> rows, labels = hub_rows("aps/super_glue", "rte", "validation")          # doctest: +SKIP
    >>> rows[0]["premise"], labels                                             # doctest: +SKIP
    ('Dana Reeve, the widow of the actor Christopher Reeve, ...', ('entailment', 'not_entailment'))
"""
from __future__ import annotations

from pathlib import Path

from .base import TaskError

# the hub's ids of the data sets the built-in tasks mirror (their script-free parquet versions)
SUPERGLUE_HUB_ID = "aps/super_glue"
ROTTEN_TOMATOES_HUB_ID = "cornell-movie-review-data/rotten_tomatoes"


def datasets_available() -> bool:
    """Whether the ``datasets`` library can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("datasets") is not None


def hub_rows(path: str | Path, config: str | None, split: str,
             cache_dir: str | Path | None = None) -> tuple[list[dict], tuple[str, ...] | None]:
    """(the rows of one split as plain dicts, the label names of a ``ClassLabel`` column or None).

    ``path`` is a hub id (``"aps/super_glue"``) or a local directory in the hub's layout (parquet or
    JSON files with a README that names the configs, or a ``save_to_disk`` directory).
    Raises :class:`TaskError` naming the fix when ``datasets`` is missing or the hub cannot be reached.
    """
    if not datasets_available():
        raise TaskError(f"loading {path} from the hub needs the datasets library: pip install datasets. "
                        "Offline, use the built-in files instead (source='files').")
    import datasets

    local = Path(path)
    try:
        if local.is_dir() and any((local / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(local))             # save_to_disk layout
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(str(path), config, split=split,
                                       cache_dir=str(cache_dir) if cache_dir is not None else None)
    except (FileNotFoundError, ConnectionError, OSError, ValueError, KeyError) as e:
        # offline (HF_HUB_OFFLINE=1), no network, an unknown config or split: one clear line, not a traceback
        raise TaskError(f"cannot load {path} ({config or 'default'}, split {split!r}) through datasets: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Check the name and the "
                        "network, or use the offline files (source='files').") from e
    feature = ds.features.get("label") if hasattr(ds, "features") else None
    names = tuple(feature.names) if getattr(feature, "names", None) else None
    return [dict(row) for row in ds], names


__all__ = ["SUPERGLUE_HUB_ID", "ROTTEN_TOMATOES_HUB_ID", "datasets_available", "hub_rows"]
