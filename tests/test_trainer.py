"""Trainer, evaluation metrics and checkpoints: tiny models for exactness, the embedded model for reality."""
import copy
import json
import math

import pytest
import torch

from helpers import make_tiny_lm
from ptuning_lab import checkpoint as ckpt
from ptuning_lab.prompts import build_encoder
from ptuning_lab.evaluation import best_candidates, evaluate, first_token_ids
from ptuning_lab.tasks import Example, Task
from ptuning_lab.trainer import Callback, TrainConfig, Trainer

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light", "table", "sugar",
         "horse", "glass", "winter", "garden", "silver", "yellow", "window", "forest", "planet", "orange"]


def toy_task(n=24):
    """Inputs are words, the answer is a fixed mapping: learnable by a prompt on a tiny model."""
    answers = ["north", "south", "east", "west"]
    exs = [Example(WORDS[i % len(WORDS)] + str(i), answers[i % 4]) for i in range(n)]
    return Task("toy", "Direction of [X] is", exs[: n // 2], exs[n // 2: 3 * n // 4], exs[3 * n // 4:],
                sorted(answers))


def make_trainer(lm, out=None, method="mlp", **cfg):
    task = toy_task()
    template = "[P][P] Direction of [X] is [P]"
    enc = build_encoder(method, 3, lm.embedding.detach(), init="vocab", seed=0).double()
    cfg = {"lr": 1e-2, "batch_size": 4, "num_epochs": 3, "eval_every": 3, "snapshot_every": 2, **cfg}
    return Trainer(lm, enc, task, template, TrainConfig(**cfg), out_dir=out, progress=False)


def test_metrics_against_hand_computed_example(gpt2):
    task = toy_task()
    ex = task.test[:5]
    logits = gpt2.last_logits(gpt2.encode(task.template, [e.input for e in ex]))
    gold = first_token_ids(gpt2, [e.target for e in ex])
    want_p1 = sum(int(logits[i].argmax() == gold[i]) for i in range(len(ex))) / len(ex)
    want_loss = -sum(float(logits[i].log_softmax(-1)[gold[i]]) for i in range(len(ex))) / len(ex)
    # candidate accuracy by brute force: score every full answer with a plain forward
    hits = 0
    for e in ex:
        scores = []
        for a in task.answers:
            ids = gpt2.sequences(task.template, [e.input], [gpt2.answer_ids(a)])[0][0]
            with torch.no_grad():
                lp = gpt2.model(torch.tensor([ids])).logits[0].log_softmax(-1)
            k = len(gpt2.answer_ids(a))
            scores.append(sum(float(lp[len(ids) - k - 1 + j, ids[len(ids) - k + j]]) for j in range(k)))
        hits += task.answers[max(range(len(scores)), key=scores.__getitem__)] == e.target
    got = evaluate(gpt2, task.template, ex, answers=task.answers)
    assert got["n"] == 5
    assert got["p_at_1"] == pytest.approx(want_p1)
    assert got["loss"] == pytest.approx(want_loss, rel=1e-6)
    assert got["candidate_accuracy"] == pytest.approx(hits / 5)


def test_branch_and_bound_equals_exhaustive_scoring(gpt2):
    """Pruned candidate search returns the same argmax as scoring every multi-token answer."""
    answers = ["Buenos Aires", "San Marino", "Paris", "Port Louis", "Kuala Lumpur", "Rome", "New Delhi"]
    inputs = ["alpha", "beta", "gamma"]
    tpl = "Capital of [X] is"
    lp = gpt2.last_logits(gpt2.encode(tpl, inputs)).log_softmax(-1)
    picked = best_candidates(gpt2, tpl, inputs, answers, None, lp, chunk=2)
    for i, x in enumerate(inputs):
        full = gpt2.continuation_logprob(tpl, [x] * len(answers), [gpt2.answer_ids(a) for a in answers])
        assert picked[i] == int(full.argmax())


def test_training_improves_and_restores_best(gpt2):
    trainer = make_trainer(gpt2, num_epochs=6)
    before = evaluate(gpt2, trainer.template, trainer.task.train, trainer.current_prompt())["loss"]
    result = trainer.fit()
    after = evaluate(gpt2, trainer.template, trainer.task.train, result.prompt)["loss"]
    assert after < before
    best = max(trainer.history["eval"], key=lambda r: (r["dev_p_at_1"], -r["dev_loss"]))
    assert result.best_step == best["step"]
    dev_now = evaluate(gpt2, trainer.template, trainer.task.dev, result.prompt)
    assert dev_now["loss"] == pytest.approx(best["dev_loss"], rel=1e-9)
    # snapshots: step 0 plus every 2 steps, each (n, d)
    assert result.snapshot_steps[:3] == [0, 2, 4]
    assert result.snapshots.shape == (len(result.snapshot_steps), 3, gpt2.hidden_size)


def test_gradients_reach_only_the_encoder(gpt2):
    trainer = make_trainer(gpt2)
    trainer.loss(trainer.task.train[:4]).backward()
    assert all(p.grad is None for p in gpt2.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.encoder.parameters())


def test_same_seed_same_history(gpt2):
    h1 = make_trainer(gpt2, method="lstm").fit().history
    h2 = make_trainer(gpt2, method="lstm").fit().history
    assert h1 == h2


def test_resume_matches_uninterrupted_run(gpt2, tmp_path):
    full = make_trainer(gpt2, out=tmp_path / "full", num_epochs=4).fit()
    # the same run killed at step 7 (its state was saved at step 5), then resumed from step 5

    class Kill(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 7:
                raise KeyboardInterrupt

    part = make_trainer(gpt2, out=tmp_path / "part", num_epochs=4, checkpoint_every=5)
    part.callbacks.append(Kill())
    with pytest.warns(UserWarning):
        part.fit()
    resumed = make_trainer(gpt2, out=tmp_path / "part", num_epochs=4, checkpoint_every=5).fit(resume=True)
    assert torch.allclose(resumed.prompt, full.prompt, atol=1e-6)
    assert resumed.history["train"] == full.history["train"]
    assert [r["dev_loss"] for r in resumed.history["eval"]] == pytest.approx(
        [r["dev_loss"] for r in full.history["eval"]], rel=1e-9)
    assert resumed.snapshot_steps == full.snapshot_steps


def test_run_directory_round_trip(gpt2, tmp_path):
    trainer = make_trainer(gpt2, out=tmp_path / "run")
    result = trainer.fit()
    run = ckpt.load_run(tmp_path / "run")
    assert torch.equal(run.prompt, result.prompt.float() if run.prompt.dtype == torch.float32 else result.prompt)
    enc = run.encoder().double()
    assert torch.allclose(enc(), result.prompt, atol=1e-6)      # the encoder is saved, not only its output
    assert run.snapshots.shape[0] == len(run.snapshot_steps)
    assert run.history["best_step"] == result.best_step
    assert run.config["encoder"]["method"] == "mlp" and run.config["vocab_size"] == gpt2.vocab_size
    run.check_model(gpt2)


def test_checkpoint_from_other_model_is_refused(gpt2, tokenizer, tmp_path):
    make_trainer(gpt2, out=tmp_path / "run").fit()
    run = ckpt.load_run(tmp_path / "run")
    other = make_tiny_lm("llama", tokenizer)
    other.model.resize_token_embeddings(gpt2.vocab_size)
    run.config["hidden_size"] = 48
    with pytest.raises(ckpt.CheckpointError, match=r"width 48.*width 32"):
        run.check_model(other)


def test_corrupt_or_partial_checkpoint_is_a_clear_error(gpt2, tmp_path):
    make_trainer(gpt2, out=tmp_path / "run").fit()
    path = tmp_path / "run" / "prompt.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.load_run(tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="partial"):
        ckpt.load_run(tmp_path / "run")


def test_non_finite_loss_stops_and_keeps_last_good_state(gpt2):
    trainer = make_trainer(gpt2, num_epochs=4)
    real_loss = trainer.loss

    def loss(examples):
        value = real_loss(examples)
        return value * float("nan") if trainer.step == 7 else value

    trainer.loss = loss
    with pytest.warns(UserWarning, match="nan"):
        result = trainer.fit()
    assert result.stopped == "non_finite_loss"
    assert len(result.history["train"]) == 7
    assert torch.isfinite(result.prompt).all()


def test_a_non_finite_step_changes_nothing(gpt2):
    trainer = make_trainer(gpt2)
    batch = trainer.batch_examples(0)
    trainer.train_step(batch)                        # the optimizer now has moments to spoil
    encoder = copy.deepcopy(trainer.encoder.state_dict())
    optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    lr_step = trainer.scheduler.last_epoch
    real_loss = trainer.loss
    trainer.loss = lambda examples: real_loss(examples) * float("nan")
    with pytest.raises(FloatingPointError, match="nan"):
        trainer.train_step(batch)
    for name, value in trainer.encoder.state_dict().items():
        assert torch.equal(value, encoder[name]), name
    for key, state in trainer.optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, optimizer["state"][key][name]), name
    assert trainer.scheduler.last_epoch == lr_step
    assert all(p.grad is None for p in trainer.encoder.parameters())


def test_keyboard_interrupt_keeps_history_and_best_state(gpt2, tmp_path):
    class Interrupt(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 8:
                raise KeyboardInterrupt

    trainer = make_trainer(gpt2, out=tmp_path / "run", num_epochs=4)
    trainer.callbacks.append(Interrupt())
    with pytest.warns(UserWarning, match="interrupted"):
        result = trainer.fit()
    assert result.stopped == "interrupted"
    assert len(result.history["train"]) == 8
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["stopped"] == "interrupted" and len(saved["train"]) == 8


def test_bad_train_config_values():
    for kwargs, word in [({"lr": 0}, "lr"), ({"lr": -1.0}, "lr"), ({"batch_size": 0}, "batch_size"),
                         ({"num_epochs": 0}, "num_epochs"), ({"max_steps": -3}, "max_steps"),
                         ({"warmup_ratio": 1.5}, "warmup_ratio"), ({"lr": math.nan}, "lr"),
                         ({"waywardness_gamma": 0.1}, "waywardness_target")]:
        with pytest.raises(ValueError, match=word):
            TrainConfig(**kwargs)


def test_template_and_encoder_must_agree(gpt2):
    enc = build_encoder("direct", 2, gpt2.embedding.detach(), init="vocab")
    with pytest.raises(ValueError, match="3 \\[P\\] slots but the encoder makes 2"):
        Trainer(gpt2, enc, toy_task(), "[P][P] [X] is [P]", progress=False)
    with pytest.raises(ValueError, match="no \\[P\\]"):
        Trainer(gpt2, enc, toy_task(), "[X] is", progress=False)


def test_atomic_write_keeps_previous_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "history.json"
    ckpt.write_json(path, {"version": 1})

    class Boom(Exception):
        pass

    def bad_default(obj):
        raise Boom

    with pytest.raises(Exception):
        ckpt.write_json(path, {"version": 2, "bad": object()})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_killed_writer_process_leaves_previous_checkpoint(tmp_path):
    """A process killed while writing a large tensor file leaves the old file readable."""
    import subprocess
    import sys
    import time

    path = tmp_path / "prompt.safetensors"
    ckpt.write_tensors(path, {"prompt": torch.ones(3, 4)})
    code = ("import torch, sys; from ptuning_lab import checkpoint as c\n"
            "while True: c.write_tensors(sys.argv[1], {'prompt': torch.zeros(4000, 4000)})\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    time.sleep(3.0)
    proc.kill()
    proc.wait()
    loaded = ckpt.read_tensors(path)["prompt"]
    assert loaded.shape in {(3, 4), (4000, 4000)}        # old or new, never half-written


@pytest.mark.slow
def test_short_real_run_improves_dev_p_at_1(embedded_lm):
    from ptuning_lab.experiments import default_template
    from ptuning_lab.tasks import load_task

    task = load_task("capital", seed=0)
    template = default_template(task.template, 2)
    enc = build_encoder("direct", 4, embedding=embedded_lm.embedding.detach(), init="text:The capital of is", seed=0,
                        tokenize=embedded_lm.tokenize)
    trainer = Trainer(embedded_lm, enc, task, template,
                      TrainConfig(lr=3e-3, batch_size=16, max_steps=12, eval_every=12, snapshot_every=12),
                      progress=False)
    start = evaluate(embedded_lm, template, task.dev, trainer.current_prompt())["p_at_1"]
    result = trainer.fit()
    assert result.best_dev["p_at_1"] > start


def test_direct_snapshots_are_copies_not_the_live_weight(gpt2):
    result = make_trainer(gpt2, method="direct", num_epochs=2).fit()
    assert not torch.equal(result.snapshots[0], result.snapshots[-1])
    assert result.snapshots[0].data_ptr() != result.encoder.embedding.weight.data_ptr()


def test_learning_rate_defaults_per_encoder(gpt2):
    """lr=None takes the method's default (the LSTM encoder is unstable at 3e-3); a given lr is kept."""
    from ptuning_lab.trainer import default_lr

    for method, expected in [("lstm", 1e-3), ("mlp", 3e-3), ("direct", 3e-3)]:
        trainer = make_trainer(gpt2, method=method, lr=None)
        assert trainer.config.lr == expected == default_lr(method)
        assert trainer.optimizer.param_groups[0]["initial_lr"] == expected
    assert make_trainer(gpt2, method="lstm", lr=5e-4).config.lr == 5e-4


# ---------------------------------------------------------------- the Python API checks its arguments (issue 18.9/18.10)
@pytest.mark.parametrize("kwargs, words", [
    ({"lr": "0.1"}, r"lr must be a finite number, got '0.1' \(str\)"),
    ({"batch_size": 2.5}, r"batch_size must be a whole number, got 2.5"),
    ({"batch_size": True}, r"batch_size must be a whole number, got True \(bool\)"),
    ({"max_steps": 2.5}, r"max_steps must be a whole number"),
    ({"grad_clip": math.nan}, r"grad_clip must be a finite number, got nan"),
    ({"weight_decay": math.nan}, r"weight_decay must be a finite number, got nan"),
    ({"weight_decay": -0.1}, r"weight_decay must be >= 0"),
    ({"seed": "0"}, r"seed must be a whole number"),
    ({"fast": "yes"}, r"fast must be True or False"),
])
def test_train_config_refuses_wrong_types(kwargs, words):
    from ptuning_lab.trainer import TrainConfigError

    with pytest.raises(TrainConfigError, match=words) as info:
        TrainConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    TrainConfig(grad_clip=None, max_steps=None, lr=None)             # None stays allowed where documented


def test_trainer_refuses_a_task_name_and_says_what_to_pass(gpt2):
    from ptuning_lab.trainer import TrainerArgumentError

    enc = build_encoder("direct", 3, gpt2.embedding.detach(), init="vocab")
    with pytest.raises(TrainerArgumentError, match=r"task must be a Task.*pass load_task\('capital'\)"):
        Trainer(gpt2, enc, "capital", "[P][P] [X] is [P]", progress=False)
    with pytest.raises(TrainerArgumentError, match=r"config must be a TrainConfig, got dict"):
        Trainer(gpt2, enc, toy_task(), "[P][P] [X] is [P]", {"max_steps": 3}, progress=False)
    with pytest.raises(TrainerArgumentError, match=r"pass FrozenLM.load\('gpt2'\)"):
        Trainer("gpt2", enc, toy_task(), "[P][P] [X] is [P]", progress=False)


def test_label_words_sharing_a_first_token_are_named_in_a_warning(gpt2):
    """18.9: "very good"/"very bad" share " very": first-token P@1 cannot tell them apart (full scoring can)."""
    words = {"positive": "very good", "negative": "very bad"}
    exs = [Example(f"text{i}", words[label], label) for i, label in enumerate(["positive", "negative"] * 6)]
    task = Task("pol", "[X] is", exs[:6], exs[6:9], exs[9:], sorted(words.values()), kind="classification",
                verbalizer=words)
    enc = build_encoder("direct", 2, gpt2.embedding.detach(), init="vocab")
    assert gpt2.answer_ids("very good")[0] == gpt2.answer_ids("very bad")[0]      # the premise: " very"
    with pytest.warns(UserWarning, match=r"'very good'/'very bad' of different labels share their first token: "
                                         r"first-token P@1"):
        Trainer(gpt2, enc, task, "[P] [X] is [P]", progress=False)


def test_classification_keeps_the_state_best_on_dev_accuracy(gpt2, monkeypatch):
    """A classification task picks its best state by its own metric (accuracy), not first-token P@1."""
    words = {"positive": (" good", " great"), "negative": (" bad",)}
    exs = [Example(f"text{i}", words[label][0].strip(), label) for i, label in
           enumerate(["positive", "negative", "negative"] * 6)]
    task = Task("pol", "[X] is", exs[:9], exs[9:15], exs[15:], sorted(w for ws in words.values() for w in ws),
                kind="classification", verbalizer=words, metrics=("accuracy", "f1_macro"))
    enc = build_encoder("mlp", 2, gpt2.embedding.detach(), init="vocab", seed=0)
    trainer = Trainer(gpt2, enc, task, "[P] [X] is [P]", TrainConfig(max_steps=4, eval_every=1, batch_size=4,
                                                                       lr=0.05, seed=0), progress=False)
    # scripted dev scores, one per evaluation, where P@1 and accuracy disagree on the best step
    script = iter([(0.9, 0.2), (0.1, 0.8), (0.95, 0.4), (0.2, 0.6)])
    prompts = {}

    def scripted(examples, prompt=None, metrics=None):
        p1, acc = next(script)
        prompts[trainer.step] = trainer.current_prompt().detach().cpu().clone()
        return {"n": len(examples), "p_at_1": p1, "loss": 1.0, "accuracy": acc, "f1_macro": acc}

    monkeypatch.setattr(trainer, "score", scripted)
    result = trainer.fit()
    evals = trainer.history["eval"]
    assert [r["dev_accuracy"] for r in evals] == [0.2, 0.8, 0.4, 0.6]
    step = evals[1]["step"]                                                 # P@1 alone would pick evals[2]
    assert result.best_step == step and result.best_dev["accuracy"] == 0.8
    assert torch.equal(result.prompt, prompts[step])                        # and that step's state is restored


# ---------------------------------------------------------------- whole-answer losses
def multi_token_task():
    """A relation whose answers have 1 to 3 tokens (what answer_loss='full' is for)."""
    answers = ["Paris", "Buenos Aires", "Port of Spain", "United States dollar"]
    exs = [Example(WORDS[i] + str(i), answers[i % 4]) for i in range(16)]
    return Task("multi", "Capital of [X] is", exs[:8], exs[8:12], exs[12:], sorted(answers))


def hand_full_loss(lm, template, examples, prompt):
    """Plain loop: each example with its whole answer appended, one full forward each, summed token NLL."""
    total = 0
    for ex in examples:
        ids = lm.answer_ids(ex.target)
        batch = lm.encode(template, [ex.input], suffixes=[ids])
        logp = lm.head(lm.hidden(batch, prompt)[0]).log_softmax(-1)
        start = int(batch.suffix_start[0])
        total = total - sum(logp[start - 1 + j, t] for j, t in enumerate(ids))
    return total / len(examples)


@pytest.mark.parametrize("fast", [True, False])
def test_full_answer_loss_gradient_equals_a_plain_loop(gpt2, fast):
    task = multi_token_task()
    assert {len(gpt2.answer_ids(ex.target)) for ex in task.train} >= {1, 2, 3}
    template = "[P] Capital of [X] is [P][P]"
    enc = build_encoder("mlp", 3, gpt2.embedding.detach(), init="vocab", seed=0).double()
    trainer = Trainer(gpt2, enc, task, template, TrainConfig(answer_loss="full", fast=fast), progress=False)
    assert trainer.forward.uses_fast_path is fast
    batch = task.train[:6]
    loss = trainer.loss(batch)
    got = torch.autograd.grad(loss, list(enc.parameters()))
    want_loss = hand_full_loss(gpt2, template, batch, enc())
    want = torch.autograd.grad(want_loss, list(enc.parameters()))
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-10)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fast", [True, False])
def test_label_loss_is_a_cross_entropy_over_full_label_scores(gpt2, fast):
    verbalizer = {"north": ("up north", "north"), "south": ("down south",), "east": ("east",), "west": ("far west",)}
    exs = [Example(WORDS[i] + str(i), verbalizer[lab][0], lab) for i, lab in
           enumerate(["north", "south", "east", "west"] * 4)]
    task = Task("dirs", "Direction of [X] is", exs[:8], exs[8:12], exs[12:], ["down", "east", "far", "up"],
                kind="classification", verbalizer=verbalizer)
    template = "[P][P] Direction of [X] is [P]"
    enc = build_encoder("mlp", 3, gpt2.embedding.detach(), init="vocab", seed=0).double()
    trainer = Trainer(gpt2, enc, task, template, TrainConfig(answer_loss="labels", fast=fast), progress=False)
    loss = trainer.loss(task.train[:5])
    got = torch.autograd.grad(loss, list(enc.parameters()))
    prompt, total = enc(), 0
    for ex in task.train[:5]:                 # by hand: each word's summed log-prob, logsumexp per label, CE
        scores = []
        for words in verbalizer.values():
            per_word = []
            for w in words:
                ids = gpt2.answer_ids(w)
                batch = gpt2.encode(template, [ex.input], suffixes=[ids])
                logp = gpt2.head(gpt2.hidden(batch, prompt)[0]).log_softmax(-1)
                start = int(batch.suffix_start[0])
                per_word.append(sum(logp[start - 1 + j, t] for j, t in enumerate(ids)))
            scores.append(torch.logsumexp(torch.stack(per_word), 0))
        total = total - torch.stack(scores).log_softmax(0)[list(verbalizer).index(ex.label)]
    want_loss = total / 5
    want = torch.autograd.grad(want_loss, list(enc.parameters()))
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-10)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)
    assert "accuracy" in trainer.score(task.dev)          # the dev metrics score every label in full


