"""Tasks: built-in relations and polarity, user files, deterministic splits, and every input error."""
import json
import re
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptuning_lab.tasks import (TASK_NAMES, Example, Task, TaskError, load_task, polarity_task, register_task, task_spec,
                               relation_task, task_from_file, task_names)
from ptuning_lab.tasks.superglue import TASKS as FEWGLUE_TASKS
from ptuning_lab.templates import TemplateError

RELATIONS = ("capital", "continent", "language", "currency")


def facts(task: Task) -> dict[str, str]:
    return {ex.input: ex.target for ex in task.examples}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def check_split_invariants(task: Task, n: int | None = None) -> None:
    """Splits are non-empty, disjoint, and hold every example exactly once."""
    assert task.train and task.dev and task.test
    ids = Counter(ex for ex in task.examples)
    assert max(ids.values()) == 1, "an example appears twice"
    inputs = [(ex.input, tuple(sorted(ex.fields.items()))) for ex in task.examples]      # [X] or the named slots
    assert len(set(inputs)) == len(inputs), "an input is in two splits"
    if n is not None:
        assert len(task.examples) == n


# ------------------------------------------------------------------------------------------ relations
@pytest.mark.parametrize("name", RELATIONS)
def test_relation_builds_with_clean_examples(name):
    task = load_task(name)
    # countryinfo has ~250 entries; each relation keeps those with a usable value
    assert len(task.examples) >= 230
    assert task.kind == "relation" and task.verbalizer is None
    assert "[X]" in task.template and not task.template.endswith(" ")
    for ex in task.examples:
        assert ex.input == ex.input.strip() and ex.input
        assert ex.target == ex.target.strip() and ex.target  # no leading space: it comes from tokenizing
        assert ex.label is None
    assert task.answers == sorted({ex.target for ex in task.examples})
    check_split_invariants(task)


def test_relation_sizes():
    sizes = {name: len(load_task(name).examples) for name in RELATIONS}
    assert sizes == {"capital": 243, "continent": 247, "language": 236, "currency": 237}


def test_relation_known_facts():
    assert {"France": "Paris", "Japan": "Tokyo", "Germany": "Berlin", "Vatican City": "Vatican City"}.items() \
        <= facts(load_task("capital")).items()
    assert {"France": "Europe", "Japan": "Asia", "Brazil": "Americas", "Kenya": "Africa",
            "Australia": "Oceania"}.items() <= facts(load_task("continent")).items()
    # Greece: pycountry's "Modern Greek (1453-)" cleaned; Serbia: countryinfo's wrong code 'rs' fixed
    assert {"France": "French", "Japan": "Japanese", "Greece": "Greek", "Serbia": "Serbian",
            "Malta": "Maltese"}.items() <= facts(load_task("language")).items()
    # Switzerland lists the WIR fund codes CHE/CHW around CHF; Belarus only the withdrawn BYR
    assert {"France": "Euro", "Japan": "Yen", "United States": "US Dollar", "Switzerland": "Swiss Franc",
            "United Kingdom": "Pound Sterling", "Belarus": "Belarusian Ruble"}.items() \
        <= facts(load_task("currency")).items()


def test_continent_keeps_countryinfo_regions():
    assert load_task("continent").answers == ["Africa", "Americas", "Asia", "Europe", "Oceania"]


def test_country_names_are_canonical():
    names = {ex.input for name in RELATIONS for ex in load_task(name).examples}
    # one entry per country: duplicates and non-countries of countryinfo are gone
    assert "Myanmar" in names and "Burma" not in names
    assert {"Wales", "Scotland", "Serbia and Montenegro", "Antilles néerlandaises",
            "Palestine, State of", "Holy See (Vatican City State)", "Virgin Islands, British"}.isdisjoint(names)
    assert {"Vatican City", "Palestine", "British Virgin Islands", "North Macedonia"} <= names
    assert not [n for n in names if "(" in n]


