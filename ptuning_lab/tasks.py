"""Tasks: examples, a manual template, the answer set, and a deterministic train/dev/test split.

Five tasks are built at run time from offline packages, so nothing is downloaded:

============  ==============================================  =====================================
name          manual template                                 answer (after one space)
============  ==============================================  =====================================
capital       ``The capital of [X] is``                       ``Paris``       (countryinfo)
continent     ``[X] is located in``                           ``Europe``      (countryinfo region)
language      ``The official language of [X] is``             ``French``      (first listed, pycountry name)
currency      ``The official currency of [X] is the``         ``Euro``        (pycountry ISO 4217 name)
polarity      ``The word "[X]" means something``              ``good``/``bad`` (VADER lexicon)
============  ==============================================  =====================================

Your own data works too: a ``.jsonl`` or ``.csv`` file with ``subject,object`` (a relation) or
``text,label`` (classification), its template given by ``template=`` or by a first line
``# template: The capital of [X] is`` (JSONL also accepts ``{"template": "..."}``). In CSV, ``#``
lines are comments only above the header; in JSONL, anywhere.

    >>> task = load_task("capital", seed=0)
    >>> task.train[0]
    Example(input='Albania', target='Tirana', label=None)
    >>> print(task.summary())
    capital (relation): 145/49/49 train/dev/test | template 'The capital of [X] is' | 242 answers

The same ``seed`` always gives the same split; the seed never changes *which* examples a built-in
task holds, only how they are shuffled into train/dev/test (and which survive ``max_examples``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from .suggest import did_you_mean
from .templates import Template, TemplateError

TASK_NAMES = ("capital", "continent", "language", "currency", "polarity")
RELATION_TEMPLATES = {
    "capital": "The capital of [X] is",
    "continent": "[X] is located in",
    "language": "The official language of [X] is",
    "currency": "The official currency of [X] is the",
}
# Picked among ten candidates by the zero-shot accuracy of the embedded SmolLM2-135M choosing
# " good" vs " bad" (see polarity_task): " good"/" bad" is the natural next word.
POLARITY_TEMPLATE = 'The word "[X]" means something'
POLARITY_VERBALIZER = {"positive": "good", "negative": "bad"}
DEFAULT_SPLIT = (0.6, 0.2, 0.2)
SPLIT_NAMES = ("train", "dev", "test")
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
COLUMNS = {"relation": ("subject", "object"), "classification": ("text", "label")}


class TaskError(ValueError):
    """Bad task input (name, file, columns, split...); the message names the problem and the fix."""


class TaskTemplateError(TaskError, TemplateError):
    """A task's template is malformed: both a ``TaskError`` and a ``TemplateError``."""


@dataclass(frozen=True)
class Example:
    """One example: the ``[X]`` text and the answer that follows the template.

    ``target`` has no leading space ("Paris"); the space is added when tokenizing the answer.
    ``label`` is the class name for classification ("positive"), ``None`` for relations.
    """

    input: str
    target: str
    label: str | None = None


@dataclass
class Task:
    """A named task: a manual template, three disjoint splits and the candidate answers."""

    name: str = field(metadata={"help": "task name: a built-in name or the file's stem"})
    template: str = field(metadata={"help": "LAMA-style manual template with one [X], e.g. 'The capital of [X] is'"})
    train: list[Example] = field(metadata={"help": "training examples"})
    dev: list[Example] = field(metadata={"help": "development examples (early stopping, model choice)"})
    test: list[Example] = field(metadata={"help": "held-out test examples"})
    answers: list[str] = field(metadata={"help": "sorted candidate answers: distinct targets, or the verbalizer words"})
    kind: str = field(default="relation", metadata={"help": "'relation' or 'classification'"})
    verbalizer: dict[str, str] | None = field(
        default=None, metadata={"help": "classification only: label -> answer word, e.g. {'positive': 'good'}"})

    @property
    def examples(self) -> list[Example]:
        """All examples: train, then dev, then test."""
        return [*self.train, *self.dev, *self.test]

    @property
    def labels(self) -> list[str]:
        """Classification labels in verbalizer order (empty for a relation)."""
        return list(self.verbalizer) if self.verbalizer else []

    def summary(self) -> str:
        """One line: name, kind, split sizes, template, number of answers (and the verbalizer)."""
        line = (f"{self.name} ({self.kind}): {len(self.train)}/{len(self.dev)}/{len(self.test)} train/dev/test"
                f" | template {self.template!r} | {len(self.answers)} answers")
        if self.verbalizer:
            line += " | verbalizer " + ", ".join(f"{k}->{v}" for k, v in self.verbalizer.items())
        return line


