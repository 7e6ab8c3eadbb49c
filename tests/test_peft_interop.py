"""PEFT interoperability against the real ``peft`` package: export -> PeftModel gives our logits,
PEFT-trained adapters import with their exact prompt, and what cannot be exported is refused."""
import copy
import json
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")

from helpers import make_tiny_lm  # noqa: E402
from ptuning_lab import checkpoint as ckpt  # noqa: E402
from ptuning_lab.prompts import build_encoder  # noqa: E402
from ptuning_lab.peft_interop import (ENCODER_FILE, INFO_FILE, ImportedPrompt, PeftExportError,  # noqa: E402
                                      PeftImportError, export_peft, import_peft, peft_batch,
                                      peft_input_format, peft_input_text, peft_model_for_training, save_imported)
from ptuning_lab.tasks import Example, Task  # noqa: E402
from ptuning_lab.trainer import TrainConfig, Trainer  # noqa: E402

TEMPLATE = "[P]*4 The capital of [X] is"
INPUTS = ["France", "the United Kingdom", "Peru"]           # different lengths: a right-padded batch
ATOL = 1e-4

# (method, encoder config, PEFT type the "auto" mapping must choose)
CASES = {
    "mlp-peft": ("mlp", {"num_layers": 3, "residual": False, "encoder_hidden_size": 16}, "P_TUNING"),
    "lstm-peft": ("lstm", {"num_layers": 2, "residual": False, "encoder_hidden_size": 8}, "P_TUNING"),
    "direct": ("direct", None, "PROMPT_TUNING"),
    "mlp-residual": ("mlp", None, "PROMPT_TUNING"),        # ptuning_lab's default MLP: x + MLP(x)
}


def _toy_task():
    pairs = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("Cuba", "Havana"),
             ("Iran", "Tehran")]
    exs = [Example(x, y) for x, y in pairs]
    return Task("toy-capital", "The capital of [X] is", exs[:6], exs[6:8], exs[8:], sorted({y for _, y in pairs}))


@pytest.fixture(scope="module")
def lm(tokenizer):
    return make_tiny_lm("gpt2", tokenizer)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, lm, tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lm):
    """One trained run directory per case (4 steps each on a tiny GPT-2, well under a second)."""
    out = {}
    for name, (method, config, _) in CASES.items():
        enc = build_encoder(method, 4, lm.embedding.detach(), init="vocab", seed=1, config=config)
        start = enc().detach().clone()
        path = tmp_path_factory.mktemp(f"run-{name}")
        Trainer(lm, enc, _toy_task(), TEMPLATE, TrainConfig(max_steps=4, eval_every=4, batch_size=4, lr=0.05,
                                                            warmup_ratio=0.0),
                out_dir=path, progress=False).fit()
        run = ckpt.load_run(path)
        assert (run.prompt - start).abs().max() > 1e-3, "training should have moved the prompt"
        out[name] = path
    return out


