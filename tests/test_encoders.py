"""Prompt encoders: shapes, parameter counts (hand formula and PEFT), init equalities, gradients,
dropout, depth, determinism, spec round trip, and every error."""
import dataclasses
import json

import pytest
import torch

from ptuning_lab.prompts import (
    METHODS, DirectConfig, EncoderError, LSTMConfig, MLPConfig, PromptEncoder, build_encoder,
    encoder_from_config, initial_prompt, parse_init,
)

V, D = 100, 16
WORDS = {w: i for i, w in enumerate("the capital of france is paris a city in europe".split())}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a loaded 2-core machine 2 threads spin-wait:
    the LSTM training test took 24 s with 2 threads and 0.2 s with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def embedding():
    return torch.randn(V, D, generator=torch.Generator().manual_seed(1))


def tokenize(text: str) -> list[int]:
    """Toy tokenizer: one id per known lower-cased word."""
    return [WORDS[w] for w in text.lower().split() if w in WORDS]


# ------------------------------------------------------------------ hand-computed parameter counts
def count_direct(n, d):
    return n * d


def count_mlp(n, d, h, L):
    if L == 1:
        return n * d + d * d + d
    return n * d + (d * h + h) + (L - 2) * (h * h + h) + (h * d + d)


def count_lstm(n, d, h, L):
    lstm = 0
    for layer in range(L):
        d_in = d if layer == 0 else 2 * h
        lstm += 2 * (4 * h * (d_in + h) + 2 * 4 * h)      # two directions, W_ih, W_hh, b_ih, b_hh
    head = (2 * h * 2 * h + 2 * h) + (2 * h * d + d)
    return n * d + lstm + head


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("method", METHODS)
def test_output_shape_dtype_device(embedding, method, n):
    enc = build_encoder(method, n, embedding)
    out = enc()
    assert isinstance(enc, PromptEncoder) and enc.method == method
    assert out.shape == (n, D) and out.dtype == torch.float32
    assert (enc.num_virtual_tokens, enc.hidden_size) == (n, D)


@pytest.mark.parametrize("h,L", [(16, 2), (8, 1), (12, 3), (5, 4)])
def test_parameter_counts_match_formula(embedding, h, L):
    n = 6
    assert build_encoder("direct", n, embedding).num_trainable_parameters() == count_direct(n, D) == 96
    mlp = build_encoder("mlp", n, embedding, config=MLPConfig(encoder_hidden_size=h, num_layers=L))
    assert mlp.num_trainable_parameters() == count_mlp(n, D, h, L)
    lstm = build_encoder("lstm", n, embedding, config=LSTMConfig(encoder_hidden_size=h, num_layers=L))
    assert lstm.num_trainable_parameters() == count_lstm(n, D, h, L)