# ---------------------------------------------------------------------------------------- entry point
def load_task(name_or_path: str | Path, seed: int = 0, template: str | None = None,
              split: Sequence[float] = DEFAULT_SPLIT, max_examples: int | None = None,
              verbalizer: dict | None = None) -> Task:
    """A built-in task by name (``TASK_NAMES``) or a ``.jsonl``/``.csv`` file by path.

    ``template`` replaces the manual template; ``split`` are the train/dev/test fractions;
    ``max_examples`` keeps that many examples after the seeded shuffle; ``verbalizer`` maps
    classification labels to answer words.
    """
    key = str(name_or_path).strip()
    if not isinstance(name_or_path, Path) and key.lower() in TASK_NAMES:
        key = key.lower()
        if key == "polarity":
            return polarity_task(seed, template=template, split=split, max_examples=max_examples,
                                 verbalizer=verbalizer)
        if verbalizer is not None:
            raise TaskError(f"verbalizer= only applies to classification tasks, but '{key}' is a relation "
                            "(its answers are the objects). Drop verbalizer=.")
        return relation_task(key, seed, template=template, split=split, max_examples=max_examples)
    path = Path(key)
    if isinstance(name_or_path, Path) or path.suffix or path.exists() or "/" in key or "\\" in key:
        return task_from_file(path, seed, template=template, split=split, max_examples=max_examples,
                              verbalizer=verbalizer)
    raise TaskError(f"unknown task {key!r}.{did_you_mean(key, TASK_NAMES)} Built-in tasks: {', '.join(TASK_NAMES)}; "
                    "or give the path of a .jsonl/.csv file with columns subject,object (relation) or text,label "
                    "(classification).")


# ---------------------------------------------------------------------------------------- relations
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
    import pycountry
    from countryinfo import CountryInfo

    by_code: dict[str, list[dict]] = defaultdict(list)
    for raw in CountryInfo.all().values():
        code = ((raw.get("ISO") or {}).get("alpha2") or "").upper()
        # skips Scotland/Wales (no own code or the UK's) and dissolved states (Serbia and Montenegro)
        if code and pycountry.countries.get(alpha_2=code) is not None:
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
                           "ptuning_lab/tasks.py or install the tested release: pip install countryinfo==1.0.1")
    return tuple(sorted(records, key=lambda r: r["name"]))


def _country_key(code: str) -> str | None:
    from countryinfo import CountryInfo

    try:
        return CountryInfo(code).name().lower()
    except Exception:  # the library's own lookup failing only loses a tie-break
        return None


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
    """English name of the first language code pycountry knows (the primary official language)."""
    import pycountry

    for code in codes:
        if not isinstance(code, str):
            continue
        code = _LANGUAGE_CODE_FIXES.get(code.strip().lower(), code.strip().lower())
        lang = pycountry.languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code}) \
            if len(code) in (2, 3) else None
        if lang is not None:
            if code in _LANGUAGE_NAMES:
                return _LANGUAGE_NAMES[code]
            # "Malay (macrolanguage)" -> "Malay"
            return re.sub(r"\s*\(.*?\)", "", lang.name).strip()
    return None


def _first_currency(codes) -> str | None:
    """ISO 4217 English name of the first legal-tender currency code."""
    import pycountry

    for code in codes:
        if not isinstance(code, str) or code.upper() in _FUND_CURRENCIES:
            continue
        code = _CURRENCY_SUCCESSORS.get(code.upper(), code.upper())
        cur = pycountry.currencies.get(alpha_3=code)
        if cur is not None:
            return cur.name
    return None


