"""Filling named slots from Examples and mappings, the truncation policy for long inputs, unused fields."""
import warnings

import pytest
import torch

from ptuning_lab.slots import cut_lengths, slot_texts
from ptuning_lab.tasks import Example, TaskError
from ptuning_lab.templates import Template, TemplateError, warn_unused_fields

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NLI = "[premise] Question: [hypothesis] True, False or Neither? [P]*3"


# ---------------------------------------------------------------- filling slots
def test_slot_texts_from_every_input_form():
    t = Template.parse(NLI)
    want = ("A man sleeps.", "Nobody sleeps.")
    fields = {"premise": " A man sleeps. ", "hypothesis": "Nobody sleeps."}
    assert slot_texts(t, Example(fields=fields)) == want
    assert slot_texts(t, fields) == want
    assert slot_texts(t, (" A man sleeps. ", "Nobody sleeps.")) == want
    x = Template.parse("The capital of [X] is")
    assert slot_texts(x, " France ") == slot_texts(x, Example("France")) == slot_texts(x, {"input": "France"}) \
        == ("France",)
    assert slot_texts(Template.parse("[P]*2 hello"), "ignored") == ()       # no slot: nothing to fill


def test_a_slot_the_data_lacks_lists_the_fields_it_has():
    t = Template.parse(NLI)
    with pytest.raises(TaskError, match=r"slot \[hypothesis\] but the example has no field 'hypothesis'; "
                                        r"its fields: premise, text"):
        slot_texts(t, Example(fields={"premise": "a", "text": "b"}))
    with pytest.raises(TaskError, match=r"no field 'hypothesis'; its fields: premise"):
        slot_texts(t, {"premise": "a"})
    with pytest.raises(TaskError, match=r"named slots \[premise\], \[hypothesis\]; a plain string only fills \[X\]"):
        slot_texts(t, "a sentence")
    with pytest.raises(TaskError, match=r"has \[X\] but the example has no input text; its fields: hypothesis, "
                                        r"premise\. Use them as slots, e\.g\. \[hypothesis\]"):
        slot_texts(Template.parse("[X] [P]"), Example(fields={"premise": "a", "hypothesis": "b"}))
    with pytest.raises(TaskError, match="a tuple of 2 texts in slot order"):
        slot_texts(t, ("only one",))


def test_unused_fields_warn_once_per_template():
    t = Template.parse("[premise] [P] [hypothesis]")
    exs = [Example(fields={"premise": "a", "hypothesis": "b", "idx": "7", "label_text": "yes"})]
    assert t.unused_fields(exs) == ["idx", "label_text"]
    assert Template.parse("[X] [P]").unused_fields([Example("x", fields={"note": "n"})]) == ["note"]
    assert Template.parse("[premise] [P]").unused_fields([Example("an input", fields={"premise": "p"})]) == ["input"]
    assert Template.parse("[X] [P]").unused_fields([Example("France", "Paris")]) == []
    with pytest.warns(UserWarning, match=r"task 'rte': the examples have fields \['idx', 'label_text'\] that "
                                         r"template .* does not use; add \[idx\] \[label_text\]"):
        warn_unused_fields(t, exs, "rte")
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # the same template and fields again: no second warning
        assert warn_unused_fields(t, exs) == ["idx", "label_text"]


# ---------------------------------------------------------------- truncation policy
def test_cut_lengths_longest_first():
    assert cut_lengths([10, 4], 8, [0, 1]) == [3, 3]        # down to the next one, then both together
    assert cut_lengths([10, 4], 3, [0, 1]) == [7, 4]
    assert cut_lengths([5, 5], 1, [0, 1]) == [4, 5]         # a tie: the earlier slot first
    assert cut_lengths([5, 5, 2], 5, [0, 1, 2]) == [2, 3, 2]
    assert cut_lengths([10, 4], 3, [1]) == [10, 1]          # only the named slot


