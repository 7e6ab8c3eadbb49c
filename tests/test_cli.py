"""The ptuning-lab command line end to end, on a tiny GPT-2 saved to disk (loaded with --model PATH)."""
import json
import re

import pytest
import torch

from ptuning_lab import checkpoint as ckpt
from ptuning_lab.cli import build_parser, main


COMMON = ["--max-examples", "30", "--device", "cpu"]


def test_help_lists_every_command_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")                   # a plain terminal: each command still fits one line
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    commands = ["baseline", "train", "compare", "demo", "decode", "warm-cache", "export-peft", "import-peft"]
    entries = [re.match(r"^    (\S+)(.*)$", line) for line in text.splitlines()]
    assert [m[1] for m in entries if m] == commands
    assert all(m[2].strip() for m in entries if m), "a command's help wrapped onto a second line"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == commands


def test_baseline_prints_metrics(tiny_model_dir, capsys):
    assert main(["baseline", "--task", "capital", "--model", tiny_model_dir, *COMMON]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["encoder"] == "manual" and out["template"] == "The capital of [X] is"
    assert 0 <= out["test_p_at_1"] <= 1 and 0 <= out["test_candidate_accuracy"] <= 1


def test_train_writes_a_complete_run_and_refuses_to_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--task", "capital", "--encoder", "lstm", "--model", tiny_model_dir, "--max-steps", "3",
            "--eval-every", "3", "--batch-size", "4", "--out", str(out), *COMMON]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    printed = json.loads(capsys.readouterr().out)
    assert metrics == printed
    for key in ("task", "encoder", "seed", "template", "test_p_at_1", "test_candidate_accuracy", "dev_p_at_1",
                "trainable_params", "train_seconds", "steps", "best_step", "stopped"):
        assert key in metrics
    assert metrics["steps"] == 3 and metrics["encoder"] == "lstm"
    run = ckpt.load_run(out)
    assert run.prompt.shape == (6, 32)
    assert torch.allclose(run.encoder()(), run.prompt, atol=1e-6)
    # a second run into the same directory is refused, nothing is touched
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main(args) == 2                                   # the documented status of a refusal
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert main(args + ["--overwrite"]) == 0


def test_compile_flag_compiles_the_frozen_model(tiny_model_dir, tmp_path, monkeypatch):
    from ptuning_lab.frozen_lm import FrozenLM

    modes = []
    monkeypatch.setattr(FrozenLM, "compile", lambda self, mode=None, **kw: modes.append(mode) or self)
    for flag in ([], ["--compile"], ["--compile", "reduce-overhead"]):
        assert main(["baseline", "--task", "capital", "--model", tiny_model_dir, *COMMON, *flag]) == 0
    assert modes == [None, "reduce-overhead"]          # not compiled without the flag


def test_resume_continues_a_checkpointed_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--task", "capital", "--encoder", "direct", "--model", tiny_model_dir, "--batch-size", "4",
            "--eval-every", "2", "--checkpoint-every", "2", "--out", str(out), *COMMON]
    assert main(base + ["--max-steps", "4"]) == 0
    state = json.loads((out / "state" / "trainer.json").read_text())
    assert state["step"] == 4


def test_compare_writes_summary_and_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--task", "capital", "--encoders", "direct,mlp", "--seeds", "2", "--model",
                 tiny_model_dir, "--max-steps", "2", "--eval-every", "2", "--batch-size", "4", "--quiet",
                 "--out", str(out), *COMMON]) == 0
    summary = json.loads((out / "summary.json").read_text())
    methods = {(r["task"], r["encoder"]): r for r in summary["summary"]}
    assert set(methods) == {("capital", "manual"), ("capital", "direct"), ("capital", "mlp")}
    assert methods[("capital", "direct")]["seeds"] == 2
    assert len(summary["rows"]) == 1 + 2 * 2
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert (out / "capital" / "mlp-seed1" / "metrics.json").exists()
    table = capsys.readouterr().out
    assert "manual" in table and "direct" in table and "mlp" in table


def test_decode_shows_nearest_tokens(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "capital", "--encoder", "direct", "--model", tiny_model_dir, "--max-steps", "1",
                 "--out", str(out), *COMMON]) == 0
    capsys.readouterr()
    assert main(["decode", str(out), "-k", "3", "--model", tiny_model_dir]) == 0
    text = capsys.readouterr().out
    assert text.count("[P]") >= 6 and "cosine" in text


