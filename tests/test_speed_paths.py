"""The fast path (ptuning_lab.fast) gives the plain path's logits, gradients and metrics.

Each optimisation is checked against the reference ``lm.last_logits(lm.encode(...))`` in float64
on tiny random GPT-2 and Llama models: the constant-prefix cache, the shared head, packing several
examples into one row, and the trainer and evaluation wired to them.
"""

import math

import pytest
import torch

from helpers import make_tiny_lm
from ptuning_lab.prompts import KEY_VALUE, LayerPrompt, build_encoder
from ptuning_lab.evaluation import evaluate
from ptuning_lab.fast import FastConfig, FastForward
from ptuning_lab.forward import PlainForward, make_forward
from ptuning_lab.packing import block_mask, pack_rows
from ptuning_lab.tasks import Example, Task
from ptuning_lab.templates import Template
from ptuning_lab.trainer import TrainConfig, Trainer

# inputs of different token lengths, a duplicate, and one sharing its first token with another
INPUTS = ["France", "United Kingdom", "Peru", "Bosnia and Herzegovina", "Chad", "Peru", "United States"]
TEMPLATES = [
    "[P]*3 The capital of [X] is [P]*3",      # the CLI default: a shared head with [P]s in it
    "The capital of [X] is [P]*4",            # suffix: everything before [P] is cached per input
    "[P]*4 The capital of [X] is",            # PEFT's layout: a long shared head
    "The capital of [X] [P]*2 is [P]",        # [P]s in the middle, text between them
    "The [P]*2 capital of [X] is [P]",        # a cached prefix, then a shared head with [P]s in it
    # two named slots (filled from dicts, see _inputs)
    "[premise] Question: [hypothesis] True, False or Neither? [P]*3",   # both slots in the cached prefix
    "[P]*2 [passage] Question: [question]? [P]*2 Answer:",              # shared head, [P]s between slots
    "Premise: [premise] [P] Hypothesis: [hypothesis] [P]*2",            # constant text, then a slot, then [P]
]
# two-slot inputs: different lengths, a duplicate, two sharing their first slot
PAIRS = [(INPUTS[i], INPUTS[(i + 3) % len(INPUTS)]) for i in range(len(INPUTS))] + [(INPUTS[0], INPUTS[3]),
                                                                                    (INPUTS[0], "Chad")]


def _inputs(template):
    """INPUTS for an [X] template; dicts slot name -> text (from PAIRS) for a template with named slots."""
    names = Template.parse(template).slot_names
    if names == ("X",):
        return INPUTS
    return [dict(zip(names, pair)) for pair in PAIRS]
CONFIGS = {
    "all": FastConfig(),
    "no-cache": FastConfig(cache_prefix=False),   # then the shared head starts at position 0
    "no-share": FastConfig(share_head=False),
    "rows-of-8": FastConfig(pack_tokens=8),   # forces several packed rows
    "one-per-row": FastConfig(pack_tokens=1),   # each example its own row: causal attention, no mask
    "one-per-row-no-cache": FastConfig(pack_tokens=1, cache_prefix=False),
    "rows-rounded": FastConfig(row_multiple=16),   # masked padding at the rows' ends (a compiled model's default)
    "one-per-row-rounded": FastConfig(pack_tokens=1, row_multiple=16),
}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm64(request, tokenizer):
    return make_tiny_lm(request.param, tokenizer, dtype=torch.float64, seed=1)


def _prompt(lm, template, seed=0):
    n = Template.parse(template).num_virtual_tokens
    g = torch.Generator().manual_seed(seed)
    # on the scale of the embeddings, so the prompt really moves the logits
    scale = lm.embedding.std().item()
    return (torch.randn(n, lm.hidden_size, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


def _objective(logits):
    # touches every logit with different weights: a wrong row or column changes the gradient
    w = torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)
    return logits.logsumexp(-1).sum() + (logits * w).sum()


def _close(got, ref, tol=1e-6):
    """Equal up to rounding. Float64 models still round some steps to float32 (HF computes RoPE
    angles and eager softmax in float32), and summing a shared head's gradient over the batch in
    another order shows those roundings at ~1e-8 of the largest value; a real mistake (a wrong
    mask, position or gradient path) is off by far more than 1e-6."""
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * ref.abs().max().item())


