"""FewGLUE_32dev: the P-tuning paper's few-shot SuperGLUE (32 train, 32 dev, the full validation set as test).

Seven tasks, each read from a directory of the standard SuperGLUE JSONL files
(``<dir>/RTE/train.jsonl``, ``dev32.jsonl``, ``val.jsonl``; THUDM/P-tuning's FewGLUE_32dev layout)
or, online, from the hub's ``super_glue`` through ``datasets``:

=======  ===============  ====================================================================  =================
task     kind             manual template (named slots)                                         label words
=======  ===============  ====================================================================  =================
boolq    classification   ``[passage] Question: [question]? Answer:``                            Yes / No
cb       classification   ``[premise] Question: [hypothesis] True, False or Neither? Answer:``   True/False/Neither
copa     multiple choice  ``"[choice1]" or "[choice2]"? [premise] [question]``                   the two choices
multirc  classification   ``[passage] Question: [question] Is it [answer]?``                    Yes / No
rte      classification   ``[premise] Question: [hypothesis] True or False? Answer:``            True / False
wic      classification   ``[sentence1] [sentence2] Does [word] have the same meaning ...?``     Yes / No
wsc      classification   ``[text] In the previous sentence, does the pronoun ... refer to ...?`` Yes / No
=======  ===============  ====================================================================  =================

The patterns and label words follow PET's pattern-verbalizer pairs (Schick & Schütze 2021,
timoschick/pet ``pet/pvp.py``; the P-tuning paper's FewGLUE experiments start from the same PVPs),
each choosing the PVP whose answer comes last, where a left-to-right model predicts it. Records flatten
into examples: one per MultiRC answer (``group`` = the question, for exact match), one per WSC
(pronoun, candidate) pair, COPA as two ``choices`` with ``label`` "0"/"1".

    >>> task = load_task("rte", data_dir="../shared/data/fewglue_32dev")      # doctest: +SKIP
    >>> len(task.train), len(task.dev), len(task.test), task.metrics         # doctest: +SKIP
    (32, 32, 277, ('accuracy',))

The directory comes from ``data_dir=`` or the ``PTUNING_LAB_FEWGLUE`` environment variable; without
either, the hub (``source="hub"``: 32 + 32 examples drawn with the seed from SuperGLUE's train split,
so not the paper's exact examples). ``max_examples`` caps the test split (whole MultiRC questions).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import string
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from .base import DEFAULT_SPLIT, Example, Task, TaskError, _check_template
from .registry import register_task

FEWGLUE_ENV = "PTUNING_LAB_FEWGLUE"
FILES = {"train": "train.jsonl", "dev": "dev32.jsonl", "test": "val.jsonl"}
HUB_SPLITS = {"train": "train", "test": "validation"}          # dev: 32 more drawn from the hub's train
FEW_SHOT = 32

_BOOL = ("False", "True")   # the hub's ClassLabel order (0 = False), and the JSONL's booleans as text
_YES_NO = {"True": ("Yes",), "False": ("No",)}


@dataclass(frozen=True)
class SuperGlueTask:
    """How one SuperGLUE task reads: its folder, required fields, label names and PVP."""

    name: str
    folder: str                          # the FewGLUE directory name ("RTE")
    fields: tuple[str, ...]              # keys every JSONL record must have (the hub's flat rows are mapped first)
    labels: tuple[str, ...]              # label names in the hub's ClassLabel order
    template: str
    verbalizer: dict[str, tuple[str, ...]] | None
    metrics: tuple[str, ...]
    flatten: Callable[[dict, str], list[Example]]     # (record, label) -> examples
    pvp: str                             # which literature pattern this follows
    kind: str = "classification"


def _strip_end(text: str) -> str:
    return text.rstrip().rstrip(string.punctuation).rstrip()


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _pair(a: str, b: str):
    def flatten(r: dict, label: str) -> list[Example]:
        return [Example(label=label, fields={a: r[a], b: r[b]})]
    return flatten


def _wic(r: dict, label: str) -> list[Example]:
    return [Example(label=label, fields={"sentence1": r["sentence1"], "sentence2": r["sentence2"], "word": r["word"]})]


def _wsc(r: dict, label: str) -> list[Example]:
    # PET marks the pronoun in the text with asterisks (when span2_index points at it)
    span = r.get("target", r)
    words, index, pronoun = r["text"].split(), span["span2_index"], span["span2_text"]
    if 0 <= index < len(words) and words[index].lower().startswith(pronoun.split()[0].lower()):
        words[index] = f"*{words[index]}*"
    return [Example(label=label, fields={"text": " ".join(words), "pronoun": pronoun,
                                         "candidate": span["span1_text"]})]


def _copa(r: dict, label: str) -> list[Example]:
    # PET's CopaPVP: premise without its final stop, "because" (cause) / "so" (effect), choices lower-cased
    choices = tuple(_strip_end(_lower_first(r[c])) for c in ("choice1", "choice2"))
    connective = {"cause": "because", "effect": "so"}.get(r["question"])
    if connective is None:
        raise TaskError(f"COPA record {r.get('idx')}: question is {r['question']!r}; it must be 'cause' or 'effect'.")
    return [Example(target=choices[int(label)], label=label, choices=choices,
                    fields={"premise": _strip_end(r["premise"]), "question": connective,
                            "choice1": choices[0], "choice2": choices[1]})]


def _multirc(r: dict, label: str | None) -> list[Example]:
    if "paragraph" in r:         # the hub: one row per answer, its question id in idx
        idx = r["idx"]
        return [Example(label=label, group=f"{idx['paragraph']}-{idx['question']}",
                        fields={"passage": r["paragraph"], "question": r["question"], "answer": r["answer"]})]
    out = []
    for q in r["passage"]["questions"]:
        for a in q["answers"]:
            out.append(Example(label=_label(a.get("label"), _BOOL, "MultiRC answer"), group=f"{r['idx']}-{q['idx']}",
                               fields={"passage": r["passage"]["text"], "question": q["question"], "answer": a["text"]}))
    return out


TASKS: dict[str, SuperGlueTask] = {t.name: t for t in (
    SuperGlueTask("boolq", "BoolQ", ("passage", "question", "label"), _BOOL,
                  "[passage] Question: [question]? Answer:", _YES_NO, ("accuracy",), _pair("passage", "question"),
                  "PET BoolQPVP pattern 0 (passage. Question: q? Answer: Yes/No)"),
    SuperGlueTask("cb", "CB", ("premise", "hypothesis", "label"), ("entailment", "contradiction", "neutral"),
                  "[premise] Question: [hypothesis] True, False or Neither? Answer:",
                  {"entailment": ("True",), "contradiction": ("False",), "neutral": ("Neither",)},
                  ("accuracy", "f1_macro"), _pair("premise", "hypothesis"),
                  "PET CbPVP pattern 4 (true, false or neither? answer:)"),
    SuperGlueTask("copa", "COPA", ("premise", "choice1", "choice2", "question", "label"), ("0", "1"),
                  '"[choice1]" or "[choice2]"? [premise] [question]', None, ("accuracy",), _copa,
                  "PET CopaPVP pattern 0 (\"c1\" or \"c2\"? premise because/so <choice>)", kind="multiple_choice"),
    SuperGlueTask("multirc", "MultiRC", ("passage",), _BOOL,
                  "[passage] Question: [question] Is it [answer]?", _YES_NO, ("f1a", "em"), _multirc,
                  "PET MultiRcPVP pattern 0 (passage. Question: q? Is it a? Yes/No)"),
    SuperGlueTask("rte", "RTE", ("premise", "hypothesis", "label"), ("entailment", "not_entailment"),
                  "[premise] Question: [hypothesis] True or False? Answer:",
                  {"entailment": ("True",), "not_entailment": ("False",)}, ("accuracy",), _pair("premise", "hypothesis"),
                  "PET RtePVP pattern 4 (question: h True or False? answer:)"),
    SuperGlueTask("wic", "WiC", ("word", "sentence1", "sentence2", "label"), _BOOL,
                  "[sentence1] [sentence2] Does [word] have the same meaning in both sentences?", _YES_NO,
                  ("accuracy",), _wic, "PET WicPVP pattern 1 (Does w have the same meaning in both sentences?)"),
    SuperGlueTask("wsc", "WSC", ("text", "label"), _BOOL,
                  '[text] In the previous sentence, does the pronoun "[pronoun]" refer to [candidate]?', _YES_NO,
                  ("accuracy",), _wsc,
                  "PET WscPVP pattern 1 wording, as a Yes/No question about the candidate (PET generates the "
                  "referent instead)"),
)}
_WSC_SPANS = ("span1_text", "span2_text", "span2_index")


def _label(value, names: tuple[str, ...], what: str) -> str:
    """A record's label as one of ``names``: booleans, the hub's class ids and strings all map."""
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, int) and 0 <= value < len(names):
        text = names[value]
    else:
        text = str(value)
    if text not in names:
        hint = " (-1: the hub's unlabelled test split; use validation)" if value == -1 else ""
        raise TaskError(f"{what}: label {value!r} is not one of {', '.join(names)}{hint}.")
    return text


def _record_fields(spec: SuperGlueTask, record: dict, where: str) -> None:
    missing = [f for f in spec.fields if f not in record]
    if spec.name == "wsc" and not missing:
        span = record.get("target", record)
        missing = [f for f in _WSC_SPANS if not isinstance(span, dict) or f not in span]
    if spec.name == "multirc" and "paragraph" not in record and not missing \
            and not (isinstance(record["passage"], dict) and "questions" in record["passage"]):
        missing = ["passage.questions"]
    if missing:
        found = sorted(record)
        other = [t.name for t in TASKS.values() if t is not spec and all(f in record for f in t.fields)]
        guess = f"; it looks like a SuperGLUE file of another task ({', '.join(other)})" if other else ""
        raise TaskError(f"{where}: a {spec.folder} record needs the fields {', '.join(spec.fields)} but has "
                        f"{', '.join(found)} (missing {', '.join(missing)}){guess}. Point data_dir= at the "
                        f"FewGLUE directory whose {spec.folder}/ folder holds {spec.folder}'s files.")


def examples_from_records(spec: SuperGlueTask, records: Sequence[dict], where: str,
                          label_names: tuple[str, ...] | None = None) -> list[Example]:
    """Flatten SuperGLUE records (JSONL or the hub's rows) into examples; ``where`` names them in errors."""
    out: list[Example] = []
    names = label_names or spec.labels
    for i, record in enumerate(records, start=1):
        at = f"{where}, record {i}"
        if not isinstance(record, dict):
            raise TaskError(f"{at}: expected a JSON object, got {type(record).__name__}.")
        if "paragraph" in record and spec.name == "multirc":     # the hub's flat MultiRC row
            missing = [f for f in ("paragraph", "question", "answer", "idx", "label") if f not in record]
            if missing:
                raise TaskError(f"{at}: a MultiRC hub row needs paragraph, question, answer, idx, label; has "
                                f"{', '.join(sorted(record))}.")
        else:
            _record_fields(spec, record, at)
        label = None if spec.name == "multirc" and "paragraph" not in record else \
            _label(record.get("label"), names, at)
        if label is not None and spec.kind == "multiple_choice":
            label = str(spec.labels.index(label))
        out.extend(spec.flatten(record, label))
    if not out:
        raise TaskError(f"{where} holds no examples.")
    return out


def _read_jsonl(path: Path, spec: SuperGlueTask) -> list[Example]:
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TaskError(f"cannot read {path}: {e}.") from e
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}, line {number}: invalid JSON ({e.msg}); a SuperGLUE file holds one JSON "
                            "object per line.") from e
    return examples_from_records(spec, records, str(path))


