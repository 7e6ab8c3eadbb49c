"""Candidate scoring: one cached forward per example gives the log-likelihoods of running every answer alone."""
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