def test_relation_without_field_is_skipped():
    # countryinfo has no language for Malaysia and no capital for Antarctica
    assert "Malaysia" not in facts(load_task("language"))
    assert "Antarctica" not in facts(load_task("capital"))
    assert facts(load_task("capital"))["Malaysia"] == "Kuala Lumpur"


# ------------------------------------------------------------------------------------------ splits
# FewGLUE's splits are its files (32/32/val), not re-split by the seed: tests/test_task_data.py covers them
@pytest.mark.parametrize("name", [n for n in TASK_NAMES if n not in FEWGLUE_TASKS])
def test_split_is_deterministic_disjoint_and_complete(name):
    a, b = load_task(name, seed=3), load_task(name, seed=3)
    assert (a.train, a.dev, a.test) == (b.train, b.dev, b.test)
    c = load_task(name, seed=4)
    assert a.train != c.train
    # the seed shuffles, it never changes which examples the task holds
    assert sorted(a.examples, key=repr) == sorted(c.examples, key=repr)
    check_split_invariants(a)
    n = len(a.examples)
    for part, frac in zip((a.train, a.dev, a.test), (0.6, 0.2, 0.2)):
        assert abs(len(part) - frac * n) <= 2


def test_split_fractions_are_respected():
    task = load_task("capital", split=(0.8, 0.1, 0.1))
    n = len(task.examples)
    assert (len(task.train), len(task.dev), len(task.test)) == (n - 2 * round(0.1 * n), round(0.1 * n),
                                                                  round(0.1 * n))


def test_max_examples_caps_deterministically():
    full = load_task("capital", seed=1)
    a, b = load_task("capital", seed=1, max_examples=50), load_task("capital", seed=1, max_examples=50)
    assert len(a.examples) == 50 and (a.train, a.dev, a.test) == (b.train, b.dev, b.test)
    assert (len(a.train), len(a.dev), len(a.test)) == (30, 10, 10)
    assert set(a.examples) <= set(full.examples)
    assert a.answers == sorted({ex.target for ex in a.examples})
    assert len(load_task("capital", max_examples=10_000).examples) == len(full.examples)


# ------------------------------------------------------------------------------------------ polarity
def test_polarity_is_balanced_with_default_verbalizer():
    task = load_task("polarity")
    assert task.kind == "classification"
    assert task.verbalizer == {"positive": ("good",), "negative": ("bad",)}
    assert task.answers == ["bad", "good"]
    counts = Counter(ex.label for ex in task.examples)
    assert counts["positive"] == counts["negative"] >= 800
    for part in (task.train, task.dev, task.test):  # stratified
        c = Counter(ex.label for ex in part)
        assert abs(c["positive"] - c["negative"]) <= 1
    assert all(ex.target == task.verbalizer[ex.label][0] for ex in task.examples)
    words = {ex.input: ex.label for ex in task.examples}
    assert words["adore"] == "positive" and words["vile"] == "negative"
    assert all(w.isalpha() and w.islower() for w in words)
    # VADER's acronym section ("lol", "wtf", "aayf") is not used
    assert {"lol", "wtf", "aayf", "rofl"}.isdisjoint(words)
    check_split_invariants(task)


def test_polarity_leaves_out_offensive_words_unless_asked():
    from ptuning_lab.tasks.polarity import _offensive_words

    blocked = _offensive_words()
    assert len(blocked) > 500 and all(w == w.strip().lower() for w in blocked)
    clean = {ex.input for ex in polarity_task().examples}
    everything = {ex.input for ex in polarity_task(offensive=True).examples}
    assert clean.isdisjoint(blocked)
    left_out = everything & blocked
    assert len(left_out) >= 40                      # the lexicon's most negative words include many
    assert everything - clean == left_out           # nothing else is dropped ...
    assert len(clean) >= len(everything) - 2        # ... and the pool refills the classes


