"""Recorded training steps (ptuning_lab.step_graphs): a replayed step is the uncaptured step.

On a CPU the graphs are emulated (``record="rerun"``: every replay re-runs the recorded step's code on
the graph's own input buffer, learning-rate tensors and found_inf), which checks everything but the
CUDA recording itself: the layout and answers copied in, the schedule read through device tensors, a
non-finite step skipped and rewound, a new layout recorded, stale graphs dropped after a resume. The
last test records real CUDA graphs and runs only where a GPU is.
"""
import copy

import pytest
import torch

from ptuning_lab import step_graphs
from ptuning_lab.fast import FastConfig
from ptuning_lab.prompts import build_encoder
from ptuning_lab.step_graphs import StepGraphs
from ptuning_lab.tasks import Example, Task
from ptuning_lab.trainer import TrainConfig, Trainer

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light", "table", "sugar", "horse", "glass"]


def _task(n_train=12):
    answers = ["north", "south", "east", "west"]
    exs = [Example(f"{w} {i}", answers[i % 4]) for i, w in enumerate(WORDS * 3)]
    return Task("toy", "Direction of [X] is", exs[:n_train], exs[24:30], exs[30:], sorted(answers))


@pytest.fixture
def lm(lm64):
    return lm64


def _trainer(lm, graphs: bool, method="mlp", template="[P]*2 Direction of [X] is [P]", n_train=12, enc_config=None,
             **cfg):
    enc = build_encoder(method, 3, lm.embedding.detach(), init="vocab", seed=0, lm=lm, config=enc_config).double()
    cfg = {"lr": 1e-2, "batch_size": 4, "max_steps": 11, "eval_every": 4, "snapshot_every": 100,
           "warmup_ratio": 0.2, "grad_clip": 0.5, **cfg}
    # rows rounded to 16 tokens on both sides, as recorded steps have them: the same layouts, bit for bit
    trainer = Trainer(lm, enc, _task(n_train), template, TrainConfig(**cfg), progress=False,
                      fast=FastConfig(row_multiple=16))
    trainer.overlap_steps = True          # as on a GPU: losses read one step late
    if graphs:
        trainer.step_graphs = StepGraphs(trainer, record="rerun")
    return trainer


def _state(trainer):
    return (copy.deepcopy(trainer.encoder.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()),
            trainer.scheduler.last_epoch, trainer.step)


def _assert_same(a, b):
    enc_a, opt_a, epoch_a, step_a = a
    enc_b, opt_b, epoch_b, step_b = b
    for name in enc_a:
        assert torch.equal(enc_a[name], enc_b[name]), name
    assert opt_a["param_groups"] == opt_b["param_groups"]          # floats again, capturable as it was
    for key in opt_a["state"]:
        for name in opt_a["state"][key]:
            assert torch.equal(opt_a["state"][key][name], opt_b["state"][key][name]), (key, name)
    assert (epoch_a, step_a) == (epoch_b, step_b)


@pytest.mark.parametrize("method", ["mlp", "lstm", "direct"])
@pytest.mark.parametrize("template", ["[P]*2 Direction of [X] is [P]", "Direction [P] of [X] is [P]*2"])
def test_replayed_steps_equal_uncaptured_steps(lm, method, template):
    """Shared head (first template) and cached constant prefix (second): equal histories, encoders and
    AdamW states; every step after the first (the fast path's self-check) is a replay."""
    runs = []
    for graphs in (False, True):
        trainer = _trainer(lm, graphs, method, template)
        result = trainer.fit()
        runs.append((result, _state(trainer), trainer.history, trainer))
    (r0, s0, h0, _), (r1, s1, h1, t1) = runs
    assert h0["train"] == h1["train"] and len(h1["train"]) == 11
    assert [e["dev_loss"] for e in h0["eval"]] == [e["dev_loss"] for e in h1["eval"]]
    _assert_same(s0, s1)
    assert r0.best_step == r1.best_step
    stats = t1.step_graphs.stats
    # the first step runs the fast path's self-check, the second meets its layout for the first time
    assert stats["replays"] >= 8 and stats["replays"] + stats["uncaptured"] == 11
    assert stats["captures"] >= 1 and t1.step_graphs.reason is None
    assert all(p.grad is None for p in t1.encoder.parameters())
    assert not t1.step_graphs.graphs and t1.step_graphs.pool is None     # released when fit ends
    assert t1.fast.stats["tokens_run"] == runs[0][3].fast.stats["tokens_run"]     # statistics count replays


