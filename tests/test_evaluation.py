"""Candidate scoring: one cached forward per example gives the log-likelihoods of running every answer alone."""
import warnings

import pytest
import torch

from ptuning_lab.encoders import build_encoder
from ptuning_lab.evaluation import best_candidates, candidate_logprobs

# 1 to 4+ tokens, shared first tokens (" San", " Port"), one answer the start of another (" New" / " New Delhi")
ANSWERS = ["Paris", "San Marino", "San José", "Port Louis", "Port of Spain", "Kuala Lumpur", "New", "New Delhi",
           "Rome", "Buenos Aires"]
# token lengths differ, so the batch is right-padded
INPUTS = ["x", "beta gamma delta epsilon", "Saint Vincent and the Grenadines", "alpha"]


def plain_scores(lm, template, x, answers, prompt):
    """The reference: each answer appended to the templated input and the full text run alone."""
    out = []
    for answer in answers:
        ids = lm.answer_ids(answer)
        batch = lm.encode(template, [x], suffixes=[ids])
        with torch.no_grad():
            logp = lm.head(lm.hidden(batch, prompt)[0]).log_softmax(-1)        # (T, vocab)
        start = int(batch.suffix_start[0])
        out.append(sum(float(logp[start - 1 + j, t]) for j, t in enumerate(ids)))
    return torch.tensor(out, dtype=torch.float64)


def _prompt(lm, kind, n):
    if kind == "none":
        return None
    if kind == "prefix":                      # K/V prefixes at every layer; random, so far from the model's own
        return build_encoder("prefix", n, lm.embedding.detach(), init="random", lm=lm, seed=1)().detach()
    return torch.randn(n, lm.hidden_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# (template, prompt): what each case covers
CASES = [
    ("[P] Capital of [X] is [P][P]", "input"),    # [P] before and after [X]: the answer follows a virtual token
    ("[P]*3 [X]", "input"),                        # the prefix layout PEFT export needs
    ("Capital of [X] is", "prefix"),               # prefix tuning: 4 K/V positions before every token
    ("Capital of [X] is", "none"),                 # a manual template
]


@pytest.mark.parametrize("template,kind", CASES)
def test_scores_equal_running_each_answer_alone(lm64, template, kind):
    lengths = {len(lm64.answer_ids(a)) for a in ANSWERS}
    assert len(lengths) >= 3 and min(lengths) == 1                     # the case is what it claims
    prompt = _prompt(lm64, kind, 3 if kind == "input" else 4)
    # chunk=3: several calls, each mixing examples and rows of different lengths
    got = candidate_logprobs(lm64, template, INPUTS, ANSWERS, prompt, chunk=3, logits_chunk=4)
    want = torch.stack([plain_scores(lm64, template, x, ANSWERS, prompt) for x in INPUTS])
    assert got.shape == (len(INPUTS), len(ANSWERS)) and got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=1e-9), (got - want).abs().max()
    # the first-token log-probabilities handed in by evaluate() give the same scores
    log_probs = lm64.last_logits(lm64.encode(template, INPUTS), prompt).log_softmax(-1)
    picked = best_candidates(lm64, template, INPUTS, ANSWERS, prompt, log_probs, chunk=5)
    assert picked == want.argmax(1).tolist()


def test_single_token_answers_need_no_second_forward(lm64):
    """Only first tokens: the scores are the next-token log-probabilities after the template."""
    answers = [a for a in ANSWERS if len(lm64.answer_ids(a)) == 1]
    assert len(answers) >= 2
    log_probs = lm64.last_logits(lm64.encode("Capital of [X] is", INPUTS)).log_softmax(-1)
    got = candidate_logprobs(lm64, "Capital of [X] is", INPUTS, answers)
    first = [lm64.answer_ids(a)[0] for a in answers]
    assert torch.allclose(got, log_probs[:, first], rtol=0, atol=1e-12)



# ---------------------------------------------------------------- label words, choices, exact match
from ptuning_lab.evaluation import (LabelScoring, answer_logits, choice_logprobs, choice_scores, evaluate,  # noqa: E402
                                    label_scores, warn_shared_first_tokens)
from ptuning_lab.fast import FastForward  # noqa: E402
from ptuning_lab.metrics import exact_match_groups, f1_macro, f1a, label_metrics  # noqa: E402
from ptuning_lab.tasks import Example  # noqa: E402

# several words per label, 1 to 3 tokens each, and one label with a single word
VERBALIZER = {"positive": ("great", "very good", "Buenos Aires"), "negative": ("terrible", "not good at all"),
              "neutral": ("okay",)}