def test_polarity_custom_verbalizer_threshold_and_cap():
    task = load_task("polarity", verbalizer={"positive": " great", "negative": "terrible"}, max_examples=101)
    assert task.verbalizer == {"positive": ("great",), "negative": ("terrible",)}
    assert task.answers == ["great", "terrible"]
    counts = Counter(ex.label for ex in task.examples)
    assert sum(counts.values()) == 101 and abs(counts["positive"] - counts["negative"]) <= 1
    assert {ex.target for ex in task.examples} == {"great", "terrible"}
    strict = polarity_task(threshold=3.0)
    assert Counter(ex.label for ex in strict.examples)["positive"] == len(strict.examples) // 2
    assert len(strict.examples) < len(task.examples) * 20


def test_summary_line():
    task = load_task("polarity", max_examples=20)
    line = task.summary()
    assert "\n" not in line
    assert line.startswith("polarity (classification): 12/4/4 train/dev/test")
    assert repr(task.template) in line and "2 answers" in line and "positive->good" in line
    cap = load_task("capital")
    assert f"{len(cap.answers)} answers" in cap.summary()


def test_template_override():
    task = relation_task("capital", template="[X]'s capital city is  ")
    assert task.template == "[X]'s capital city is"  # trailing space removed: the answer adds its own
    assert load_task("polarity", template="[X] feels").template == "[X] feels"


# ------------------------------------------------------------------------------------------ files
def test_csv_relation_with_template_line(tmp_path):
    rows = "\n".join(f"Country{i},City{i % 7}" for i in range(20))
    path = write(tmp_path, "caps.csv", f"# template: The capital of [X] is\nsubject,object\n{rows}\n")
    task = load_task(str(path), seed=5)
    assert task.name == "caps" and task.kind == "relation"
    assert task.template == "The capital of [X] is"
    assert task.answers == [f"City{i}" for i in range(7)]
    assert facts(task)["Country8"] == "City1"
    check_split_invariants(task, 20)
    assert (len(task.train), len(task.dev), len(task.test)) == (12, 4, 4)
    again = task_from_file(path, seed=5)
    assert again.train == task.train


def test_csv_quoting_extra_columns_and_whitespace(tmp_path):
    text = ('id,Subject , object\n1,"Korea, South",Seoul\n2,  France , Paris \n3,Japan,Tokyo\n'
            '\n4,Peru,Lima\n5,Chad,N\'Djamena\n')
    task = load_task(write(tmp_path, "x.csv", text), template="The capital of [X] is")
    assert facts(task) == {"Korea, South": "Seoul", "France": "Paris", "Japan": "Tokyo", "Peru": "Lima",
                           "Chad": "N'Djamena"}


def test_jsonl_with_template_object(tmp_path):
    lines = [json.dumps({"template": "[X] is located in"})]
    lines += [json.dumps({"subject": f"C{i}", "object": ["Europe", "Asia"][i % 2]}) for i in range(10)]
    task = load_task(write(tmp_path, "cont.jsonl", "\n".join(lines) + "\n\n"))
    assert task.template == "[X] is located in" and task.answers == ["Asia", "Europe"]
    check_split_invariants(task, 10)


def test_jsonl_comment_template_and_argument_wins(tmp_path):
    lines = ["# template: The word [X] is"] + [json.dumps({"text": f"w{i}", "label": ["pos", "neg"][i % 2]})
                                             for i in range(10)]
    path = write(tmp_path, "cls.jsonl", "\n".join(lines))
    task = load_task(path)
    assert task.template == "The word [X] is"
    assert task.kind == "classification" and task.verbalizer == {"neg": ("neg",), "pos": ("pos",)}
    assert all(ex.target == ex.label for ex in task.examples)
    assert load_task(path, template="[X] means").template == "[X] means"


