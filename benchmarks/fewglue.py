"""The paper's comparison on real data: FewGLUE_32dev (7 SuperGLUE tasks) and the gensim relation suite.

Usage:
    python benchmarks/fewglue.py fewglue --data-dir ../shared/data/fewglue_32dev --device cuda
    python benchmarks/fewglue.py fewglue --tasks boolq,multirc --max-test 1000     # a part; the table merges parts
    python benchmarks/fewglue.py relations --device cuda                             # gensim's analogy relations
    python benchmarks/fewglue.py fewglue --quick ...                                 # CPU smoke run: 1 seed, 2 steps

FewGLUE: the manual prompt (PET's PVP, nothing trained), the majority class of train, and mlp, lstm,
direct, prefix over seeds. Everything is chosen on dev32 only (the best-dev checkpoint, and the
learning rate from ``--lrs`` by dev score); val (SuperGLUE validation) is touched once, as test.
Each task's rows land in ``--out/<task>/fewglue.json``; the table (mean ± std) is rebuilt from every
task found there, so a long run can be split over several commands. ``relations`` runs
benchmarks/probe_suite.py over the ``analogy-*`` tasks and writes docs/relations.md.

Labels are scored by the log-likelihood of their words and COPA's choices in full
(``ptuning_lab.evaluation``); the metrics (accuracy, macro-F1, F1a, EM) are ``ptuning_lab.metrics``,
the same functions for the majority baseline and the runs. Each run keeps the state best on its task's
first metric on dev32. Where a run's metrics lack ``test_<metric>`` the cell says n/a.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEWGLUE = ("boolq", "cb", "copa", "multirc", "rte", "wic", "wsc")
METHODS = ("mlp", "lstm", "direct", "prefix")
QUICK = {"seeds": 1, "max_steps": 2, "eval_every": 1, "max_test": 8}


def majority(task) -> dict:
    """The train split's most frequent label predicted for every test example (``experiments.majority``)."""
    from ptuning_lab.experiments import majority as majority_row

    row = majority_row(task)
    return {"task": task.name, "encoder": "majority", "seed": None, **{k: v for k, v in row.items() if k.startswith("test_")}}


def metric(row: dict, name: str, split: str = "test"):
    """``<split>_<name>`` of a run's metrics; accuracy falls back to today's candidate accuracy (the same
    number for one label word per label: the best-scoring label word among the labels' words)."""
    value = row.get(f"{split}_{name}")
    if value is None and name == "accuracy":
        value = row.get(f"{split}_candidate_accuracy")
    return value


def run_task(lm, task, methods, seeds, lrs, train, log, save=lambda rows: None, done=frozenset()) -> list[dict]:
    """Rows of majority, manual and every (method, seed); ``save(rows)`` after each, so a cut run keeps its part.

    ``done``: (method, seed) pairs another part already holds (``--resume``): skipped."""
    from ptuning_lab.experiments import baseline, default_template, train_one

    rows = [majority(task)]
    manual = baseline(lm, task)
    rows.append({**manual, **{f"test_{m}": metric(manual, m) for m in task.metrics}})
    save(rows)
    dev_key = task.metrics[0]
    template = default_template(task.template)
    for enc in methods:
        for seed in range(seeds):
            if (enc, seed) in done:
                continue
            best = None
            for lr in lrs:          # model selection on dev32 only: the lr with the best dev score
                run = train_one(lm, task, encoder=enc, template=template, seed=seed, train={**train, "lr": lr},
                                progress=False)
                dev = metric(run.metrics, dev_key, "dev")
                dev = run.metrics.get("dev_p_at_1") if dev is None else dev
                if best is None or (dev or 0) > best[0]:
                    best = (dev or 0, lr, run.metrics)
            dev, lr, m = best
            row = {"task": task.name, "encoder": enc, "seed": seed, "lr": lr, "dev": dev,
                   "train_seconds": m.get("train_seconds"), **{f"test_{k}": metric(m, k) for k in task.metrics}}
            rows.append(row)
            save(rows)
            log(f"  {task.name:<8} {enc:<7} seed {seed} lr {lr:g}: dev {dev:.3f} "
                + " ".join(f"{k} {row[f'test_{k}']:.3f}" if row[f"test_{k}"] is not None else f"{k} n/a"
                           for k in task.metrics))
    return rows


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    return f"{mean * 100:.1f}" + (f" ± {statistics.stdev(values) * 100:.1f}" if len(values) > 1 else "")


