"""The ``ptuning-lab`` command line: baseline, train, compare, decode, demo, warm-cache.

Every command takes ``--model`` (default ``auto``: GPT-2 where reachable, else the embedded
SmolLM2-135M). The JSON files each command writes are documented in README.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from . import distributed
from .templates import Template

DEFAULT_VIRTUAL = 3


def default_template(manual: str, num_virtual_tokens: int = DEFAULT_VIRTUAL) -> str:
    """The hybrid P-tuning template: virtual tokens before and after the manual words.

    ``"The capital of [X] is"`` -> ``"[P]*3 The capital of [X] is [P]*3"``.
    """
    return f"[P]*{num_virtual_tokens} {manual} [P]*{num_virtual_tokens}"


def default_init(template: str) -> str:
    """Start the prompt from the template's own words: ``"text:The capital of is"``.

    Random vectors placed next to the prediction position derail a small model at step 0 (dev loss
    rises from ~4 to ~11 on 'capital'); starting from real words keeps the manual prompt's knowledge.
    """
    words = Template.parse(template).manual_text().replace("[X]", " ").split()
    return "text:" + (" ".join(words) if words else "the")


# ---------------------------------------------------------------- building blocks
def load_lm(args):
    from .frozen_lm import FrozenLM

    lm = FrozenLM.load(args.model, device=distributed.device_for(args.device))   # cuda:LOCAL_RANK under a launch
    if getattr(args, "compile", None):
        lm.compile(mode=None if args.compile == "default" else args.compile)
    return lm


def load_task_arg(args):
    from .tasks import load_task

    return load_task(args.task, seed=args.data_seed, template=args.manual_template,
                     max_examples=args.max_examples)


def prepare_out_dir(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to write over another run unless asked to (under a launch, only the main process clears it)."""
    busy = out.exists() and any(out.iterdir()) and not resume
    distributed.wait_for_everyone()          # every rank has looked before the directory is cleared
    if busy:
        if not overwrite:
            raise SystemExit(f"error: {out} already holds files (another run?). Choose another --out, pass "
                             "--overwrite to replace it, or --resume to continue it.")
        if distributed.is_main_process():
            shutil.rmtree(out)
    distributed.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)


def train_one(lm, task, *, encoder_name: str, template: str | None, init: str, seed: int, train_kwargs: dict,
              out: Path | None = None, resume: bool = False, progress: bool = True, encoder_config=None,
              callbacks=()) -> dict:
    """Train one encoder on one task; return its metrics dict (and write the run dir when ``out``)."""
    from .prompts import build_encoder
    from .evaluation import evaluate
    from .templates import Template
    from .trainer import TrainConfig, Trainer

    template = template or default_template(task.template)
    n = Template.parse(template).validate(need_virtual=True).num_virtual_tokens
    extra = {}
    if encoder_name == "prefix":
        # prefix tuning puts its virtual tokens in every layer's keys/values, not at [P] slots: the template's
        # [P] count is its num_virtual_tokens and the [P]s are dropped, so one --template serves every method
        template, extra = Template.parse(template).manual_text(), {"lm": lm}
    init = default_init(template) if init == "auto" else init
    encoder = build_encoder(encoder_name, n, lm.embedding.detach(), init=init, tokenize=lm.tokenize, seed=seed,
                            config=encoder_config, **extra)
    config = TrainConfig(seed=seed, **train_kwargs)
    trainer = Trainer(lm, encoder, task, template, config, out_dir=out, progress=progress, callbacks=callbacks,
                      run_config={"task": task.name, "init": init})
    result = trainer.fit(resume=resume)
    prompt = result.prompt.to(lm.device)       # test split shared out across the ranks under a launch
    test = trainer.dist.evaluate(lambda examples: evaluate(lm, template, examples, prompt, answers=task.answers),
                                 task.test)
    metrics = {"task": task.name, "encoder": encoder_name, "seed": seed, "template": template,
               "test_p_at_1": test["p_at_1"], "test_candidate_accuracy": test["candidate_accuracy"],
               "dev_p_at_1": result.best_dev.get("p_at_1"), "trainable_params": encoder.num_trainable_parameters(),
               "train_seconds": round(result.seconds, 2), "steps": trainer.step, "best_step": result.best_step,
               "stopped": result.stopped}
    if out and trainer.dist.is_main_process:
        ckpt.write_json(out / "metrics.json", metrics)
    metrics["_result"] = result
    return metrics