def test_classification_file_verbalizer_and_stratification(tmp_path):
    rows = [f"text {i},{'positive' if i % 4 else 'negative'}" for i in range(40)]
    path = write(tmp_path, "sst.csv", "text,label\n" + "\n".join(rows))
    task = load_task(path, template="[X] It was", verbalizer={"positive": "great", "negative": "awful",
                                                              "neutral": "okay"})
    assert task.verbalizer == {"negative": ("awful",), "positive": ("great",)}  # only labels present
    assert task.answers == ["awful", "great"]
    for part, n in zip((task.train, task.dev, task.test), (24, 8, 8)):
        assert len(part) == n
        assert Counter(ex.label for ex in part)["negative"] == n // 4
    assert {ex.target for ex in task.examples if ex.label == "positive"} == {"great"}


def test_tsv_and_numbers_in_jsonl(tmp_path):
    tsv = write(tmp_path, "a.tsv", "text\tlabel\n" + "\n".join(f"s {i}, with comma\t{i % 2}" for i in range(6)))
    assert load_task(tsv, template="[X] ->").answers == ["0", "1"]
    jl = write(tmp_path, "b.jsonl", "\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(6)))
    assert sorted(load_task(jl, template="[X] ->").verbalizer) == ["0", "1"]


# ------------------------------------------------------------------------------------------ errors
def test_unknown_task_name():
    with pytest.raises(TaskError, match=r"unknown task 'capitol'\. Did you mean 'capital'\? .*capital, continent, language, currency, "
                                        r".*polarity.*path of a \.jsonl/\.csv file"):
        load_task("capitol")
    with pytest.raises(TaskError, match=r"unknown task 'zzz'\. Built-in tasks"):      # nothing close: no guess
        load_task("zzz")
    with pytest.raises(TaskError, match="unknown relation"):
        relation_task("polarity")


def test_file_errors(tmp_path):
    with pytest.raises(TaskError, match=r"'.*missing\.csv' not found; check the path"):
        load_task(str(tmp_path / "missing.csv"))
    (tmp_path / "adir.jsonl").mkdir()
    with pytest.raises(TaskError, match="cannot read task file"):
        load_task(tmp_path / "adir.jsonl")
    with pytest.raises(TaskError, match=r"unknown file type '\.txt'.*use \.jsonl.*or \.csv"):
        load_task(write(tmp_path, "data.txt", "subject,object\nA,B\n"))
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("subject,object\nS\xe3o Tom\xe9,x\n".encode("latin-1"))
    with pytest.raises(TaskError, match="not UTF-8 text.*save it as UTF-8"):
        load_task(bad)


def test_wrong_columns(tmp_path):
    with pytest.raises(TaskError, match=r"line 1: found columns \['name', 'city'\] but expected subject,object "
                                        r"\(a relation\) or text,label"):
        load_task(write(tmp_path, "a.csv", "name,city\nFrance,Paris\n"), template="[X] is")
    with pytest.raises(TaskError, match=r"line 2: found columns \['sentence', 'label'\] but expected"):
        load_task(write(tmp_path, "a.jsonl", "\n" + json.dumps({"sentence": "x", "label": "y"})), template="[X]")
    with pytest.raises(TaskError, match="both subject,object and text,label"):
        load_task(write(tmp_path, "b.csv", "subject,object,text,label\na,b,c,d\n"), template="[X]")
    with pytest.raises(TaskError, match=r"line 3: missing key 'object'"):
        load_task(write(tmp_path, "c.jsonl", '{"subject": "a", "object": "b"}\n{"subject": "c", "object": "d"}\n'
                                             '{"subject": "e"}\n'), template="[X]")
    with pytest.raises(TaskError, match=r"line 3: 3 fields but the header has 2 \(subject,object\); quote values"):
        load_task(write(tmp_path, "d.csv", "subject,object\nA,B\nKorea, South,Seoul\n"), template="[X]")
    with pytest.raises(TaskError, match="no header row"):
        load_task(write(tmp_path, "e.csv", "# template: [X] is\n\n"))


def test_bad_json_names_the_line(tmp_path):
    text = '{"subject": "a", "object": "b"}\n\n{"subject": "c", "object": }\n'
    with pytest.raises(TaskError, match=r"bad\.jsonl, line 3: invalid JSON \(Expecting value at column 28\)"):
        load_task(write(tmp_path, "bad.jsonl", text), template="[X]")
    with pytest.raises(TaskError, match=r"line 1: expected a JSON object, got list"):
        load_task(write(tmp_path, "list.jsonl", '["a", "b"]\n'), template="[X]")
    with pytest.raises(TaskError, match=r"line 1: 'object' is \[1\]; it must be a string"):
        load_task(write(tmp_path, "nested.jsonl", '{"subject": "a", "object": [1]}\n'), template="[X]")


def test_empty_values(tmp_path):
    with pytest.raises(TaskError, match=r"line 3: empty subject; every row needs a non-empty subject"):
        load_task(write(tmp_path, "a.csv", "subject,object\nA,B\n  ,C\n"), template="[X]")
    with pytest.raises(TaskError, match=r"line 2: empty text"):
        load_task(write(tmp_path, "b.jsonl", '{"text": "ok", "label": "p"}\n{"text": " \\t ", "label": "p"}\n'),
                  template="[X]")
    with pytest.raises(TaskError, match=r"line 2: empty object \(the answer\)"):
        load_task(write(tmp_path, "c.csv", "subject,object\nA,\n"), template="[X]")


def test_duplicate_subjects_are_named(tmp_path):
    text = "subject,object\nFrance,Paris\nJapan,Tokyo\nFrance,Lyon\nPeru,Lima\nPeru,Lima\n"
    with pytest.raises(TaskError, match=r"duplicate subjects: 'France' \(lines 2, 4\); 'Peru' \(lines 5, 6\)\. "
                                        r"Keep one row per subject"):
        load_task(write(tmp_path, "dup.csv", text), template="[X]")
    with pytest.raises(TaskError, match=r"duplicate texts: 'same'"):
        load_task(write(tmp_path, "dup.jsonl", '{"text": "same", "label": "a"}\n{"text": "same", "label": "b"}'),
                  template="[X]")


def test_empty_task_and_too_small_split(tmp_path):
    with pytest.raises(TaskError, match="has no examples"):
        load_task(write(tmp_path, "empty.csv", "subject,object\n"), template="[X]")
    with pytest.raises(TaskError, match="has no examples"):
        load_task(write(tmp_path, "empty.jsonl", '{"template": "[X] is"}\n\n'))
    with pytest.raises(TaskError, match=r"of 2 examples leaves dev and test empty; need at least 3 examples"):
        load_task(write(tmp_path, "two.csv", "subject,object\nA,B\nC,D\n"), template="[X]")
    with pytest.raises(TaskError, match=r"need at least 10 examples"):
        load_task("capital", max_examples=9, split=(0.9, 0.05, 0.05))


def test_template_errors(tmp_path):
    path = write(tmp_path, "a.csv", "subject,object\n" + "\n".join(f"s{i},o{i}" for i in range(5)))
    with pytest.raises(TemplateError, match=r"has no \[X\]: add \[X\] where the input goes"):
        load_task(path, template="The capital is")
    with pytest.raises(TaskError, match=r"has no \[X\]"):  # also a TaskError, for one except clause
        load_task("capital", template="The capital is")
    with pytest.raises(TemplateError, match="unknown marker"):
        load_task(write(tmp_path, "b.csv", "# template: [Y] is\nsubject,object\na,b\nc,d\ne,f\n"))
    with pytest.raises(TaskError, match=r"no template\. Pass template=.*'# template: The capital of \[X\] is'"):
        load_task(path)


def test_verbalizer_errors(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\n" + "\n".join(f"t{i},{['pos', 'neg', 'neu'][i % 3]}"
                                                               for i in range(9)))
    with pytest.raises(TaskError, match=r"labels \['neu'\] have no verbalizer word .*add them"):
        load_task(path, template="[X]", verbalizer={"pos": "good", "neg": "bad"})
    with pytest.raises(TaskError, match=r"labels \['negative'\] have no verbalizer word"):
        load_task("polarity", verbalizer={"positive": "good"})
    with pytest.raises(TaskError, match="several labels to"):
        load_task("polarity", verbalizer={"positive": "good", "negative": "good"})
    with pytest.raises(TaskError, match="non-empty word"):
        load_task("polarity", verbalizer={"positive": " ", "negative": "bad"})
    with pytest.raises(TaskError, match="only applies to classification"):
        load_task("capital", verbalizer={"a": "b"})