def test_default_sizes(embedding):
    """MLP hidden = d, 2 layers; LSTM d//2 per direction (Liu et al.'s code), 2 layers; dropout 0."""
    mlp = build_encoder("mlp", 3, embedding)
    lstm = build_encoder("lstm", 3, embedding)
    assert mlp.config == MLPConfig(encoder_hidden_size=D, num_layers=2, dropout=0.0, residual=True)
    assert lstm.config == LSTMConfig(encoder_hidden_size=D // 2, num_layers=2, dropout=0.0, residual=True)
    assert mlp.num_trainable_parameters() == count_mlp(3, D, D, 2) == 48 + 2 * (16 * 16 + 16)
    # head is Linear(d, d) ReLU Linear(d, d), as in the original P-tuning LSTM encoder
    assert [tuple(m.weight.shape) for m in lstm.mlp_head if isinstance(m, torch.nn.Linear)] == [(D, D), (D, D)]
    for cls in (DirectConfig, MLPConfig, LSTMConfig):
        assert all("help" in f.metadata for f in dataclasses.fields(cls))


# ------------------------------------------------------------------ PEFT equivalence
def _peft_encoder(kind, n, d, h, L=2, dropout=0.0):
    from peft import PromptEncoder as PeftPromptEncoder, PromptEncoderConfig
    from peft.tuners.p_tuning.config import PromptEncoderReparameterizationType

    torch.manual_seed(0)
    extra = {"encoder_num_layers": L, "encoder_dropout": dropout} if kind == "LSTM" else {}
    # (for MLP, PEFT ignores encoder_num_layers: its MLP always has 3 Linear layers)
    cfg = PromptEncoderConfig(num_virtual_tokens=n, token_dim=d, num_transformer_submodules=1,
                              encoder_hidden_size=h,
                              encoder_reparameterization_type=PromptEncoderReparameterizationType(kind), **extra)
    return PeftPromptEncoder(cfg).eval()


@pytest.mark.parametrize("kind,method,config", [
    ("MLP", "mlp", MLPConfig(encoder_hidden_size=12, num_layers=3, residual=False)),
    ("LSTM", "lstm", LSTMConfig(encoder_hidden_size=12, num_layers=2, residual=False)),
    ("LSTM", "lstm", LSTMConfig(encoder_hidden_size=7, num_layers=3, residual=False)),
])
def test_peft_style_config_equals_peft(embedding, kind, method, config):
    """Same parameter count as PEFT's PromptEncoder, and PEFT's weights load 1:1 into ours and give
    the same prompt."""
    pytest.importorskip("peft")
    n = 5
    peft_enc = _peft_encoder(kind, n, D, config.encoder_hidden_size, config.num_layers)
    ours = build_encoder(method, n, embedding, config=config).eval()
    assert ours.num_trainable_parameters() == sum(p.numel() for p in peft_enc.parameters())
    ours.load_state_dict(peft_enc.state_dict())                # strict: identical names and shapes
    with torch.no_grad():
        assert torch.allclose(ours(), peft_enc(torch.arange(n).unsqueeze(0))[0], atol=1e-6)


# ------------------------------------------------------------------ initialisation
def test_parse_init():
    assert parse_init("random") == ("random", None)
    assert parse_init("vocab") == ("vocab", None)
    assert parse_init("text:the capital") == ("text", "the capital")
    assert parse_init("text: a: b") == ("text", " a: b")          # phrase kept exactly, colons included


def test_initial_prompt_values(embedding):
    # text: short phrase is cycled, long phrase truncated
    rows = initial_prompt("text:the capital of", 5, embedding, tokenize)
    assert torch.equal(rows, embedding[[0, 1, 2, 0, 1]])
    rows = initial_prompt("text:the capital of france is", 2, embedding, tokenize)
    assert torch.equal(rows, embedding[[0, 1]])
    # vocab: distinct real rows, seeded
    rows = initial_prompt("vocab", 10, embedding, seed=3)
    matches = [(embedding == r).all(1).nonzero().flatten().tolist() for r in rows]
    assert all(len(m) == 1 for m in matches) and len({m[0] for m in matches}) == 10
    assert torch.equal(rows, initial_prompt("vocab", 10, embedding, seed=3))
    assert not torch.equal(rows, initial_prompt("vocab", 10, embedding, seed=4))
    assert initial_prompt("vocab", V + 5, embedding).shape == (V + 5, D)   # more than V: with replacement
    # random: the vocabulary's per-dimension scale
    big = torch.randn(V, D) * 3 + torch.arange(D)
    rows = initial_prompt("random", 4000, big, seed=0)
    assert torch.allclose(rows.mean(0), big.mean(0), atol=0.25)
    assert torch.allclose(rows.std(0), big.std(0), rtol=0.1)


@pytest.mark.parametrize("init", ["random", "vocab", "text:the capital of", "text:the capital of france is paris"])
@pytest.mark.parametrize("method", METHODS)
def test_initial_prompt_equals_target_for_every_method(embedding, method, init):
    """Residual form with a zero last layer: the prompt starts exactly at the init rows."""
    enc = build_encoder(method, 4, embedding, init=init, tokenize=tokenize, seed=7)
    target = initial_prompt(init, 4, embedding, tokenize, seed=7)
    for mode in (enc.train, enc.eval):
        mode()
        with torch.no_grad():
            assert torch.equal(enc(), target)
    if init.startswith("text:"):
        ids = tokenize(init[5:])
        assert torch.equal(enc().detach(), embedding[[ids[i % len(ids)] for i in range(4)]])


@pytest.mark.parametrize("method", METHODS)
def test_half_precision_embedding_gives_float32_encoder(embedding, method):
    """Trainable weights stay float32 even for a bf16 model; the init rows upcast exactly."""
    half = embedding.bfloat16()
    enc = build_encoder(method, 3, half, init="text:paris is a", tokenize=tokenize)
    assert all(p.dtype == torch.float32 for p in enc.parameters())
    assert torch.equal(enc().detach(), half[[5, 4, 6]].float())


@pytest.mark.parametrize("method", ["mlp", "lstm"])
def test_non_residual_does_not_start_at_target(embedding, method):
    cfg = {"residual": False}
    enc = build_encoder(method, 4, embedding, init="vocab", config=cfg)
    assert torch.equal(enc.embedding.weight, initial_prompt("vocab", 4, embedding))   # inputs still init'd
    assert not torch.allclose(enc(), initial_prompt("vocab", 4, embedding))


@pytest.mark.parametrize("method", METHODS)
def test_embedding_is_copied_not_referenced(embedding, method):
    enc = build_encoder(method, 3, embedding, init="vocab")
    before = enc().detach().clone()
    ptrs = {p.data_ptr() for p in enc.parameters()}
    assert embedding.data_ptr() not in ptrs
    assert all(p.numel() != V * D for p in enc.parameters())
    embedding.mul_(0)                                                # the frozen matrix changes ...
    assert torch.equal(enc().detach(), before)                       # ... the encoder does not


# ------------------------------------------------------------------ training behaviour
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_every_parameter(embedding, method):
    """Step 1: the zero last layer blocks the gradient to the layers before it (structurally zero);
    after one optimizer step the last layer is non-zero and every parameter gets a gradient."""
    enc = build_encoder(method, 4, embedding, init="vocab")
    target = torch.randn(4, D, generator=torch.Generator().manual_seed(9))
    opt = torch.optim.Adam(enc.parameters(), lr=5e-2)
    nonzero = []
    for _ in range(2):
        opt.zero_grad()
        ((enc() - target) ** 2).sum().backward()
        nonzero.append({name for name, p in enc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0})
        opt.step()
    names = {name for name, _ in enc.named_parameters()}
    assert nonzero[1] == names
    if method != "direct":
        last = max(i for i, m in enumerate(enc.mlp_head) if isinstance(m, torch.nn.Linear))
        assert nonzero[0] == {"embedding.weight", f"mlp_head.{last}.weight", f"mlp_head.{last}.bias"}
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((enc() - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("method,config", [
    ("mlp", MLPConfig(num_layers=2, dropout=0.5, residual=False)),
    ("mlp", MLPConfig(num_layers=3, dropout=0.5, residual=True)),
    ("lstm", LSTMConfig(num_layers=1, dropout=0.5, residual=False)),   # one layer: torch's LSTM would ignore it
    ("lstm", LSTMConfig(num_layers=2, dropout=0.5, residual=True)),
])
def test_dropout_honoured(embedding, method, config):
    enc = build_encoder(method, 6, embedding, config=config)
    if config.residual:
        # the zero last layer hides dropout at step 0; give it weights as training would
        with torch.no_grad():
            enc.mlp_head[-1].weight.normal_(generator=torch.Generator().manual_seed(2))
    enc.train()
    torch.manual_seed(0)
    assert not torch.allclose(enc(), enc())
    enc.eval()
    with torch.no_grad():
        out = enc()
        assert torch.equal(out, enc())
        # eval output equals the same network with the dropout removed
        if method == "mlp":
            plain = torch.nn.Sequential(*[m for m in enc.mlp_head if not isinstance(m, torch.nn.Dropout)])
            x = enc.embedding.weight
            ref = x + plain(x) if config.residual else plain(x)
        else:
            twin = build_encoder(method, 6, embedding, config=dataclasses.replace(config, dropout=0.0))
            twin.load_state_dict(enc.state_dict())
            ref = twin.eval()()
        assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_depth_honoured(embedding, L):
    mlp = build_encoder("mlp", 3, embedding, config=MLPConfig(num_layers=L))
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp.modules()) == L
    lstm = build_encoder("lstm", 3, embedding, config=LSTMConfig(num_layers=L))
    assert lstm.lstm_head.num_layers == L
    assert sum(isinstance(m, torch.nn.Linear) for m in lstm.modules()) == 2


def test_hidden_size_honoured(embedding):
    mlp = build_encoder("mlp", 3, embedding, config=MLPConfig(encoder_hidden_size=7, num_layers=3))
    assert [tuple(m.weight.shape) for m in mlp.mlp_head if isinstance(m, torch.nn.Linear)] == [(7, D), (7, 7), (D, 7)]
    lstm = build_encoder("lstm", 3, embedding, config=LSTMConfig(encoder_hidden_size=5))
    assert lstm.lstm_head.hidden_size == 5 and lstm.mlp_head[0].in_features == 10


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed_without_global_rng(embedding, method):
    config = None if method == "direct" else {"residual": False}     # so every layer is random
    rng = torch.random.get_rng_state()
    a = build_encoder(method, 4, embedding, init="random", seed=5, config=config)
    assert torch.equal(rng, torch.random.get_rng_state())           # the global RNG was not used
    torch.manual_seed(123)                                           # and does not matter
    b = build_encoder(method, 4, embedding, init="random", seed=5, config=config)
    c = build_encoder(method, 4, embedding, init="random", seed=6, config=config)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not torch.equal(sa[k], sc[k]) for k in sa)


# ------------------------------------------------------------------ spec round trip
@pytest.mark.parametrize("method,config", [
    ("direct", None),
    ("mlp", {"encoder_hidden_size": 9, "num_layers": 3, "dropout": 0.1}),
    ("lstm", {"encoder_hidden_size": 6, "num_layers": 1, "residual": False}),
])
def test_spec_round_trip(embedding, method, config):
    enc = build_encoder(method, 5, embedding, init="text:the capital of", tokenize=tokenize, seed=2, config=config)
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    for _ in range(3):                                               # trained weights, not the init
        opt.zero_grad()
        enc().pow(2).sum().backward()
        opt.step()
    spec = json.loads(json.dumps(enc.spec()))
    assert spec["method"] == method and spec["num_virtual_tokens"] == 5 and spec["hidden_size"] == D
    assert spec["init"] == "text:the capital of" and spec["config"] == dataclasses.asdict(enc.config)
    rebuilt = encoder_from_config(spec, D)
    assert type(rebuilt) is type(enc) and rebuilt.config == enc.config and rebuilt.init == enc.init
    rebuilt.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(), enc.eval()())


