"""Where does a prompt start? Step-0 dev loss and P@1 of every init on every relation (and, optionally, after training).

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/init_table.py                       # step 0 only: minutes on 2 cores
    HF_HUB_OFFLINE=1 python benchmarks/init_table.py --device cuda --train-steps 60   # also train an MLP from each

On cores that other work keeps busy, ``OMP_NUM_THREADS=1`` makes it several times faster (6 min on
2 lightly loaded cores, 15 min at a load average of 10 with 2 threads).

For each relation (capital, continent, language, currency) and each init, the default template
``[P]*3 <manual> [P]*3`` is scored on the dev split with the prompt the encoder starts from: dev
loss (cross-entropy of the answer's first token) and dev P@1. Rows:

- ``manual``: the manual template, no virtual tokens (what every init is measured against);
- ``auto``: what ``train_one(init="auto")`` starts from now (:func:`ptuning_lab.experiments.default_init`);
- ``text, cycled``: the template's words cycled over the six slots (``"text:The capital of is"``: the
  virtual tokens after "is" read "is The capital", the default before this table existed);
- ``text, at the slots``: each [P] starts as the manual word next to it (before the words:
  "The capital of", after them: "is is is");
- ``random``, ``vocab``: see :func:`ptuning_lab.prompts.base.initial_prompt`;
- ``mlp peft form``: ``MLPConfig(residual=False)``, whose start is ``f(x)`` of an untrained network
  (the residual MLP and LSTM start exactly at their init: the script checks it);
- ``[P]*6 before, text``: the same six virtual tokens, all before the manual words: what the
  trailing [P]s between "is" and the answer cost at step 0.

With ``--train-steps N`` each init also trains an MLP prompt encoder (seed 0, N steps, the
lesson's batch and lr) and the table adds its best dev P@1 and test P@1. The default init is the
one with the best mean dev P@1 after training (step-0 dev loss breaks ties); the test split is
reported, never used to choose. Writes a markdown table (default docs/init_table.md).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptuning_lab.evaluation import evaluate  # noqa: E402
from ptuning_lab.experiments import default_init, default_template, train_one  # noqa: E402
from ptuning_lab.frozen_lm import FrozenLM  # noqa: E402
from ptuning_lab.prompts import build_encoder  # noqa: E402
from ptuning_lab.tasks import load_task  # noqa: E402
from ptuning_lab.templates import Template  # noqa: E402

RELATIONS = ("capital", "continent", "language", "currency")
N = 3                                   # virtual tokens on each side, as default_template


def words_of(template: str) -> list[str]:
    return Template.parse(template).manual_text().replace("[X]", " ").split()


def text_cycled(template: str) -> str:
    return "text:" + " ".join(words_of(template))


def text_at_slots(template: str) -> str:
    """Each [P] as the manual word beside it: the first N words before, the last word repeated after."""
    words = words_of(template)
    return "text:" + " ".join((words * N)[:N] + [words[-1]] * N)


INITS = {"auto": default_init, "text, cycled": text_cycled, "text, at the slots": text_at_slots,
         "random": lambda t: "random", "vocab": lambda t: "vocab"}


def start_of(lm, init: str, n: int, encoder: str = "direct", config=None) -> torch.Tensor:
    enc = build_encoder(encoder, n, lm.embedding.detach(), init=init, tokenize=lm.tokenize, seed=0, config=config)
    with torch.no_grad():
        return enc().detach().to(lm.device)


def measure(lm, task, train_steps: int, batch_size: int, lr: float) -> list[dict]:
    template = default_template(task.template, N)
    rows, trained = [], {}

    def row(name, init, tpl, prompt, train_init=None):
        r = evaluate(lm, tpl, task.dev, prompt)
        out = {"task": task.name, "init": name, "init string": init, "template": tpl,
               "dev_loss": r["loss"], "dev_p_at_1": r["p_at_1"]}
        if train_steps and train_init is not None:
            if (tpl, train_init) not in trained:      # "auto" is one of the others: train it once
                run = train_one(lm, task, encoder="mlp", template=tpl, init=train_init, seed=0, progress=False,
                                train={"max_steps": train_steps, "eval_every": 10, "batch_size": batch_size, "lr": lr})
                trained[tpl, train_init] = {"trained_dev_p_at_1": run.metrics["dev_p_at_1"],
                                            "trained_test_p_at_1": run.metrics["test_p_at_1"]}
            out.update(trained[tpl, train_init])
        rows.append(out)

    row("manual", "", task.template, None)
    for name, make in INITS.items():
        init = make(template)
        prompt = start_of(lm, init, 2 * N)
        for residual in ("mlp", "lstm"):      # the residual encoders start exactly where direct does
            if not torch.allclose(start_of(lm, init, 2 * N, residual), prompt, atol=1e-6):
                raise AssertionError(f"{residual} with init {init!r} does not start at its init")
        row(name, init, template, prompt, train_init=init)
    peft = start_of(lm, default_init(template), 2 * N, "mlp", {"residual": False})
    row("mlp peft form", default_init(template) + " (residual=False)", template, peft)
    before = f"[P]*{2 * N} {task.template}"
    row("[P]*6 before, text", text_cycled(before), before, start_of(lm, text_cycled(before), 2 * N),
        train_init=text_cycled(before))
    return rows


def choose(rows: list[dict]) -> str:
    """The init (of INITS, the default template) with the best mean trained dev P@1, then the lowest step-0 loss."""
    def mean(name, key):
        values = [r[key] for r in rows if r["init"] == name and r.get(key) is not None]
        return statistics.fmean(values) if values else float("nan")
    trained = any("trained_dev_p_at_1" in r for r in rows)
    names = [n for n in INITS if n != "auto"]
    if trained:
        return max(names, key=lambda n: (mean(n, "trained_dev_p_at_1"), -mean(n, "dev_loss")))
    return min(names, key=lambda n: mean(n, "dev_loss"))


def markdown(rows: list[dict], tasks: list[str]) -> str:
    trained = any("trained_dev_p_at_1" in r for r in rows)
    by = {(r["task"], r["init"]): r for r in rows}
    names = list(dict.fromkeys(r["init"] for r in rows))
    cols = ["step-0 dev loss", "step-0 dev P@1"] + (["trained dev P@1", "trained test P@1"] if trained else [])
    keys = ["dev_loss", "dev_p_at_1"] + (["trained_dev_p_at_1", "trained_test_p_at_1"] if trained else [])
    head = "| init | " + " | ".join(f"{t}: {c}" for t in tasks for c in cols) + " |\n"
    head += "|---|" + "---|" * (len(tasks) * len(cols)) + "\n"
    lines = []
    for name in names:
        cells = []
        for t in tasks:
            r = by.get((t, name), {})
            cells += [("–" if r.get(k) is None else f"{r[k]:.2f}" if k == "dev_loss" else f"{r[k]:.3f}") for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    legend = "\n".join(f"- `{name}`: `{by[(tasks[0], name)]['init string'] or '(no virtual tokens)'}` on "
                       f"`{by[(tasks[0], name)]['template']}` ({tasks[0]})" for name in names)
    return head + "\n".join(lines) + "\n\n" + legend + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--tasks", default=",".join(RELATIONS))
    p.add_argument("--max-examples", type=int, default=150, help="examples per task (the lesson size)")
    p.add_argument("--train-steps", type=int, default=0, help="also train an MLP from each init (0: step 0 only)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--table", default=str(ROOT / "docs" / "init_table.md"))
    args = p.parse_args(argv)

    start = time.perf_counter()
    lm = FrozenLM.load(args.model, device=args.device, verbose=False)
    tasks = [load_task(t, max_examples=args.max_examples) for t in args.tasks.split(",")]
    rows = []
    for task in tasks:
        rows += measure(lm, task, args.train_steps, args.batch_size, args.lr)
        print(f"{task.name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    best = choose(rows)
    device = str(lm.device) + (f" ({torch.cuda.get_device_name()})" if lm.device.type == "cuda" else
                               f" ({platform.machine()}, {torch.get_num_threads()} threads)")
    cmd = " ".join(["python", "benchmarks/init_table.py", *(argv if argv is not None else sys.argv[1:])])
    how = (f"best mean trained dev P@1 over the {len(tasks)} relations (step-0 dev loss breaks ties)"
           if args.train_steps else f"lowest mean step-0 dev loss over the {len(tasks)} relations")
    text = (f"# Where a prompt starts: every init at step 0\n\n`{cmd}` — {datetime.date.today()}, model `{lm.name}`, "
            f"device {device}, {seconds / 60:.1f} min; {args.max_examples} examples per relation (dev split "
            f"{len(tasks[0].dev)} on {tasks[0].name})."
            + (f" Trained: MLP prompt encoder, seed 0, {args.train_steps} steps of batch {args.batch_size}, "
               f"lr {args.lr}, best dev checkpoint." if args.train_steps else "") + "\n\n"
            f"{markdown(rows, [t.name for t in tasks])}\n"
            f"Chosen from this table ({how}): **{best}**. `auto` is what `default_init` returns now.\n")
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