def test_with_truncation_checks_its_arguments():
    t = Template.parse(NLI)
    assert t.truncate == "longest" and t.truncate_side == "end"                 # the default
    cut = t.with_truncation("premise", side="start")
    assert (cut.truncate, cut.truncate_side, cut.parts) == ("premise", "start", t.parts)
    assert Template.parse(cut) is cut                                           # the policy travels with it
    with pytest.raises(TemplateError, match=r"truncate='passage': give 'longest', 'error' or one of the "
                                            r"template's slots \('premise', 'hypothesis'\)"):
        t.with_truncation("passage")
    with pytest.raises(TemplateError, match="side='left'"):
        t.with_truncation("longest", side="left")


@pytest.fixture(scope="module")
def lm(tokenizer):
    from helpers import make_tiny_lm

    return make_tiny_lm("gpt2", tokenizer)          # 128 positions


def _words(lm, n, word="word"):
    text = " ".join([word] * n)
    assert len(lm.tokenize(" " + text)) == n
    return text


def test_longest_slot_is_cut_from_its_end(lm):
    t = Template.parse("[passage] Question: [question]? Answer:")
    passage, question = _words(lm, 200, "sun"), _words(lm, 10, "moon")
    short = {"passage": "Short text.", "question": "why"}
    with pytest.warns(UserWarning, match=r"1 of 2 inputs were longer than the 128 positions .* cut the longest "
                                         r"slot from its end"):
        seqs = lm.sequences(t, [{"passage": passage, "question": question}, short])
    ids = seqs[0][0]
    assert len(ids) == lm.max_positions
    fixed = len(lm.tokenize(" Question:")) + len(lm.tokenize("?")) + len(lm.tokenize(" Answer:"))
    # the passage keeps its first tokens, the shorter question is untouched
    assert ids == lm.tokenize(passage)[:128 - fixed - 10] + lm.tokenize(" Question:") + \
        lm.tokenize(" " + question) + lm.tokenize("?") + lm.tokenize(" Answer:")
    assert seqs[1][0] == lm.sequences(t, [short])[0][0]                        # a short one is not cut
    # the same inputs again: counted already, no second warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lm.sequences(t, [{"passage": passage, "question": question}])[0][0] == ids


def test_named_slot_and_side(lm):
    t = Template.parse("[P]*2 [passage] Question: [question]? [P]*2 Answer:")
    long_q = {"passage": _words(lm, 20, "sun"), "question": _words(lm, 150, "moon") + " end"}
    with pytest.warns(UserWarning, match=r"cut slot \[question\] from its start"):
        ids = lm.sequences(t.with_truncation("question", side="start"), [long_q])[0][0]
    assert len(ids) == 128 and ids[:2] == [-1, -1]
    tail = lm.tokenize("?") + [-1, -1] + lm.tokenize(" Answer:")
    q_end = lm.tokenize(" end")
    assert ids[-len(tail):] == tail and ids[-len(tail) - len(q_end):-len(tail)] == q_end   # the end is kept
    assert ids[2:22] == lm.tokenize(" " + long_q["passage"])                            # passage untouched
    # cutting only the passage cannot make this fit: an error naming the fix
    with pytest.raises(ValueError, match=r"even slot \[passage\] cut to nothing leaves .*truncate='longest'"):
        lm.sequences(t.with_truncation("passage"), [long_q])
    with pytest.raises(ValueError, match=r"accepts 128; shorten the input .*with_truncation\('longest'\)"):
        lm.encode(t.with_truncation("error"), [long_q])


def test_an_appended_answer_counts_and_the_cut_batch_scores(lm):
    t = Template.parse("[X] is")
    x = _words(lm, 140)
    answer = lm.tokenize(" Paris")
    with pytest.warns(UserWarning, match="1 of 1 inputs"):
        batch = lm.encode(t, [x], suffixes=[answer])
    assert batch.input_ids.shape[1] == lm.max_positions
    assert batch.input_ids[0, -len(answer):].tolist() == answer                # the answer is never cut
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = lm.continuation_logprob(t, [x], [answer])
    assert torch.isfinite(score).all()
    with pytest.raises(ValueError, match="even every slot cut to nothing"):
        lm.encode("[X] " + " ".join(["is"] * 130), ["a"])