def test_argument_errors():
    with pytest.raises(TaskError, match=r"three positive train/dev/test fractions summing to 1"):
        load_task("capital", split=(0.5, 0.5))
    with pytest.raises(TaskError, match=r"three positive"):
        load_task("capital", split=(0.8, 0.2, 0.0))
    with pytest.raises(TaskError, match=r"max_examples=0: give a positive integer"):
        load_task("capital", max_examples=0)
    with pytest.raises(TaskError, match=r"seed=None: give an integer"):
        load_task("capital", seed=None)
    with pytest.raises(TaskError, match="threshold"):
        polarity_task(threshold=5)


def test_example_is_frozen_and_hashable():
    ex = Example("France", "Paris")
    assert ex.label is None and hash(ex) == hash(Example("France", "Paris"))
    with pytest.raises(AttributeError):
        ex.target = "Lyon"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ fuzz
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# pieces that reach deep into the parsers: headers, quotes, JSON, template lines, markers
PIECES = st.sampled_from(['subject', 'object', 'text', 'label', ',', '\t', '"', "'", '{', '}', '[', ']', ':',
                          '"subject"', '"object"', '"text"', '"label"', '"template"', '# template: ', '[X]',
                          '[P]', '[P]*0', ' ', '\n', '\r\n', '\r', '\\', 'null', '1', 'true', 'France',
                          'Paris', '#', '\x00', 'é', '\u2028'])
