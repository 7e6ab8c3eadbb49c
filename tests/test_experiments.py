"""The experiment API (ptuning_lab.experiments): what a notebook gets back is what the run directory holds."""
import json
import statistics

import pytest
import torch

import ptuning_lab as pl
from ptuning_lab import checkpoint as ckpt
from ptuning_lab.experiments import (CompareResult, RunResult, baseline, compare, default_init, default_template,
                                     summarize, train_one)

TRAIN = {"max_steps": 3, "eval_every": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return pl.FrozenLM.load(tiny_model_dir, device="cpu", verbose=False)


@pytest.fixture(scope="module")
def task():
    return pl.load_task("capital", max_examples=30)


def test_default_template_and_init_read_the_manual_template():
    assert default_template("The capital of [X] is") == "[P]*3 The capital of [X] is [P]*3"
    assert default_template("[X] speaks", 2) == "[P]*2 [X] speaks [P]*2"
    # each [P] starts as the manual word beside it: the words after a leading run, copies of the word before
    assert default_init("[P]*3 The capital of [X] is [P]*3") == "text:The capital of is is is"
    assert default_init("[X] [P]*2 is [P]") == "text:is is is"
    assert default_init("The capital of [X] is") == "text:The capital of is"   # prefix tuning: no [P], words cycled
    assert default_init("[P]*2 [X] [P]*2") == "text:the"                  # no manual words: a plain word
    assert (pl.default_template, pl.default_init, pl.train_one, pl.compare) == (default_template, default_init,
                                                                                 train_one, compare)


def test_the_default_start_puts_the_last_manual_word_before_the_answer(lm):
    # what the default init is for: the virtual tokens between " is" and the answer start as " is",
    # not as "is The capital" (the template's words cycled), which derailed the model at step 0
    template = "[P]*3 The capital of [X] is [P]*3"
    start = pl.build_encoder("mlp", 6, lm.embedding.detach(), init=default_init(template), tokenize=lm.tokenize)()
    E = lm.embedding.detach()
    lead, is_ = lm.tokenize("The capital of"), lm.tokenize(" is")
    assert torch.equal(start[:3].detach(), E[lead[:3]].float())
    assert torch.equal(start[3:].detach(), E[[is_[0]] * 3].float())


def test_train_one_returns_what_the_run_directory_holds(lm, task, tmp_path):
    out = tmp_path / "run"
    run = train_one(lm, task, encoder="lstm", seed=1, train=TRAIN, out=out, progress=False)
    assert isinstance(run, RunResult) and run.out == out
    assert run.metrics == json.loads((out / "metrics.json").read_text())
    saved = ckpt.load_run(out)
    assert torch.equal(run.prompt.cpu(), saved.prompt) and run.prompt.shape == (6, 32)
    for part in ("train", "eval"):                     # the saved history adds best_step and stopped
        assert run.history[part] == saved.history[part]
    assert run.metrics["encoder"] == "lstm" and run.metrics["seed"] == 1 and run.metrics["steps"] == 3
    assert run.template == "[P]*3 The capital of [X] is [P]*3" and run.init == "text:The capital of is is is"
    assert run.metrics["trainable_params"] == run.encoder.num_trainable_parameters()
    assert "_result" not in run.metrics


def test_train_takes_a_dict_or_a_train_config_and_the_seed_once(lm, task):
    a = train_one(lm, task, encoder="direct", seed=2, train=TRAIN, progress=False)
    b = train_one(lm, task, encoder="direct", seed=2, train=pl.TrainConfig(**TRAIN), progress=False)
    assert torch.equal(a.prompt, b.prompt)
    assert a.metrics["test_p_at_1"] == b.metrics["test_p_at_1"] and a.out is None
    with pytest.raises(ValueError, match="seed="):
        train_one(lm, task, encoder="direct", train={**TRAIN, "seed": 3}, progress=False)
    with pytest.raises(ValueError, match="seed="):
        train_one(lm, task, encoder="direct", seed=2, train=pl.TrainConfig(seed=3, **TRAIN), progress=False)


def test_compare_summary_is_the_mean_and_std_of_its_rows(lm, task, tmp_path):
    out = tmp_path / "cmp"
    lines = []
    result = compare(lm, [task], ["direct", "mlp"], 2, TRAIN, out, progress=False, log=lines.append)
    assert isinstance(result, CompareResult)
    assert [(r["encoder"], r.get("seed")) for r in result.rows] == [("manual", None), ("direct", 0), ("direct", 1),
                                                                    ("mlp", 0), ("mlp", 1)]
    assert result.rows[0] == baseline(lm, task) and len(lines) == 4
    assert sorted(result.runs) == [("capital", e, s) for e in ("direct", "mlp") for s in (0, 1)]
    for (_, enc, seed), run in result.runs.items():
        assert run.metrics in result.rows and run.out == out / "capital" / f"{enc}-seed{seed}"
    by = {r["encoder"]: r for r in result.summary}
    for enc in ("direct", "mlp"):
        p = [r["test_p_at_1"] for r in result.rows if r["encoder"] == enc]
        c = [r["test_candidate_accuracy"] for r in result.rows if r["encoder"] == enc]
        assert by[enc]["seeds"] == 2
        assert by[enc]["test_p_at_1"] == pytest.approx(sum(p) / 2)
        assert by[enc]["test_p_at_1_std"] == pytest.approx(abs(p[0] - p[1]) / 2 ** 0.5)   # sample std of two
        assert by[enc]["test_candidate_accuracy"] == pytest.approx(statistics.fmean(c))
        assert by[enc]["test_candidate_accuracy_std"] == pytest.approx(statistics.stdev(c))
    assert by["manual"]["seeds"] == 1 and by["manual"]["test_p_at_1_std"] == 0.0
    same = json.dumps                                  # the manual row's train_seconds is NaN (NaN != NaN)
    assert same(result.summary) == same(summarize(result.rows))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rows"] == result.rows and same(on_disk["summary"]) == same(result.summary)
    assert (out / "report.html").is_file()
    # a directory holding files is refused before anything is touched
    before = (out / "summary.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        compare(lm, [task], ["direct"], 1, TRAIN, out, progress=False)
    assert (out / "summary.json").read_text() == before


def test_summarize_means_and_sample_stds_per_task_and_method():
    rows = [{"task": "capital", "encoder": "manual", "test_p_at_1": 0.1, "test_candidate_accuracy": 0.3,
             "trainable_params": 0},
            *({"task": "capital", "encoder": "mlp", "seed": s, "test_p_at_1": p, "test_candidate_accuracy": c,
               "trainable_params": 64, "train_seconds": t}
              for s, p, c, t in ((0, 0.2, 0.5, 1.0), (1, 0.5, 0.7, 3.0), (2, 0.8, 0.6, 2.0)))]
    manual, mlp = summarize(rows)
    assert (manual["seeds"], manual["test_p_at_1"], manual["test_p_at_1_std"]) == (1, 0.1, 0.0)
    assert manual["train_seconds"] != manual["train_seconds"]          # NaN: nothing was trained
    assert mlp["seeds"] == 3 and mlp["trainable_params"] == 64 and mlp["train_seconds"] == pytest.approx(2.0)
    assert mlp["test_p_at_1"] == pytest.approx(0.5) and mlp["test_p_at_1_std"] == pytest.approx(0.3)
    assert mlp["test_candidate_accuracy"] == pytest.approx(0.6)
    assert mlp["test_candidate_accuracy_std"] == pytest.approx(0.1)    # sqrt(((-.1)^2 + .1^2 + 0) / 2)


def test_seeds_can_be_named(lm, task, tmp_path):
    result = compare(lm, [task], ["direct"], [5], {"max_steps": 1, "batch_size": 4}, tmp_path / "c",
                     progress=False, log=lambda line: None)
    assert list(result.runs) == [("capital", "direct", 5)] and result.rows[1]["seed"] == 5


def test_majority_baseline_predicts_train_s_most_frequent_label():
    """Train has 3 'no' and 2 'yes': 'no' for every test example; test gold no no yes -> accuracy 2/3,
    macro-F1 over (yes, no) = (0 + 0.8) / 2."""
    from ptuning_lab.experiments import majority
    from ptuning_lab.tasks import Example, Task

    ex = lambda label: Example(input="x", target=label, label=label)             # noqa: E731
    task = Task("t", "[X] is", [ex("no"), ex("yes"), ex("no"), ex("yes"), ex("no")], [ex("no")],
                [ex("no"), ex("no"), ex("yes")], ["no", "yes"], kind="classification",
                verbalizer={"yes": "yes", "no": "no"}, metrics=("accuracy", "f1_macro"))
    row = majority(task)
    assert row["label"] == "no" and row["test_accuracy"] == pytest.approx(2 / 3)
    assert row["test_f1_macro"] == pytest.approx((0 + 2 * 2 / (2 * 2 + 1)) / 2)
    with pytest.raises(ValueError, match="relation"):
        majority(Task("r", "[X] is", [ex("a")], [ex("a")], [ex("a")], ["a"]))
