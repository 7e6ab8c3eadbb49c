"""answer_loss='first' vs 'full' on relations with multi-token answers: test P@1 and exact match.

    python benchmarks/answer_loss.py --tasks capital,currency --seeds 0,1 --max-steps 40

Prints one line per (task, loss, seed) and a mean table (markdown) for docs/answer_loss.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--tasks", default="capital,currency")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--encoder", default="mlp")
    p.add_argument("--losses", default="first,full")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--max-examples", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)

    from ptuning_lab import experiments
    from ptuning_lab.frozen_lm import FrozenLM
    from ptuning_lab.tasks import load_task

    lm = FrozenLM.load(args.model, device=args.device, verbose=False)
    rows = []
    for name in args.tasks.split(","):
        task = load_task(name, max_examples=args.max_examples)
        multi = sum(len(lm.answer_ids(ex.target)) > 1 for ex in task.test) / len(task.test)
        for loss in args.losses.split(","):
            for seed in map(int, args.seeds.split(",")):
                start = time.perf_counter()
                run = experiments.train_one(lm, task, encoder=args.encoder, seed=seed, progress=False,
                                            train={"max_steps": args.max_steps, "eval_every": args.max_steps // 2,
                                                   "batch_size": args.batch_size,
                                                   "answer_loss": loss})
                m = run.metrics
                rows.append((name, loss, seed, m["test_p_at_1"], m["test_exact_match"], multi))
                print(f"{name} {loss} seed {seed}: test P@1 {m['test_p_at_1']:.3f} exact match "
                      f"{m['test_exact_match']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\nmodel {lm.name}, encoder {args.encoder}, {args.max_steps} steps, seeds {args.seeds}\n")
    print("| task | multi-token test answers | answer_loss | test P@1 | test exact match |")
    print("|---|---|---|---|---|")
    for name in args.tasks.split(","):
        for loss in args.losses.split(","):
            sel = [r for r in rows if r[0] == name and r[1] == loss]
            p1 = [r[3] for r in sel]
            em = [r[4] for r in sel]
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            print(f"| {name} | {sel[0][5]:.0%} | {loss} | {statistics.mean(p1):.3f} ± {sd(p1):.3f} | "
                  f"{statistics.mean(em):.3f} ± {sd(em):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