LINES = st.lists(st.lists(PIECES | st.text(max_size=6), max_size=12).map("".join), max_size=12).map("\n".join)


def _load_or_task_error(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        for kwargs in ({}, {"template": "[X] is"}):
            try:
                task = load_task(path, **kwargs)
            except TaskError:
                continue
            check_split_invariants(task)
            assert task.answers == sorted(task.answers)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_fuzz_random_bytes_only_raise_task_error(data, suffix):
    _load_or_task_error(data, suffix)


@FUZZ
@given(text=LINES, suffix=st.sampled_from([".jsonl", ".csv", ".tsv"]))
def test_fuzz_random_lines_only_raise_task_error(text, suffix):
    _load_or_task_error(text.encode("utf-8", "surrogatepass"), suffix)


@FUZZ
@given(rows=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8)), max_size=15),
       suffix=st.sampled_from([".jsonl", ".csv"]))
def test_fuzz_structured_rows(rows, suffix):
    """Well-formed files of random values load exactly when the values are valid."""
    if suffix == ".jsonl":
        text = "\n".join(json.dumps({"subject": s, "object": o}) for s, o in rows)
    else:
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows([("subject", "object"), *rows])
        text = buf.getvalue()
    _load_or_task_error(text.encode("utf-8", "surrogatepass"), suffix)


def test_missing_data_package_or_file_names_the_fix():
    from ptuning_lab.tasks.files import _package_lines

    with pytest.raises(TaskError, match=r"needs the package no-such-pkg; install it with pip install no-such-pkg"):
        _package_lines("no_such_pkg_for_test", "words.txt", "no-such-pkg", "the polarity task")
    with pytest.raises(TaskError, match=r"cannot read .*missing\.txt.*pip install --force-reinstall vadersentiment"):
        _package_lines("vaderSentiment", "missing.txt", "vadersentiment", "the polarity task")


