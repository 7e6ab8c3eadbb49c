"""Experiments: train one run, compare methods over seeds, score the manual prompt.

What the notebooks, the benchmarks, the report and the command line call. Each function returns a
typed result; the metrics are the same dicts the run directories hold (``metrics.json``,
``summary.json``), so a number in a notebook is the number on disk.

    >>> import ptuning_lab as pl
    >>> lm, task = pl.FrozenLM.load(), pl.load_task("capital")
    >>> pl.default_template(task.template)             # "[P]*3 The capital of [X] is [P]*3"
    >>> run = pl.train_one(lm, task, encoder="mlp", train={"max_steps": 40})     # doctest: +SKIP
    >>> run.metrics["test_p_at_1"], run.prompt.shape                              # doctest: +SKIP
    (0.61, torch.Size([6, 576]))
    >>> result = pl.compare(lm, [task], ["mlp", "direct"], seeds=3, train={"max_steps": 40},
    ...                     out="runs/compare")                                  # doctest: +SKIP
    >>> result.summary[0]["test_p_at_1"], result.summary[0]["test_p_at_1_std"]   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from . import checkpoint as ckpt
from . import distributed, rundir
from .templates import Template
from .trainer import TrainConfig, TrainResult

DEFAULT_VIRTUAL = 3


def default_template(manual: str, num_virtual_tokens: int = DEFAULT_VIRTUAL) -> str:
    """The hybrid P-tuning template: virtual tokens before and after the manual words.

    ``"The capital of [X] is"`` -> ``"[P]*3 The capital of [X] is [P]*3"``.
    """
    return f"[P]*{num_virtual_tokens} {manual} [P]*{num_virtual_tokens}"


def default_init(template: str) -> str:
    """Start each virtual token as the manual word beside it: ``"text:The capital of is is is"``.

    ``[P]``s before the manual words start as those words in order ("The capital of"); ``[P]``s
    after a word start as copies of that word ("is is is"); a template with no ``[P]`` (a prefix,
    whose virtual tokens all come first) gets the words cycled. Chosen from
    ``benchmarks/init_table.py`` (docs/init_table.md): the template's words cycled over the slots
    (the earlier default) put "is The capital" between "is" and the answer, and its step-0 dev loss
    on 'capital' (14.2) was worse than random vectors' (8.7) and the manual prompt's (4.4); with the
    word beside each slot it is 7.1, the lowest of every init measured on all four relations. No
    init keeps the manual prompt's P@1 at step 0 while [P]s sit between the last word and the
    answer: training has to recover it. A word of several tokens shifts the later slots; pass
    ``init="text:..."`` to choose the tokens exactly.
    """
    t = Template.parse(template)
    words = t.manual_text().replace("[X]", " ").split()
    if not words:
        return "text:the"
    if not t.num_virtual_tokens:
        return "text:" + " ".join(words)
    slots, seen, run = [], [], 0
    for kind, value in (*t.parts, ("end", "")):
        if kind == "p":
            run += 1
            continue
        if run:   # a run of [P]s ends: copies of the last word read so far, or the words after it
            slots += [seen[-1]] * run if seen else (words * run)[:run]
            run = 0
        if kind == "text":
            seen += value.split()
    return "text:" + " ".join(slots)


@dataclass
class RunResult:
    """One trained run: its metrics (exactly what ``metrics.json`` holds) and what the trainer produced.

    ``prompt`` is the best-dev prompt, (num_virtual_tokens, hidden_size) for input-layer methods;
    ``history`` holds the training losses and dev scores (``{"train": [...], "eval": [...]}``).
    """

    metrics: dict = field(metadata={"help": "task, encoder, seed, template, test/dev scores, params, steps, ..."})
    train_result: TrainResult = field(metadata={"help": "The Trainer's result: encoder, prompt, history, snapshots."})
    init: str = field(default="", metadata={"help": "The init the prompt encoder started from (after 'auto')."})
    out: Path | None = field(default=None, metadata={"help": "The run directory written, or None."})

    @property
    def prompt(self) -> torch.Tensor:
        return self.train_result.prompt

    @property
    def history(self) -> dict:
        return self.train_result.history

    @property
    def encoder(self) -> torch.nn.Module:
        return self.train_result.encoder

    @property
    def template(self) -> str:
        return self.metrics["template"]


@dataclass
class CompareResult:
    """A comparison: one metrics row per run (manual baselines included) and their mean/std per method.

    ``rows`` and ``summary`` are what ``summary.json`` holds; ``runs`` maps ``(task, encoder, seed)``
    to each trained :class:`RunResult` (the manual baselines train nothing, so they have no entry).
    """

    rows: list[dict]
    summary: list[dict]
    runs: dict[tuple[str, str, int], RunResult] = field(default_factory=dict)
    out: Path | None = None


def _train_config(train, seed: int) -> TrainConfig:
    """``train`` (None, a dict of TrainConfig fields, or a TrainConfig) with ``seed`` as its seed."""
    if train is None:
        return TrainConfig(seed=seed)
    if isinstance(train, TrainConfig):
        if train.seed not in (seed, TrainConfig.seed):
            raise ValueError(f"train has seed={train.seed} but train_one got seed={seed}; pass the seed once, "
                             "as train_one(..., seed=...).")
        return dataclasses.replace(train, seed=seed)
    train = dict(train)
    if "seed" in train:
        raise ValueError("pass the seed as train_one(..., seed=...), not inside train.")
    return TrainConfig(seed=seed, **train)


def train_one(lm, task, *, encoder: str = "mlp", template: str | None = None, init: str = "auto", seed: int = 0,
              train: dict | TrainConfig | None = None, out=None, resume: bool = False, overwrite: bool = False,
              break_lock: bool = False, progress: bool = True, encoder_config=None,
              callbacks: Iterable = (), report_to: str = "none") -> RunResult:
    """Train one prompt encoder on one task, score it on the test split; write the run dir when ``out``.

    Args:
        encoder: the method, ``"mlp"``, ``"lstm"``, ``"direct"`` or ``"prefix"``.
        template: with [P] and [X] (default :func:`default_template` of the task's manual template). For
            ``"prefix"`` the [P] count sets the virtual tokens and the [P]s are dropped.
        init: ``"auto"`` (:func:`default_init`: each [P] as the manual word beside it), ``"random"``, ``"vocab"``,
            or ``"text:some words"``.
        seed: the encoder's initialisation and the data order (``TrainConfig.seed``).
        train: :class:`TrainConfig` or a dict of its fields (``{"max_steps": 40, "lr": 3e-3}``).
        out: run directory (config, prompt, history and ``metrics.json``); None writes nothing. A
            directory holding files is refused unless ``resume`` (continue it) or ``overwrite`` (replace a
            run of ours: the new run is written beside it and renamed into place when it is complete);
            ``break_lock`` removes a dead process's lock. See :mod:`ptuning_lab.rundir`.
        report_to: ``"none"``, ``"tensorboard"`` (event files in ``out/tensorboard/``) or ``"wandb"``
            (offline unless ``WANDB_MODE`` says otherwise): train loss, lr, dev metrics, config and the
            final metrics, through Accelerate's trackers (:mod:`ptuning_lab.tracking`). Needs ``out``.
    """
    from . import tracking
    from .evaluation import evaluate
    from .prompts import KEY_VALUE, build_encoder, produces
    from .trainer import Trainer

    template = template or default_template(task.template)
    n = Template.parse(template).validate(need_virtual=True).num_virtual_tokens
    extra = {}
    if produces(encoder) == KEY_VALUE:
        # prefix tuning puts its virtual tokens in every layer's keys/values, not at [P] slots: the template's
        # [P] count is its num_virtual_tokens and the [P]s are dropped, so one template serves every method
        template, extra = Template.parse(template).manual_text(), {"lm": lm}
    init = default_init(template) if init == "auto" else init
    config = _train_config(train, seed)
    prompt_encoder = build_encoder(encoder, n, lm.embedding.detach(), init=init, tokenize=lm.tokenize, seed=seed,
                                   config=encoder_config, **extra)
    out = Path(out) if out is not None else None
    if tracking.check_report_to(report_to) != "none" and out is None:      # before any file or step
        raise tracking.TrackingError(f"report_to={report_to!r} needs a run directory: pass out= (CLI: --out).")
    # checked and locked before anything is written; an exception below leaves an old run whole
    claim = rundir.claim(out, overwrite=overwrite, resume=resume, break_lock=break_lock) if out else None
    with claim or contextlib.nullcontext() as write_dir:
        # the tracker writes inside the directory being written, so its files move with the finished run
        tracker = tracking.callback_for(report_to, write_dir, {"task": task.name, "encoder": encoder})
        callbacks = [*callbacks, tracker] if tracker else list(callbacks)
        trainer = Trainer(lm, prompt_encoder, task, template, config, out_dir=write_dir, progress=progress,
                          callbacks=callbacks, run_config={"task": task.name, "init": init})
        result = trainer.fit(resume=resume)
        prompt = result.prompt.to(lm.device)       # test split shared out across the ranks under a launch
        test = trainer.dist.evaluate(lambda examples: evaluate(lm, template, examples, prompt, answers=task.answers,
                                                               keep_predictions=trainer.dist.world_size > 1,
                                                               **task_scoring(task)), task.test)
        metrics = {"task": task.name, "encoder": encoder, "seed": seed, "template": template,
                   "test_p_at_1": test["p_at_1"], "test_candidate_accuracy": test["candidate_accuracy"],
                   **task_metrics(task, test), "dev_p_at_1": result.best_dev.get("p_at_1"),
                   **{f"dev_{m}": result.best_dev[m] for m in task.metrics if m != "p_at_1" and m in result.best_dev},
                   "trainable_params": prompt_encoder.num_trainable_parameters(),
                   "train_seconds": round(result.seconds, 2), "steps": trainer.step, "best_step": result.best_step,
                   "stopped": result.stopped}
        if write_dir and trainer.dist.is_main_process:
            ckpt.write_json(write_dir / "metrics.json", metrics)
        if tracker:
            tracker.finish(metrics)              # the test metrics as final/*, then the tracker is closed
    return RunResult(metrics=metrics, train_result=result, init=init, out=out)


def baseline(lm, task) -> dict:
    """The manual prompt's test metrics (the row ``encoder="manual"`` of a comparison; nothing trains)."""
    from .evaluation import evaluate

    test = evaluate(lm, task.template, task.test, answers=task.answers, **task_scoring(task))
    return {"task": task.name, "encoder": "manual", "template": task.template, "test_p_at_1": test["p_at_1"],
            "test_candidate_accuracy": test["candidate_accuracy"], **task_metrics(task, test), "trainable_params": 0}


def majority(task) -> dict:
    """The majority-class baseline of a classification or multiple-choice task: train's most frequent
    label (ties: the first by name) predicted for every test example, scored with the task's metrics."""
    from collections import Counter

    from .metrics import label_metrics

    if task.kind == "relation":
        raise ValueError(f"{task.name} is a relation: it has no labels to count; compare with baseline() instead.")
    counts = Counter(ex.label for ex in task.train)
    label = max(sorted(counts), key=lambda k: counts[k])
    gold = [ex.label for ex in task.test]
    labels = task.labels or sorted(set(gold) | {label})
    scores = label_metrics(task.metrics, gold, [label] * len(gold), labels, [ex.group for ex in task.test])
    return {"task": task.name, "encoder": "majority", "label": label, "trainable_params": 0,
            **{f"test_{m}": v for m, v in scores.items()}}


def task_scoring(task) -> dict:
    """What ``evaluation.evaluate`` needs to know of ``task``: its label words and its metrics."""
    return {"verbalizer": task.verbalizer, "metrics": task.metrics}


def task_metrics(task, test: dict) -> dict:
    """``test_<metric>`` for each of the task's metrics (P@1 is reported already)."""
    return {f"test_{m}": test[m] for m in task.metrics if m != "p_at_1" and m in test}


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Group per (task, encoder): mean and sample std (n - 1) of the test metrics across seeds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["task"], r["encoder"]), []).append(r)
    out = []
    for (task, enc), rs in groups.items():
        p, p_sd = _mean_std([r["test_p_at_1"] for r in rs])
        c, c_sd = _mean_std([r["test_candidate_accuracy"] for r in rs])
        s, _ = _mean_std([r.get("train_seconds") for r in rs])
        row = {"task": task, "encoder": enc, "seeds": len(rs), "test_p_at_1": p, "test_p_at_1_std": p_sd,
               "test_candidate_accuracy": c, "test_candidate_accuracy_std": c_sd,
               "trainable_params": rs[0]["trainable_params"], "train_seconds": s}
        if all("test_exact_match" in r for r in rs):        # relations: the whole answer (greedy) is right
            row["test_exact_match"], row["test_exact_match_std"] = _mean_std([r["test_exact_match"] for r in rs])
        out.append(row)
    return out