# ---------------------------------------------------------------------------------------- polarity
def polarity_task(seed: int = 0, template: str | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                  max_examples: int | None = None, verbalizer: dict | None = None,
                  threshold: float = 2.0, offensive: bool = False) -> Task:
    """Word polarity from the VADER lexicon: strongly positive vs strongly negative words.

    Keeps dictionary words with mean valence >= ``threshold`` (positive) or <= ``-threshold``
    (negative), then the same number of each class: the most extreme words of the larger class.
    The most negative words of a sentiment lexicon include slurs and obscenities; a course shows
    its examples on screen, so words on the ``better-profanity`` word list are left out before the
    classes are balanced (52 words of the unfiltered 1734-word set, 51 of them negative; the other
    words of the pool take their places). ``offensive=True`` keeps them.
    The template ``The word "[X]" means something`` ends where " good"/" bad" is the natural next
    word. Zero-shot, the embedded SmolLM2-135M scores " good" above " bad" for the right class on
    93% of the 1732 words (50% is chance); of ten templates tried, 'The word "[X]" sounds' came
    next (87%), while '"[X]" is a' or '[X] is' answer " good" for nearly every word (50-55%).
    """
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 4:
        raise TaskError(f"threshold={threshold!r}: VADER valences lie in [-4, 4]; use a number in (0, 4], "
                        "e.g. 2.0.")
    words = _vader_words()
    if not offensive:
        blocked = _offensive_words()
        words = tuple((w, v) for w, v in words if w not in blocked)
    pos = [(w, v) for w, v in words if v >= threshold]
    neg = [(w, v) for w, v in words if v <= -threshold]
    n = min(len(pos), len(neg))
    if n == 0:
        raise TaskError(f"no VADER word reaches |valence| >= {threshold} in both classes; lower threshold=.")

    def strongest(items):
        return sorted(items, key=lambda wv: (-abs(wv[1]), wv[0]))[:n]

    verb = _check_verbalizer(POLARITY_VERBALIZER if verbalizer is None else verbalizer, ["negative", "positive"])
    verb = {label: verb[label] for label in ("positive", "negative")}
    examples = [Example(w, verb["positive"], "positive") for w, _ in strongest(pos)]
    examples += [Example(w, verb["negative"], "negative") for w, _ in strongest(neg)]
    examples.sort(key=lambda e: e.input)
    return _make_task("polarity", template or POLARITY_TEMPLATE, examples, "classification", verb,
                      seed, split, max_examples)


def _package_lines(module: str, filename: str, pip_name: str, needed_for: str) -> list[str]:
    """The lines of a data file shipped inside an installed package (the package is not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(f"{needed_for} needs the package {pip_name}; install it with pip install {pip_name}.")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TaskError(f"cannot read {path}: {e}. Reinstall: pip install --force-reinstall {pip_name}") from e


@lru_cache(maxsize=1)
def _offensive_words() -> frozenset[str]:
    """The lower-cased entries of ``better-profanity``'s word list (read as data; its filter is not used)."""
    lines = _package_lines("better_profanity", "profanity_wordlist.txt", "better-profanity",
                           "the polarity task (to leave out offensive words; offensive=True keeps every word)")
    return frozenset(line.strip().lower() for line in lines if line.strip())


@lru_cache(maxsize=1)
def _vader_words() -> tuple[tuple[str, float], ...]:
    """(word, mean valence) for VADER's dictionary words, in file order.

    vader_lexicon.txt lists emoticons and internet acronyms first ("lol", "wtf", "aayf"), sorted,
    then ordinary words sorted again from "abandon". The acronyms are not words a language model
    can read, so we keep only the second part: it starts where a plain word's first letter drops
    back (the "zzz" -> "abandon" line).
    """
    lines = _package_lines("vaderSentiment", "vader_lexicon.txt", "vadersentiment", "the polarity task")
    words: list[tuple[str, float]] = []
    for line in lines:
        cols = line.split("\t")
        if len(cols) < 2:
            continue
        token = cols[0].strip()
        if not (token.isascii() and token.isalpha() and token.islower()):
            continue  # emoticons, "can't stand", "n00b"
        try:
            words.append((token, float(cols[1])))
        except ValueError:
            continue
    start = next((i for i in range(1, len(words)) if words[i][0][0] < words[i - 1][0][0]), 0)
    seen: set[str] = set()
    out = []
    for w, v in words[start:]:
        if w not in seen:
            seen.add(w)
            out.append((w, v))
    return tuple(out)


# ---------------------------------------------------------------------------------------- files
_TEMPLATE_LINE = re.compile(r"^\s*#\s*template\s*:\s*(.*?)\s*$", re.IGNORECASE)