def test_waywardness_and_a_new_layout_for_the_last_partial_batch(lm):
    """10 training examples in batches of 4: the third batch of each epoch has 2 examples, its own layout."""
    runs = []
    for graphs in (False, True):
        trainer = _trainer(lm, graphs, n_train=10, max_steps=9, waywardness_gamma=0.1, waywardness_target="east west")
        trainer.fit()
        runs.append((_state(trainer), trainer.history["train"], trainer))
    assert runs[0][1] == runs[1][1]
    _assert_same(runs[0][0], runs[1][0])
    graphs = runs[1][2].step_graphs
    # steps 0-8 = batches 0,1,2 of three epochs; the partial batch (2) is recorded when it comes again
    assert graphs.stats["captures"] == 2
    assert graphs.stats["replays"] == 6 and graphs.stats["uncaptured"] == 3   # self-check, then A and B met once


def _nan_at_call(trainer, calls: set[int]):
    """The regularised loss of the given calls (0-based, in step order) becomes NaN: the same step on both
    paths (each step computes it once, recorded or not)."""
    real, count = trainer.regularised, [0]

    def regularised(loss, prompt):
        i = count[0]
        count[0] += 1
        value = real(loss, prompt)
        return value * float("nan") if i in calls else value
    trainer.regularised = regularised


@pytest.mark.parametrize("bad", [1, 5, 10])
def test_a_non_finite_replayed_step_changes_nothing(lm, bad):
    states = []
    for graphs in (False, True):
        trainer = _trainer(lm, graphs)
        _nan_at_call(trainer, {bad})
        with pytest.warns(UserWarning, match=f"nan at step {bad}"):
            result = trainer.fit()
        assert result.stopped == "non_finite_loss" and trainer.step == bad
        states.append((_state(trainer), trainer.history["train"]))
    assert states[0][1] == states[1][1]
    _assert_same(states[0][0], states[1][0])


def test_graphs_are_recorded_again_after_the_optimizer_state_is_replaced(lm):
    trainer = _trainer(lm, True, max_steps=20)
    trainer.train_steps(3)
    graphs = trainer.step_graphs
    before = graphs.stats["captures"]
    assert before >= 1
    trainer.optimizer.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))    # new state tensors
    reference = _trainer(lm, False, max_steps=20)
    reference.train_steps(3)
    reference.optimizer.load_state_dict(copy.deepcopy(reference.optimizer.state_dict()))
    assert trainer.train_steps(3) == reference.train_steps(3)
    assert graphs.stats["captures"] > before          # recorded again, on the new state tensors
    assert graphs.state == graphs._state() and len(graphs.graphs) == graphs.stats["captures"] - before
    _assert_same(_state(trainer), _state(reference))


@pytest.mark.parametrize("change, reason", [
    (dict(answer_loss="full"), "answer_loss='full'"),
    (dict(method="lstm", enc_config={"dropout": 0.2}), "dropout"),
    (dict(method="prefix", template="Direction of [X] is"), "runs the model itself"),
])
def test_steps_that_cannot_be_recorded_run_uncaptured_and_say_why(lm, change, reason):
    change = dict(change)
    method, template = change.pop("method", "mlp"), change.pop("template", "[P]*2 Direction of [X] is [P]")
    enc_config = change.pop("enc_config", None)
    if enc_config:
        from ptuning_lab.prompts import LSTMConfig
        enc_config = LSTMConfig(**enc_config)
    trainer = _trainer(lm, True, method, template, enc_config=enc_config, max_steps=3, **change)
    trainer.train_steps(3)
    assert reason in trainer.step_graphs.reason
    assert trainer.step_graphs.stats == {"captures": 0, "replays": 0, "uncaptured": 3}


def test_a_body_compiled_with_its_own_cuda_graphs_is_refused(lm):
    trainer = _trainer(lm, True)
    trainer.lm.compile_mode = "reduce-overhead"
    try:
        assert "mode=None" in step_graphs.unsupported_reason(trainer, "cuda")
    finally:
        trainer.lm.compile_mode = None