def _plain(lm, template, inputs, prompt, candidates=None):
    return lm.last_logits(lm.encode(template, inputs), prompt, candidates)


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_logits_and_gradients_equal_the_plain_path(lm64, template, config):
    inputs = _inputs(template)
    prompt = _prompt(lm64, template)
    ref = _plain(lm64, template, inputs, prompt)
    (g_ref,) = torch.autograd.grad(_objective(ref), prompt)
    fast = FastForward(lm64, template, CONFIGS[config])
    for _ in range(2):          # the second call reads the prefix cache
        got = fast.last_logits(inputs, prompt)
        (g_got,) = torch.autograd.grad(_objective(got), prompt)
        assert got.dtype == torch.float64 and got.shape == ref.shape
        _close(got, ref)
        _close(g_got, g_ref)
    assert fast.active
    # the examples are told apart: not a degenerate model whose logits ignore the input
    assert (ref[0] - ref[1]).abs().max() > 1e-6


def test_less_work_than_the_plain_path(lm64):
    fast = FastForward(lm64, "The capital of [X] is [P]*4", FastConfig(verify=False))
    prompt = _prompt(lm64, "The capital of [X] is [P]*4")
    fast.last_logits(INPUTS, prompt)
    first = dict(fast.stats)
    assert first["cache_misses"] == len(set(INPUTS))                # one entry per distinct prefix
    fast.last_logits(INPUTS, prompt)
    assert fast.stats["cache_misses"] == first["cache_misses"]      # nothing recomputed
    assert fast.stats["cache_hits"] - first["cache_hits"] == len(INPUTS)
    # second call: only the 4 virtual tokens of each example ran
    assert fast.stats["tokens_run"] - first["tokens_run"] == 4 * len(INPUTS)
    shared = FastForward(lm64, "[P]*4 The capital of [X] is", FastConfig(verify=False))
    shared.last_logits(INPUTS, _prompt(lm64, "[P]*4 The capital of [X] is"))
    # the 4 [P] + "The capital of" ran once, not once per example
    assert shared.stats["tokens_run"] < shared.stats["tokens_total"] - 5 * (len(INPUTS) - 1)


def test_a_compiled_model_gets_fewer_row_shapes(lm64, monkeypatch):
    """Batches of different lengths: rows rounded to 16 share shapes (each new one is a compile), and a model
    marked compiled gets the rounding by default; the logits stay those of unrounded rows."""
    import ptuning_lab.fast as fast_mod

    shapes = []
    real = fast_mod.block_mask
    monkeypatch.setattr(fast_mod, "block_mask", lambda seg, kseg, dtype: shapes.append(tuple(seg.shape)) or
                        real(seg, kseg, dtype))
    tpl = "[P]*3 The capital of [X] is [P]*3"
    prompt = _prompt(lm64, tpl)
    batches = [INPUTS[:k] for k in range(2, len(INPUTS) + 1)]
    seen = {}
    for multiple in (1, 16):
        fast = FastForward(lm64, tpl, FastConfig(row_multiple=multiple, verify=False))
        shapes.clear()
        seen[multiple] = [fast.last_logits(b, prompt).detach() for b in batches]
        assert len(shapes) == len(batches)
        if multiple == 16:
            assert all(q % 16 == 0 for _, q in shapes)
        seen[f"shapes{multiple}"] = set(shapes)
    assert len(seen["shapes16"]) < len(seen["shapes1"])
    for a, b in zip(seen[1], seen[16]):
        _close(b, a)
    lm64.compiled = True                     # what FrozenLM.compile sets (compiling itself is not needed here)
    try:
        shapes.clear()
        FastForward(lm64, tpl, FastConfig(verify=False)).last_logits(INPUTS[:3], prompt)
        assert shapes[0][1] % 16 == 0
    finally:
        lm64.compiled = False


def test_candidates_and_manual_templates(lm64):
    cands = torch.tensor([5, 17, 99, 3])
    tpl = "[P]*3 The capital of [X] is [P]*3"
    prompt = _prompt(lm64, tpl)
    fast = FastForward(lm64, tpl)
    torch.testing.assert_close(fast.last_logits(INPUTS, prompt, cands), _plain(lm64, tpl, INPUTS, prompt, cands))
    manual = FastForward(lm64, "The capital of [X] is")         # no [P]: a manual prompt
    torch.testing.assert_close(manual.last_logits(INPUTS, None), _plain(lm64, "The capital of [X] is", INPUTS, None))
    one = manual.last_logits(["Peru"], None)                    # a batch of one
    torch.testing.assert_close(one, _plain(lm64, "The capital of [X] is", ["Peru"], None))