def hand_label_scores(lm, template, x, verbalizer, prompt, reduce, combine):
    """Each word appended and run alone (plain_scores), reduced over its tokens, combined over the label's words."""
    out = []
    for words in verbalizer.values():
        s = plain_scores(lm, template, x, list(words), prompt)
        if reduce == "mean":
            s = s / torch.tensor([len(lm.answer_ids(w)) for w in words], dtype=s.dtype)
        out.append(float(torch.logsumexp(s, 0)) if combine == "logsumexp" else float(s.max()))
    return out


@pytest.mark.parametrize("reduce,combine", [("sum", "logsumexp"), ("mean", "max"), ("sum", "max")])
def test_label_score_equals_a_plain_loop_over_label_words(lm64, reduce, combine):
    lengths = {len(lm64.answer_ids(w)) for ws in VERBALIZER.values() for w in ws}
    assert min(lengths) == 1 and max(lengths) >= 3                     # multi-token label words
    template, prompt = "[P] Review: [X] It was [P][P]", _prompt(lm64, "input", 3)
    got = label_scores(lm64, template, INPUTS, VERBALIZER, prompt, scoring=LabelScoring(reduce, combine))
    want = torch.tensor([hand_label_scores(lm64, template, x, VERBALIZER, prompt, reduce, combine) for x in INPUTS],
                        dtype=torch.float64)
    assert got.shape == (len(INPUTS), 3)
    assert torch.allclose(got, want, rtol=0, atol=1e-9), (got - want).abs().max()


def test_choice_scores_and_multiple_choice_accuracy(lm64):
    template = "Premise: [X] So"
    examples = [Example("The sun rose.", label="1", choices=("it rained all night long", "the birds sang")),
                Example("He dropped the glass.", label="0", choices=("it broke", "it sang a song", "nothing"))]
    want = [plain_scores(lm64, template, ex.input, list(ex.choices), None) for ex in examples]
    for ex, w in zip(examples, want):
        assert torch.allclose(choice_scores(lm64, template, ex), w, rtol=0, atol=1e-9)
    mean = choice_scores(lm64, template, examples[0], scoring=LabelScoring(reduce="mean"))
    lens = torch.tensor([len(lm64.answer_ids(c)) for c in examples[0].choices], dtype=torch.float64)
    assert torch.allclose(mean, want[0] / lens, rtol=0, atol=1e-9)
    got = evaluate(lm64, template, examples)                  # targets left empty: the gold choices
    hand = sum(str(int(w.argmax())) == ex.label for ex, w in zip(examples, want)) / 2
    assert got["accuracy"] == hand and got["n"] == 2


@pytest.mark.parametrize("kind,template", [("input", "[P] Premise: [X] So [P]"), ("prefix", "Premise: [X] So")])
@pytest.mark.parametrize("chunk", [256, 1])
def test_batched_choice_scores_equal_the_plain_loop(lm64, chunk, kind, template):
    """choice_logprobs (every example's choices in a few calls) == each choice run in full, one at a time,
    with a prompt, padding (inputs of different lengths) and choices of 1 to several tokens."""
    examples = [Example("The sun rose over the quiet hills.", label="1", choices=("it rained all night", "birds sang")),
                Example("He dropped it.", label="0", choices=("it broke", "it sang a song", "nothing")),
                Example("Rain.", label="0", choices=("wet", "the street was dry and dusty"))]
    prompt = _prompt(lm64, kind, 2)
    want = [plain_scores(lm64, template, ex.input, list(ex.choices), prompt) for ex in examples]
    got = choice_logprobs(lm64, template, examples, prompt, chunk=chunk, logits_chunk=3)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=0, atol=1e-9), (g - w).abs().max()
    mean = choice_logprobs(lm64, template, examples, prompt, reduce="mean")
    lens = torch.tensor([len(lm64.answer_ids(c)) for c in examples[1].choices], dtype=torch.float64)
    assert torch.allclose(mean[1], want[1] / lens, rtol=0, atol=1e-9)


def test_classification_evaluate_reports_accuracy_and_macro_f1_of_full_label_scores(lm64):
    template = "[X] It was"
    golds = ["positive", "negative", "neutral", "positive"]
    examples = [Example(x, VERBALIZER[g][0], g) for x, g in zip(INPUTS, golds)]
    scores = torch.tensor([hand_label_scores(lm64, template, x, VERBALIZER, None, "sum", "logsumexp") for x in INPUTS])
    pred = [list(VERBALIZER)[i] for i in scores.argmax(1).tolist()]
    got = evaluate(lm64, template, examples, verbalizer=VERBALIZER, metrics=("accuracy", "f1_macro"))
    assert got["accuracy"] == sum(p == g for p, g in zip(pred, golds)) / 4
    assert got["f1_macro"] == pytest.approx(f1_macro(golds, pred, list(VERBALIZER)))
    assert "exact_match" not in got