def baseline_metrics(lm, task) -> dict:
    from .evaluation import evaluate

    test = evaluate(lm, task.template, task.test, answers=task.answers)
    return {"task": task.name, "encoder": "manual", "template": task.template, "test_p_at_1": test["p_at_1"],
            "test_candidate_accuracy": test["candidate_accuracy"], "trainable_params": 0}


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    """Group per (task, encoder): mean and std of the test metrics across seeds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["task"], r["encoder"]), []).append(r)
    out = []
    for (task, enc), rs in groups.items():
        p, p_sd = _mean_std([r["test_p_at_1"] for r in rs])
        c, c_sd = _mean_std([r["test_candidate_accuracy"] for r in rs])
        s, _ = _mean_std([r.get("train_seconds") for r in rs])
        out.append({"task": task, "encoder": enc, "seeds": len(rs), "test_p_at_1": p, "test_p_at_1_std": p_sd,
                    "test_candidate_accuracy": c, "test_candidate_accuracy_std": c_sd,
                    "trainable_params": rs[0]["trainable_params"], "train_seconds": s})
    return out


def format_table(summary: list[dict]) -> str:
    lines = [f"{'task':<10} {'method':<8} {'P@1 (test)':>15} {'cand. acc':>15} {'params':>10} {'train s':>8}"]
    for r in summary:
        lines.append(f"{r['task']:<10} {r['encoder']:<8} "
                     f"{r['test_p_at_1']:>8.3f} ± {r['test_p_at_1_std']:.3f} "
                     f"{r['test_candidate_accuracy']:>8.3f} ± {r['test_candidate_accuracy_std']:.3f} "
                     f"{r['trainable_params']:>10,} {r['train_seconds'] if r['train_seconds'] == r['train_seconds'] else 0:>8.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- commands
def cmd_baseline(args) -> int:
    lm = load_lm(args)
    task = load_task_arg(args)
    metrics = baseline_metrics(lm, task)
    print(json.dumps(metrics, indent=2))
    return 0


def _train_kwargs(args) -> dict:
    kw = {"lr": args.lr, "batch_size": args.batch_size, "num_epochs": args.epochs, "max_steps": args.max_steps,
          "eval_every": args.eval_every, "patience": args.patience}
    if getattr(args, "checkpoint_every", None):
        kw["checkpoint_every"] = args.checkpoint_every
    return {k: v for k, v in kw.items() if v is not None}


def cmd_train(args) -> int:
    from .prompts import check_method

    check_method(args.encoder, allow_prefix=True)      # typos fail at once, before the model loads
    task = load_task_arg(args)
    out = Path(args.out)
    prepare_out_dir(out, args.overwrite, resume=args.resume)
    lm = load_lm(args)
    metrics = train_one(lm, task, encoder_name=args.encoder, template=args.template, init=args.init,
                        seed=args.seed, train_kwargs=_train_kwargs(args), out=out, resume=args.resume)
    metrics.pop("_result")
    if distributed.is_main_process():
        print(json.dumps(metrics, indent=2))
    return 0


def run_compare(lm, tasks, encoders, seeds, train_kwargs, out: Path, template=None, init="auto",
                progress=True) -> dict:
    """Manual baseline + each encoder x seed on each task; writes summary.json and report.html."""
    rows, results = [], {}
    for task in tasks:
        rows.append(baseline_metrics(lm, task))
        for enc in encoders:
            for seed in range(seeds):
                run_dir = out / task.name / f"{enc}-seed{seed}"
                prepare_out_dir(run_dir, overwrite=True)
                m = train_one(lm, task, encoder_name=enc, template=template, init=init, seed=seed,
                              train_kwargs=train_kwargs, out=run_dir, progress=progress)
                results[(task.name, enc, seed)] = m.pop("_result")
                rows.append(m)
                print(f"  {task.name:<10} {enc:<7} seed {seed}: test P@1 {m['test_p_at_1']:.3f} "
                      f"({m['train_seconds']:.0f} s)", flush=True)
    summary = summarize(rows)
    if not distributed.is_main_process():       # under a launch the main process writes summary and report
        return {"rows": rows, "summary": summary, "results": results}
    ckpt.write_json(out / "summary.json", {"model": lm.name, "rows": rows, "summary": summary})
    try:
        from .report import write_report

        write_report(out, lm=lm, summary=summary, rows=rows)
    except ImportError:
        ckpt.write_text(out / "report.html", _plain_report(summary, lm.name))
    return {"rows": rows, "summary": summary, "results": results}


def _plain_report(summary, model_name) -> str:
    import html

    body = "".join(f"<tr>{''.join(f'<td>{html.escape(str(v))}</td>' for v in r.values())}</tr>" for r in summary)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (summary[0] if summary else {}))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ptuning_lab report</title></head><body>"
            f"<h1>ptuning_lab comparison ({html.escape(model_name)})</h1><table>{head}{body}</table></body></html>")


def cmd_compare(args) -> int:
    from .prompts import check_method
    from .tasks import load_task

    # every name is checked before anything trains: a typo in the last encoder must not cost the first runs
    encoders = [check_method(e.strip(), allow_prefix=True) for e in args.encoders.split(",") if e.strip()]
    tasks = [load_task(t, seed=args.data_seed, max_examples=args.max_examples) for t in args.task.split(",")]
    out = Path(args.out)
    prepare_out_dir(out, args.overwrite)
    lm = load_lm(args)
    start = time.perf_counter()
    res = run_compare(lm, tasks, encoders, args.seeds, _train_kwargs(args), out, template=args.template,
                      init=args.init, progress=not args.quiet)
    print(f"\nmodel: {lm.name}   ({time.perf_counter() - start:.0f} s)")
    print(format_table(res["summary"]))
    print(f"\nwrote {out / 'summary.json'} and {out / 'report.html'}")
    return 0


def cmd_decode(args) -> int:
    from .manifold import decode_run

    run = ckpt.load_run(args.run)
    if run.config["encoder"].get("method") == "prefix":      # K/V prefixes: nothing to decode; show their norms
        from .prompts import NOT_IN_VOCAB_SPACE, format_prefix_norms, prefix_from_run

        print(f"{args.run}: {NOT_IN_VOCAB_SPACE}\n\n{format_prefix_norms(prefix_from_run(run))}")
        return 0
    lm = load_lm(args) if args.model != "auto" else _lm_for_run(run, args)
    run.check_model(lm)
    print(decode_run(run, lm, k=args.k, word_like=args.word_like))
    return 0


def _lm_for_run(run, args):
    from .frozen_lm import FrozenLM

    return FrozenLM.load(run.config.get("model", "auto"), device=args.device)


def cmd_demo(args) -> int:
    lm = load_lm(args)
    print(f"model: {lm.name} ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters, "
          f"vocabulary {lm.vocab_size} x {lm.hidden_size})\n")
    print("Manual prompt as a knowledge probe: 'The capital of [X] is' ->")
    for country, top in zip(["France", "Japan", "Egypt", "Peru"],
                            lm.predict_next("The capital of [X] is", ["France", "Japan", "Egypt", "Peru"], k=3)):
        print(f"  {country:<8} " + ", ".join(f"{t!r} {p:.2f}" for t, p in top))
    args.task, args.encoders = "capital", args.encoders or "mlp,lstm,direct"
    args.max_steps = args.max_steps or 40          # about 20 s of training per method on 2 CPU cores
    print(f"\nP-tuning on 'capital' ({args.encoders}, {args.seeds} seed(s)); runs land in {args.out}")
    args.overwrite = True
    return cmd_compare(args)


def cmd_warm_cache(args) -> int:
    lm = load_lm(args)
    try:
        from .manifold import fit_projection, vocab_stats

        vocab_stats(lm.embedding.detach(), model_id=lm.name)
        fit_projection(lm.embedding.detach(), lm.token_strings, model_id=lm.name)
    except ImportError:
        pass
    print(f"cache warm for {lm.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptuning-lab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--model", default="auto", help="'auto' (GPT-2 where reachable, else the embedded "
                        "SmolLM2-135M), 'smollm2-135m', a Hugging Face id or a local path.")
        sp.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available).")
        sp.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the frozen model; on a GPU use --compile reduce-overhead (CUDA "
                             "graphs, about 2x faster steps on an H200). Each new batch shape compiles once (tens "
                             "of seconds): for long runs, not for a few dozen steps.")

    def task_args(sp, many=False):
        sp.add_argument("--task", default="capital", help="capital, continent, language, currency, polarity, or a "
                        "JSONL/CSV file" + (" (comma-separated list allowed)" if many else ""))
        sp.add_argument("--manual-template", default=None, help="Manual template for a task file (with [X]).")
        sp.add_argument("--data-seed", type=int, default=0, help="Seed of the train/dev/test split.")
        sp.add_argument("--max-examples", type=int, default=None, help="Use at most this many examples.")

    def train_args(sp):
        sp.add_argument("--template", default=None, help="Template with [P] and [X] (default: '[P]*3 <manual "
                        "template> [P]*3').")
        sp.add_argument("--init", default="auto", help="auto (the template's own words), random, vocab, or "
                        "text:\"some words\".")
        sp.add_argument("--lr", type=float, default=None, help="Peak learning rate (default: 1e-3 for lstm, 3e-3 for the others).")
        sp.add_argument("--batch-size", type=int, default=None)
        sp.add_argument("--epochs", type=int, default=None)
        sp.add_argument("--max-steps", type=int, default=None)
        sp.add_argument("--eval-every", type=int, default=None)
        sp.add_argument("--patience", type=int, default=None)
        sp.add_argument("--overwrite", action="store_true", help="Replace an existing --out directory.")

    sp = sub.add_parser("baseline", help="Manual-prompt metrics of a task.")
    common(sp); task_args(sp)
    sp.set_defaults(func=cmd_baseline)

    sp = sub.add_parser("train", help="Train one prompt encoder.")
    common(sp); task_args(sp); train_args(sp)
    sp.add_argument("--encoder", default="mlp", help="mlp, lstm, direct, or prefix (K/V prefixes at every layer; "
                    "the template's [P] count sets its virtual tokens).")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="Run directory to write.")
    sp.add_argument("--resume", action="store_true", help="Continue the run in --out from its last state.")
    sp.add_argument("--checkpoint-every", type=int, default=None, help="Write a resumable state every k steps.")
    sp.set_defaults(func=cmd_train)

    for name, func, helptext in (("compare", cmd_compare, "Manual baseline vs encoders x seeds, with a report."),
                                 ("demo", cmd_demo, "Knowledge probe, then compare on 'capital'.")):
        sp = sub.add_parser(name, help=helptext)
        common(sp); task_args(sp, many=True); train_args(sp)
        sp.add_argument("--encoders", default="mlp,lstm,direct" if name == "compare" else None,
                        help="Comma-separated methods: mlp, lstm, direct, prefix.")
        sp.add_argument("--seeds", type=int, default=3 if name == "compare" else 1)
        sp.add_argument("--out", default="runs/compare" if name == "compare" else "runs/demo")
        sp.add_argument("--quiet", action="store_true", help="No progress bars.")
        sp.set_defaults(func=func)

    sp = sub.add_parser("decode", help="Nearest vocabulary tokens of each virtual token of a run.")
    common(sp)
    sp.add_argument("run", help="A run directory.")
    sp.add_argument("-k", type=int, default=5)
    sp.add_argument("--word-like", action="store_true", help="Only word-like tokens.")
    sp.set_defaults(func=cmd_decode)

    from .peft_interop import add_cli as add_peft_commands

    add_peft_commands(sub)

    sp = sub.add_parser("warm-cache", help="Convert the model and fit the vocabulary projection once.")
    common(sp)
    sp.set_defaults(func=cmd_warm_cache)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .prompts import EncoderError
    from .models import ModelLoadError
    from .tasks import TaskError
    from .templates import TemplateError

    finished = False
    try:
        ctx = distributed.context(cpu=getattr(args, "device", None) == "cpu")   # joins the process group under a launch
        if ctx.world_size > 1:
            print(f"process {ctx.rank} of {ctx.world_size} on {ctx.device}", file=sys.stderr, flush=True)
        code = args.func(args)
        finished = True
        return code
    except (ModelLoadError, TaskError, TemplateError, EncoderError, ckpt.CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(finished)


if __name__ == "__main__":
    sys.exit(main())
