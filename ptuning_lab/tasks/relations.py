"""The country relations (capital, continent, language, currency), built offline from the data files of
countryinfo + pycountry (read as files, never imported: :mod:`ptuning_lab.tasks.country_data`)."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from functools import lru_cache, partial
from typing import Sequence

from .base import DEFAULT_SPLIT, Example, Task, TaskError, _make_task
from .country_data import countryinfo_tables, iso_table
from .registry import register_task

RELATION_TEMPLATES = {
    "capital": "The capital of [X] is",
    "continent": "[X] is located in",
    "language": "The official language of [X] is",
    "currency": "The official currency of [X] is the",
}


def relation_task(name: str, seed: int = 0, template: str | None = None,
                  split: Sequence[float] = DEFAULT_SPLIT, max_examples: int | None = None) -> Task:
    """A country relation (capital, continent, language, currency) built from countryinfo + pycountry."""
    if name not in RELATION_TEMPLATES:
        raise TaskError(f"unknown relation {name!r}; choose one of {', '.join(RELATION_TEMPLATES)}.")
    examples = [Example(c["name"], c[name]) for c in _countries() if c.get(name)]
    return _make_task(name, template or RELATION_TEMPLATES[name], examples, "relation", None,
                      seed, split, max_examples)


# countryinfo stores a few names in inverted or disambiguated form; a template needs the spoken form.
_COUNTRY_RENAMES = {
    "Holy See (Vatican City State)": "Vatican City",
    "Vatican City State": "Vatican City",
    "Virgin Islands, British": "British Virgin Islands",
    "Virgin Islands, U.S.": "United States Virgin Islands",
    "Palestine, State of": "Palestine",
    "Saint Martin (French part)": "Saint Martin",
    "Sint Maarten (Dutch part)": "Sint Maarten",
    "Republic of Macedonia": "North Macedonia",
    "Cocos (Keeling) Islands": "Cocos Islands",
}
# Known slips in countryinfo's language codes ('rs' is Serbia's country code, not Serbian's).
_LANGUAGE_CODE_FIXES = {"rs": "sr"}
# pycountry's ISO 639 reference names, where they differ from the everyday English word.
_LANGUAGE_NAMES = {"el": "Greek", "ps": "Pashto", "ky": "Kyrgyz", "kl": "Greenlandic"}
# ISO 4217 fund / accounting codes are not what people pay with (Switzerland lists CHE before CHF).
_FUND_CURRENCIES = {"BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "USS", "UYI", "UYW", "XDR", "XSU", "XUA"}
# Withdrawn codes still in countryinfo -> the ISO 4217 code that replaced them.
_CURRENCY_SUCCESSORS = {"BYR": "BYN", "ZMK": "ZMW", "VEF": "VES", "MRO": "MRU", "STD": "STN", "SLL": "SLE",
                        "HRK": "EUR", "BGN": "EUR"}


@lru_cache(maxsize=1)
def _countries() -> tuple[dict, ...]:
    """One cleaned record per current ISO 3166 country code, sorted by name.

    Each record: ``name`` and, where known, ``capital``, ``continent``, ``language``, ``currency``.
    """
    countries, _ = countryinfo_tables()
    current = iso_table("3166-1", "alpha_2")
    by_code: dict[str, list[dict]] = defaultdict(list)
    for raw in countries.values():
        code = ((raw.get("ISO") or {}).get("alpha2") or "").upper()
        # skips Scotland/Wales (no own code or the UK's) and dissolved states (Serbia and Montenegro)
        if code and code.lower() in current:
            by_code[code].append(raw)
    records = []
    for code, entries in by_code.items():
        candidates = [_country_record(e) for e in entries]
        # duplicates (Burma/Myanmar, two Palestines, two Vaticans, Wales under the UK's code): keep the
        # most complete record, then the one countryinfo itself resolves the code to
        canonical = _country_key(code)
        candidates.sort(key=lambda c: (-len(c), c["_key"] != canonical, c["name"]))
        records.append(candidates[0])
    for r in records:
        r.pop("_key")
    repeated = [n for n, k in Counter(r["name"] for r in records).items() if k > 1]
    if repeated:  # only possible if a new countryinfo release renames entries
        raise RuntimeError(f"countryinfo lists {repeated} under several ISO codes; extend _COUNTRY_RENAMES in "
                           "ptuning_lab/tasks/relations.py or install the tested release: pip install countryinfo==1.0.1")
    return tuple(sorted(records, key=lambda r: r["name"]))


def _country_key(code: str) -> str | None:
    """The lowercase name countryinfo resolves ``code`` to (its ISO index), or None."""
    countries, iso_index = countryinfo_tables()
    key = iso_index.get(code.upper())
    return str(countries[key]["name"]).lower() if key in countries else None


def _country_record(raw: dict) -> dict:
    name = " ".join(str(raw["name"]).split())
    rec = {"_key": name.lower(), "name": _COUNTRY_RENAMES.get(name, name)}
    capital = raw.get("capital")
    if isinstance(capital, list):
        capital = capital[0] if capital else None
    capital = _COUNTRY_RENAMES.get(capital, capital)  # "Vatican City State" -> "Vatican City"
    # "Kralendijk / Oranjestad / The Bottom": several capitals have no single answer
    if isinstance(capital, str) and capital.strip() and "/" not in capital:
        rec["capital"] = " ".join(capital.split())
    region = raw.get("region")
    if isinstance(region, str) and region.strip():
        rec["continent"] = region.strip()
    language = _first_language(raw.get("languages") or [])
    if language:
        rec["language"] = language
    currency = _first_currency(raw.get("currencies") or [])
    if currency:
        rec["currency"] = currency
    return rec


def _first_language(codes) -> str | None:
    """English name of the first language code ISO 639-3 knows (the primary official language)."""
    for code in codes:
        if not isinstance(code, str):
            continue
        code = _LANGUAGE_CODE_FIXES.get(code.strip().lower(), code.strip().lower())
        lang = iso_table("639-3", "alpha_2" if len(code) == 2 else "alpha_3").get(code) \
            if len(code) in (2, 3) else None
        if lang is not None:
            if code in _LANGUAGE_NAMES:
                return _LANGUAGE_NAMES[code]
            # "Malay (macrolanguage)" -> "Malay"
            return re.sub(r"\s*\(.*?\)", "", lang["name"]).strip()
    return None


def _first_currency(codes) -> str | None:
    """ISO 4217 English name of the first legal-tender currency code."""
    for code in codes:
        if not isinstance(code, str) or code.upper() in _FUND_CURRENCIES:
            continue
        code = _CURRENCY_SUCCESSORS.get(code.upper(), code.upper())
        cur = iso_table("4217", "alpha_3").get(code.lower())
        if cur is not None:
            return cur["name"]
    return None


for _name in RELATION_TEMPLATES:
    register_task(_name, partial(relation_task, _name), kind="relation")
