"""Template syntax ([P], [P]*N, [X]), its whitespace rules and errors, and where FrozenLM.embed puts the prompt."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptuning_lab.templates import MAX_VIRTUAL_TOKENS, Template, TemplateError

from helpers import make_tiny_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- parsing
def test_parse_capital_template():
    t = Template.parse("The capital of [X] is [P][P]")
    # the space before [X] moves into the input, the one before [P] is dropped
    assert t.parts == (("text", "The capital of"), ("x", "X"), ("text", " is"), ("p", ""), ("p", ""))
    assert t.num_virtual_tokens == 2
    assert t.has_input
    assert t.x_has_space()
    assert not t.is_prefix
    assert str(t) == "The capital of [X] is [P][P]"


def test_repeat_count_expands_to_that_many_slots():
    t = Template.parse("[P]*3 [X] [P]*3")
    assert [k for k, _ in t.parts] == ["p"] * 3 + ["x"] + ["p"] * 3
    assert t.num_virtual_tokens == 6
    assert Template.parse("[P]*12[X]").num_virtual_tokens == 12
    assert Template.parse("[P]*2[P][P]*1 [X]").num_virtual_tokens == 4


def test_whitespace_rules():
    # text after a marker keeps its leading space (" is" is the BPE token the model expects)
    assert Template.parse("[X] [P] is").parts == (("x", "X"), ("p", ""), ("text", " is"))
    # no space before [X] -> the input is tokenized without one
    t = Template.parse("([X]) [P]")
    assert not t.x_has_space()
    assert t.parts == (("text", "("), ("x", "X"), ("text", ")"), ("p", ""))
    # whitespace of any kind before a [P] is dropped: virtual tokens carry no spaces
    assert Template.parse("a\n\t [P]").parts == (("text", "a"), ("p", ""))
    # a newline before [X] is text, not a space of the input
    t = Template.parse("Review:\n[X]\nSentiment: [P]")
    assert not t.x_has_space()
    assert t.parts == (("text", "Review:\n"), ("x", "X"), ("text", "\nSentiment:"), ("p", ""))
    t = Template.parse("Q:\n [X]")
    assert t.x_has_space() and t.parts == (("text", "Q:\n"), ("x", "X"))
    # a repeat count is only what follows "*" directly; punctuation after it is text
    assert Template.parse("[X] is [P]*2.").parts[-1] == ("text", ".")


def test_named_slots():
    t = Template.parse("[premise] Question: [hypothesis] True, False or Neither? [P]*3")
    assert t.slot_names == ("premise", "hypothesis") and t.has_input and t.num_virtual_tokens == 3
    # the space before [hypothesis] moves into its text, as for [X]; a newline stays in the text
    assert t.parts[:3] == (("x", "premise"), ("text", " Question:"), ("x", "hypothesis"))
    assert not t.slot_has_space("premise") and t.slot_has_space("hypothesis")
    t = Template.parse("[P]*2 [passage] Question: [question]? [P]*2 Answer:")
    assert [k if k != "x" else v for k, v in t.parts] == ["p", "p", "passage", "text", "question", "text", "p",
                                                          "p", "text"]
    assert t.is_prefix is False and t.slot_has_space("passage") and t.slot_has_space("question")
    assert Template.parse("[P]*4 [premise] Q: [hypothesis]").is_prefix
    t = Template.parse("Premise:\n[premise] [P]\nHypothesis: [choice_1] [X]")
    assert t.slot_names == ("premise", "choice_1", "X") and not t.slot_has_space("premise")
    assert t.parts[0] == ("text", "Premise:\n")
    assert Template.parse("[premise] [P] [hypothesis]").manual_text() == "[premise] [hypothesis]"
    assert Template.parse("[X] is [P]").slot_names == ("X",) and Template.parse("[P] hi").slot_names == ()


@pytest.mark.parametrize("text, prefix", [
    ("[P]*4 [X] is", True),
    ("[P][P]The capital of [X] is", True),
    ("[P]*3 [X] [P]*3", False),
    ("The capital of [X] is [P]", False),
    ("[X] is", False),           # no virtual token: not a (PEFT) prefix prompt
])
def test_is_prefix(text, prefix):
    assert Template.parse(text).is_prefix is prefix


@pytest.mark.parametrize("text, manual", [
    ("The capital of [X] is [P][P]", "The capital of [X] is"),
    ("[P]*3 [X] [P]*3", "[X]"),
    ("[P] [X] means [P]*2 that", "[X] means that"),
    ("The capital of [X] is", "The capital of [X] is"),
])
def test_manual_text_removes_virtual_tokens(text, manual):
    assert Template.parse(text).manual_text() == manual


def test_parse_is_idempotent_and_validate_returns_self():
    t = Template.parse("[P] [X]")
    assert Template.parse(t) is t
    assert t.validate(need_virtual=True) is t
    no_x = Template.parse("[P] hello")
    assert no_x.validate(need_virtual=True, need_input=False) is no_x
    assert not no_x.has_input


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("text, needles", [
    ("", ["empty", "[X]", "[P]"]),
    ("   \n", ["empty"]),
    ("The [Y] of [X]", ["unknown marker '[Y]'", "Only [X]", "[P]", "named slots", "[premise]"]),
    ("[x] is [P]", ["unknown marker '[x]'", "did you mean [X]?"]),      # one letter: a typo, not a slot
    ("[p] [X]", ["unknown marker '[p]'", "did you mean [P]?"]),
    ("[Premise] [P]", ["unknown marker '[Premise]'", "lower-case"]),
    ("[premise] and [premise] [P]", ["slot [premise] more than once", "may appear once"]),
    ("[premise]*2 [P]", ["'[premise]*2'", "cannot be repeated"]),
    ("[] [X]", ["unknown marker '[]'"]),
    ("[X] and [X] [P]", ["more than one [X]", "exactly one"]),
    ("[X]*2 [P]", ["cannot be repeated"]),
    ("[X] [P]*0", ["'[P]*0'", "N >= 1"]),
    ("[X] [P]*-2", ["'[P]*-2'", "whole number"]),
    ("[X] [P]*x", ["'[P]*x'", "whole number"]),
    ("[X] [P]* is", ["'[P]*'", "[P]*N"]),
])
def test_parse_errors_name_problem_and_fix(text, needles):
    with pytest.raises(TemplateError) as info:
        Template.parse(text)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize("text, needles", [
    (123, ["a template must be a string, got int", "[X]"]),                # not "the template is empty"
    (b"[P] [X]", ["must be a string, got bytes"]),
    ("[X] [P]*\u00b2", ["'[P]*\u00b2'", "ASCII digits", "[P]*3"]),          # '²'.isdigit() is True, int('²') fails
    ("[X] [P]*\u0663", ["ASCII digits"]),                                    # Arabic-Indic 3: no silent 3
])
def test_parse_refuses_non_strings_and_non_ascii_counts(text, needles):
    with pytest.raises(TemplateError) as info:
        Template.parse(text)
    for needle in needles:
        assert needle in str(info.value)


def test_virtual_token_count_is_bounded_before_anything_is_built():
    import tracemalloc

    tracemalloc.start()
    for text in ("[X] [P]*999999999", "[X] [P]*99999999999999999999", "[P]*4000 [X] [P]*97"):
        with pytest.raises(TemplateError, match=f"more than {MAX_VIRTUAL_TOKENS} virtual tokens"):
            Template.parse(text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000              # [P]*999999999 once built a list of a billion parts (gigabytes)
    assert Template.parse(f"[X] [P]*{MAX_VIRTUAL_TOKENS}").num_virtual_tokens == MAX_VIRTUAL_TOKENS


def test_template_error_is_a_value_error():
    with pytest.raises(ValueError):
        Template.parse(None)


def test_validate_without_input():
    with pytest.raises(TemplateError, match=r"has no \[X\]: add \[X\] where the input goes.*named slots"):
        Template.parse("[P]*3 hello").validate(need_virtual=True)
    assert Template.parse("[premise] [P]").validate(need_virtual=True)       # a named slot is an input


def test_validate_without_virtual_token():
    with pytest.raises(TemplateError, match=r"has no \[P\]: a trained prompt needs at least one virtual token"):
        Template.parse("The capital of [X] is").validate(need_virtual=True)
    # a manual prompt is fine without [P]
    Template.parse("The capital of [X] is").validate(need_virtual=False)


# ---------------------------------------------------------------- the prompt lands on the [P] slots
@pytest.fixture(scope="module")
def tiny_gpt2(tokenizer):
    return make_tiny_lm("gpt2", tokenizer)


WORDS = ["The", "capital", "of", "is", "a", "Paris", "city", ":", "\n", "(", ")", "review", "über", "42"]


@st.composite
def template_and_inputs(draw):
    """A random template (words, [P] runs and exactly one [X], joined by "", " " or "\n") and inputs."""
    pieces = draw(st.lists(st.one_of(st.sampled_from(WORDS),
                                     st.integers(1, 3).map(lambda n: "[P]" if n == 1 else f"[P]*{n}")),
                           min_size=0, max_size=6))
    pieces.insert(draw(st.integers(0, len(pieces))), "[X]")
    if not any(p.startswith("[P]") for p in pieces):
        pieces.insert(draw(st.integers(0, len(pieces))), "[P]")
    text = pieces[0]
    for prev, piece in zip(pieces, pieces[1:]):
        # "[P]*2" directly followed by "42" would read as [P]*242: keep a separator there
        glue = ["", " ", "\n"] if not (prev.startswith("[P]*") and piece[0].isalnum()) else [" ", "\n"]
        text += draw(st.sampled_from(glue)) + piece
    inputs = draw(st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join),
                           min_size=1, max_size=4))
    return text, inputs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=template_and_inputs())
def test_embed_places_prompt_row_k_at_kth_virtual_slot(tiny_gpt2, case):
    lm = tiny_gpt2
    text, inputs = case
    t = Template.parse(text)
    n = t.num_virtual_tokens
    prompt = torch.randn(n, lm.hidden_size)
    batch = lm.encode(t, inputs)
    embeds = lm.embed(batch, prompt)
    table = lm.embedding
    x_space = " " if t.x_has_space() else ""
    for b, x in enumerate(inputs):
        # the expected sequence, built from the template's parts: token ids, or ("P", k) for the k-th slot
        expected = list(lm.prefix_ids)
        for kind, value in t.parts:
            if kind == "text":
                expected += lm.tokenize(value)
            elif kind == "x":
                expected += lm.tokenize(x_space + x.strip())
            else:
                expected.append(("P", sum(isinstance(e, tuple) for e in expected)))
        length = len(expected)
        assert int(batch.attention_mask[b].sum()) == length
        assert int(batch.last_index[b]) == length - 1
        assert int(batch.virtual_mask[b].sum()) == n
        for pos, item in enumerate(expected):
            if isinstance(item, tuple):
                assert batch.virtual_mask[b, pos]
                assert torch.equal(embeds[b, pos], prompt[item[1]])
            else:
                assert not batch.virtual_mask[b, pos]
                assert int(batch.input_ids[b, pos]) == item
                assert torch.equal(embeds[b, pos], table[item])
        # padding is the pad embedding and is masked out
        assert not batch.attention_mask[b, length:].any()
        assert torch.equal(embeds[b, length:], table[lm.pad_id].expand_as(embeds[b, length:]))
