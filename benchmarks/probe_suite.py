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
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ptuning_lab import checkpoint as ckpt
from ptuning_lab.experiments import compare, default_template
from ptuning_lab.evaluation import macro_average
from ptuning_lab.frozen_lm import FrozenLM
from ptuning_lab.tasks import load_task

RELATIONS = ("capital", "continent", "language", "currency")


def markdown(summary: list[dict], tasks: list[str], methods: list[str], key: str = "test_p_at_1",
             macro: str = "macro P@1") -> str:
    by = {(r["task"], r["encoder"]): r for r in summary}
    head = "| method | " + " | ".join(tasks) + f" | {macro} |\n|---|" + "---|" * (len(tasks) + 1) + "\n"
    lines = []
    for m in ["manual", *methods]:
        cells, values = [], []
        for t in tasks:
            r = by.get((t, m))
            if r is None or r.get(key) is None:
                cells.append("n/a")
                continue
            values.append(r[key])
            sd = f" ± {r[key + '_std']:.2f}" if m != "manual" and r.get(key + "_std") is not None else ""
            cells.append(f"{r[key]:.2f}{sd}")
        mean = sum(values) / len(values) if values else float("nan")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean:.3f} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="the frozen model's weights (default: the loader's, float32); the prompt encoder stays float32")
    p.add_argument("--tasks", default=",".join(RELATIONS))
    p.add_argument("--methods", default="mlp,lstm,direct,prefix")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--virtual", type=int, default=3, help="Virtual tokens on each side of the manual words.")
    p.add_argument("--out", default="runs/probe_suite")
    p.add_argument("--table", default="docs/probe_suite.md")
    p.add_argument("--title", default="Probe suite: manual prompt vs P-tuning")
    p.add_argument("--collect", action="store_true",
                   help="Train nothing: rebuild the table from <task>/summary.json under --out (parts run apart).")
    args = p.parse_args(argv)

    names = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    out = Path(args.out)
    if not args.collect:
        lm = FrozenLM.load(args.model, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None)
        device = str(lm.device) + (f" ({torch.cuda.get_device_name()})" if lm.device.type == "cuda" else
                                   f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
        command = " ".join(["python", "benchmarks/probe_suite.py", *(argv if argv is not None else sys.argv[1:])])
        for task in [load_task(t) for t in names]:     # one task at a time so a long suite reports as it goes
            start = time.perf_counter()
            # overwrite: out/<task> is this suite's own output of an earlier run
            compare(lm, [task], methods, args.seeds,
                    {"lr": args.lr, "max_steps": args.max_steps, "eval_every": args.eval_every},
                    out / task.name, template=default_template(task.template, args.virtual), progress=False,
                    overwrite=True)
            made = {"command": command, "date": str(datetime.date.today()), "model": lm.name, "device": device,
                    "seconds": round(time.perf_counter() - start, 1),
                    "settings": {"seeds": args.seeds, "max_steps": args.max_steps, "lr": args.lr,
                                 "virtual": args.virtual, "dtype": str(lm.embedding.dtype).replace("torch.", "")}}
            # beside the run directory, not in it: that one is the comparison's own
            ckpt.write_json(out / f"{task.name}.suite.json", made)
    return write_table(args, out, names, methods)


def write_table(args, out: Path, names: list[str], methods: list[str]) -> int:
    """Tables of P@1 and exact match over every task of ``names`` found under ``out``."""
    summary, made = [], {}
    for name in names:
        path = out / name / "summary.json"
        if path.is_file():
            summary.extend(json.loads(path.read_text())["summary"])
            info = out / f"{name}.suite.json"
            made[name] = json.loads(info.read_text()) if info.is_file() else {}
    if not summary:
        raise SystemExit(f"error: no <task>/summary.json under {out} for {', '.join(names)}; run the suite first.")
    names = [n for n in names if n in made]
    table = markdown(summary, names, methods)
    has_em = any("test_exact_match" in r for r in summary)
    em_table = markdown(summary, names, methods, "test_exact_match", "macro EM") if has_em else ""
    per_method = {m: macro_average({t: r for (t, mm), r in
                                    {(r["task"], r["encoder"]): r for r in summary}.items() if mm == m},
                                   "test_p_at_1") for m in ["manual", *methods]}
    best = max(methods, key=lambda m: per_method[m])
    gain = per_method[best] - per_method["manual"]
    commands = sorted({m.get("command", "?") for m in made.values()})
    lines = "\n".join(f"- `{c}`" for c in commands)
    info = next(iter(made.values()))
    cfg = {"seeds": args.seeds, "max_steps": args.max_steps, "lr": args.lr, "virtual": args.virtual,
           **info.get("settings", {})}                 # how the runs were made, not this command's defaults
    minutes = sum(m.get("seconds", 0) for m in made.values()) / 60
    text = (f"# {args.title}\n\n"
            f"Made by ({info.get('date', '?')}, model `{info.get('model', '?')}`, device {info.get('device', '?')}; "
            f"{minutes:.1f} min of runs in all):\n\n{lines}\n\n"
            f"Test first-token P@1 over the whole vocabulary (mean ± std over {cfg['seeds']} seeds); template "
            f"`[P]*{cfg['virtual']} <manual template> [P]*{cfg['virtual']}`, init from the template's words, "
            f"{cfg['max_steps']} steps of batch 16, lr {cfg['lr']}, best dev checkpoint (on P@1).\n\n{table}\n"
            + (f"Exact match (greedy decoding writes the whole answer; the same runs):\n\n{em_table}\n" if has_em else "")
            + f"Best method: **{best}**, {gain * 100:+.1f} points of macro P@1 over the manual prompt "
            f"({per_method[best]:.3f} vs {per_method['manual']:.3f}).\n")
    ckpt.write_text(args.table, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