def markdown(results: dict[str, list[dict]], metrics_of: dict[str, tuple]) -> str:
    """One column per (task, metric), one row per method: mean ± std over seeds, in points."""
    tasks = [t for t in FEWGLUE if t in results]
    cols = [(t, m) for t in tasks for m in metrics_of[t]]
    head = "| method | " + " | ".join(f"{t} {m}" for t, m in cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    order = ["majority", "manual", *METHODS]
    lines = []
    for enc in order:
        cells = [_cell([r.get(f"test_{m}") for r in results[t] if r["encoder"] == enc]) for t, m in cols]
        if any(c != "n/a" for c in cells) or enc in ("majority", "manual"):
            lines.append(f"| {enc} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def verdicts(results: dict[str, list[dict]], metrics_of: dict[str, tuple], sizes: dict[str, int]) -> list[str]:
    """One sentence per task, computed from the rows: does the best trained method beat both baselines?

    "Beats" means its mean is above the better of majority and manual by more than two standard errors
    of that baseline's score on the test size (sqrt(p (1 - p) / n)) and by more than its seed std."""
    lines = []
    for t in [t for t in FEWGLUE if t in results]:
        m = metrics_of[t][0]
        value = {enc: [r.get(f"test_{m}") for r in results[t] if r["encoder"] == enc and r.get(f"test_{m}") is not None]
                 for enc in ["majority", "manual", *METHODS]}
        trained = {e: v for e, v in value.items() if v and e in METHODS}
        if not trained or not value["majority"]:
            continue
        base_name = max(("majority", "manual"), key=lambda e: statistics.fmean(value[e]) if value[e] else -1)
        base = statistics.fmean(value[base_name])
        best = max(trained, key=lambda e: statistics.fmean(trained[e]))
        mean = statistics.fmean(trained[best])
        std = statistics.stdev(trained[best]) if len(trained[best]) > 1 else 0.0
        se = (base * (1 - base) / max(sizes.get(t, 1), 1)) ** 0.5
        gap = mean - base
        if gap > 2 * se and gap > std:
            lines.append(f"- **{t}**: {best} leads with {mean * 100:.1f} {m}, {gap * 100:+.1f} points over {base_name} "
                         f"({base * 100:.1f}); that is more than two standard errors ({2 * se * 100:.1f}) and its seed "
                         f"std ({std * 100:.1f}): a real gain.")
        else:
            lines.append(f"- **{t}**: the best method, {best}, has {mean * 100:.1f} {m} against {base_name}'s "
                         f"{base * 100:.1f} ({gap * 100:+.1f} points; two standard errors {2 * se * 100:.1f}, seed std "
                         f"{std * 100:.1f}): no method beats the baselines here, it stays at chance.")
    return lines


def fewglue_main(args, argv) -> int:
    from ptuning_lab import checkpoint as ckpt
    from ptuning_lab.frozen_lm import FrozenLM
    from ptuning_lab.tasks import load_task

    if args.quick:
        args.seeds, args.max_steps, args.eval_every = QUICK["seeds"], QUICK["max_steps"], QUICK["eval_every"]
        args.max_test = args.max_test or QUICK["max_test"]
    names = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in names if t not in FEWGLUE]
    if unknown:
        raise SystemExit(f"error: unknown FewGLUE task {unknown}; choose from {', '.join(FEWGLUE)}.")
    out = Path(args.out)
    if args.collect:
        return write_table(args, out)
    tasks = [load_task(t, data_dir=args.data_dir, source="files", max_examples=args.max_test) for t in names]
    lm = FrozenLM.load(args.model, device=args.device)
    methods = [m for m in args.methods.split(",") if m]
    lrs = [float(x) for x in args.lrs.split(",")]
    train = {"max_steps": args.max_steps, "eval_every": args.eval_every, "batch_size": args.batch_size}
    for task in tasks:
        start = time.perf_counter()

        def save(rows, task=task, start=start, done=False):
            part = {"task": task.name, "metrics": list(task.metrics), "test_size": len(task.test), "model": lm.name,
                    "command": " ".join(["python", "benchmarks/fewglue.py", *argv]),
                    "date": str(datetime.date.today()), "device": _device(lm),
                    "seconds": round(time.perf_counter() - start, 1), "seeds": args.seeds, "complete": done,
                    "settings": {"lrs": args.lrs, "max_steps": args.max_steps, "batch_size": args.batch_size},
                    "rows": rows}
            name = f"fewglue.{args.part}.json" if args.part else "fewglue.json"
            ckpt.write_json(out / task.name / name, part)              # atomic: a kill leaves the last whole file

        held = {(r["encoder"], r.get("seed")) for p in _parts(out / task.name) for r in p["rows"]} if args.resume else set()
        save(run_task(lm, task, methods, args.seeds, lrs, train, lambda line: print(line, flush=True), save,
                      frozenset(held)), done=True)
    return write_table(args, out)


def _parts(task_dir: Path) -> list[dict]:
    """Every part file of one task (``fewglue.json``, ``fewglue.<part>.json``), oldest name first."""
    return [json.loads(p.read_text()) for p in sorted(task_dir.glob("fewglue*.json"))]


def _merge(parts: list[dict]) -> dict:
    """One task's parts as one: rows unique by (method, seed), the first part's baselines; how each was made."""
    rows, seen = [], set()
    for p in parts:
        for r in p["rows"]:
            if (r["encoder"], r.get("seed")) not in seen:
                seen.add((r["encoder"], r.get("seed")))
                rows.append(r)
    merged = {**parts[0], "rows": rows, "seconds": sum(p.get("seconds", 0) for p in parts),
              "commands": list(dict.fromkeys(p["command"] for p in parts))}
    seeds = max(p.get("seeds", 0) for p in parts)
    methods = [m for m in METHODS if any(r["encoder"] == m for r in rows)]
    merged["missing"] = [f"{m} seed {s}" for m in methods for s in range(seeds) if (m, s) not in seen]
    # complete when every (method, seed) is there; a part holding baselines only is complete if it says so
    merged["complete"] = not merged["missing"] if methods else all(p.get("complete", True) for p in parts)
    return merged


def write_table(args, out: Path) -> int:
    """The table of every task found in ``out`` (its ``<task>/fewglue*.json`` parts), with how each was made."""
    from ptuning_lab import checkpoint as ckpt

    parts = [_merge(_parts(d)) for d in sorted(out.iterdir()) if d.is_dir() and _parts(d)] if out.is_dir() else []
    if not parts:
        raise SystemExit(f"error: no */fewglue.json under {out}; run some tasks first (without --collect).")
    parts.sort(key=lambda p: FEWGLUE.index(p["task"]))
    results = {p["task"]: p["rows"] for p in parts}
    metrics_of = {p["task"]: tuple(p["metrics"]) for p in parts}
    table = markdown(results, metrics_of)
    sizes = ", ".join(f"{p['task']} {p['test_size']}" for p in parts)
    made = "\n".join(f"- {p['task']}: {len(p['commands'])} command(s), {p.get('date', '?')}, model `{p['model']}`, "
                     f"{p.get('device', '?')}, {p.get('seconds', float('nan')) / 60:.1f} process-minutes"
                     + (f" (**not run**: {', '.join(p['missing'])})" if p.get("missing") else
                        "" if p.get("complete", True) else " (**cut short**: only the runs shown)") for p in parts)
    one = parts[0]["commands"][0]
    first = parts[0].get("settings", {"lrs": args.lrs, "max_steps": args.max_steps, "batch_size": args.batch_size})
    seeds = sorted({p.get("seeds", args.seeds) for p in parts})
    text = (f"# FewGLUE_32dev: manual prompt, majority class and P-tuning\n\n"
            f"Made by one command per task (or per task and method: `--methods M --resume --part M`), run in "
            f"parallel; each part's exact command is in its `<task>/fewglue*.json` under `{out}`, e.g.\n\n"
            f"    {one}\n\n"
            f"and `python benchmarks/fewglue.py fewglue --collect --out {out} --table {args.table}` rebuilds this page. "
            f"Process-minutes add up parts that shared one GPU, so they are not speed measurements.\n\n"
            f"{made}\n\n"
            f"Test = SuperGLUE validation ({sizes} examples; capped by --max-test), in points, mean ± std over "
            f"{'/'.join(map(str, seeds))} seed(s). 32 train examples, 32 dev (dev32) choose the best checkpoint (on "
            f"the task's first metric) and the lr (from {first['lrs']}); template `[P]*3 <PVP> [P]*3`, "
            f"{first['max_steps']} steps of batch {first['batch_size']}. Metrics: accuracy; CB accuracy + macro-F1; "
            f"MultiRC F1a + EM over questions. `majority` predicts train's most frequent label; `manual` is the "
            f"PVP without virtual tokens.\n\n{table}\n"
            f"What the numbers say (computed from the rows above):\n\n"
            + "\n".join(verdicts(results, metrics_of, {p["task"]: p["test_size"] for p in parts})) + "\n")
    ckpt.write_text(args.table, text)
    print(text)
    return 0


def _device(lm) -> str:
    import torch

    return str(lm.device) + (f" ({torch.cuda.get_device_name()})" if lm.device.type == "cuda" else
                             f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")


def relations_main(args, argv) -> int:
    """The probe suite (benchmarks/probe_suite.py) over gensim's analogy relations."""
    sys.path.insert(0, str(HERE))
    import probe_suite

    from ptuning_lab.tasks import ANALOGIES

    names = args.tasks or ",".join(ANALOGIES)
    quick = ["--seeds", "1", "--max-steps", "2", "--eval-every", "1"] if args.quick else \
        ["--seeds", str(args.seeds), "--max-steps", str(args.max_steps), "--eval-every", str(args.eval_every)]
    return probe_suite.main(["--model", args.model, *(["--device", args.device] if args.device else []),
                             "--tasks", names, "--methods", args.methods, *quick, "--out", args.out,
                             "--table", args.table, "--title", "Relations from gensim's analogy questions: manual "
                             "prompt vs P-tuning", *(["--collect"] if args.collect else [])])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=["fewglue", "relations"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--tasks", default=None, help="Comma-separated (default: all of the suite).")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lrs", default="3e-3", help="Learning rates tried per run; the best on dev32 is kept.")
    p.add_argument("--max-test", type=int, default=None, help="Cap the test split (SuperGLUE validation).")
    p.add_argument("--data-dir", default=None, help="FewGLUE_32dev directory (default: $PTUNING_LAB_FEWGLUE).")
    p.add_argument("--quick", action="store_true", help="Smoke run: 1 seed, 2 steps, 8 test examples.")
    p.add_argument("--resume", action="store_true",
                   help="Skip the (method, seed) runs a task's files under --out already hold.")
    p.add_argument("--part", default=None,
                   help="Write <task>/fewglue.PART.json (parallel commands on one task each write their own part).")
    p.add_argument("--collect", action="store_true",
                   help="Train nothing: rebuild the table from every <task>/fewglue.json under --out.")
    p.add_argument("--out", default=None)
    p.add_argument("--table", default=None)
    args = p.parse_args(argv)
    if args.suite == "relations":
        args.out = args.out or "runs/relations"
        args.table = args.table or "docs/relations.md"
        args.max_steps = args.max_steps if "--max-steps" in argv else 60
        return relations_main(args, argv)
    args.tasks = args.tasks or ",".join(FEWGLUE)
    args.out = args.out or "runs/fewglue"
    args.table = args.table or "docs/fewglue.md"
    return fewglue_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