def _task_dir(spec: SuperGlueTask, data_dir: Path) -> Path:
    if (data_dir / FILES["train"]).exists():          # the task's own folder
        return data_dir
    for child in data_dir.iterdir() if data_dir.is_dir() else ():
        if child.is_dir() and child.name.lower() == spec.folder.lower():
            return child
    raise TaskError(f"{data_dir} has no {spec.folder}/ folder with {', '.join(FILES.values())}; point data_dir= "
                    f"(or {FEWGLUE_ENV}) at the FewGLUE_32dev directory.")


def _cap(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """At most ``n`` examples, drawn with ``seed``; MultiRC keeps whole questions (so EM stays defined)."""
    if n is None:
        return examples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TaskError(f"max_examples={n!r}: give a positive integer (it caps the test split), or None.")
    groups: dict = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.group if ex.group is not None else i, []).append(ex)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    out: list[Example] = []
    for k in keys:
        if out and len(out) + len(groups[k]) > n:
            break
        out.extend(groups[k])
    return out


def _few(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """Two disjoint seeded draws of 32 from the hub's train split (FewGLUE's train and dev32); MultiRC draws
    32 questions each, as FewGLUE's files hold."""
    groups: dict = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.group if ex.group is not None else i, []).append(ex)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    pick = lambda ks: [ex for k in ks for ex in groups[k]]     # noqa: E731
    return pick(keys[:FEW_SHOT]), pick(keys[FEW_SHOT:2 * FEW_SHOT])