def task_from_file(path: str | Path, seed: int = 0, template: str | None = None,
                   split: Sequence[float] = DEFAULT_SPLIT, max_examples: int | None = None,
                   verbalizer: dict | None = None) -> Task:
    """A task from a ``.jsonl``/``.csv``/``.tsv`` file of ``subject,object`` or ``text,label`` rows.

    The template comes from ``template=``, else from a first line ``# template: ...`` (or, in
    JSONL, ``{"template": "..."}``). Values are stripped of surrounding whitespace. For
    classification the verbalizer defaults to each label itself.
    """
    path = Path(path)
    fmt = FILE_KINDS.get(path.suffix.lower())
    if fmt is None:
        raise TaskError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}; use .jsonl (one JSON "
                        "object per line) or .csv (a header row) with columns subject,object or text,label.")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise TaskError(f"task file {str(path)!r} not found; check the path (or use a built-in task: "
                        f"{', '.join(TASK_NAMES)}).") from e
    except UnicodeDecodeError as e:
        raise TaskError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8.") from e
    except OSError as e:
        raise TaskError(f"cannot read task file {str(path)!r}: {e.strerror or e}. Give a readable "
                        ".jsonl/.csv file.") from e
    if fmt == "jsonl":
        file_template, kind, rows = _read_jsonl(text, path)
    else:
        file_template, kind, rows = _read_csv(text, path, "\t" if fmt == "tsv" else ",")
    template = template or file_template
    if not template:
        raise TaskError(f"{path}: no template. Pass template=\"The capital of [X] is\" or make the file's first "
                        "line '# template: The capital of [X] is'.")
    if not rows:
        raise TaskError(f"{path}: the file has no examples; add rows of {','.join(COLUMNS[kind])}.")
    first, second = COLUMNS[kind]
    seen: dict[str, list[int]] = defaultdict(list)
    for line, x, _ in rows:
        seen[x].append(line)
    dups = {x: lines for x, lines in seen.items() if len(lines) > 1}
    if dups:
        shown = "; ".join(f"{x!r} (lines {', '.join(map(str, ls))})" for x, ls in list(dups.items())[:5])
        more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
        what = "one answer per subject" if kind == "relation" else "a repeated text would leak across splits"
        raise TaskError(f"{path}: duplicate {first}s: {shown}{more}. Keep one row per {first} ({what}).")
    if kind == "relation":
        if verbalizer is not None:
            raise TaskError(f"{path} is a relation (subject,object): verbalizer= only applies to text,label "
                            "files. Drop verbalizer=.")
        examples = [Example(x, y) for _, x, y in rows]
        verb = None
    else:
        labels = sorted({y for _, _, y in rows})
        verb = _check_verbalizer(verbalizer if verbalizer is not None else {l: l for l in labels}, labels)
        verb = {label: verb[label] for label in labels}
        examples = [Example(x, verb[y], y) for _, x, y in rows]
    return _make_task(path.stem, template, examples, kind, verb, seed, split, max_examples)


def _kind_from_columns(found: Sequence[str], where: str) -> str:
    names = {c.strip().lower() for c in found}
    kinds = [k for k, cols in COLUMNS.items() if set(cols) <= names]
    if len(kinds) == 1:
        return kinds[0]
    if len(kinds) > 1:
        raise TaskError(f"{where}: columns {sorted(names)} hold both subject,object and text,label; keep one pair "
                        "(subject,object for a relation, text,label for classification).")
    raise TaskError(f"{where}: found columns {list(found)} but expected subject,object (a relation) or "
                    "text,label (classification); rename the columns.")


def _cell(value, column: str, where: str) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
        raise TaskError(f"{where}: {column!r} is {json.dumps(value)[:40]}; it must be a string (or a number).")
    import unicodedata

    # NFC: two spellings of one subject ("é" vs "e" + combining accent) become one, so duplicates are found
    text = unicodedata.normalize("NFC", value.strip()) if isinstance(value, str) else str(value)
    bad = next((c for c in text if unicodedata.category(c) == "Cc" or "\u202a" <= c <= "\u202e"
                or "\u2066" <= c <= "\u2069" or c in "\u200e\u200f"), None)
    if bad is not None:
        raise TaskError(f"{where}: {column!r} holds the invisible character U+{ord(bad):04X} "
                        f"({unicodedata.name(bad, 'a control character')}); control and text-direction characters "
                        "change what the model reads without showing. Delete it from the file.")
    if not text:
        what = {"subject": "subject", "text": "text", "object": "object (the answer)", "label": "label"}[column]
        raise TaskError(f"{where}: empty {what}; every row needs a non-empty {column} (fill it or delete the row).")
    return text