def _plain_report(summary, model_name) -> str:
    import html

    body = "".join(f"<tr>{''.join(f'<td>{html.escape(str(v))}</td>' for v in r.values())}</tr>" for r in summary)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (summary[0] if summary else {}))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ptuning_lab report</title></head><body>"
            f"<h1>ptuning_lab comparison ({html.escape(model_name)})</h1><table>{head}{body}</table></body></html>")


def _print_now(line: str) -> None:
    print(line, flush=True)            # a long comparison reports each run as it finishes


def compare(lm, tasks, encoders: Sequence[str], seeds: int | Sequence[int], train: dict | TrainConfig | None,
            out, template: str | None = None, init: str = "auto", progress: bool = True, overwrite: bool = False,
            log: Callable[[str], None] | None = None, report_to: str = "none") -> CompareResult:
    """The manual baseline, then each encoder x seed on each task; writes summary.json and report.html.

    Args:
        seeds: how many seeds (``3`` -> seeds 0, 1, 2) or the seeds themselves (``[0, 5]``).
        train, template, init: as :func:`train_one`, the same for every run.
        out: the comparison directory; run ``k`` of an encoder lands in ``out/<task>/<encoder>-seed<k>/``.
            A directory that already holds files is refused unless ``overwrite=True`` replaces a comparison
            of ours (written beside it, swapped in when complete; see :mod:`ptuning_lab.rundir`).
        log: receives one line per finished run (default: print it at once; ``log=lambda line: None``: silent).
    """
    log = log or _print_now
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not encoders or not seeds or not tasks:
        raise ValueError(f"nothing to compare: {len(tasks)} task(s), {len(encoders)} encoder(s), {len(seeds)} "
                         "seed(s); give at least one of each (CLI: --task, --encoders, --seeds).")
    out = Path(out)
    rows, runs = [], {}
    # the whole comparison is one unit: with overwrite it is written beside the old one and swapped in at the end
    with rundir.claim(out, overwrite=overwrite, kind="compare") as write_dir:
        for task in tasks:
            rows.append(baseline(lm, task))
            for enc in encoders:
                for seed in seeds:
                    where = Path(task.name) / f"{enc}-seed{seed}"
                    run = train_one(lm, task, encoder=enc, template=template, init=init, seed=seed, train=train,
                                    out=write_dir / where, progress=progress, report_to=report_to)
                    runs[(task.name, enc, seed)] = run = dataclasses.replace(run, out=out / where)
                    rows.append(run.metrics)
                    log(f"  {task.name:<10} {enc:<7} seed {seed}: test P@1 {run.metrics['test_p_at_1']:.3f} "
                        f"({run.metrics['train_seconds']:.0f} s)")
        result = CompareResult(rows=rows, summary=summarize(rows), runs=runs, out=out)
        if distributed.is_main_process():       # under a launch the main process writes summary and report
            ckpt.write_json(write_dir / "summary.json", {"model": lm.name, "rows": rows, "summary": result.summary})
            try:
                from .report import write_report

                write_report(write_dir, lm=lm, summary=result.summary, rows=rows)
            except ImportError:                          # plotly missing: the table alone
                ckpt.write_text(write_dir / "report.html", _plain_report(result.summary, lm.name))
    return result


__all__ = ["DEFAULT_VIRTUAL", "RunResult", "CompareResult", "default_template", "default_init", "train_one", "majority",
           "baseline", "summarize", "compare"]
