"""Experiment tracking: what TensorBoard holds after a run is what the trainer's history says.

A tiny GPT-2 trains a few steps through ``Trainer`` with the tracking callback; the event file is
then read back with TensorBoard's own ``EventAccumulator`` and compared point by point with
``history.json`` (TensorBoard stores float32, so the history's values are rounded the same way).
"""
import glob
import json
import sys
import types

import numpy as np
import pytest
import yaml

from helpers import make_tiny_lm
from ptuning_lab import tracking
from ptuning_lab.encoders import build_encoder
from ptuning_lab.tasks import Example, Task
from ptuning_lab.trainer import TrainConfig, Trainer

pytest.importorskip("torch.utils.tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light", "table", "sugar", "horse", "glass"]


def direction_task(n=24):
    """Words mapped to four directions: a tiny model's prompt can learn it, so the dev curve moves."""
    answers = ["north", "south", "east", "west"]
    exs = [Example(WORDS[i % len(WORDS)] + str(i), answers[i % 4]) for i in range(n)]
    return Task("toy", "Direction of [X] is", exs[: n // 2], exs[n // 2: 3 * n // 4], exs[3 * n // 4:],
                sorted(answers))


def curve(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def f32(x):
    return float(np.float32(x))


@pytest.fixture
def tracked_run(tokenizer, tmp_path, one_torch_thread):
    """A 9-step run (3 epochs of 3 batches, dev every 3 steps) logged to TensorBoard in ``run/tensorboard``."""
    lm = make_tiny_lm("gpt2", tokenizer)
    out = tmp_path / "run"
    cb = tracking.callback_for("tensorboard", out, {"note": "tracking test"})
    enc = build_encoder("mlp", 3, lm.embedding.detach(), init="vocab", seed=0)
    config = TrainConfig(lr=1e-2, batch_size=4, num_epochs=3, eval_every=3, snapshot_every=2)
    trainer = Trainer(lm, enc, direction_task(), "[P][P] Direction of [X] is [P]", config, callbacks=[cb],
                      out_dir=out, progress=False)
    result = trainer.fit()
    cb.finish({"test_p_at_1": 0.25, "encoder": "mlp", "_result": result})
    return trainer, result, out


def test_tensorboard_holds_the_dev_and_train_curves_of_the_history(tracked_run):
    trainer, result, out = tracked_run
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history["eval"]] == [3, 6, 9] and len(history["train"]) == 9
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert curve(acc, "dev/p_at_1") == [(r["step"], f32(r["dev_p_at_1"])) for r in history["eval"]]
    assert curve(acc, "dev/loss") == [(r["step"], f32(r["dev_loss"])) for r in history["eval"]]
    assert curve(acc, "train/mean_loss") == [(r["step"], f32(r["train_loss"])) for r in history["eval"]]
    assert curve(acc, "train/loss") == [(r["step"], f32(r["loss"])) for r in history["train"]]
    assert curve(acc, "train/lr") == [(r["step"], f32(r["lr"])) for r in history["train"]]
    # the losses move, so equal curves are not equal constants
    assert len({v for _, v in curve(acc, "train/loss")}) > 1
    # final metrics at the last step: the trainer's best dev score and what finish() was given
    assert curve(acc, "final/best_step") == [(9, f32(result.best_step))]
    assert curve(acc, "final/best_dev_p_at_1") == [(9, f32(result.best_dev["p_at_1"]))]
    assert curve(acc, "final/test_p_at_1") == [(9, f32(0.25))]
    assert tracking.read_scalars(out / "tensorboard") == {t: curve(acc, t) for t in acc.Tags()["scalars"]}


def test_the_runs_config_is_stored_with_it(tracked_run):
    trainer, _, out = tracked_run
    stored = glob.glob(str(out / "tensorboard" / "*" / "hparams.yml"))
    assert len(stored) == 1
    config = yaml.safe_load(open(stored[0]))
    assert config == tracking.flat_config({**trainer.full_config(), "note": "tracking test"})
    assert config["train/lr"] == 1e-2 and config["encoder/method"] == "mlp" and config["train/max_steps"] == "None"
    assert config["template"] == "[P][P] Direction of [X] is [P]"


def test_none_logs_nothing_and_unknown_names_get_a_suggestion(tmp_path):
    assert tracking.callback_for("none", tmp_path / "run") is None
    assert not (tmp_path / "run").exists()
    with pytest.raises(tracking.TrackingError, match="Did you mean 'tensorboard'"):
        tracking.callback_for("tensorbord", tmp_path)
    with pytest.raises(ValueError, match="needs a run directory"):
        tracking.callback_for("tensorboard", None)


@pytest.mark.parametrize("name, module, install", [("wandb", "wandb", "pip install wandb"),
                                                   ("tensorboard", "torch.utils.tensorboard", "pip install tensorboard")])
def test_a_missing_package_is_named_with_its_install_command(name, module, install, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)          # `import module` now raises ImportError
    with pytest.raises(ValueError, match=f"needs the '{name}' package.*{install}") as err:
        tracking.callback_for(name, tmp_path / "run")
    assert isinstance(err.value, tracking.TrackingError)    # a ValueError: the CLI prints one `error:` line
    assert not (tmp_path / "run").exists()


class RecordingTracker:
    def __init__(self):
        self.calls = []

    def start(self): self.calls.append("start")
    def store_init_configuration(self, values): self.calls.append(("config", values))
    def log(self, values, step=None): self.calls.append(("log", step, values))
    def finish(self): self.calls.append("finish")


def fake_trainer(main: bool):
    return types.SimpleNamespace(dist=types.SimpleNamespace(is_main_process=main), step=1,
                                 history={"train": [{"step": 1, "loss": 2.5, "lr": 0.1}]}, full_config=lambda: {"a": 1})


def test_only_the_main_process_logs():
    other, main = RecordingTracker(), RecordingTracker()
    for tracker, is_main in ((other, False), (main, True)):
        cb = tracking.TrackingCallback(tracker, {"b": 2})
        cb.on_step_end(fake_trainer(is_main), 1, 2.5)
        cb.finish({"test_p_at_1": 0.5})
    assert other.calls == []
    assert main.calls == ["start", ("config", {"a": 1, "b": 2}), ("log", 1, {"train/loss": 2.5, "train/lr": 0.1}),
                          ("log", 1, {"final/test_p_at_1": 0.5}), "finish"]


def test_wandb_runs_offline_under_the_run_directory(tokenizer, tmp_path, monkeypatch, one_torch_thread):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    lm = make_tiny_lm("gpt2", tokenizer)
    out = tmp_path / "run"
    cb = tracking.callback_for("wandb", out)
    enc = build_encoder("direct", 3, lm.embedding.detach(), init="vocab", seed=0)
    trainer = Trainer(lm, enc, direction_task(), "[P][P] Direction of [X] is [P]",
                      TrainConfig(lr=1e-2, batch_size=4, max_steps=3, eval_every=3), callbacks=[cb], out_dir=out,
                      progress=False)
    trainer.fit()
    run = cb.tracker.run
    assert run.settings.mode == "offline"
    assert run.config["train/lr"] == 1e-2 and run.config["encoder/method"] == "direct"
    # W&B commits a step's row when the next step arrives: by now the summary holds step 2's loss
    assert run.summary["train/loss"] == trainer.history["train"][1]["loss"]
    cb.finish({"test_p_at_1": 0.25})
    runs = glob.glob(str(out / "wandb" / "offline-run-*"))
    assert len(runs) == 1 and glob.glob(f"{runs[0]}/*.wandb")


def test_cli_report_to_tensorboard_writes_the_dev_curve_into_the_run(tiny_model_dir, tmp_path, one_torch_thread):
    """`train --report-to tensorboard`: the event file in OUT/tensorboard/ holds the dev P@1 curve of history.json,
    and the test metrics as final/*; an unknown tracker is refused before anything is written."""
    from ptuning_lab.cli import main

    out = tmp_path / "run"
    argv = ["train", "--task", "capital", "--encoder", "direct", "--model", tiny_model_dir, "--device", "cpu",
            "--max-examples", "40", "--max-steps", "4", "--eval-every", "2", "--batch-size", "4", "--quiet"]
    assert main([*argv, "--out", str(out), "--report-to", "tensorbord"]) == 2
    assert not out.exists()
    assert main([*argv, "--out", str(out), "--report-to", "tensorboard"]) == 0
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    scalars = tracking.read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["dev/p_at_1"]] == [e["step"] for e in history["eval"]]
    assert np.allclose([v for _, v in scalars["dev/p_at_1"]], [e["dev_p_at_1"] for e in history["eval"]])
    assert np.isclose(scalars["final/test_p_at_1"][-1][1], metrics["test_p_at_1"])