def test_a_registered_task_family_loads_by_name(monkeypatch):
    """One register_task call makes load_task find a new task; names stay unique and relations list first."""
    from ptuning_lab.tasks import registry
    from ptuning_lab.tasks.base import _make_task

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))      # leave the real table untouched
    words = [Example(w, "yes" if i % 2 else "no", "pos" if i % 2 else "neg") for i, w in enumerate("abcdefghij")]

    def toy(seed, template=None, split=(0.6, 0.2, 0.2), max_examples=None, verbalizer=None):
        verb = verbalizer or {"neg": "no", "pos": "yes"}
        examples = [Example(e.input, verb[e.label], e.label) for e in words]
        return _make_task("toy", template or "[X] is", examples, "classification", verb, seed, split, max_examples)

    register_task("toy", toy, kind="classification")
    task = load_task("Toy", seed=1, verbalizer={"neg": "bad", "pos": "good"})
    assert task.name == "toy" and task.answers == ["bad", "good"] and len(task.examples) == 10
    names = task_names()       # a classification task lists after the built-in ones of its kind
    assert names.index("toy") == len([n for n in TASK_NAMES if task_spec(n).kind != "multiple_choice"])
    assert names[:4] == TASK_NAMES[:4]
    with pytest.raises(TaskError, match="already registered"):
        register_task("capital", toy, kind="classification")
    with pytest.raises(TaskError, match="kind must be"):
        register_task("other", toy, kind="regression")


# ---------------------------------------------------------------- label words (several per label) and choices
from ptuning_lab.tasks.base import parse_label_words  # noqa: E402

SENTIMENT_ROWS = [f"review {i},{'fresh' if i % 2 else 'rotten'}" for i in range(20)]


def test_several_label_words_per_label_and_the_first_is_the_target(tmp_path):
    path = write(tmp_path, "rt.csv", "text,label\n" + "\n".join(SENTIMENT_ROWS))
    task = load_task(path, template="[X] It was", verbalizer={"fresh": ["great", " good", "great"], "rotten": "bad"})
    assert task.verbalizer == {"fresh": ("great", "good"), "rotten": ("bad",)}   # stripped, repeats dropped
    assert task.label_words == ["great", "good", "bad"] and task.answers == ["bad", "great"]
    assert {ex.target for ex in task.examples if ex.label == "fresh"} == {"great"}
    assert task.metrics == ("accuracy",) and load_task("capital").metrics == ("p_at_1", "exact_match")
    assert "fresh->great|good" in task.summary()
    with pytest.raises(TaskError, match="label 'fresh' has no label words"):
        load_task(path, template="[X]", verbalizer={"fresh": (), "rotten": "bad"})
    with pytest.raises(TaskError, match="verbalizer word for label 'fresh' is ''"):
        load_task(path, template="[X]", verbalizer={"fresh": ("good", ""), "rotten": "bad"})
    with pytest.raises(TaskError, match=r"several labels to \['good'\]"):
        load_task(path, template="[X]", verbalizer={"fresh": ("good", "great"), "rotten": ("bad", "good")})


def test_parse_label_words_and_its_errors():
    assert parse_label_words("positive=great,good negative=terrible,bad") == {
        "positive": ("great", "good"), "negative": ("terrible", "bad")}
    assert parse_label_words(["positive=great", "negative=bad"]) == {"positive": ("great",), "negative": ("bad",)}
    for bad, message in [("positive", "a label without label words"), ("positive=", "empty label word"),
                         ("positive=good,,great", "empty label word"), ("=good", "LABEL=WORD"),
                         ("a=x a=y", "given label words twice"), ("", "no label words given")]:
        with pytest.raises(TaskError, match=message):
            parse_label_words(bad)


