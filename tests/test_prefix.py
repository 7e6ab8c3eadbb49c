"""Prefix tuning: per-layer K/V prefixes against plain Hugging Face forwards and PEFT.

Tiny random GPT-2 (2 heads, head_dim 16) and Llama (4 query heads, 2 key/value heads: grouped-query
attention, head_dim 8) run in float64, so "equal" means equal to ~1e-9; the embedded SmolLM2-135M
run is marked slow.
"""
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import make_tiny_lm
from ptuning_lab import checkpoint as ckpt
from ptuning_lab.prompts import EncoderError, build_encoder, encoder_from_config
from ptuning_lab.evaluation import evaluate
from ptuning_lab.frozen_lm import Batch
from ptuning_lab.prompts import (Geometry, PrefixConfig, PrefixEncoder, PrefixKV, build_prefix_encoder,
                                model_geometry, peft_config_kwargs, prefix_from_run, prefix_norm_table,
                                prefix_norms)
from ptuning_lab.tasks import Example, Task
from ptuning_lab.trainer import TrainConfig, Trainer

TEMPLATE = "The capital of [X] is"
SHORT, LONG = "a", ("the United Kingdom of Great Britain and Northern Ireland, a country of four nations, "
                    "whose capital lies on the river Thames")
# (num_layers, num_kv_heads, head_dim) of the conftest tiny models
GEOMETRY = {"gpt2": Geometry(2, 2, 16), "llama": Geometry(2, 2, 8)}
CONFIGS = {"table": {}, "mlp": {"reparameterize": True, "residual": False}, "mlp-residual": {"reparameterize": True}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")




def kind_of(lm) -> str:
    return lm.name.removeprefix("tiny-")


def trained_looking(enc: PrefixEncoder, seed: int = 0) -> PrefixEncoder:
    """Move every parameter off its init (as training would), so no test passes by a zero-initialised layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return enc


def toy_task(n: int = 24) -> Task:
    words = ["north", "south", "east", "west", "up", "down"]
    answers = ["Paris", "London", "Rome", "Berlin"]
    exs = [Example(f"{words[i % len(words)]} {i}", answers[i % 4]) for i in range(n)]
    return Task("toy", TEMPLATE, exs[: n // 2], exs[n // 2: 3 * n // 4], exs[3 * n // 4:], answers)


def batch_of(lm, ids: list[int]) -> Batch:
    """A one-example batch of plain token ids, built without FrozenLM.encode."""
    t = torch.tensor([ids])
    return Batch(t, torch.ones_like(t), torch.zeros_like(t, dtype=torch.bool), torch.zeros_like(t),
                 torch.tensor([len(ids) - 1]), torch.tensor([len(ids)]))


# ---------------------------------------------------------------- shapes and parameters
@pytest.mark.parametrize("config", list(CONFIGS))
def test_shapes_per_layer_follow_the_models_kv_heads(lm64, config):
    geo = GEOMETRY[kind_of(lm64)]
    assert model_geometry(lm64) == geo
    enc = build_prefix_encoder(lm64, 5, init="random", config=CONFIGS[config])
    kv = enc()
    assert isinstance(kv, PrefixKV) and kv.shape == (geo.num_layers, 2, geo.num_kv_heads, 5, geo.head_dim)
    assert kv.num_virtual_tokens == enc.num_virtual_tokens == 5 and kv.geometry == geo
    assert kv.dtype == torch.float32
    # the cache the model sees: per layer (B, kv_heads, n, head_dim), keys and values
    cache = kv.cache(lm64, batch_size=3)
    for layer in range(geo.num_layers):
        assert cache.layers[layer].keys.shape == (3, geo.num_kv_heads, 5, geo.head_dim)
        torch.testing.assert_close(cache.layers[layer].values[2], kv.kv[layer, 1].double())
    # flat layout (n, layers*2*kv_width) round trips
    flat = kv.as_tensor()
    assert flat.shape == (5, geo.flat_width)
    assert torch.equal(PrefixKV.from_tensor(flat, geo).kv, kv.kv)


def test_llama_prefix_uses_the_key_value_heads_not_the_query_heads(tokenizer):
    lm = make_tiny_lm("llama", tokenizer)
    cfg = lm.model.config
    assert cfg.num_attention_heads == 4 and cfg.num_key_value_heads == 2
    assert build_prefix_encoder(lm, 3)().shape == (2, 2, 2, 3, 8)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_trainable_parameter_counts(lm64, config):
    geo = GEOMETRY[kind_of(lm64)]
    n, W, w = 4, geo.flat_width, geo.kv_width
    enc = build_prefix_encoder(lm64, n, config=CONFIGS[config])
    expected = n * W if config == "table" else n * w + (w * w + w) + (w * W + W)   # h = kv width by default
    assert enc.num_trainable_parameters() == expected
    assert ("start" in dict(enc.named_buffers())) == (config == "mlp-residual")   # a buffer, not trained


def test_config_errors_name_the_fix():
    with pytest.raises(EncoderError, match="no effect with reparameterize=False"):
        PrefixConfig(reparameterize=False, encoder_hidden_size=64)
    with pytest.raises(EncoderError, match="True or False"):
        PrefixConfig(reparameterize="yes")
    with pytest.raises(EncoderError, match="positive integer"):
        PrefixConfig(encoder_hidden_size=0)


def test_build_encoder_dispatches_and_needs_the_model(lm64):
    with pytest.raises(EncoderError, match="lm=lm"):
        build_encoder("prefix", 4, lm64.embedding.detach())
    enc = build_encoder("prefix", 4, lm64.embedding.detach(), lm=lm64, init="text:The capital of", seed=3,
                        config={"reparameterize": False})
    same = build_prefix_encoder(lm64, 4, init="text:The capital of", seed=3, config=PrefixConfig(reparameterize=False))
    assert isinstance(enc, PrefixEncoder) and enc.method == "prefix" and enc.uses_template_slots is False
    assert torch.equal(enc().kv, same().kv)
    with pytest.raises(EncoderError, match="no field"):
        build_encoder("prefix", 4, None, lm=lm64, config={"hidden": 3})


# ---------------------------------------------------------------- the forward pass
@pytest.mark.parametrize("config", list(CONFIGS))
def test_padded_batch_equals_each_example_alone(lm64, config):
    kv = trained_looking(build_prefix_encoder(lm64, 4, config=CONFIGS[config]))().detach()
    inputs = [SHORT, LONG, "France", LONG + " " + LONG]
    with torch.no_grad():
        batch = lm64.encode(TEMPLATE, inputs)
        together = lm64.last_logits(batch, kv)
        lengths = batch.attention_mask.sum(1)
        assert int(lengths.max()) > 3 * int(lengths.min())           # really very different lengths
        for i, x in enumerate(inputs):
            alone = lm64.last_logits(lm64.encode(TEMPLATE, [x]), kv)[0]
            torch.testing.assert_close(together[i], alone, atol=1e-6, rtol=0)


def test_scoring_continuations_padded_equals_alone(lm64):
    kv = trained_looking(build_prefix_encoder(lm64, 3))().detach()
    inputs, conts = [SHORT, LONG, "Peru"], [lm64.answer_ids(a) for a in ["Paris", "Rome of old", "x"]]
    with torch.no_grad():
        together = lm64.continuation_logprob(TEMPLATE, inputs, conts, kv)
        for i in range(3):
            alone = lm64.continuation_logprob(TEMPLATE, [inputs[i]], [conts[i]], kv)[0]
            torch.testing.assert_close(together[i], alone, atol=1e-6, rtol=0)


def test_table_prefix_equals_plain_hf_forward_with_the_same_past_key_values(lm64):
    """The reference: HF's own default positions (past length onward) and mask, an unpadded input."""
    from transformers import DynamicCache

    enc = trained_looking(build_prefix_encoder(lm64, 4, config={"reparameterize": False}))
    kv = enc().detach()
    for x in [SHORT, LONG]:
        batch = lm64.encode(TEMPLATE, [x])
        legacy = [(kv.kv[layer, 0][None].double(), kv.kv[layer, 1][None].double()) for layer in range(kv.shape[0])]
        with torch.no_grad():
            ref = lm64.model(input_ids=batch.input_ids, use_cache=True,
                             **{lm64._cache_arg: DynamicCache(legacy)}).logits[0, -1]
            ours = lm64.last_logits(batch, kv)[0]
        torch.testing.assert_close(ours, ref, atol=1e-9, rtol=0)


def test_text_init_reads_like_the_phrase_before_the_input(lm64):
    """Initialised from "text:...", the untrained prefix IS the model's own activations of that phrase."""
    enc = build_prefix_encoder(lm64, 5, init="text:The capital of")            # 3 tokens, cycled to 5
    phrase = lm64.tokenize("The capital of")
    phrase = [phrase[i % len(phrase)] for i in range(5)]
    with torch.no_grad():
        for x in [SHORT, "France"]:
            batch = lm64.encode(TEMPLATE, [x])
            ref = lm64.model(input_ids=torch.tensor([phrase + batch.input_ids[0].tolist()]),
                             use_cache=False).logits[0, -1]
            # the prefix is stored in float32: equal to float32 rounding
            torch.testing.assert_close(lm64.last_logits(batch, enc())[0], ref, atol=1e-5, rtol=0)


def test_gradients_reach_only_the_prefix_parameters(lm64):
    enc = build_prefix_encoder(lm64, 4, config=CONFIGS["mlp"]).double()
    batch = lm64.encode(TEMPLATE, [SHORT, LONG])
    loss = F.cross_entropy(lm64.last_logits(batch, enc()), torch.tensor([5, 7]))
    loss.backward()
    assert all(p.grad is None for p in lm64.model.parameters())
    assert not any(p.requires_grad for p in lm64.model.parameters())
    for name, p in enc.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_gradient_matches_finite_differences(tokenizer):
    # GPT-2: LlamaRMSNorm computes in float32 even for a float64 model, too coarse for finite differences
    lm = make_tiny_lm("gpt2", tokenizer, dtype=torch.float64)
    kv = 0.5 * torch.randn(2, 2, 2, 2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = lm.encode(TEMPLATE, [SHORT, "France"])
    candidates = torch.tensor([lm.answer_ids(a)[0] for a in ["Paris", "Rome", "Lima"]])
    assert torch.autograd.gradcheck(lambda t: lm.last_logits(batch, PrefixKV(t), candidates),
                                    (kv.requires_grad_(),), fast_mode=True)


def test_templates_with_virtual_slots_are_refused(lm64):
    kv = build_prefix_encoder(lm64, 2)()
    with pytest.raises(ValueError, match="remove the \\[P\\]s"):
        lm64.last_logits(lm64.encode("[P] The capital of [X] is", [SHORT]), kv)
    with pytest.raises(ValueError, match="another model|model with"):
        PrefixKV(torch.zeros(3, 2, 2, 2, 16)).cache(lm64)


def test_matches_peft_prefix_tuning(tokenizer):
    """Same weights in PEFT's PrefixTuning (both parameterisations): identical logits, padding included."""
    peft = pytest.importorskip("peft")
    for kind in ("gpt2", "llama"):
        for projection in (False, True):
            lm = make_tiny_lm(kind, tokenizer, dtype=torch.float64)
            enc = trained_looking(build_prefix_encoder(lm, 4, config={"reparameterize": projection,
                                                                      "residual": False}))
            batch = lm.encode(TEMPLATE, [SHORT, LONG, "France"])
            with torch.no_grad():
                ours = lm.last_logits(batch, enc())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = peft.get_peft_model(lm.model, peft.PrefixTuningConfig(
                    task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=projection))
                model.prompt_encoder["default"].load_state_dict(enc.state_dict())   # same names, same shapes
                model.eval()
                with torch.no_grad():
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            theirs = logits[torch.arange(3), batch.last_index]
            torch.testing.assert_close(ours, theirs, atol=1e-9, rtol=0)


def test_flat_prefix_loads_as_a_peft_prefix_tuning_adapter(tokenizer, tmp_path):
    """The export recipe for every parameterisation (the residual default too): PEFT's adapter files hold
    prompt_embeddings = PrefixKV.as_tensor(); PeftModel.from_pretrained gives the same logits."""
    peft = pytest.importorskip("peft")
    from safetensors.torch import save_file

    for kind in ("gpt2", "llama"):
        lm = make_tiny_lm(kind, tokenizer, dtype=torch.float64)
        enc = trained_looking(build_prefix_encoder(lm, 4, init="text:The capital of", config=CONFIGS["mlp-residual"]))
        kv = enc().detach()
        batch = lm.encode(TEMPLATE, [SHORT, LONG, "France"])
        with torch.no_grad():
            ours = lm.last_logits(batch, kv)
        adapter = tmp_path / kind
        kwargs = peft_config_kwargs(enc.spec())
        assert kwargs["token_dim"] == GEOMETRY[kind].kv_width and kwargs["prefix_projection"] is True
        peft.PrefixTuningConfig(task_type="CAUSAL_LM", inference_mode=True, **kwargs).save_pretrained(adapter)
        save_file({"prompt_embeddings": kv.as_tensor().contiguous()}, adapter / "adapter_model.safetensors")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.PeftModel.from_pretrained(lm.model, adapter)
            with torch.no_grad():
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        torch.testing.assert_close(ours, logits[torch.arange(3), batch.last_index], atol=1e-9, rtol=0)


# ---------------------------------------------------------------- generation
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_with_a_prefix_equals_a_no_cache_loop(lm64, use_cache):
    kv = trained_looking(build_prefix_encoder(lm64, 3))().detach()
    text = lm64.generate(TEMPLATE, "France", prompt=kv, max_new_tokens=6, use_cache=use_cache)
    ids = lm64.encode(TEMPLATE, ["France"]).input_ids[0].tolist()
    new = []
    with torch.no_grad():
        for _ in range(6):                                   # greedy, the whole sequence each step
            h = kv.hidden(lm64, batch_of(lm64, ids + new))
            nxt = int(lm64.head(h[0, -1]).argmax())
            new.append(nxt)
            if nxt == lm64.tokenizer.eos_token_id:
                break
    assert text == lm64.tokenizer.decode(new)
    # and the prefix changes what is generated (it is really used)
    other = trained_looking(build_prefix_encoder(lm64, 3), seed=9)().detach()
    with torch.no_grad():
        first = [lm64.last_logits(lm64.encode(TEMPLATE, ["France"]), p)[0] for p in (kv, other)]
    assert (first[0] - first[1]).abs().max() > 1e-3


# ---------------------------------------------------------------- training and checkpoints
@pytest.mark.parametrize("config", ["table", "mlp-residual"])
def test_training_saves_a_run_that_round_trips(lm64, config, tmp_path):
    enc = build_prefix_encoder(lm64, 3, init="text:The capital of", config=CONFIGS[config])
    task = toy_task()
    trainer = Trainer(lm64, enc, task, TEMPLATE, TrainConfig(lr=1e-2, batch_size=4, max_steps=4, eval_every=2,
                                                             snapshot_every=2), out_dir=tmp_path, progress=False)
    result = trainer.fit()
    assert isinstance(result.prompt, PrefixKV)
    geo = GEOMETRY[kind_of(lm64)]
    assert result.snapshots.shape == (3, 3, geo.flat_width) and result.snapshot_steps == [0, 2, 4]
    # each snapshot is the prefix of its own step, not a view of the live table (it used to alias it on CPU)
    assert not torch.equal(result.snapshots[0], result.snapshots[2])
    assert torch.equal(result.snapshots[2], result.prompt.as_tensor())
    run = ckpt.load_run(tmp_path)
    assert run.config["encoder"]["method"] == "prefix" and run.prompt.shape == (3, geo.flat_width)
    rebuilt = run.encoder()
    assert isinstance(rebuilt, PrefixEncoder) and rebuilt.geometry == geo
    with torch.no_grad():
        assert torch.equal(rebuilt().kv, result.prompt.kv)
    assert torch.equal(prefix_from_run(run).kv, result.prompt.kv)
    spec = json.loads(json.dumps(enc.spec()))                   # JSON-safe
    assert isinstance(encoder_from_config(spec, lm64.hidden_size), PrefixEncoder)
    # the saved prefix scores like the trained one
    with torch.no_grad():
        dev_saved = evaluate(lm64, TEMPLATE, task.dev, prefix_from_run(run))
    # training's dev evaluations skip exact match (Trainer.dev_metrics); every metric they kept matches
    assert set(result.best_dev) < set(dev_saved)
    assert {k: dev_saved[k] for k in result.best_dev} == pytest.approx(result.best_dev)


def test_resume_continues_exactly(tokenizer, tmp_path):
    """A run killed at step 3 (state saved at step 2) and resumed ends where the uninterrupted run ends."""
    from ptuning_lab.trainer import Callback

    class Kill(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 3:
                raise KeyboardInterrupt

    lm = make_tiny_lm("gpt2", tokenizer, dtype=torch.float64)
    task = toy_task()
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_steps=5, eval_every=2, checkpoint_every=2)

    def trainer(out, callbacks=()):
        return Trainer(lm, build_prefix_encoder(lm, 2), task, TEMPLATE, cfg, out_dir=tmp_path / out,
                       callbacks=callbacks, progress=False)

    full = trainer("full").fit()
    with pytest.warns(UserWarning, match="interrupted"):
        trainer("part", [Kill()]).fit()
    resumed = trainer("part").fit(resume=True)
    torch.testing.assert_close(resumed.prompt.kv, full.prompt.kv, atol=1e-12, rtol=0)
    assert resumed.history["train"] == full.history["train"]
    assert resumed.snapshot_steps == full.snapshot_steps


def test_trainer_refuses_what_does_not_apply(lm64):
    enc = build_prefix_encoder(lm64, 2)
    with pytest.raises(ValueError, match="remove the \\[P\\]s"):
        Trainer(lm64, enc, toy_task(), "[P]*2 " + TEMPLATE, progress=False)
    with pytest.raises(ValueError, match="waywardness"):
        Trainer(lm64, enc, toy_task(), TEMPLATE, TrainConfig(waywardness_gamma=0.1, waywardness_target="the"),
                progress=False)


# ---------------------------------------------------------------- what can be shown instead of the map
def test_prefix_norms_per_layer(lm64):
    enc = build_prefix_encoder(lm64, 3)
    kv = enc()
    norms = prefix_norms(kv)
    assert norms.shape == (kv.shape[0],)
    layer0 = torch.cat([kv.kv[0, 0].reshape(-1, kv.shape[-1]), kv.kv[0, 1].reshape(-1, kv.shape[-1])])
    torch.testing.assert_close(norms[0], layer0.detach().norm(dim=-1).pow(2).mean().sqrt())
    torch.testing.assert_close(prefix_norms(enc), norms)
    rows = prefix_norm_table(kv)
    assert len(rows) == kv.shape[0] * 2 * 3 and {r["kind"] for r in rows} == {"key", "value"}


def test_cli_trains_a_prefix_and_decode_explains_why_it_shows_norms(tokenizer, tmp_path, capsys):
    from ptuning_lab.cli import main

    model_dir = tmp_path / "tiny"
    lm = make_tiny_lm("gpt2", tokenizer)
    lm.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    assert main(["train", "--task", "capital", "--encoder", "prefix", "--model", str(model_dir), "--max-steps", "2",
                 "--eval-every", "2", "--batch-size", "4", "--out", str(out), "--max-examples", "30",
                 "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["encoder"] == "prefix" and metrics["template"] == "The capital of [X] is"   # [P]s dropped
    run = ckpt.load_run(out)
    assert run.config["encoder"]["num_virtual_tokens"] == 6                  # the default template's [P]*3 ... [P]*3
    assert metrics["trainable_params"] == run.encoder().num_trainable_parameters()
    assert main(["decode", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not" in printed and "vocabulary" in printed and "key/value" in printed
    assert printed.count("layer ") >= 2                                        # one norm line per layer


# ---------------------------------------------------------------- the embedded model
@pytest.mark.slow
def test_short_real_run_improves_dev_p_at_1(embedded_lm):
    """SmolLM2-135M (30 layers, 3 key/value heads of 64): 12 steps of prefix tuning on 'capital'."""
    from ptuning_lab.tasks import load_task

    lm = embedded_lm
    torch.set_num_threads(2)
    task = load_task("capital", seed=0, max_examples=80)
    enc = build_prefix_encoder(lm, 6, init="text:The capital of is", config={"reparameterize": False})
    assert enc().shape == (30, 2, 3, 6, 64) and enc.num_trainable_parameters() == 6 * 30 * 2 * 192
    with torch.no_grad():
        start = evaluate(lm, TEMPLATE, task.dev, enc())
    result = Trainer(lm, enc, task, TEMPLATE, TrainConfig(lr=1e-2, batch_size=16, max_steps=12, eval_every=12),
                     progress=False).fit()
    assert result.best_dev["p_at_1"] >= start["p_at_1"] + 0.1
    assert result.best_dev["loss"] < start["loss"]


def test_prefix_run_exports_as_a_peft_prefix_tuning_adapter(tokenizer, tmp_path):
    """export_peft on a trained prefix run: PEFT's PrefixTuning adapter gives our logits."""
    from peft import PeftModel

    from ptuning_lab.peft_interop import export_peft
    from ptuning_lab.prompts import build_prefix_encoder
    from ptuning_lab.tasks import Example, Task
    from ptuning_lab.trainer import TrainConfig, Trainer

    lm = make_tiny_lm("gpt2", tokenizer)
    exs = [Example(f"word{i}", ["north", "south"][i % 2]) for i in range(12)]
    task = Task("toy", "Direction of [X] is", exs[:6], exs[6:9], exs[9:], ["north", "south"])
    enc = build_prefix_encoder(lm, 3)
    Trainer(lm, enc, task, "Direction of [X] is", TrainConfig(lr=1e-2, max_steps=3, eval_every=3),
            out_dir=tmp_path / "run", progress=False).fit()
    out = export_peft(tmp_path / "run", tmp_path / "adapter", base_model_name_or_path="tiny", lm=lm)
    run = ckpt.load_run(tmp_path / "run")
    peft_model = PeftModel.from_pretrained(lm.model, str(out)).eval()
    batch = lm.encode("Direction of [X] is", ["word1"])
    ours = lm.last_logits(batch, prefix_from_run(run))
    with torch.no_grad():
        theirs = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, -1]
    assert torch.allclose(ours[0], theirs, atol=1e-4)
