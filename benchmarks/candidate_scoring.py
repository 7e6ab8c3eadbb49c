"""Candidate accuracy's cost: ``evaluation.candidate_logprobs`` against a plain per-candidate loop.

    HF_HUB_OFFLINE=1 python benchmarks/candidate_scoring.py            # embedded SmolLM2-135M (~2 min on 2 cores)

Task ``capital`` (242 answers of 1-7 tokens), its test inputs, the template ``[P]*6 [X]`` (the
prefix layout PEFT export needs) and an MLP prompt encoder trained for ``--train-steps`` steps
(barely trained: this is where a search that prunes by the first token's bound gains nothing).

- ours: ``candidate_logprobs``, one forward of template and input per example, every answer's
  later tokens continuing from its cached keys/values in batched calls.
- plain: for each example, every answer appended to the templated input and the full text run
  (``FrozenLM.continuation_logprob``, 32 answers per call), the log-softmax over the vocabulary
  at every answer position: what ``best_candidates`` did when its bound pruned nothing.

Both run in one process, interleaved, same inputs; the scores must agree (max |difference| is
printed) and so must the chosen answers. The last line is ``RATIO candidate scoring plain / ours``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from ptuning_lab.encoders import build_encoder
from ptuning_lab.evaluation import candidate_logprobs
from ptuning_lab.frozen_lm import FrozenLM
from ptuning_lab.tasks import load_task
from ptuning_lab.trainer import TrainConfig, Trainer

TEMPLATE = "[P]*6 [X]"


def build_lm(model: str) -> FrozenLM:
    if model == "embedded":
        return FrozenLM.load("smollm2-135m", device="cpu", verbose=False)
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from ptuning_lab.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())      # real answers' token lengths
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer), n_positions=128,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return FrozenLM(GPT2LMHeadModel(cfg), tokenizer, "gpt2-tiny (random)")


def plain_scores(lm: FrozenLM, inputs, answers, prompt, group: int = 32) -> torch.Tensor:
    """(B, A): every answer after every input, the full text run for each."""
    ids = [lm.answer_ids(a) for a in answers]
    rows = []
    with torch.no_grad():
        for x in inputs:
            parts = [lm.continuation_logprob(TEMPLATE, [x] * len(ids[s:s + group]), ids[s:s + group], prompt)
                     for s in range(0, len(ids), group)]
            rows.append(torch.cat(parts))
    return torch.stack(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", choices=["embedded", "gpt2-tiny"],
                   help="gpt2-tiny: a random 2-layer GPT-2 with the embedded tokenizer (smoke test)")
    p.add_argument("--examples", type=int, default=16, help="test inputs scored (each against all 242 answers)")
    p.add_argument("--train-steps", type=int, default=2, help="steps of training before scoring")
    p.add_argument("--repeats", type=int, default=1, help="timings per side (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = build_lm(args.model)
    task = load_task("capital", seed=0)
    encoder = build_encoder("mlp", 6, lm.embedding.detach(), init="vocab", seed=0)
    trainer = Trainer(lm, encoder, task, TEMPLATE, TrainConfig(max_steps=args.train_steps,
                                                                         eval_every=args.train_steps),
                      progress=False)
    prompt = trainer.fit().prompt.detach()
    inputs = [ex.input for ex in task.test[:args.examples]]
    answers = task.answers
    n_tokens = [len(lm.answer_ids(a)) for a in answers]
    print(f"model {lm.name} | {len(inputs)} inputs x {len(answers)} answers ({min(n_tokens)}-{max(n_tokens)} "
          f"tokens) | template {TEMPLATE!r} | prompt after {args.train_steps} training steps | "
          f"{torch.get_num_threads()} threads")

    candidate_logprobs(lm, TEMPLATE, inputs[:1], answers, prompt)                     # warm-up
    times = {"ours": [], "plain": []}
    cpu = {"ours": [], "plain": []}
    for _ in range(args.repeats):
        for name in ("ours", "plain"):
            t, c = time.perf_counter(), time.process_time()
            if name == "ours":
                ours = candidate_logprobs(lm, TEMPLATE, inputs, answers, prompt)
            else:
                plain = plain_scores(lm, inputs, answers, prompt)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    same = ours.argmax(1).tolist() == plain.argmax(1).tolist()
    diff = float((ours - plain).abs().max())
    ours_s, plain_s = statistics.median(times["ours"]), statistics.median(times["plain"])
    for name, s in (("ours", ours_s), ("plain", plain_s)):
        # CPU seconds too: on a shared machine they move less than wall seconds
        print(f"{name:<6} {s:8.2f} s wall {statistics.median(cpu[name]):8.2f} s cpu "
              f"{s / len(inputs) * 1000:8.1f} ms per example (wall)")
    print(f"same choice for every input: {same} | max |score difference| {diff:.2e}")
    print(f"RATIO candidate scoring plain / ours {plain_s / ours_s:.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