def test_macro_f1_f1a_and_em_on_hand_made_predictions():
    gold = ["e", "e", "c", "n", "c", "e"]
    pred = ["e", "c", "c", "e", "c", "e"]
    # per class F1: e: tp 2 fp 1 fn 1 -> 4/6; c: tp 2 fp 1 fn 0 -> 4/5; n: tp 0 fn 1 -> 0
    assert f1_macro(gold, pred, ["e", "c", "n"]) == pytest.approx((4 / 6 + 4 / 5 + 0) / 3)
    # MultiRC: answer options of three questions; F1a pools them all, EM needs a whole question right
    gold = ["1", "0", "1", "1", "0", "0"]
    pred = ["1", "0", "0", "1", "1", "0"]
    groups = ["q1", "q1", "q2", "q2", "q3", "q3"]
    assert f1a(gold, pred, "1") == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))     # tp 2, fp 1, fn 1
    assert exact_match_groups(gold, pred, groups) == pytest.approx(1 / 3)      # only q1 all right
    got = label_metrics(("accuracy", "f1a", "em"), gold, pred, ["0", "1"], groups)
    assert got == pytest.approx({"accuracy": 4 / 6, "f1a": 4 / 6, "em": 1 / 3})
    with pytest.raises(ValueError, match="EM is per question"):
        label_metrics(("em",), gold, pred, ["0", "1"], [None] * 6)


def test_exact_match_is_greedy_teacher_forcing_on_every_answer_token(lm64):
    template, prompt = "[P] Capital of [X] is [P][P]", _prompt(lm64, "input", 3)
    answers = ["Paris", "Buenos Aires", "Port of Spain", "Rome"]
    # force hits: make each answer the model's own greedy continuation for its input
    greedy = []
    for x in INPUTS:
        batch = lm64.encode(template, [x])
        ids = []
        for _ in range(2):
            seq = lm64.encode(template, [x], suffixes=[ids]) if ids else batch
            h = lm64.hidden(seq, prompt)[0, -1]
            ids.append(int(lm64.head(h).argmax()))
        greedy.append(lm64.tokenizer.decode(ids).strip())
    targets = [greedy[0], greedy[1], answers[2], answers[3]]
    examples = [Example(x, t) for x, t in zip(INPUTS, targets)]
    want = 0
    for ex in examples:                          # the hand loop: full forward with the answer appended
        ids = lm64.answer_ids(ex.target)
        batch = lm64.encode(template, [ex.input], suffixes=[ids])
        logits = lm64.head(lm64.hidden(batch, prompt)[0])
        start = int(batch.suffix_start[0])
        want += all(int(logits[start - 1 + j].argmax()) == t for j, t in enumerate(ids))
    got = evaluate(lm64, template, examples, prompt)
    assert want >= 1 and got["exact_match"] == want / 4
    assert FastForward(lm64, template).evaluate(examples, prompt)["exact_match"] == want / 4


@pytest.mark.parametrize("template", ["[P] Capital of [X] is [P][P]", "[P]*3 [X]", "Capital of [X] is"])
def test_fast_answer_logits_equal_the_plain_path(lm64, template):
    prompt = _prompt(lm64, "input", 3) if "[P]" in template else None
    inputs = ["x", "Saint Vincent and the Grenadines", "alpha", "x"]          # a repeat: the shared head
    ids = [lm64.answer_ids(a) for a in ["Paris", "Buenos Aires", "Port of Spain", "Paris"]]
    plain = answer_logits(lm64, template, inputs, ids, prompt)
    fast = FastForward(lm64, template).answer_logits(inputs, ids, prompt)
    assert plain.shape == fast.shape == (4, max(map(len, ids)), lm64.vocab_size)
    assert torch.allclose(plain, fast, rtol=0, atol=1e-10)


def test_label_words_sharing_a_first_token_warn(lm64):
    shared = {"positive": ("very good",), "negative": ("very bad",)}
    with pytest.warns(UserWarning, match="share their first token: first-token P@1"):
        assert warn_shared_first_tokens(lm64, shared) == [("very good", "very bad")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_shared_first_tokens(lm64, {"positive": ("good", "great"), "negative": ("bad",)}) == []
    # full scoring tells them apart where the first token cannot
    s = label_scores(lm64, "[X] It was", ["x"], shared)
    assert s[0, 0] != s[0, 1]
