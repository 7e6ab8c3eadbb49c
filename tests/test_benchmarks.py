"""The benchmark scripts still run: a tiny random GPT-2 through benchmarks/vs_peft.py, both sides."""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def vs_peft(monkeypatch):
    pytest.importorskip("peft")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import vs_peft

    return vs_peft


def test_vs_peft_runs_every_variant_and_prints_the_ratios(vs_peft, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert vs_peft.main(["--device", "cpu", "--model", "gpt2-tiny", "--batch-size", "4", "--eval-batch-size", "8",
                         "--repeats", "2", "--warmup", "1", "--no-tta", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ratios = [ln for ln in lines if ln.startswith("RATIO")]
    assert [ln.split()[1] for ln in ratios] == ["mlp", "lstm", "direct"]       # the last lines, one per method
    assert lines[-3:] == ratios
    results = json.loads(out.read_text())["results"]
    assert {"ours-mlp", "peft-mlp", "ours-lstm", "peft-lstm", "ours-direct", "peft-direct",
            "ours-mlp-plain", "ours-mlp-peft-layout", "ours-mlp-suffix", "ours-mlp-bf16", "peft-mlp-bf16"} == set(results)
    for name, r in results.items():
        assert r["steps_per_s"] > 0 and r["tokens_per_s"] > 0 and r["eval_examples_per_s"] > 0, name
        assert len(r["step_s_all"]) == 2, name


def test_peak_rss_counts_this_process_only(vs_peft):
    """A fresh child reports its own peak, not its parent's (what ru_maxrss would do across fork + exec)."""
    import subprocess

    code = ("import vs_peft; a = vs_peft.peak_rss_mb(); block = b'x' * (300 * 2**20); "
            "print(a, vs_peft.peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                         check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    start, end = map(float, out.stdout.split()[-2:])
    # ru_maxrss would start from the parent's peak (this test process: over a GB after the model
    # tests) and hide the block; the child's own high-water mark shows it
    assert end - start >= 250


def test_probe_suite_table_shows_the_comparison_it_wrote(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """benchmarks/probe_suite.py through ptuning_lab.experiments.compare: its table is summary.json's numbers."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import probe_suite

    args = ["--model", tiny_model_dir, "--device", "cpu", "--tasks", "capital", "--methods", "direct", "--seeds", "2",
            "--max-steps", "1", "--eval-every", "1", "--out", str(tmp_path / "runs"), "--table", str(tmp_path / "t.md")]
    for _ in range(2):                          # a second run replaces the suite's own earlier output
        assert probe_suite.main(args) == 0
    summary = {r["encoder"]: r for r in json.loads((tmp_path / "runs" / "capital" / "summary.json").read_text())["summary"]}
    table = (tmp_path / "t.md").read_text()
    assert f"| manual | {summary['manual']['test_p_at_1']:.2f} |" in table
    assert (f"| direct | {summary['direct']['test_p_at_1']:.2f} ± {summary['direct']['test_p_at_1_std']:.2f} |"
            in table) and summary["direct"]["seeds"] == 2


def test_candidate_scoring_agrees_with_the_plain_loop_and_prints_the_ratio(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import candidate_scoring

    assert candidate_scoring.main(["--model", "gpt2-tiny", "--examples", "2", "--train-steps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("same choice for every input: True")
    assert lines[-1].startswith("RATIO candidate scoring plain / ours ")


def test_fewglue_benchmark_majority_relations_and_quick_fewglue(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """benchmarks/fewglue.py: hand-checked metrics of the majority class, the relation suite's table, and a
    --quick FewGLUE run on a tiny GPT-2 (two-slot templates, label words, MultiRC's F1a and EM)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import fewglue
    from test_task_data import write_fewglue

    # gold T T F F with groups (a: T T) (b: F F); predicting all True: acc 1/2, F1(T) = 2*2/(2*2+2) = 2/3,
    # F1(F) = 0 -> macro 1/3; EM: question a right, b wrong -> 1/2
    from ptuning_lab.metrics import label_metrics       # what the benchmark's majority row and every run use
    m = label_metrics(("accuracy", "f1_macro", "f1a", "em"), ["True", "True", "False", "False"], ["True"] * 4,
                      ["False", "True"], ["a", "a", "b", "b"])
    assert m == {"accuracy": 0.5, "f1_macro": 1 / 3, "f1a": 2 / 3, "em": 0.5}

    table = tmp_path / "relations.md"
    assert fewglue.main(["relations", "--quick", "--model", tiny_model_dir, "--device", "cpu", "--tasks",
                         "analogy-capital", "--methods", "direct", "--out", str(tmp_path / "rel"),
                         "--table", str(table)]) == 0
    summary = {r["encoder"]: r for r in
               json.loads((tmp_path / "rel" / "analogy-capital" / "summary.json").read_text())["summary"]}
    text = table.read_text()
    assert f"| manual | {summary['manual']['test_p_at_1']:.2f} |" in text
    assert f"| manual | {summary['manual']['test_exact_match']:.2f} |" in text.split("Exact match")[1]
    table.unlink()                                      # --collect rebuilds it from the runs alone
    assert fewglue.main(["relations", "--collect", "--tasks", "analogy-capital", "--methods", "direct",
                         "--out", str(tmp_path / "rel"), "--table", str(table), "--seeds", "1"]) == 0
    assert table.read_text().split("Test first-token")[1] == text.split("Test first-token")[1]

    data = write_fewglue(tmp_path / "fg", ["RTE", "CB", "MultiRC"])
    args = ["fewglue", "--quick", "--model", tiny_model_dir, "--device", "cpu", "--data-dir", str(data), "--tasks",
            "rte,cb,multirc", "--methods", "direct", "--out", str(tmp_path / "fg-runs"), "--table", str(tmp_path / "f.md")]
    assert fewglue.main(args) == 0
    parts = {t: json.loads((tmp_path / "fg-runs" / t / "fewglue.json").read_text()) for t in ("rte", "cb", "multirc")}
    rows = {r["encoder"]: r for r in parts["rte"]["rows"]}
    assert set(rows) == {"majority", "manual", "direct"} and parts["rte"]["test_size"] == 4
    assert rows["majority"]["test_accuracy"] == 0.5            # val of the fixture: 2 entailment, 2 not
    text = (tmp_path / "f.md").read_text()
    # columns in FewGLUE order, cb first: train's labels tie (one each), so 'contradiction' (first by name) is
    # predicted; 1 of the fixture's 4 val labels is contradiction
    assert "| majority | 25.0 |" in text and "cb f1_macro" in text and "multirc em" in text
    # one computed sentence per task, and --collect rebuilds the same page without training
    assert sum(line.startswith(("- **rte**", "- **cb**", "- **multirc**")) for line in text.splitlines()) == 3
    (tmp_path / "f.md").unlink()
    assert fewglue.main(["fewglue", "--collect", "--out", str(tmp_path / "fg-runs"), "--table",
                         str(tmp_path / "f.md")]) == 0
    assert (tmp_path / "f.md").read_text() == text
    # a second command on one task, in its own part file, runs only what the first lacks; the table merges both
    more = ["fewglue", "--quick", "--model", tiny_model_dir, "--device", "cpu", "--data-dir", str(data), "--tasks",
            "rte", "--methods", "direct,prefix", "--resume", "--part", "b", "--out", str(tmp_path / "fg-runs"),
            "--table", str(tmp_path / "f.md")]
    assert fewglue.main(more) == 0
    part_b = json.loads((tmp_path / "fg-runs" / "rte" / "fewglue.b.json").read_text())
    assert [r["encoder"] for r in part_b["rows"]] == ["majority", "manual", "prefix"]
    merged = (tmp_path / "f.md").read_text()
    assert "| direct |" in merged and "| prefix |" in merged and "- rte: 2 command(s)" in merged


def test_vs_peft_times_the_bare_model_and_counts_flops(vs_peft, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert vs_peft.main(["--device", "cpu", "--model", "llama-tiny", "--batch-size", "4", "--eval-batch-size", "4",
                         "--repeats", "1", "--warmup", "1", "--no-tta", "--no-extras", "--methods", "direct",
                         "--bare", "--flops", "--pack-tokens", "512,1", "--in-a-row", "3", "--json", str(out)]) == 0
    ratios = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("RATIO")]
    assert len(ratios) == 2 and all("ours / ceiling" in ln for ln in ratios)
    results = json.loads(out.read_text())["results"]
    assert {"ours-direct", "ours-direct-pack1", "peft-direct", "bare"} == set(results)
    # each timed sample ran 3 steps in a row: the trainer advanced past the warm-up by whole stretches
    assert all(len(r["step_s_all"]) == 1 and r["step_s"] > 0 for r in results.values())
    # counted, not estimated: PEFT runs every token and the full-vocabulary logits, the fast path fewer
    flops = {name: r["step_flops"] for name, r in results.items()}
    assert all(f > 0 for f in flops.values())
    assert flops["ours-direct"] < flops["peft-direct"]


@pytest.mark.parametrize("shape, billions", [("gpt2-small", 0.124), ("smollm2-1.7b", 1.71), ("llama3-8b", 8.03)])
def test_vs_peft_shapes_have_the_named_models_sizes(vs_peft, shape, billions):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    spec = dict(vs_peft.SHAPES[shape])
    kind = spec.pop("kind")
    with torch.device("meta"):          # shapes only, no memory
        model = GPT2LMHeadModel(GPT2Config(**spec)) if kind == "gpt2" else LlamaForCausalLM(LlamaConfig(**spec))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e9 - billions) / billions < 0.01, n


def test_init_table_chooses_the_default_on_dev_never_on_test(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import init_table

    assert init_table.text_at_slots("[P]*3 The capital of [X] is [P]*3") == "text:The capital of is is is"
    row = lambda task, init, loss, dev=None, test=None: {  # noqa: E731
        "task": task, "init": init, "init string": init, "template": "t", "dev_loss": loss, "dev_p_at_1": 0.0,
        **({} if dev is None else {"trained_dev_p_at_1": dev, "trained_test_p_at_1": test})}
    step0 = [row(t, "random", 9.0) for t in "ab"] + [row(t, "text, cycled", 7.0) for t in "ab"]
    assert init_table.choose(step0) == "text, cycled"                    # step 0 only: the lowest dev loss
    trained = ([row(t, "random", 9.0, dev=0.6, test=0.1) for t in "ab"]
               + [row(t, "text, cycled", 7.0, dev=0.5, test=0.9) for t in "ab"])
    assert init_table.choose(trained) == "random"                       # the better dev score, whatever test says
    table = init_table.markdown(trained, ["a", "b"])
    assert "| random | 9.00 | 0.000 | 0.600 | 0.100 | 9.00 |" in table
