"""FrozenLM against plain Hugging Face forwards: padding, positions, gradients, scoring, generation.

Tiny random GPT-2 and Llama models run in float64, so "equal" means equal to ~1e-9; the embedded
SmolLM2-135M runs in float32 (tests marked slow).
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptuning_lab.templates import Template

from helpers import make_tiny_lm

SHORT = "a"
LONG = ("the United Kingdom of Great Britain and Northern Ireland, a country of four nations, "
        "whose capital lies on the river Thames")
# virtual tokens before, around and after [X]
TEMPLATES = ["[P]*3 [X] is", "The capital of [P] [X] [P]*2 is", "[X] is the [P]*3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")




def make_prompt(lm, template, seed=0, requires_grad=False):
    """A random prompt (n, d) in the model's dtype, of the scale of the token embeddings."""
    g = torch.Generator().manual_seed(seed)
    n = Template.parse(template).num_virtual_tokens
    scale = float(lm.embedding.std())
    prompt = (torch.randn(n, lm.hidden_size, generator=g, dtype=torch.float64) * scale).to(lm.embedding.dtype)
    return prompt.requires_grad_(requires_grad)


def reference_embeds(lm, template, x, prompt=None, suffix=()):
    """Input embeddings (1, T, d) of one unpadded example, built from the template's parts by hand.

    ``x``: the [X] text, or a dict slot name -> text for named slots."""
    t = Template.parse(template)
    table = lm.embedding
    rows, k = [table[i] for i in lm.prefix_ids], 0
    for kind, value in t.parts:
        if kind == "text":
            rows += [table[i] for i in lm.tokenize(value)]
        elif kind == "x":
            text = x if isinstance(x, str) else x[value]
            rows += [table[i] for i in lm.tokenize((" " if t.slot_has_space(value) else "") + text.strip())]
        else:
            rows.append(prompt[k].to(table.dtype))
            k += 1
    rows += [table[i] for i in suffix]
    return torch.stack(rows).unsqueeze(0)


def plain_logits(lm, embeds, position_ids=None):
    """All logits (T, V) of a plain HF forward (default positions 0..T-1, no mask, no cache)."""
    with torch.no_grad():
        return lm.model(inputs_embeds=embeds, position_ids=position_ids, use_cache=False).logits[0]