def superglue_task(name: str, seed: int = 0, template: str | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                   max_examples: int | None = None, verbalizer: dict | None = None, data_dir=None,
                   source: str = "auto", hub_id: str | None = None, cache_dir=None) -> Task:
    """One FewGLUE task: train/dev/test = ``train.jsonl``/``dev32.jsonl``/``val.jsonl`` of ``data_dir``.

    Args:
        data_dir: the FewGLUE_32dev directory (or the task's own folder); default ``$PTUNING_LAB_FEWGLUE``.
        source: ``"files"``, ``"hub"`` (``datasets``), or ``"auto"``: the files when a directory is known, else the hub.
        max_examples: cap the test split (SuperGLUE validation) at this many examples, drawn with ``seed``.
        verbalizer: label -> label word(s), replacing the PVP's words.
    """
    spec = TASKS[name]
    if tuple(split) != tuple(DEFAULT_SPLIT):
        raise TaskError(f"{name}: FewGLUE's splits are fixed (32 train, 32 dev, SuperGLUE validation as test); "
                        "drop split= (max_examples= caps the test split).")
    if source not in ("auto", "files", "hub"):
        raise TaskError(f"source={source!r}: choose 'auto', 'files' or 'hub'.")
    data_dir = data_dir if data_dir is not None else os.environ.get(FEWGLUE_ENV) or None
    if source == "files" or (source == "auto" and data_dir is not None):
        if data_dir is None:
            raise TaskError(f"{name}: no FewGLUE directory; pass data_dir= or set {FEWGLUE_ENV} to the directory "
                            "holding BoolQ/, CB/, ... (or source='hub' to load it online through datasets).")
        folder = _task_dir(spec, Path(data_dir).expanduser())
        train, dev, test = (_read_jsonl(folder / FILES[s], spec) for s in ("train", "dev", "test"))
        where = f"FewGLUE_32dev {folder}"
    else:
        from .hub import SUPERGLUE_HUB_ID, hub_rows

        hub_id = hub_id or SUPERGLUE_HUB_ID
        parts = {}
        for part, hub_split in HUB_SPLITS.items():
            rows, names = hub_rows(hub_id, name, hub_split, cache_dir=cache_dir)
            parts[part] = examples_from_records(spec, rows, f"{hub_id} ({name}, {hub_split})", names)
        train, dev = _few(parts["train"], seed)
        test = parts["test"]
        where = f"hub {hub_id} ({name}): seeded 32/32 of train, validation as test"
    test = _cap(test, max_examples, seed)
    verb = spec.verbalizer
    if verbalizer is not None:
        if spec.kind == "multiple_choice":
            raise TaskError(f"{name} is multiple choice: its answers are each example's choices; drop verbalizer=.")
        verb = _verbalizer(verbalizer, spec)
    return _finish(spec, template, train, dev, test, verb, where)