def test_label_words_header_line_in_csv_and_jsonl(tmp_path):
    csv_path = write(tmp_path, "rt.csv", "# template: [X] It was\n# label words: fresh=great,good rotten=bad,awful\n"
                     "text,label\n" + "\n".join(SENTIMENT_ROWS))
    task = load_task(csv_path)
    assert task.template == "[X] It was"
    assert task.verbalizer == {"fresh": ("great", "good"), "rotten": ("bad", "awful")}
    assert load_task(csv_path, verbalizer={"fresh": "yes", "rotten": "no"}).verbalizer == {
        "fresh": ("yes",), "rotten": ("no",)}                              # the argument wins over the file
    lines = [json.dumps({"text": f"t{i}", "label": "fresh" if i % 2 else "rotten"}) for i in range(10)]
    jl = write(tmp_path, "rt.jsonl", "# label words: fresh=good rotten=bad\n" + "\n".join(lines))
    assert load_task(jl, template="[X] ->").verbalizer == {"fresh": ("good",), "rotten": ("bad",)}
    typo = write(tmp_path, "typo.csv", "# label words: fresh=good rotte=bad\ntext,label\n" + "\n".join(SENTIMENT_ROWS))
    with pytest.raises(TaskError, match=r"names \['rotte'\], but the file's labels are \['fresh', 'rotten'\]"):
        load_task(typo, template="[X]")
    empty = write(tmp_path, "empty.csv", "# label words: fresh= rotten=bad\ntext,label\n" + "\n".join(SENTIMENT_ROWS))
    with pytest.raises(TaskError, match="'# label words:' line: .*empty label word"):
        load_task(empty, template="[X]")
    rel = write(tmp_path, "rel.csv", "# label words: a=b\nsubject,object\n" + "\n".join(f"s{i},o{i}" for i in range(6)))
    with pytest.raises(TaskError, match="only applies to text,label files"):
        load_task(rel, template="[X] is")


def test_multiple_choice_examples_need_their_choices():
    from ptuning_lab.tasks.base import _make_task

    good = [Example(f"premise {i}", label=str(i % 2), choices=(f"a{i}", f"b{i}")) for i in range(10)]
    task = _make_task("copa", "[X] so", good, "multiple_choice", None, 0, (0.6, 0.2, 0.2), None)
    assert task.kind == "multiple_choice" and task.answers == [] and task.metrics == ("accuracy",)
    assert all(ex.target == ex.choices[int(ex.label)] for ex in task.examples)
    with pytest.raises(TaskError, match="example 3 .* needs its candidate texts"):
        _make_task("copa", "[X] so", good[:3] + [Example("no choices", label="0")] + good[4:], "multiple_choice",
                   None, 0, (0.6, 0.2, 0.2), None)
    with pytest.raises(TaskError, match="gold choice's index"):
        _make_task("copa", "[X] so", [Example("p", label="2", choices=("a", "b"))] + good, "multiple_choice",
                   None, 0, (0.6, 0.2, 0.2), None)


def test_cli_label_words_reach_the_task_and_its_errors(tmp_path, tiny_model_dir, capsys):
    from ptuning_lab import cli

    path = write(tmp_path, "rt.csv", "text,label\n" + "\n".join(SENTIMENT_ROWS))
    base = ["baseline", "--model", tiny_model_dir, "--device", "cpu", "--task", str(path),
            "--manual-template", "[X] It was"]
    assert cli.main(base + ["--label-words", "fresh=great,good", "rotten=terrible,bad"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["test_accuracy"] <= 1 and out["template"] == "[X] It was"
    for words, message in [(["fresh=great", "rotten="], "empty label word"), (["fresh=great", "rotten"],
                           "label without label words"), (["fresh=good", "rotten=bad", "meh=okay"],
                           r"label words given for \['meh'\], but the data of 'rt' has")]:
        assert cli.main(base + ["--label-words", *words]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err
    assert cli.main(base[:5] + ["--task", "capital", "--label-words", "a=b"]) == 2
    assert "only applies to classification" in capsys.readouterr().err