def test_cache_bound_keeps_results_exact(lm64):
    tpl = "The capital of [X] is [P]*4"
    prompt = _prompt(lm64, tpl)
    tiny = FastForward(lm64, tpl, FastConfig(max_cache_mb=0.01))    # room for a few prefixes only
    for _ in range(2):
        torch.testing.assert_close(tiny.last_logits(INPUTS, prompt), _plain(lm64, tpl, INPUTS, prompt))
        assert tiny.cache_mb <= 0.01
    off = FastForward(lm64, tpl, FastConfig(max_cache_mb=0))
    torch.testing.assert_close(off.last_logits(INPUTS, prompt), _plain(lm64, tpl, INPUTS, prompt))
    assert off.cache_mb == 0


def test_eager_attention_gets_an_additive_mask(tokenizer):
    lm = make_tiny_lm("llama", tokenizer, dtype=torch.float64, seed=1)
    lm.model.config._attn_implementation = "eager"
    for tpl in TEMPLATES[:2]:
        prompt = _prompt(lm, tpl)
        ref = _plain(lm, tpl, INPUTS, prompt)
        got = FastForward(lm, tpl).last_logits(INPUTS, prompt)
        _close(got, ref)
        _close(torch.autograd.grad(_objective(got), prompt)[0], torch.autograd.grad(_objective(ref), prompt)[0],
               tol=1e-5)       # the eager softmax runs in float32


