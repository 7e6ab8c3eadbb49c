"""The science bar: manual prompt vs P-tuning (mlp, lstm, direct) and prefix tuning on the four relations.

Usage:
    python benchmarks/probe_suite.py                       # full suite: 4 relations x 4 methods x 3 seeds
    python benchmarks/probe_suite.py --tasks capital --seeds 1 --max-steps 20   # a quick look

Writes the per-run directories and summary.json under --out, and a markdown table to --table
(default docs/probe_suite.md) headed with the command, date, device and model. The target: the
best P-tuning method beats the manual prompt by >= 20 points of macro P@1.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from ptuning_lab.experiments import compare, default_template
from ptuning_lab.evaluation import macro_average
from ptuning_lab.frozen_lm import FrozenLM
from ptuning_lab.tasks import load_task

RELATIONS = ("capital", "continent", "language", "currency")


def markdown(summary: list[dict], tasks: list[str], methods: list[str]) -> str:
    by = {(r["task"], r["encoder"]): r for r in summary}
    head = "| method | " + " | ".join(tasks) + " | macro P@1 |\n|---|" + "---|" * (len(tasks) + 1) + "\n"
    lines = []
    for m in ["manual", *methods]:
        cells, values = [], []
        for t in tasks:
            r = by.get((t, m))
            if r is None:
                cells.append("–")
                continue
            values.append(r["test_p_at_1"])
            sd = f" ± {r['test_p_at_1_std']:.2f}" if m != "manual" else ""
            cells.append(f"{r['test_p_at_1']:.2f}{sd}")
        macro = sum(values) / len(values) if values else float("nan")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {macro:.3f} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--tasks", default=",".join(RELATIONS))
    p.add_argument("--methods", default="mlp,lstm,direct,prefix")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--virtual", type=int, default=3, help="Virtual tokens on each side of the manual words.")
    p.add_argument("--out", default="runs/probe_suite")
    p.add_argument("--table", default="docs/probe_suite.md")
    args = p.parse_args(argv)

    lm = FrozenLM.load(args.model, device=args.device)
    tasks = [load_task(t) for t in args.tasks.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    start = time.perf_counter()
    out = Path(args.out)
    summary = []
    for task in tasks:     # one task at a time so a long suite reports as it goes
        # overwrite: out/<task> is this suite's own output of an earlier run
        result = compare(lm, [task], methods, args.seeds,
                         {"lr": args.lr, "max_steps": args.max_steps, "eval_every": args.eval_every},
                         out / task.name, template=default_template(task.template, args.virtual), progress=False,
                         overwrite=True)
        summary.extend(result.summary)
    seconds = time.perf_counter() - start
    names = [t.name for t in tasks]
    table = markdown(summary, names, methods)
    per_method = {m: macro_average({t: r for (t, mm), r in
                                    {(r["task"], r["encoder"]): r for r in summary}.items() if mm == m},
                                   "test_p_at_1") for m in ["manual", *methods]}
    best = max(methods, key=lambda m: per_method[m])
    gain = per_method[best] - per_method["manual"]
    device = str(lm.device) + (f" ({torch.cuda.get_device_name()})" if lm.device.type == "cuda" else
                               f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    text = (f"# Probe suite: manual prompt vs P-tuning\n\n"
            f"`{' '.join(['python', 'benchmarks/probe_suite.py', *(argv if argv is not None else sys.argv[1:])])}`"
            f" — {datetime.date.today()}, model `{lm.name}`, device {device}, {seconds / 60:.1f} min.\n\n"
            f"Test first-token P@1 over the whole vocabulary (mean ± std over {args.seeds} seeds); template "
            f"`[P]*{args.virtual} <manual template> [P]*{args.virtual}`, init from the template's words, "
            f"{args.max_steps} steps of batch 16, lr {args.lr}, best dev checkpoint.\n\n{table}\n"
            f"Best method: **{best}**, {gain * 100:+.1f} points of macro P@1 over the manual prompt "
            f"(target: +20).\n")
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