def test_clear_errors_exit_2(tiny_model_dir, tmp_path, capsys):
    assert main(["baseline", "--task", "capitals", "--model", tiny_model_dir]) == 2
    assert "capital" in capsys.readouterr().err
    assert main(["train", "--task", "capital", "--encoder", "gru", "--model", tiny_model_dir,
                 "--out", str(tmp_path / "x"), *COMMON]) == 2
    assert "mlp" in capsys.readouterr().err
    assert main(["train", "--task", "capital", "--template", "[X] is", "--model", tiny_model_dir,
                 "--out", str(tmp_path / "y"), *COMMON]) == 2
    assert "[P]" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "missing"), "--model", tiny_model_dir]) == 2
    assert "no run directory" in capsys.readouterr().err
    assert main(["baseline", "--model", str(tmp_path / "nope"), *COMMON]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_names_are_checked_before_the_model_loads_or_anything_trains(tmp_path, capsys):
    """A typo in the last encoder of a comparison fails at once: no model load, no run, no directory."""
    missing_model = str(tmp_path / "no-such-model")        # loading it would be a different error
    out = tmp_path / "cmp"
    assert main(["compare", "--task", "capital", "--encoders", "mlp,lstn", "--model", missing_model,
                 "--out", str(out), *COMMON]) == 2
    err = capsys.readouterr().err
    assert "unknown prompt encoder method 'lstn'" in err and "Did you mean 'lstm'?" in err
    assert not out.exists()
    assert main(["train", "--task", "capitol", "--model", missing_model, "--out", str(tmp_path / "t"), *COMMON]) == 2
    assert "Did you mean 'capital'?" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_warm_cache_fills_the_caches_the_lessons_read(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from ptuning_lab import course

    monkeypatch.setenv("PTUNING_LAB_CACHE", str(tmp_path))
    assert main(["warm-cache", "--model", tiny_model_dir, "--size", "ci", "--no-umap", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("cache warm for ")
    assert len(list((tmp_path / "manifold").iterdir())) == 2           # the statistics and the PCA map
    # what each flag asks course.prewarm for: the lesson size by default, UMAP when umap-learn is installed
    calls = []
    monkeypatch.setattr(course, "prewarm", lambda lm, size, umap: calls.append((size.name, umap)) or {"umap": True})
    monkeypatch.delenv(course.SIZE_ENV, raising=False)
    for flags in ([], ["--size", "ci"], ["--no-umap"]):
        assert main(["warm-cache", "--model", tiny_model_dir, "--device", "cpu", *flags]) == 0
    assert calls == [("lesson", None), ("ci", None), ("lesson", False)]


def test_every_command_documents_its_exit_status(capsys):
    """Issue 20.3: `<command> --help` says what 0, 1 and 2 mean (1 only where training can stop early)."""
    for name in ["baseline", "train", "compare", "demo", "decode", "warm-cache", "export-peft", "import-peft"]:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0 done;" in text and "2 bad input" in text, name
        assert ("1 training stopped early" in text) == (name in ("train", "compare", "demo")), name


def test_json_output_of_compare_and_baseline(tiny_model_dir, tmp_path, capsys):
    """--json: stdout is one JSON document (the table's numbers), nothing else."""
    out = tmp_path / "cmp"
    assert main(["compare", "--task", "capital", "--encoders", "direct", "--seeds", "1", "--model", tiny_model_dir,
                 "--max-steps", "1", "--batch-size", "4", "--json", "--out", str(out), *COMMON]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == json.loads((out / "summary.json").read_text())["rows"]
    assert [r["encoder"] for r in printed["summary"]] == ["manual", "direct"]
    assert main(["baseline", "--model", tiny_model_dir, "--json", *COMMON]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["encoder"] == "manual"


def test_progress_bars_only_on_a_terminal_and_never_with_quiet(monkeypatch):
    from argparse import Namespace

    from ptuning_lab.cli import progress_on

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert progress_on(Namespace(quiet=False)) and not progress_on(Namespace(quiet=True))
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)          # a log file or a pipe: no bar redraws
    assert not progress_on(Namespace(quiet=False))


def test_a_run_stopped_by_a_non_finite_loss_exits_1(tiny_model_dir, tmp_path, monkeypatch):
    """Exit status 1: the training stopped early; what was trained so far is saved."""
    from ptuning_lab.trainer import Trainer

    def nan_step(self, examples):
        raise FloatingPointError(f"the training loss became nan at step {self.step}")

    monkeypatch.setattr(Trainer, "train_step", nan_step)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="training stopped"):
        code = main(["train", "--task", "capital", "--encoder", "direct", "--model", tiny_model_dir,
                     "--max-steps", "2", "--out", str(out), *COMMON])
    assert code == 1 and json.loads((out / "metrics.json").read_text())["stopped"] == "non_finite_loss"