def _read_jsonl(text: str, path: Path) -> tuple[str | None, str, list[tuple[int, str, str]]]:
    """(template from the file, kind, rows of (line number, input, answer or label))."""
    template, kind, rows = None, None, []
    first = True
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            m = _TEMPLATE_LINE.match(line)
            if m and first and template is None:
                template = m.group(1)
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be one object "
                            "like {\"subject\": \"France\", \"object\": \"Paris\"}.") from e
        except (RecursionError, ValueError) as e:
            raise TaskError(f"{where}: unreadable JSON ({type(e).__name__}); each line must be one flat object "
                            "like {\"text\": \"great movie\", \"label\": \"positive\"}.") from e
        if not isinstance(record, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(record).__name__}; write "
                            "{\"subject\": ..., \"object\": ...} or {\"text\": ..., \"label\": ...}.")
        if first and set(record) == {"template"}:
            template = record["template"]
            if not isinstance(template, str):
                raise TaskError(f"{where}: \"template\" must be a string like \"The capital of [X] is\".")
            first = False
            continue
        first = False
        if kind is None:
            kind = _kind_from_columns(list(record), where)
        x_col, y_col = COLUMNS[kind]
        missing = [c for c in (x_col, y_col) if c not in record]
        if missing:
            raise TaskError(f"{where}: missing key {missing[0]!r} (found {list(record)}); every line needs "
                            f"{x_col!r} and {y_col!r}.")
        rows.append((number, _cell(record[x_col], x_col, where), _cell(record[y_col], y_col, where)))
    return template, kind or "relation", rows


def _read_csv(text: str, path: Path, delimiter: str) -> tuple[str | None, str, list[tuple[int, str, str]]]:
    """(template from the file, kind, rows of (line number, input, answer or label))."""
    stream = io.StringIO(text, newline="")
    template, skipped = None, 0
    while True:  # leading '#' comment lines and blank lines come before the header
        pos = stream.tell()
        line = stream.readline()
        if not line:
            break
        if line.strip() and not line.lstrip().startswith("#"):
            stream.seek(pos)
            break
        m = _TEMPLATE_LINE.match(line)
        if m and template is None:
            template = m.group(1)
        skipped += 1
    reader = csv.reader(stream, delimiter=delimiter)
    header, kind, index, rows = None, "relation", {}, []
    try:
        while True:
            number = skipped + reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            if not any(c.strip() for c in cells):
                continue
            where = f"{path}, line {number}"
            if header is None:
                header = [c.strip().lower() for c in cells]
                kind = _kind_from_columns([c.strip() for c in cells], where)
                index = {c: header.index(c) for c in COLUMNS[kind]}
                continue
            if len(cells) != len(header):
                raise TaskError(f"{where}: {len(cells)} fields but the header has {len(header)} "
                                f"({','.join(header)}); quote values that contain '{delimiter}' or a quote sign.")
            x_col, y_col = COLUMNS[kind]
            rows.append((number, _cell(cells[index[x_col]], x_col, where), _cell(cells[index[y_col]], y_col, where)))
    except csv.Error as e:
        raise TaskError(f"{path}, line {skipped + reader.line_num}: malformed CSV ({e}); check quoting.") from e
    if header is None:
        raise TaskError(f"{path}: no header row; the first line must name the columns, e.g. subject,object "
                        "or text,label.")
    return template, kind, rows


# ---------------------------------------------------------------------------------------- shared
def _check_template(template) -> str:
    if not isinstance(template, str):
        raise TaskTemplateError(f"template must be a string like \"The capital of [X] is\", "
                                f"got {type(template).__name__}.")
    # the answer follows after one space, so trailing whitespace would give two
    template = template.rstrip()
    try:
        Template.parse(template).validate(need_virtual=False, need_input=True)
    except TemplateError as e:
        raise TaskTemplateError(str(e)) from e
    return template