# ------------------------------------------------------------------ errors
def _raises(match, fn, *args, **kwargs):
    with pytest.raises(EncoderError, match=match):
        fn(*args, **kwargs)


def test_errors(embedding):
    _raises(r"unknown prompt encoder method 'gru'.*direct, mlp, lstm, prefix\.$", build_encoder, "gru", 3, embedding)
    _raises(r"unknown prompt encoder method 'lstn'.* Did you mean 'lstm'\?", build_encoder, "lstn", 3, embedding)
    _raises(r"unknown init 'words'.*\"random\".*\"vocab\".*\"text:<phrase>\"", build_encoder, "mlp", 3, embedding,
            init="words")
    _raises(r"unknown init", parse_init, "random:x")
    _raises(r"no phrase after 'text:'", parse_init, "text:  ")
    _raises(r"tokenizes to no tokens.*at least one word", build_encoder, "direct", 3, embedding,
            init="text:zzz qqq", tokenize=tokenize)
    _raises(r"needs a tokenize function.*tokenize=lm.tokenize", build_encoder, "lstm", 3, embedding, init="text:the")
    _raises(r"outside the embedding's vocabulary", initial_prompt, "text:x", 2, embedding, lambda s: [V + 1])
    _raises(r"num_virtual_tokens = 0.*positive integer", build_encoder, "direct", 0, embedding)
    _raises(r"num_virtual_tokens = -2", build_encoder, "mlp", -2, embedding)
    _raises(r"encoder_hidden_size = 0", MLPConfig, encoder_hidden_size=0)
    _raises(r"encoder_hidden_size = -4", build_encoder, "lstm", 3, embedding, config={"encoder_hidden_size": -4})
    _raises(r"num_layers = 0", LSTMConfig, num_layers=0)
    _raises(r"num_layers = -1", build_encoder, "mlp", 3, embedding, config={"num_layers": -1})
    _raises(r"dropout = 1.0.*\[0, 1\)", MLPConfig, dropout=1.0)
    _raises(r"dropout = -0.1", LSTMConfig, dropout=-0.1)
    _raises(r"one-layer MLP.*num_layers >= 2 or dropout=0", MLPConfig, num_layers=1, dropout=0.2)
    _raises(r"LSTMConfig \(for method 'lstm'\) but method is 'mlp'.*MLPConfig", build_encoder, "mlp", 3, embedding,
            config=LSTMConfig())
    _raises(r"MLPConfig.*method is 'direct'", build_encoder, "direct", 3, embedding, config=MLPConfig())
    _raises(r"no field\(s\) \['hidden'\].*encoder_hidden_size", build_encoder, "mlp", 3, embedding,
            config={"hidden": 8})
    _raises(r"\(vocab, d\) tensor", build_encoder, "direct", 3, torch.zeros(5))
    spec = build_encoder("mlp", 3, embedding).spec()
    _raises(r"width 16 but this model has width 32", encoder_from_config, spec, 32)
    _raises(r"spec must be the dict from encoder.spec\(\)", encoder_from_config, {"config": {}}, D)
    _raises(r"unknown prompt encoder method", encoder_from_config, {**spec, "method": "rnn"}, D)


# ------------------------------------------------------------------ the real model
@pytest.mark.slow
def test_text_init_with_embedded_model(embedded_lm):
    """"text:The capital of" starts every method at exactly those token embeddings (cycled to 5)."""
    lm = embedded_lm
    ids = lm.tokenize("The capital of")
    assert len(ids) == 3
    expected = lm.embedding[[ids[i % 3] for i in range(5)]].float()
    for method in METHODS:
        enc = build_encoder(method, 5, lm.embedding, init="text:The capital of", tokenize=lm.tokenize)
        with torch.no_grad():
            assert torch.equal(enc(), expected), method
        assert enc.num_trainable_parameters() < lm.embedding.numel()   # the frozen matrix is not in the encoder
    with torch.no_grad():                                               # the prompt plugs into FrozenLM
        logits = lm.last_logits(lm.encode("[P]*5 France is", ["unused"]), enc())
    assert logits.shape == (1, lm.vocab_size) and torch.isfinite(logits).all()