def _peft_model(base_model, adapter_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(copy.deepcopy(base_model), str(adapter_dir)).eval()


def _peft_logits(peft_model, b):
    out = peft_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return out[torch.arange(out.shape[0]), b["logit_index"]]


# ---------------------------------------------------------------- export: logits equal PEFT's
@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_exported_adapter_gives_our_logits_in_peft(case, runs, lm, tmp_path):
    method, config, expected_type = CASES[case]
    run = ckpt.load_run(runs[case])
    out = export_peft(run, tmp_path / "adapter", lm=lm)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == expected_type and adapter_config["num_virtual_tokens"] == 4
    assert adapter_config["token_dim"] == lm.hidden_size and adapter_config["task_type"] == "CAUSAL_LM"
    peft_model = _peft_model(lm.model, out)
    assert type(peft_model).__name__ == "PeftModelForCausalLM"
    # loaded for inference, PEFT does not even build its P-tuning encoder: the saved prompt is all it uses
    assert peft_model.peft_config["default"].inference_mode
    assert not hasattr(peft_model.prompt_encoder["default"], "mlp_head")

    ours = lm.last_logits(lm.encode(TEMPLATE, INPUTS), run.prompt)                      # (3, V)
    theirs = _peft_logits(peft_model, peft_batch(lm, TEMPLATE, INPUTS))                 # right-padded batch
    singles = torch.cat([_peft_logits(peft_model, peft_batch(lm, TEMPLATE, [x])) for x in INPUTS])
    assert (ours - theirs).abs().max() < ATOL
    assert (ours - singles).abs().max() < ATOL
    # the prompt PEFT prepends is ours, bit for bit (in inference mode it is the saved embeddings)
    assert torch.equal(peft_model.get_prompt(1)[0], run.prompt)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["template"] == TEMPLATE and info["method"] == method and info["peft_type"] == expected_type
    assert info["input_text_format"] == " The capital of [X] is"


def test_p_tuning_config_carries_our_encoder_sizes(runs, lm, tmp_path):
    mlp = json.loads((export_peft(runs["mlp-peft"], tmp_path / "m") / "adapter_config.json").read_text())
    assert mlp["encoder_reparameterization_type"] == "MLP" and mlp["encoder_hidden_size"] == 16
    assert mlp["encoder_num_layers"] == 2            # PEFT's default: its MLP ignores the field (always 3 Linear)
    lstm = json.loads((export_peft(runs["lstm-peft"], tmp_path / "l") / "adapter_config.json").read_text())
    assert (lstm["encoder_reparameterization_type"], lstm["encoder_hidden_size"], lstm["encoder_num_layers"],
            lstm["encoder_dropout"]) == ("LSTM", 8, 2, 0.0)
    # a residual MLP is not PEFT's network: it goes out as prompt tuning, and says why
    info = json.loads((export_peft(runs["mlp-residual"], tmp_path / "r") / INFO_FILE).read_text())
    assert info["peft_type"] == "PROMPT_TUNING" and "residual" in info["why_this_peft_type"]
    assert not (tmp_path / "r" / ENCODER_FILE).exists()


@pytest.mark.parametrize("case", ["mlp-peft", "lstm-peft", "direct"])
@torch.no_grad()
def test_trainable_peft_model_recomputes_our_prompt_through_its_encoder(case, runs, lm, tmp_path):
    run = ckpt.load_run(runs[case])
    out = export_peft(run, tmp_path / "adapter")
    peft_model = peft_model_for_training(copy.deepcopy(lm.model), out)
    assert not peft_model.peft_config["default"].inference_mode
    # inference_mode is off, so PEFT runs its encoder on every forward; eval() only stops the base model's dropout
    peft_model.eval()
    assert (peft_model.get_prompt(1)[0] - run.prompt).abs().max() < 1e-5
    assert any(p.requires_grad for p in peft_model.prompt_encoder.parameters())
    ours = lm.last_logits(lm.encode(TEMPLATE, INPUTS), run.prompt)
    assert (ours - _peft_logits(peft_model, peft_batch(lm, TEMPLATE, INPUTS))).abs().max() < ATOL


@torch.no_grad()
def test_peft_alone_loses_the_p_tuning_encoder(runs, lm):
    """Why ptuning_lab_encoder.safetensors exists: a fresh PEFT encoder fed the saved prompt is not ours."""
    run = ckpt.load_run(runs["mlp-peft"])
    cfg = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=lm.hidden_size,
                                   encoder_hidden_size=16)
    fresh = peft.get_peft_model(copy.deepcopy(lm.model), cfg)
    fresh.prompt_encoder["default"].embedding.weight.copy_(run.prompt)
    assert (fresh.get_prompt(1)[0] - run.prompt).abs().max() > 1e-2