def test_prefix_cache_is_kept_apart_from_autocast(tokenizer):
    lm = make_tiny_lm("llama", tokenizer, dtype=torch.float32, seed=1)
    tpl = "The capital of [X] is [P]*2"
    prompt = _prompt(lm, tpl).float().detach()
    fast = FastForward(lm, tpl)
    full = fast.last_logits(INPUTS, prompt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fast.last_logits(INPUTS, prompt)
        ref_low = _plain(lm, tpl, INPUTS, prompt)
    assert fast.active
    torch.testing.assert_close(low, ref_low, rtol=0.05, atol=0.05 * ref_low.abs().max().item())
    torch.testing.assert_close(fast.last_logits(INPUTS, prompt), full)   # the float32 entries are untouched
    assert {k[0] for k in fast._cache} == {False, True}


@pytest.mark.parametrize("task_name", ["x", "two-slots"])
def test_trainer_fast_and_plain_agree(lm64, task_name):
    task, tpl = (_toy_task(), "[P]*2 Direction of [X] is [P]") if task_name == "x" else \
        (_toy_pair_task(), "[P]*2 From [start] to [end] [P] is")
    runs = {}
    # the default fast path, the fast path with settings passed through Trainer(fast=...), the plain path
    for name, fast, settings in (("fast", True, None), ("rows-of-8", True, FastConfig(pack_tokens=8)),
                                 ("plain", False, None)):
        enc = build_encoder("mlp", 3, lm64.embedding.detach(), init="vocab", seed=0).double()
        trainer = Trainer(lm64, enc, task, tpl, TrainConfig(lr=1e-2, batch_size=4, num_epochs=2, eval_every=3,
                                                             snapshot_every=2, fast=fast), progress=False, fast=settings)
        assert trainer.forward.uses_fast_path == fast and (trainer.fast is not None) == fast
        if settings is not None:
            assert trainer.forward.config is settings
        loss = trainer.loss(task.train[:4])
        loss.backward()
        grads = [p.grad.clone() for p in enc.parameters()]
        enc.zero_grad()
        runs[name] = (loss.item(), grads, trainer.fit())
    l0, g0, r0 = runs["plain"]
    for name in ("fast", "rows-of-8"):
        l1, g1, r1 = runs[name]
        assert l1 == pytest.approx(l0, rel=1e-10)
        for a, b in zip(g1, g0):
            _close(a, b)
        assert [h["loss"] for h in r1.history["train"]] == pytest.approx([h["loss"] for h in r0.history["train"]],
                                                                        rel=1e-7)
        assert [e["dev_loss"] for e in r1.history["eval"]] == pytest.approx(
            [e["dev_loss"] for e in r0.history["eval"]], rel=1e-7)
        _close(r1.prompt, r0.prompt)


def test_fast_settings_need_the_fast_path(lm64):
    """Trainer(fast=FastConfig(...)) with TrainConfig(fast=False) contradicts itself: refused, not ignored."""
    enc = build_encoder("direct", 3, lm64.embedding.detach())
    with pytest.raises(ValueError, match="fast=False"):
        Trainer(lm64, enc, _toy_task(), "[P]*3 [X]", TrainConfig(fast=False), progress=False, fast=FastConfig())


def test_make_forward_one_interface(lm64):
    """Both forwards answer the same calls with the same numbers; a K/V prompt always gets the plain one."""
    task = _toy_task()
    tpl = Template.parse("[P]*2 Direction of [X] is [P]")
    prompt = torch.randn(3, lm64.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fast, plain = make_forward(lm64, tpl, FastConfig()), make_forward(lm64, tpl, False)
    assert isinstance(fast, FastForward) and isinstance(plain, PlainForward) and not plain.uses_fast_path
    assert fast.template is tpl and plain.template is tpl                     # parsed once, passed on
    _close(fast.last_logits(INPUTS, prompt), plain.last_logits(INPUTS, prompt))
    assert fast.evaluate(task.dev, prompt) == pytest.approx(plain.evaluate(task.dev, prompt), rel=1e-9)
    kv = make_forward(lm64, "Direction of [X] is", True, produces=KEY_VALUE)
    assert isinstance(kv, PlainForward) and "runs the model itself" in kv.fallback_reason


@pytest.mark.parametrize("task_name", ["x", "two-slots"])
def test_fast_evaluate_equals_evaluate(lm64, task_name):
    task, tpl = (_toy_task(), "[P]*2 Direction of [X] is [P]") if task_name == "x" else \
        (_toy_pair_task(), "From [start] [P]*2 to [end] [P] is")
    prompt = _prompt(lm64, tpl).detach()
    for size in (256, 5):                        # one batch, and several
        fast = FastForward(lm64, tpl, FastConfig(eval_batch_size=size))
        got = fast.evaluate(task.dev + task.test, prompt, answers=task.answers)
        ref = evaluate(lm64, tpl, task.dev + task.test, prompt, answers=task.answers)
        assert got["n"] == ref["n"] and got["p_at_1"] == ref["p_at_1"]
        assert got["candidate_accuracy"] == ref["candidate_accuracy"]
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-10)


def test_falls_back_to_the_plain_path(lm64, monkeypatch):
    tpl = "[P]*3 The capital of [X] is [P]*3"
    prompt = _prompt(lm64, tpl)
    ref = _plain(lm64, tpl, INPUTS, prompt)

    class KVPrompt(LayerPrompt):                 # a prompt that runs the model itself (e.g. prefix tuning)
        def hidden(self, lm, batch):
            return lm.hidden(batch, prompt)

    torch.testing.assert_close(FastForward(lm64, tpl).last_logits(INPUTS, KVPrompt()), ref)
    broken = FastForward(lm64, tpl)
    monkeypatch.setattr(broken, "_run", lambda seqs, p: torch.zeros(len(seqs), lm64.hidden_size,
                                                                     dtype=torch.float64))
    with pytest.warns(UserWarning, match="plain path"):
        got = broken.last_logits(INPUTS, prompt)
    assert not broken.active and "differ" in broken.fallback_reason
    torch.testing.assert_close(got, ref)


def test_clear_errors(lm64):
    fast = FastForward(lm64, "[P]*2 The capital of [X] is")
    with pytest.raises(ValueError, match="no prompt was given"):
        fast.last_logits(["Peru"], None)
    with pytest.raises(ValueError, match=r"needs \(2, "):
        fast.last_logits(["Peru"], torch.zeros(1, lm64.hidden_size, dtype=torch.float64))
    with pytest.raises(ValueError, match="no inputs"):
        fast.last_logits([], None)
    with pytest.raises(ValueError, match="pack_tokens"):
        FastConfig(pack_tokens=-1)


def test_pack_keeps_order_and_budget():
    lengths = [5, 3, 8, 2, 2, 7, 1]
    rows = pack_rows(lengths, 10)
    assert [b for row in rows for b in row] == list(range(len(lengths)))
    assert all(sum(lengths[b] for b in row) <= 10 for row in rows)
    assert pack_rows([12], 10) == [[0]]               # an example longer than the budget gets a row of its own
    assert pack_rows([1] * 6, 100) == [[0, 1, 2, 3, 4, 5]]


def test_block_mask_sees_own_example_and_shared_head():
    # row: [head h0 h1] [example 0: a b] [example 1: c] [pad]; cache: [example 1's prefix p]
    seg = torch.tensor([[-1, -1, 0, 0, 1, -2]])
    kseg = torch.tensor([[1]])
    m = block_mask(seg, kseg, torch.bool)[0, 0]      # (6 queries, 1 cached + 6 live keys)
    expect = torch.tensor([
        # p  h0 h1 a  b  c  pad
        [0, 1, 0, 0, 0, 0, 0],      # h0
        [0, 1, 1, 0, 0, 0, 0],      # h1
        [0, 1, 1, 1, 0, 0, 0],      # a
        [0, 1, 1, 1, 1, 0, 0],      # b
        [1, 1, 1, 0, 0, 1, 0],      # c: its own cached prefix, the head, itself
        [0, 1, 1, 0, 0, 0, 1],      # pad: never an empty row
    ], dtype=torch.bool)
    assert torch.equal(m, expect)
    additive = block_mask(seg, kseg, torch.float32)[0, 0]
    assert torch.equal(additive == 0, expect)


@pytest.mark.slow
def test_embedded_model_fast_path_matches(embedded_lm):
    from ptuning_lab.tasks import load_task

    task = load_task("capital", seed=0)
    inputs = [ex.input for ex in task.train[:8]]
    for tpl in ("[P]*3 The capital of [X] is [P]*3", "The capital of [X] is [P]*6"):
        prompt = embedded_lm.embedding[100:106].detach().clone().requires_grad_(True)
        ref = _plain(embedded_lm, tpl, inputs, prompt)
        (g_ref,) = torch.autograd.grad(ref.logsumexp(-1).sum() - ref[:, 0].sum(), prompt)
        fast = FastForward(embedded_lm, tpl)
        got = fast.last_logits(inputs, prompt)
        (g_got,) = torch.autograd.grad(got.logsumexp(-1).sum() - got[:, 0].sum(), prompt)
        assert fast.active
        assert (got - ref).abs().max() < 1e-3 * ref.abs().max()
        assert (g_got - g_ref).norm() < 1e-3 * g_ref.norm()
        assert torch.equal(got.argmax(-1), ref.argmax(-1))
        before = dict(fast.stats)
        with torch.no_grad():
            fast.last_logits(inputs, prompt)          # a later epoch: the prefixes are cached
        ran = fast.stats["tokens_run"] - before["tokens_run"]
        assert ran < 0.6 * (fast.stats["tokens_total"] - before["tokens_total"])


def _toy_task():
    words = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light", "table", "sugar", "horse", "glass"]
    answers = ["north", "south", "east", "west"]
    exs = [Example(f"{w} {i}", answers[i % 4]) for i, w in enumerate(words * 2)]
    return Task("toy", "Direction of [X] is", exs[:12], exs[12:18], exs[18:], sorted(answers))


def _toy_pair_task(extra_field=None):
    """_toy_task with two named slots: fields 'start' and 'end' (and an unused ``extra_field`` if given)."""
    task = _toy_task()
    words = ["moon", "sea", "hill", "a long and winding road"]

    def pair(i, ex):
        fields = {"start": ex.input, "end": words[i % 4]} | ({extra_field: str(i)} if extra_field else {})
        return Example(target=ex.target, fields=fields)

    exs = [pair(i, ex) for i, ex in enumerate(task.examples)]
    return Task("toy-pairs", "From [start] to [end] is", exs[:12], exs[12:18], exs[18:], task.answers)


def test_trainer_warns_once_about_a_field_no_slot_uses(lm64):
    # warned once per template and set of unused fields in a session: a field name of this test's own
    task = _toy_pair_task(extra_field=f"idx_{lm64.name.replace('-', '_')}")
    enc = build_encoder("direct", 3, lm64.embedding.detach(), init="vocab", seed=0).double()
    with pytest.warns(UserWarning) as record:
        trainer = Trainer(lm64, enc, task, "[P]*2 From [start] to [end] [P] is",
                          TrainConfig(max_steps=2, eval_every=1, batch_size=4), progress=False)
        trainer.fit()                                    # two evaluations: no second warning
    unused = [str(w.message) for w in record if "does not use" in str(w.message)]
    assert len(unused) == 1 and "task 'toy-pairs'" in unused[0] and "['idx_tiny_" in unused[0]


def test_frozen_model_never_runs_dropout(tokenizer):
    """A PEFT wrapper or ``model.train()`` elsewhere must not switch dropout on in the frozen model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ptuning_lab.frozen_lm import FrozenLM

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer), n_positions=64,
                     resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    lm = FrozenLM(GPT2LMHeadModel(cfg), tokenizer, "tiny-dropout")
    template = TEMPLATES[0]
    prompt = _prompt(lm, template).float().detach()
    ref = _plain(lm, template, INPUTS, prompt)
    fast = FastForward(lm, template)
    lm.model.train()
    assert torch.equal(_plain(lm, template, INPUTS, prompt), ref)
    assert not lm.model.training
    lm.model.train()
    _close(fast.last_logits(INPUTS, prompt), ref, tol=1e-5)
    assert fast.active and not lm.model.training


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_compiled_model_gives_the_same_logits_and_gradients(kind, tokenizer):
    """``FrozenLM.compile``: dynamo traces the fast path's calls (packed rows with a block mask, one
    example per row without one, cached prefixes). A backend that runs the traced graphs as they
    are checks the tracing without needing a C++ compiler on the test machine."""
    plain = make_tiny_lm(kind, tokenizer, dtype=torch.float64, seed=1)
    compiled = make_tiny_lm(kind, tokenizer, dtype=torch.float64, seed=1)
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    assert compiled.compile(backend=backend) is compiled
    for template in TEMPLATES[:2]:
        prompt = _prompt(plain, template)
        ref = _plain(plain, template, INPUTS, prompt)
        (g_ref,) = torch.autograd.grad(_objective(ref), prompt)
        for config in (FastConfig(), FastConfig(pack_tokens=1)):
            got = FastForward(compiled, template, config).last_logits(INPUTS, prompt)
            (g_got,) = torch.autograd.grad(_objective(got), prompt)
            _close(got, ref)
            _close(g_got, g_ref)
    assert graphs, "dynamo traced nothing: the model did not run compiled"
    compiled.begin_step()          # a no-op off the GPU


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_changes_nothing_fused_or_not(lm64, fused):
    """The fused AdamW skips a non-finite step on the device (no wait before it); an unfused one (e.g.
    groups resumed from a state saved without fused) is checked on the host first. Either way the
    encoder, the optimizer's moments and step counts, and the schedule stay as they were."""
    import copy

    task = _toy_task()
    enc = build_encoder("mlp", 3, lm64.embedding.detach(), init="vocab", seed=0).double()
    trainer = Trainer(lm64, enc, task, "[P]*2 Direction of [X] is [P]", TrainConfig(lr=1e-2, batch_size=4),
                      progress=False)
    assert all(group["fused"] for group in trainer.optimizer.param_groups)      # this torch has it on a CPU
    if not fused:
        for group in trainer.optimizer.param_groups:
            group["fused"] = None
    batch = task.train[:4]
    trainer.train_step(batch)
    encoder = copy.deepcopy(enc.state_dict())
    state = copy.deepcopy(trainer.optimizer.state_dict()["state"])
    lr_step = trainer.scheduler.last_epoch
    real_loss = trainer.loss
    trainer.loss = lambda examples: real_loss(examples) * float("nan")
    with pytest.raises(FloatingPointError, match="nan"):
        trainer.train_step(batch)
    for name, value in enc.state_dict().items():
        assert torch.equal(value, encoder[name]), name
    for key, values in trainer.optimizer.state_dict()["state"].items():
        for name, value in values.items():
            assert torch.equal(value, state[key][name]), name
    assert trainer.scheduler.last_epoch == lr_step
    trainer.loss = real_loss
    before = copy.deepcopy(enc.state_dict())
    assert math.isfinite(trainer.train_step(batch))                       # and training goes on
    assert any(not torch.equal(v, before[k]) for k, v in enc.state_dict().items())
