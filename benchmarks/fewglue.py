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

Scoring of label words and multiple choice (COPA) and the metrics macro-F1, F1a and EM are the
``verbalizers`` work of issue 17 (``evaluate`` reporting ``Task.metrics``); where a run's metrics lack
``test_<metric>`` the cell says n/a rather than show another number under that name.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEWGLUE = ("boolq", "cb", "copa", "multirc", "rte", "wic", "wsc")
METHODS = ("mlp", "lstm", "direct", "prefix")
QUICK = {"seeds": 1, "max_steps": 2, "eval_every": 1, "max_test": 8}


def classification_metrics(gold: list[str], pred: list[str], groups: list | None = None,
                           positive: str = "True") -> dict:
    """accuracy, macro-F1 over the gold labels, F1 of ``positive`` over all answers (F1a) and EM per group."""
    n = len(gold)
    out = {"accuracy": sum(g == p for g, p in zip(gold, pred)) / n}
    f1s = []
    for label in sorted(set(gold)):
        tp = sum(g == p == label for g, p in zip(gold, pred))
        fp = sum(p == label != g for g, p in zip(gold, pred))
        fn = sum(g == label != p for g, p in zip(gold, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    out["f1_macro"] = statistics.fmean(f1s)
    tp = sum(g == p == positive for g, p in zip(gold, pred))
    fp = sum(p == positive != g for g, p in zip(gold, pred))
    fn = sum(g == positive != p for g, p in zip(gold, pred))
    out["f1a"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    if groups is not None:
        right: dict = {}
        for g, p, k in zip(gold, pred, groups):
            right[k] = right.get(k, True) and g == p
        out["em"] = statistics.fmean(right.values())
    return out


def majority(task) -> dict:
    """The train split's most frequent label (ties: the first in label order) predicted for every test example."""
    counts = Counter(e.label for e in task.train)
    label = max(sorted(counts), key=lambda k: counts[k])
    gold = [e.label for e in task.test]
    groups = [e.group for e in task.test] if any(e.group for e in task.test) else None
    scores = classification_metrics(gold, [label] * len(gold), groups)
    return {"task": task.name, "encoder": "majority", "seed": None,
            **{f"test_{m}": scores[m] for m in task.metrics}}


def metric(row: dict, name: str, split: str = "test"):
    """``<split>_<name>`` of a run's metrics; accuracy falls back to today's candidate accuracy (the same
    number for one label word per label: the best-scoring label word among the labels' words)."""
    value = row.get(f"{split}_{name}")
    if value is None and name == "accuracy":
        value = row.get(f"{split}_candidate_accuracy")
    return value


def run_task(lm, task, methods, seeds, lrs, train, log) -> list[dict]:
    from ptuning_lab.experiments import baseline, default_template, train_one

    rows = [majority(task)]
    manual = baseline(lm, task)
    rows.append({**manual, **{f"test_{m}": metric(manual, m) for m in task.metrics}})
    dev_key = task.metrics[0]
    template = default_template(task.template)
    for enc in methods:
        for seed in range(seeds):
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


def fewglue_main(args, argv) -> int:
    from ptuning_lab.frozen_lm import FrozenLM
    from ptuning_lab.tasks import load_task

    if args.quick:
        args.seeds, args.max_steps, args.eval_every = QUICK["seeds"], QUICK["max_steps"], QUICK["eval_every"]
        args.max_test = args.max_test or QUICK["max_test"]
    names = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in names if t not in FEWGLUE]
    if unknown:
        raise SystemExit(f"error: unknown FewGLUE task {unknown}; choose from {', '.join(FEWGLUE)}.")
    tasks = [load_task(t, data_dir=args.data_dir, source="files", max_examples=args.max_test) for t in names]
    lm = FrozenLM.load(args.model, device=args.device)
    methods = [m for m in args.methods.split(",") if m]
    lrs = [float(x) for x in args.lrs.split(",")]
    train = {"max_steps": args.max_steps, "eval_every": args.eval_every, "batch_size": args.batch_size}
    out = Path(args.out)
    start = time.perf_counter()
    for task in tasks:
        rows = run_task(lm, task, methods, args.seeds, lrs, train, lambda line: print(line, flush=True))
        (out / task.name).mkdir(parents=True, exist_ok=True)
        part = {"task": task.name, "metrics": list(task.metrics), "test_size": len(task.test), "model": lm.name,
                "command": " ".join(["python", "benchmarks/fewglue.py", *argv]), "rows": rows}
        tmp = out / task.name / "fewglue.json.tmp"
        tmp.write_text(json.dumps(part, indent=1))
        tmp.replace(out / task.name / "fewglue.json")
    seconds = time.perf_counter() - start
    parts = [json.loads(p.read_text()) for p in sorted(out.glob("*/fewglue.json"))]
    results = {p["task"]: p["rows"] for p in parts}
    table = markdown(results, {p["task"]: tuple(p["metrics"]) for p in parts})
    sizes = ", ".join(f"{p['task']} {p['test_size']}" for p in parts)
    device = _device(lm)
    text = (f"# FewGLUE_32dev: manual prompt, majority class and P-tuning\n\n"
            f"`{' '.join(['python', 'benchmarks/fewglue.py', *argv])}` — {datetime.date.today()}, model "
            f"`{lm.name}`, device {device}, {seconds / 60:.1f} min for this part.\n\n"
            f"Test = SuperGLUE validation ({sizes} examples), in points, mean ± std over {args.seeds} seed(s). "
            f"32 train examples, 32 dev (dev32) for the best checkpoint and the lr (from {args.lrs}); template "
            f"`[P]*3 <PVP> [P]*3`, {args.max_steps} steps of batch {args.batch_size}. Metrics: accuracy; CB "
            f"accuracy + macro-F1; MultiRC F1a + EM over questions. `majority` predicts train's most frequent "
            f"label. Where a cell's mean lies within its std of `majority`, the method stays at chance.\n\n"
            f"{table}")
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)
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
                             "--table", args.table])


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