def test_answer_loss_choices_are_checked(gpt2):
    with pytest.raises(ValueError, match="answer_loss='whole'"):
        TrainConfig(answer_loss="whole")
    enc = build_encoder("mlp", 3, gpt2.embedding.detach(), init="vocab", seed=0).double()
    with pytest.raises(ValueError, match="is a relation"):
        Trainer(gpt2, enc, toy_task(), "[P][P] Direction of [X] is [P]", TrainConfig(answer_loss="labels"),
                progress=False)


def test_evaluations_during_training_skip_exact_match_unless_it_selects(gpt2, monkeypatch):
    """A relation's dev evaluations pick the best state on P@1: the teacher-forced pass over every answer
    token that exact match needs is not run for them (the test split after training still reports it)."""
    trainer = make_trainer(gpt2, max_steps=6)
    assert trainer.task.metrics == ("p_at_1", "exact_match") and trainer.dev_metrics == ("p_at_1",)
    calls = []
    real = trainer.forward.answer_logits
    monkeypatch.setattr(trainer.forward, "answer_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = trainer.fit()
    assert calls == [] and len(trainer.history["eval"]) == 2 and "exact_match" not in result.best_dev
    assert "exact_match" in trainer.score(trainer.task.dev) and calls           # asked for, it is computed
    trainer.task.metrics = ("exact_match", "p_at_1")                           # selecting on it: computed
    assert trainer.dev_metrics == ("exact_match", "p_at_1")