def _verbalizer(verbalizer: dict, spec: SuperGlueTask) -> dict[str, tuple[str, ...]]:
    if not isinstance(verbalizer, dict):
        raise TaskError(f"verbalizer must be a dict label -> word(s), e.g. {dict(list(spec.verbalizer.items())[:1])}.")
    missing = [label for label in spec.verbalizer if label not in verbalizer]
    if missing:
        raise TaskError(f"{spec.name}: labels {missing} have no label words (labels: {', '.join(spec.verbalizer)}).")
    out = {}
    for label in spec.verbalizer:
        words = (verbalizer[label],) if isinstance(verbalizer[label], str) else tuple(verbalizer[label])
        words = tuple(w.strip() for w in words if isinstance(w, str) and w.strip())
        if not words:
            raise TaskError(f"{spec.name}: label {label!r} has empty label words; give at least one, e.g. 'Yes'.")
        out[label] = words
    return out


def _finish(spec, template, train, dev, test, verb, where) -> Task:
    def targeted(examples):
        # a classification example's target is its label's first word (what today's first-token scoring reads)
        if verb is None:
            return examples
        return [dataclasses.replace(e, target=verb[e.label][0]) for e in examples]

    return Task(name=spec.name, template=_check_template(template) if template is not None else spec.template,
                train=targeted(train), dev=targeted(dev), test=targeted(test),
                answers=sorted(words[0] for words in verb.values()) if verb else [],
                kind=spec.kind, verbalizer=dict(verb) if verb else None, metrics=spec.metrics, source=where)


for _name in TASKS:
    register_task(_name, partial(superglue_task, _name), kind=TASKS[_name].kind)

__all__ = ["FEWGLUE_ENV", "TASKS", "SuperGlueTask", "superglue_task", "examples_from_records"]