# ---------------------------------------------------------------- padding and positions
@pytest.mark.parametrize("template", TEMPLATES)
def test_padded_batch_equals_each_example_alone(lm64, template):
    inputs = [SHORT, LONG, "France", LONG + " " + LONG]
    prompt = make_prompt(lm64, template)
    with torch.no_grad():
        batch = lm64.encode(template, inputs)
        together = lm64.last_logits(batch, prompt)
        assert together.dtype == torch.float64 and together.shape == (4, lm64.vocab_size)
        lengths = batch.attention_mask.sum(1)
        assert int(lengths.max()) > 3 * int(lengths.min())        # really very different lengths
        for i, x in enumerate(inputs):
            alone = lm64.last_logits(lm64.encode(template, [x]), prompt)[0]
            torch.testing.assert_close(together[i], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("template", TEMPLATES)
def test_last_logits_equal_plain_hf_forward_of_unpadded_sequence(lm64, template):
    inputs = [SHORT, LONG, "Peru"]
    prompt = make_prompt(lm64, template, seed=1)
    with torch.no_grad():
        ours = lm64.last_logits(lm64.encode(template, inputs), prompt)
    for i, x in enumerate(inputs):
        embeds = reference_embeds(lm64, template, x, prompt)
        reference = plain_logits(lm64, embeds)[-1]
        torch.testing.assert_close(ours[i], reference, atol=1e-9, rtol=0)
        # the comparison is sensitive to positions: a shifted (GPT-2) or gapped (RoPE is relative) position
        # of the last token changes the logits, so a batch with wrong position ids could not pass above
        T = embeds.shape[1]
        wrong = torch.arange(T).unsqueeze(0).clone()
        wrong[0, -1] += 5
        assert (plain_logits(lm64, embeds, wrong)[-1] - reference).abs().max() > 1e-4


def test_explicit_position_ids_matter_under_left_padding(tokenizer):
    """Why positions must follow the real tokens: GPT-2 with left padding and default position ids
    predicts something else than the same sentence alone; with explicit positions it agrees."""
    lm = make_tiny_lm("gpt2", tokenizer, dtype=torch.float64)
    ids = torch.tensor([lm.tokenize(" The capital of France is")])
    n, pad = ids.shape[1], torch.full((1, 4), lm.pad_id)
    padded, mask = torch.cat([pad, ids], 1), torch.cat([torch.zeros_like(pad), torch.ones_like(ids)], 1)
    positions = torch.cat([torch.zeros(4, dtype=torch.long), torch.arange(n)]).unsqueeze(0)
    with torch.no_grad():
        alone = lm.model(input_ids=ids).logits[0, -1]
        default = lm.model(input_ids=padded, attention_mask=mask).logits[0, -1]
        explicit = lm.model(input_ids=padded, attention_mask=mask, position_ids=positions).logits[0, -1]
    assert (default - alone).abs().max() > 1e-3
    torch.testing.assert_close(explicit, alone, atol=1e-9, rtol=0)


WORD_POOL = ["France", "the", "United", "Kingdom", "of", "Great", "Britain", "Peru", "über", "(1848)", "is", "a"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=st.lists(st.lists(st.sampled_from(WORD_POOL), min_size=1, max_size=25).map(" ".join),
                       min_size=2, max_size=6),
       template=st.sampled_from(TEMPLATES + ["[X]", "[P] [X] [P]"]),
       seed=st.integers(0, 2**16))
def test_padding_never_changes_the_prediction(lm64, inputs, template, seed):
    prompt = make_prompt(lm64, template, seed=seed)
    with torch.no_grad():
        together = lm64.last_logits(lm64.encode(template, inputs), prompt)
        for i, x in enumerate(inputs):
            alone = lm64.last_logits(lm64.encode(template, [x]), prompt)[0]
            assert int(together[i].argmax()) == int(alone.argmax())
            torch.testing.assert_close(together[i], alone, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- gradients and candidates
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_gradients_flow_to_the_prompt_only(tokenizer, kind):
    lm = make_tiny_lm(kind, tokenizer)
    template = "The capital of [P] [X] [P]*2 is"
    prompt = make_prompt(lm, template, requires_grad=True)
    logits = lm.last_logits(lm.encode(template, ["France", LONG]), prompt)
    loss = F.cross_entropy(logits, torch.tensor(lm.answer_ids("Paris")[:1] * 2))
    loss.backward()
    assert prompt.grad is not None and prompt.grad.shape == prompt.shape
    assert torch.isfinite(prompt.grad).all()
    assert (prompt.grad.norm(dim=1) > 0).all()          # every virtual token gets a gradient
    assert all(p.grad is None and not p.requires_grad for p in lm.model.parameters())


def test_prompt_gradient_is_correct_gradcheck(tokenizer):
    # GPT-2: LlamaRMSNorm computes in float32 even for a float64 model, too coarse for finite differences
    lm = make_tiny_lm("gpt2", tokenizer, dtype=torch.float64)
    template = "[P] [X] is [P]"
    batch = lm.encode(template, ["France", "the Netherlands"])
    candidates = torch.tensor([lm.answer_ids(a)[0] for a in ["Paris", "Amsterdam", "Lima"]])
    prompt = make_prompt(lm, template, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: lm.last_logits(batch, p, candidates), (prompt,), fast_mode=True)


def test_candidate_logits_equal_full_logits_indexed(lm64):
    template = TEMPLATES[1]
    prompt = make_prompt(lm64, template)
    batch = lm64.encode(template, ["France", LONG])
    ids = torch.tensor([lm64.answer_ids(a)[0] for a in ["Paris", "London", "Lima", "Tokyo"]] + [0, lm64.vocab_size - 1])
    with torch.no_grad():
        full = lm64.last_logits(batch, prompt)
        some = lm64.last_logits(batch, prompt, candidates=ids)
    assert some.shape == (2, len(ids))
    torch.testing.assert_close(some, full[:, ids], atol=1e-12, rtol=0)


# ---------------------------------------------------------------- scoring continuations
@pytest.mark.parametrize("template", TEMPLATES + ["The capital of [X] is"])
def test_continuation_logprob_equals_hand_computed_sum(lm64, template):
    inputs = ["France", LONG, "Peru"]
    continuations = [lm64.tokenize(" Paris"), lm64.tokenize(" London, the big city"), lm64.tokenize(" Lima.")]
    prompt = make_prompt(lm64, template) if Template.parse(template).num_virtual_tokens else None
    with torch.no_grad():
        ours = lm64.continuation_logprob(template, inputs, continuations, prompt=prompt)
    assert ours.shape == (3,)
    for i, (x, cont) in enumerate(zip(inputs, continuations)):
        embeds = reference_embeds(lm64, template, x, prompt, suffix=cont)
        logp = plain_logits(lm64, embeds).log_softmax(-1)           # (T, V)
        start = embeds.shape[1] - len(cont)                        # first continuation position
        expected = sum(logp[start - 1 + j, tok] for j, tok in enumerate(cont))
        torch.testing.assert_close(ours[i], expected, atol=1e-9, rtol=0)


# ---------------------------------------------------------------- generation
def greedy_reference(lm, embeds, max_new_tokens):
    """Greedy decoding with the HF model directly: full forward at every step, no cache."""
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(lm.model(inputs_embeds=embeds, use_cache=False).logits[0, -1].argmax())
            new.append(next_id)
            if next_id == lm.tokenizer.eos_token_id:
                break
            embeds = torch.cat([embeds, lm.embedding[next_id].view(1, 1, -1)], 1)
    return lm.tokenizer.decode(new)


@pytest.mark.parametrize("template", ["[P]*2 The capital of [X] is [P]", "The capital of [X] is"])
def test_greedy_generate_equals_plain_argmax_loop(lm64, template):
    prompt = make_prompt(lm64, template) if Template.parse(template).num_virtual_tokens else None
    expected = greedy_reference(lm64, reference_embeds(lm64, template, "France", prompt), 12)
    assert lm64.generate(template, "France", prompt=prompt, max_new_tokens=12) == expected
    assert lm64.generate(template, "France", prompt=prompt, max_new_tokens=12, use_cache=False) == expected


def test_sampling_with_a_seed_is_reproducible(lm64):
    template = "[P] The capital of [X] is"
    prompt = make_prompt(lm64, template)

    def sample(seed, **kw):
        return lm64.generate(template, "France", prompt=prompt, max_new_tokens=8, do_sample=True, seed=seed, **kw)

    assert sample(1) == sample(1)
    assert sample(2, top_k=5, temperature=0.7) == sample(2, top_k=5, temperature=0.7)
    assert len({sample(s) for s in range(4)}) > 1               # the seed does change the draw
    # top_k=1 sampling is greedy decoding
    assert sample(3, top_k=1) == lm64.generate(template, "France", prompt=prompt, max_new_tokens=8)


# ---------------------------------------------------------------- several named slots
# two-slot layouts: virtual tokens after both slots, before and between them, and none
SLOT_TEMPLATES = ["[premise] Question: [hypothesis] True, False or Neither? [P]*3",
                  "[P]*2 [passage] Question: [question]? [P]*2 Answer:",
                  "Premise:\n[premise] [P] Hypothesis: [hypothesis] [P]*2"]


def slot_inputs(template, n=4):
    """``n`` dicts filling the template's slots, with very different lengths per slot."""
    texts = [SHORT, LONG, "France", LONG + " " + LONG, "the river Thames"]
    names = Template.parse(template).slot_names
    return [{name: texts[(i + 2 * j) % len(texts)] for j, name in enumerate(names)} for i in range(n)]


@pytest.mark.parametrize("template", SLOT_TEMPLATES)
def test_two_slots_padded_batch_equals_plain_hf_forward_alone(lm64, template):
    from ptuning_lab.tasks import Example

    inputs = slot_inputs(template)
    prompt = make_prompt(lm64, template, seed=2)
    with torch.no_grad():
        batch = lm64.encode(template, inputs)
        together = lm64.last_logits(batch, prompt)
        for i, x in enumerate(inputs):
            ref = plain_logits(lm64, reference_embeds(lm64, template, x, prompt))[-1]
            torch.testing.assert_close(together[i], ref, atol=1e-6, rtol=0)
        # Examples, dicts and tuples in slot order fill the same slots
        names = Template.parse(template).slot_names
        as_examples = [Example(fields=x) for x in inputs]
        as_tuples = [tuple(x[n] for n in names) for x in inputs]
        for other in (as_examples, as_tuples):
            b = lm64.encode(template, other)
            assert torch.equal(b.input_ids, batch.input_ids) and torch.equal(b.virtual_mask, batch.virtual_mask)
        assert lm64.predict_next(template, as_examples[0], k=3, prompt=prompt) == \
            lm64.predict_next(template, [inputs[0]], k=3, prompt=prompt)


def test_two_slots_continuation_logprob_equals_hand_computed_sum(lm64):
    template = SLOT_TEMPLATES[1]
    inputs = slot_inputs(template, 3)
    prompt = make_prompt(lm64, template, seed=3)
    conts = [lm64.tokenize(" Paris"), lm64.tokenize(" the United Kingdom"), lm64.tokenize(" a")]
    with torch.no_grad():
        got = lm64.continuation_logprob(template, inputs, conts, prompt)
        for i, (x, c) in enumerate(zip(inputs, conts)):
            logp = plain_logits(lm64, reference_embeds(lm64, template, x, prompt, c)).log_softmax(-1)
            T = logp.shape[0]
            ref = sum(float(logp[T - len(c) - 1 + j, tok]) for j, tok in enumerate(c))
            assert abs(float(got[i]) - ref) < 1e-6


def test_x_inputs_as_strings_examples_and_dicts_agree(lm64):
    from ptuning_lab.tasks import Example

    template = "The capital of [P] [X] [P]*2 is"
    ref = lm64.encode(template, ["France", " Peru "]).input_ids
    for inputs in ([Example("France", "Paris"), Example("Peru")], [{"X": "France"}, {"input": "Peru"}],
                   [("France",), ("Peru",)]):
        assert torch.equal(lm64.encode(template, inputs).input_ids, ref)


# ---------------------------------------------------------------- errors (tiny model, fast)
def test_encode_errors_are_clear(lm64):
    with pytest.raises(ValueError, match="no inputs to encode"):
        lm64.encode("[X] is", [])
    too_long = [" ".join(["word"] * (lm64.max_positions + 1))]
    with pytest.raises(ValueError, match=rf"is \d+ tokens long but the model .* accepts {lm64.max_positions}.*"
                                         r"with_truncation\('longest'\)"):
        lm64.encode(Template.parse("[X] is").with_truncation("error"), too_long)
    with pytest.warns(UserWarning, match=r"1 of 1 inputs were longer .* cut slot \[X\] from its end"):
        assert lm64.encode("[X] is", too_long).input_ids.shape[1] == lm64.max_positions     # the default: cut
    batch = lm64.encode("[P]*2 [X] is", ["France"])
    with pytest.raises(ValueError, match=r"has \[P\] slots but no prompt was given: pass prompt="):
        lm64.last_logits(batch)
    d = lm64.hidden_size
    for bad in (torch.zeros(1, d), torch.zeros(2, d + 1), torch.zeros(2 * d)):
        with pytest.raises(ValueError, match=rf"the prompt has shape .* but the template needs \(2, {d}\)"):
            lm64.last_logits(batch, bad.double())


# ---------------------------------------------------------------- the embedded model
@pytest.mark.slow
def test_embedded_knows_the_capital_of_france(embedded_lm):
    top = embedded_lm.predict_next("The capital of [X] is", ["France"], k=3)[0]
    assert len(top) == 3
    assert " Paris" in [tok for tok, _ in top]
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


@pytest.mark.slow
def test_embedded_padded_batch_equals_each_alone(embedded_lm):
    lm = embedded_lm
    template = "[P]*2 The capital of [X] is [P]"
    # a prompt of real token embeddings keeps the model in a sensible regime
    prompt = lm.embedding[lm.tokenize(" Answer: capital")[:3]].detach()
    inputs = ["France", LONG, "Japan"]
    with torch.no_grad():
        together = lm.last_logits(lm.encode(template, inputs), prompt).softmax(-1)
        for i, x in enumerate(inputs):
            alone = lm.last_logits(lm.encode(template, [x]), prompt)[0].softmax(-1)
            torch.testing.assert_close(together[i], alone, atol=1e-4, rtol=0)
            assert int(together[i].argmax()) == int(alone.argmax())


@pytest.mark.slow
def test_embedded_greedy_generate_equals_plain_argmax_loop(embedded_lm):
    lm = embedded_lm
    template = "[P] The capital of [X] is"
    prompt = lm.embedding[lm.tokenize(" Question")[:1]].detach()
    expected = greedy_reference(lm, reference_embeds(lm, template, "France", prompt), 10)
    assert lm.generate(template, "France", prompt=prompt, max_new_tokens=10) == expected
    assert lm.generate("The capital of [X] is", "France", max_new_tokens=3).startswith(" Paris")


@pytest.mark.slow
def test_embedded_single_token_continuation_matches_last_logits(embedded_lm):
    lm = embedded_lm
    ids = [lm.answer_ids(a)[0] for a in ["Paris", "Tokyo"]]
    with torch.no_grad():
        scored = lm.continuation_logprob("The capital of [X] is", ["France", "Japan"], [[ids[0]], [ids[1]]])
        logp = lm.last_logits(lm.encode("The capital of [X] is", ["France", "Japan"])).log_softmax(-1)
    torch.testing.assert_close(scored, logp[[0, 1], ids], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_embedded_encode_errors(embedded_lm):
    lm = embedded_lm
    with pytest.raises(ValueError, match=r"has \[P\] slots but no prompt was given"):
        lm.predict_next("[P]*3 The capital of [X] is", ["France"])
    with pytest.raises(ValueError, match=rf"the prompt has shape \(2, {lm.hidden_size}\) but the template needs "
                                         rf"\(3, {lm.hidden_size}\)"):
        lm.predict_next("[P]*3 The capital of [X] is", ["France"], prompt=torch.zeros(2, lm.hidden_size))
    with pytest.raises(ValueError, match=rf"accepts {lm.max_positions}; shorten the input"):
        lm.encode(Template.parse("[X]").with_truncation("error"), ["a " * (lm.max_positions + 10)])


@pytest.mark.slow
def test_embedded_token_strings(embedded_lm):
    lm = embedded_lm
    strings = lm.token_strings
    assert len(strings) == lm.vocab_size == lm.embedding.shape[0]
    (paris,) = lm.tokenize(" Paris")
    assert strings[paris] == " Paris"
    assert strings[lm.tokenizer.eos_token_id] == lm.tokenizer.eos_token
    assert lm.token_strings is strings            # cached: the 49k decodes happen once