def test_peft_refuses_trainable_reload_of_prompt_adapters(runs, lm, tmp_path):
    out = export_peft(runs["direct"], tmp_path / "adapter")
    with pytest.raises(ValueError, match="trainable"):
        peft.PeftModel.from_pretrained(copy.deepcopy(lm.model), str(out), is_trainable=True)


def test_auto_peft_model_loads_the_recorded_base_model(runs, lm, tiny_model_dir, tmp_path):
    out = export_peft(runs["lstm-peft"], tmp_path / "adapter", base_model_name_or_path=tiny_model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    run = ckpt.load_run(runs["lstm-peft"])
    with torch.no_grad():
        ours = lm.last_logits(lm.encode(TEMPLATE, INPUTS), run.prompt)
        assert (ours - _peft_logits(auto, peft_batch(lm, TEMPLATE, INPUTS))).abs().max() < ATOL


# ---------------------------------------------------------------- export: refusals
def test_non_prefix_template_is_refused_and_nothing_is_written(lm, tmp_path):
    enc = build_encoder("mlp", 6, lm.embedding.detach(), init="vocab",
                        config={"num_layers": 3, "residual": False})
    run_dir = tmp_path / "run"
    ckpt.save_run(run_dir, config={"model": lm.name, "template": "[P]*3 The capital of [X] is [P]*3",
                                   "vocab_size": lm.vocab_size, "hidden_size": lm.hidden_size,
                                   "encoder": enc.spec()},
                  encoder_state=enc.state_dict(), prompt=enc().detach(), history={})
    with pytest.raises(PeftExportError) as err:
        export_peft(run_dir, tmp_path / "adapter")
    msg = str(err.value)
    assert "only prepends" in msg and "[P]*6 The capital of [X] is" in msg
    assert not (tmp_path / "adapter").exists()
    assert list(tmp_path.iterdir()) == [run_dir]           # no temporary directory left behind
    with pytest.raises(PeftExportError, match="only prepends"):
        peft_input_format("The capital of [X] is [P]*2")


def test_other_refusals(runs, lm, tmp_path):
    with pytest.raises(PeftExportError, match="residual.*peft_type='auto'"):
        export_peft(runs["mlp-residual"], tmp_path / "a", peft_type="p_tuning")
    with pytest.raises(PeftExportError, match="prompt tuning"):
        export_peft(runs["direct"], tmp_path / "b", peft_type="p_tuning")
    with pytest.raises(PeftExportError, match="peft_type"):
        export_peft(runs["direct"], tmp_path / "c", peft_type="lora")
    # a tokenizer that adds a BOS would put it after PEFT's virtual tokens
    bos_lm = copy.copy(lm)
    bos_lm.prefix_ids = [0]
    with pytest.raises(PeftExportError, match="BOS"):
        export_peft(runs["direct"], tmp_path / "d", lm=bos_lm)
    other = make_tiny_lm("llama", lm.tokenizer)
    other.model.resize_token_embeddings(lm.vocab_size + 8)
    with pytest.raises(PeftExportError, match="vocab"):
        export_peft(runs["direct"], tmp_path / "e", lm=other)
    # a run whose saved encoder does not recompute its saved prompt is not exported as P-tuning
    run = ckpt.load_run(runs["mlp-peft"])
    run.prompt = run.prompt + 0.1
    with pytest.raises(PeftExportError, match="inconsistent"):
        export_peft(run, tmp_path / "h")
    assert not (tmp_path / "h").exists()
    # an existing export is replaced only when asked; a foreign directory never
    out = export_peft(runs["direct"], tmp_path / "f")
    with pytest.raises(PeftExportError, match="overwrite"):
        export_peft(runs["mlp-peft"], out)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    export_peft(runs["mlp-peft"], out, overwrite=True)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "P_TUNING"
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "notes.txt").write_text("mine")
    with pytest.raises(PeftExportError, match="not an adapter directory"):
        export_peft(runs["direct"], tmp_path / "g", overwrite=True)
    assert (tmp_path / "g" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- inputs, tokenization, padding
def test_input_text_format(lm):
    assert peft_input_format("[P]*6 The capital of [X] is") == " The capital of [X] is"
    assert peft_input_text("[P]*6 The capital of [X] is", " France ") == " The capital of France is"
    assert peft_input_format("[P]*2 ([X])") == " ([X])"
    assert peft_input_format("[P]*2\n[X] =>") == "\n[X] =>"
    two = "[P]*4 [premise] Question: [hypothesis] Answer:"
    assert peft_input_format(two) == " [premise] Question: [hypothesis] Answer:"
    filled = " A man sleeps. Question: Nobody sleeps. Answer:"
    assert peft_input_text(two, {"premise": "A man sleeps. ", "hypothesis": "Nobody sleeps."}) == filled
    assert peft_input_text(two, Example(fields={"premise": "A man sleeps.", "hypothesis": "Nobody sleeps."})) == filled
    with pytest.raises(PeftExportError, match="cannot be exported"):
        peft_input_format("[premise] [P]*2 [hypothesis]")          # a [P] after a slot: no PEFT form


# two named slots in PEFT's layout (all [P] first), with and without text between them
PAIR_TEMPLATES = ["[P]*4 [premise] Question: [hypothesis] Answer:", "[P]*4\n[premise]\n[hypothesis] =>"]
PAIRS = [{"premise": "France", "hypothesis": "the United Kingdom"}, {"premise": "Peru", "hypothesis": "Chad"},
         {"premise": "a country of four nations", "hypothesis": "Japan"}]


@pytest.mark.parametrize("template", PAIR_TEMPLATES)
@torch.no_grad()
def test_two_slot_prefix_export_gives_our_logits_in_peft(template, lm, tmp_path):
    pairs = _toy_task().examples
    exs = [Example(target=b.target, fields={"premise": a.input, "hypothesis": b.input})
           for a, b in zip(pairs, pairs[1:] + pairs[:1])]
    task = Task("toy-pairs", "[premise] [hypothesis]", exs[:6], exs[6:8], exs[8:], sorted({e.target for e in exs}))
    enc = build_encoder("mlp", 4, lm.embedding.detach(), init="vocab", seed=1,
                        config={"num_layers": 3, "residual": False, "encoder_hidden_size": 16})
    with torch.enable_grad():
        Trainer(lm, enc, task, template, TrainConfig(max_steps=3, eval_every=3, batch_size=4, lr=0.05,
                                                     warmup_ratio=0.0), out_dir=tmp_path / "run", progress=False).fit()
    run = ckpt.load_run(tmp_path / "run")
    out = export_peft(run, tmp_path / "adapter", lm=lm)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["peft_type"] == "P_TUNING" and info["input_text_format"] == peft_input_format(template)
    assert ".replace('[premise]', PREMISE).replace('[hypothesis]', HYPOTHESIS)" in "\n".join(info["how_to_use"])
    assert info["example_input_text"] == peft_input_text(template, {"premise": "<premise>", "hypothesis": "<hypothesis>"})
    peft_model = _peft_model(lm.model, out)
    ours = lm.last_logits(lm.encode(template, PAIRS), run.prompt)
    theirs = _peft_logits(peft_model, peft_batch(lm, template, PAIRS))          # right-padded batch
    singles = torch.cat([_peft_logits(peft_model, peft_batch(lm, template, [x])) for x in PAIRS])
    assert (ours - theirs).abs().max() < ATOL and (ours - singles).abs().max() < ATOL
    assert (ours[0] - ours[1]).abs().max() > 1e-3                               # the slots do reach the model
    for x in PAIRS:       # on these inputs the whole PEFT text tokenizes to ptuning_lab's ids
        assert lm.tokenize(peft_input_text(template, x)) == peft_batch(lm, template, [x])["input_ids"][0].tolist()


def test_peft_batch_is_ptuning_labs_tokenization(lm):
    # on ordinary inputs, tokenizing the whole PEFT text at once gives ptuning_lab's ids ...
    for x in ["France", "the United Kingdom", "Côte d'Ivoire"]:
        whole = lm.tokenize(peft_input_text(TEMPLATE, x))
        assert peft_batch(lm, TEMPLATE, [x])["input_ids"][0].tolist() == whole
    # ... but not always: ptuning_lab tokenizes " U.S." and "'s" separately, the whole text merges ".'"
    template = "[P]*2 [X]'s capital is"
    exact = peft_batch(lm, template, ["U.S."])["input_ids"][0].tolist()
    assert exact == [i for i in lm.sequences(template, ["U.S."])[0][0] if i >= 0]
    assert exact != lm.tokenize(peft_input_text(template, "U.S."))


@torch.no_grad()
def test_peft_left_padding_changes_logits_ours_does_not(runs, lm, tmp_path):
    """Measured: PEFT drops position_ids, so left padding shifts GPT-2's positions (logits move by ~0.7
    on this tiny model); right padding as in peft_batch is exact, and ptuning_lab's batches are too."""
    run = ckpt.load_run(runs["direct"])
    peft_model = _peft_model(lm.model, export_peft(run, tmp_path / "adapter"))
    single = torch.cat([_peft_logits(peft_model, peft_batch(lm, TEMPLATE, [x])) for x in INPUTS])
    b = peft_batch(lm, TEMPLATE, INPUTS)
    lengths = b["attention_mask"].sum(1)
    T = b["input_ids"].shape[1]
    left_ids = torch.stack([torch.roll(row, int(T - n)) for row, n in zip(b["input_ids"], lengths)])
    left_mask = torch.stack([torch.roll(row, int(T - n)) for row, n in zip(b["attention_mask"], lengths)])
    positions = (left_mask.cumsum(1) - 1).clamp(min=0)
    with pytest.warns(UserWarning, match="Position ids are not supported"):
        left = peft_model(input_ids=left_ids, attention_mask=left_mask, position_ids=positions).logits[:, -1]
    padded = lengths < T
    assert padded.any()
    assert (left[padded] - single[padded]).abs().max() > 1e-2          # PEFT, left-padded: wrong
    assert (left[~padded] - single[~padded]).abs().max() < ATOL        # the longest row had no padding
    assert (_peft_logits(peft_model, b) - single).abs().max() < ATOL   # PEFT, right-padded: right
    ours_batch = lm.last_logits(lm.encode(TEMPLATE, INPUTS), run.prompt)
    ours_single = torch.cat([lm.last_logits(lm.encode(TEMPLATE, [x]), run.prompt) for x in INPUTS])
    assert (ours_batch - ours_single).abs().max() < 1e-5


# ---------------------------------------------------------------- import
def _train_peft_adapter(lm, path, config):
    """A couple of AdamW steps of PEFT itself on a next-token loss, then save_pretrained."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(copy.deepcopy(lm.model), config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    b = peft_batch(lm, "[P] The capital of [X] is", ["France"])
    for _ in range(2):
        with torch.enable_grad():
            loss = model(input_ids=b["input_ids"], labels=b["input_ids"]).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(path))
    return model


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
@torch.no_grad()
def test_peft_trained_p_tuning_adapter_imports_with_its_prompt(kind, lm, tmp_path):
    cfg = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=16,
                                   encoder_reparameterization_type=kind)
    model = _train_peft_adapter(lm, tmp_path / "adapter", cfg)
    expected = model.get_prompt_embedding_to_save("default")                     # what PEFT computes
    imported = import_peft(tmp_path / "adapter", lm)
    assert isinstance(imported, ImportedPrompt) and isinstance(imported, ckpt.Run)
    assert torch.equal(imported.prompt, expected.float())
    assert torch.equal(imported.prompt, _peft_model(lm.model, tmp_path / "adapter").get_prompt(1)[0])
    assert imported.config["method"] == kind.lower() and imported.config["num_virtual_tokens"] == 5
    assert imported.config["hidden_size"] == lm.hidden_size and imported.config["vocab_size"] == lm.vocab_size
    assert imported.config["template"] is None                # PEFT does not record what follows the prompt
    assert torch.equal(imported.encoder()(), imported.prompt)
    # nearest-token decoding works on it and agrees with a brute-force cosine search
    from ptuning_lab.manifold import nearest_tokens

    table = nearest_tokens(imported.prompt, lm.embedding, lm.token_strings, k=1, metrics=("cosine",))
    E = torch.nn.functional.normalize(lm.embedding.float(), dim=1)
    brute = (torch.nn.functional.normalize(imported.prompt, dim=1) @ E.T).argmax(1)
    assert table["token_id"].tolist() == brute.tolist()


@torch.no_grad()
def test_prompt_tuning_adapter_decodes_to_its_tokens_and_becomes_a_run(lm, tiny_model_dir, tmp_path, capsys):
    words = [" Paris", " capital", " France"]
    ids = [lm.tokenize(w)[0] for w in words]
    cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    model = peft.get_peft_model(copy.deepcopy(lm.model), cfg)
    model.prompt_encoder["default"].embedding.weight.copy_(lm.embedding[ids])
    model.save_pretrained(str(tmp_path / "adapter"))
    imported = import_peft(tmp_path / "adapter")
    assert imported.config["method"] == "direct" and imported.config["vocab_size"] is None
    from ptuning_lab.manifold import decode_prompt

    assert decode_prompt(imported.prompt, lm.embedding, lm.token_strings) == words
    with pytest.raises(PeftImportError, match="pass lm="):
        save_imported(imported, tmp_path / "run")
    run = ckpt.load_run(save_imported(imported, tmp_path / "run", lm=lm))
    assert torch.equal(run.prompt, imported.prompt) and torch.equal(run.encoder()(), imported.prompt)
    run.check_model(lm)
    # the command line: import-peft then decode
    from ptuning_lab.cli import main

    capsys.readouterr()
    assert main(["import-peft", str(tmp_path / "adapter"), str(tmp_path / "cli-run"),
                 "--model", tiny_model_dir, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("imported a PROMPT_TUNING prompt (3 virtual tokens, width 32) into ")
    assert main(["decode", str(tmp_path / "cli-run"), "--model", tiny_model_dir, "--device", "cpu", "-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cosine_top1 = [line.split()[1] for line in lines if line.strip().startswith("cosine")]
    assert cosine_top1 == ["␣Paris", "␣capital", "␣France"]


@torch.no_grad()
def test_round_trip_ours_peft_ours(runs, lm, tiny_model_dir, tmp_path, capsys):
    run = ckpt.load_run(runs["mlp-residual"])
    from ptuning_lab.cli import main

    assert main(["export-peft", str(runs["mlp-residual"]), str(tmp_path / "adapter"),
                 "--model", tiny_model_dir, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "PROMPT_TUNING" in printed and "' The capital of [X] is'" in printed
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == tiny_model_dir
    imported = import_peft(tmp_path / "adapter", lm)
    assert torch.equal(imported.prompt, run.prompt)
    assert imported.config["template"] == TEMPLATE and imported.config["method"] == "mlp"
    assert imported.config["task"] == run.config["task"]


def test_import_errors(lm, tmp_path):
    with pytest.raises(PeftImportError, match="not there, not a directory"):
        import_peft(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeftImportError, match="a file, not a directory"):
        import_peft(tmp_path / "file")
    d = tmp_path / "adapter"
    d.mkdir()
    with pytest.raises(PeftImportError, match="no adapter_config.json"):
        import_peft(d)
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(PeftImportError, match="corrupt"):
        import_peft(d)
    peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"]).save_pretrained(str(d))
    with pytest.raises(PeftImportError, match=r"LORA adapter; only P-tuning \(P_TUNING\) and prompt tuning"):
        import_peft(d)
    peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3).save_pretrained(str(d))
    with pytest.raises(PeftImportError, match="key/value prefixes"):
        import_peft(d)
    peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3).save_pretrained(str(d))
    with pytest.raises(PeftImportError, match="no adapter_model.safetensors"):
        import_peft(d)
    (d / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(PeftImportError, match="does not unpickle"):
        import_peft(d)
    (d / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(PeftImportError, match="corrupt or truncated"):
        import_peft(d)
    ckpt.write_tensors(d / "adapter_model.safetensors", {"something": torch.zeros(3, 32)})
    with pytest.raises(PeftImportError, match="no 'prompt_embeddings'"):
        import_peft(d)
    ckpt.write_tensors(d / "adapter_model.safetensors", {"prompt_embeddings": torch.zeros(4, 32)})
    with pytest.raises(PeftImportError, match="num_virtual_tokens=3"):
        import_peft(d)
    ckpt.write_tensors(d / "adapter_model.safetensors", {"prompt_embeddings": torch.full((3, 32), float("nan"))})
    with pytest.raises(PeftImportError, match="NaN"):
        import_peft(d)
    ckpt.write_tensors(d / "adapter_model.safetensors", {"prompt_embeddings": torch.zeros(3, 48)})
    with pytest.raises(PeftImportError, match="width 48 but model 'tiny-gpt2' has width 32"):
        import_peft(d, lm)
    assert import_peft(d).prompt.shape == (3, 48)             # without a model there is nothing to check


def test_import_refuses_a_model_with_another_vocabulary(runs, lm, tmp_path):
    out = export_peft(runs["direct"], tmp_path / "adapter")
    other = make_tiny_lm("gpt2", lm.tokenizer)
    other.model.resize_token_embeddings(lm.vocab_size + 8)
    with pytest.raises(PeftImportError, match=f"vocabulary of {lm.vocab_size} tokens"):
        import_peft(out, other)
    imported = import_peft(out)
    with pytest.raises(PeftImportError, match="vocabulary"):
        imported.check_model(other)


# ---------------------------------------------------------------- the embedded model (LlamaForCausalLM)
@pytest.mark.slow
@torch.no_grad()
def test_embedded_model_export_matches_peft(embedded_lm, tmp_path):
    from ptuning_lab.frozen_lm import FrozenLM

    lm = embedded_lm
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.prefix_ids == []
    template = "[P]*3 The capital of [X] is"
    enc = build_encoder("mlp", 3, lm.embedding.detach(), init="text:The capital of", tokenize=lm.tokenize,
                        config={"num_layers": 3, "residual": False, "encoder_hidden_size": 64})
    with torch.enable_grad():
        Trainer(lm, enc, _toy_task(), template, TrainConfig(max_steps=2, eval_every=2, batch_size=3, lr=1e-3,
                                                            warmup_ratio=0.0),
                out_dir=tmp_path / "run", progress=False).fit()
    run = ckpt.load_run(tmp_path / "run")
    out = export_peft(run, tmp_path / "adapter", lm=lm)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "P_TUNING"
    base = FrozenLM.load("smollm2-135m", verbose=False).model           # PEFT gets its own copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    inputs = ["France", "the United Kingdom", "Japan", "Peru"]
    ours = lm.last_logits(lm.encode(template, inputs), run.prompt)
    theirs = _peft_logits(peft_model, peft_batch(lm, template, inputs))
    assert (ours - theirs).abs().max() < ATOL
    assert ours.argmax(1).tolist() == theirs.argmax(1).tolist()
    for x in inputs:   # on these inputs the whole-text tokenization is ptuning_lab's too
        assert lm.tokenize(peft_input_text(template, x)) == peft_batch(lm, template, [x])["input_ids"][0].tolist()