def test_asking_for_graphs_on_a_cpu_warns_once_and_trains_as_before(lm):
    enc = build_encoder("mlp", 3, lm.embedding.detach(), init="vocab", seed=0, lm=lm).double()
    with pytest.warns(UserWarning, match="need a CUDA device"):
        trainer = Trainer(lm, enc, _task(), "[P]*2 Direction of [X] is [P]", TrainConfig(lr=1e-2, max_steps=2),
                          progress=False, fast=FastConfig(cuda_graphs=True))
    trainer.train_steps(2)
    assert trainer.step_graphs.stats["uncaptured"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records real CUDA graphs")
@pytest.mark.parametrize("template", ["[P]*2 Direction of [X] is [P]", "Direction of [X] is [P]*3"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["mlp", "lstm", "direct"])
def test_cuda_graph_steps_equal_uncaptured_steps_on_a_gpu(method, kind, template):
    """Real CUDA graphs, float32: 30 steps with a partial last batch (two layouts), warm-up, decay and
    clipping, a shared head or per-example cached prefixes; every step after the first is a replay, and losses and encoders match the uncaptured run
    (to float32 rounding: AdamW reads the learning rate as a float32 tensor inside the graph)."""
    from helpers import make_tiny_lm, word_tokenizer

    task = _task(10)
    tokenizer = word_tokenizer([e.input + " " + e.target for e in task.examples] + ["Direction of is"])
    runs = []
    for graphs in (False, None):          # None: the default, on where the steps can be recorded
        lm = make_tiny_lm(kind, tokenizer)
        lm.model.cuda()
        enc = build_encoder(method, 3, lm.embedding.detach(), init="vocab", seed=0, lm=lm)
        trainer = Trainer(lm, enc, task, template,
                          TrainConfig(lr=1e-2, batch_size=4, max_steps=30, eval_every=10, grad_clip=0.5,
                                      warmup_ratio=0.2), progress=False,
                          fast=FastConfig(row_multiple=16, cuda_graphs=graphs))
        trainer.fit()
        runs.append((_state(trainer), trainer.history["train"], trainer))
    graphs = runs[1][2].step_graphs
    assert 2 <= graphs.stats["captures"] <= 4 and graphs.stats["replays"] >= 24, (graphs.stats, graphs.reason)
    for a, b in zip(runs[0][1], runs[1][1]):
        assert a["lr"] == b["lr"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    enc0, enc1 = runs[0][0][0], runs[1][0][0]
    for name in enc0:
        torch.testing.assert_close(enc0[name], enc1[name], rtol=1e-4, atol=1e-5)
    opt0, opt1 = runs[0][0][1]["state"], runs[1][0][1]["state"]
    assert all(torch.equal(opt0[k]["step"].cpu(), opt1[k]["step"].cpu()) for k in opt0)



def test_batches_of_per_example_cached_prefixes_are_replayed_too(lm):
    """'Direction of [X] is [P]*3': each example starts from its own cached prefix; the graph reads them
    from its own buffer, filled before every replay."""
    runs = []
    for graphs in (False, True):
        trainer = _trainer(lm, graphs, template="Direction of [X] is [P]*3", max_steps=11)
        trainer.fit()
        runs.append((_state(trainer), trainer.history["train"], trainer))
    assert runs[0][1] == runs[1][1]
    _assert_same(runs[0][0], runs[1][0])
    graphs = runs[1][2].step_graphs
    assert graphs.stats["replays"] >= 8 and graphs.reason is None
    trainer = _trainer(lm, True, template="Direction of [X] is [P]*3", max_steps=11)
    trainer.train_steps(5)                    # (fit releases its graphs when it ends)
    assert trainer.step_graphs.graphs and all(g.prefix_in is not None for g in trainer.step_graphs.graphs.values())


def test_the_default_records_nothing_on_a_cpu(lm):
    trainer = _trainer(lm, False)
    assert trainer.fast.config.cuda_graphs is None and trainer.step_graphs is None


def test_a_recording_that_fails_warns_once_and_the_run_goes_on_uncaptured(lm, monkeypatch):
    reference = _trainer(lm, False)
    reference.fit()
    trainer = _trainer(lm, True)

    def broken(*a):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(trainer.step_graphs, "_capture", broken)
    with pytest.warns(UserWarning, match="recording a step failed .*not permitted") as caught:
        trainer.fit()
    assert sum("recording a step failed" in str(w.message) for w in caught) == 1
    assert trainer.history["train"] == reference.history["train"]
    _assert_same(_state(trainer), _state(reference))
    assert trainer.step_graphs.stats["replays"] == 0 and "failed" in trainer.step_graphs.reason