def _check_verbalizer(verbalizer, labels: Sequence[str]) -> dict[str, str]:
    if not isinstance(verbalizer, dict):
        raise TaskError(f"verbalizer must be a dict label -> word, e.g. {{'positive': 'good'}}; got "
                        f"{type(verbalizer).__name__}.")
    uncovered = [label for label in labels if label not in verbalizer]
    if uncovered:
        example = ", ".join(f"{label!r}: '...'" for label in uncovered[:3])
        raise TaskError(f"labels {uncovered} have no verbalizer word (it covers {sorted(map(str, verbalizer))}); "
                        f"add them, e.g. verbalizer={{..., {example}}}, or drop verbalizer= to use each label as "
                        "its own word.")
    out = {}
    for label in labels:
        word = verbalizer[label]
        if not isinstance(word, str) or not word.strip():
            raise TaskError(f"verbalizer word for label {label!r} is {word!r}; give a non-empty word such as 'good'.")
        out[label] = word.strip()
    words = Counter(out.values())
    clash = [w for w, n in words.items() if n > 1]
    if clash:
        raise TaskError(f"verbalizer maps several labels to {clash}; give each label its own word.")
    return out


def _check_split(split) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or not all(math.isfinite(f) and f > 0 for f in fractions) \
            or abs(sum(fractions) - 1) > 1e-6:
        raise TaskError(f"split={split!r}: give three positive train/dev/test fractions summing to 1, "
                        "e.g. (0.6, 0.2, 0.2).")
    return fractions  # type: ignore[return-value]


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    # round half up (Python's round() rounds half to even, which makes sizes jump with n)
    dev, test = (math.floor(n * f + 0.5) for f in fractions[1:])
    return n - dev - test, dev, test


def _needed(fractions: tuple[float, float, float]) -> int:
    n = 1
    while min(_split_sizes(n, fractions)) < 1:
        n += 1
    return n


def _make_task(name: str, template: str, examples: list[Example], kind: str, verbalizer: dict | None,
               seed: int, split, max_examples: int | None) -> Task:
    """Shuffle with ``seed``, cap at ``max_examples``, split (stratified by label for classification)."""
    template = _check_template(template)
    fractions = _check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, int):
        # random.Random(None) would seed from the clock and silently break reproducibility
        raise TaskError(f"seed={seed!r}: give an integer; the same seed always gives the same split.")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise TaskError(f"max_examples={max_examples!r}: give a positive integer, or None for all examples.")
    if not examples:
        raise TaskError(f"task {name!r} has no examples; give a file with at least {_needed(fractions)} rows.")
    rng = random.Random(seed)
    if kind == "classification":
        groups: dict[str, list[Example]] = defaultdict(list)
        for ex in examples:
            groups[ex.label].append(ex)
        order = sorted(groups)
        for label in order:
            rng.shuffle(groups[label])
        if max_examples is not None and max_examples < len(examples):
            quotas = _proportional(max_examples, [len(groups[label]) for label in order])
            groups = {label: groups[label][:q] for label, q in zip(order, quotas)}
        splits: list[list[Example]] = [[], [], []]
        for label in order:
            start = 0
            for part, size in zip(splits, _split_sizes(len(groups[label]), fractions)):
                part.extend(groups[label][start:start + size])
                start += size
        for part in splits:  # labels interleaved, not in blocks
            rng.shuffle(part)
    else:
        pool = list(examples)
        rng.shuffle(pool)
        pool = pool[:max_examples] if max_examples is not None else pool
        sizes = _split_sizes(len(pool), fractions)
        splits = [pool[:sizes[0]], pool[sizes[0]:sizes[0] + sizes[1]], pool[sizes[0] + sizes[1]:]]
    total = sum(map(len, splits))
    empty = [s for s, part in zip(SPLIT_NAMES, splits) if not part]
    if empty:
        raise TaskError(f"task {name!r}: split {fractions} of {total} examples leaves {' and '.join(empty)} empty; "
                        f"need at least {_needed(fractions)} examples (raise max_examples=, add rows, "
                        "or change split=).")
    if kind == "classification":
        answers = sorted(verbalizer.values())
    else:
        answers = sorted({ex.target for ex in splits[0] + splits[1] + splits[2]})
    return Task(name=name, template=template, train=splits[0], dev=splits[1], test=splits[2],
                answers=answers, kind=kind, verbalizer=verbalizer)


def _proportional(total: int, counts: list[int]) -> list[int]:
    """Split ``total`` over groups in proportion to ``counts`` (largest remainder, ties to the first)."""
    whole = sum(counts)
    exact = [total * c / whole for c in counts]
    quotas = [math.floor(e) for e in exact]
    for i in sorted(range(len(counts)), key=lambda i: -(exact[i] - quotas[i]))[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas
