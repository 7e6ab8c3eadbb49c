"""The ``ptuning-lab`` command line: parse the arguments, call the library, print the result.

Commands: baseline, train, compare, decode, demo, warm-cache, export-peft, import-peft. Every
command takes ``--model`` (default ``auto``: GPT-2 where reachable, else the embedded SmolLM2-135M).
The experiments themselves live in :mod:`ptuning_lab.experiments`, the rules for output directories
in :mod:`ptuning_lab.rundir`; the JSON files each command writes are documented in README.md.

Exit status: 0 done; 1 training stopped early (a non-finite loss, or Ctrl-C during training: what was
trained so far is saved); 2 bad input or a file problem, reported as one line ``error: ...`` naming
the problem and the fix (never a traceback); 130 Ctrl-C outside training.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from . import course, distributed, experiments, rundir

EXIT_OK, EXIT_STOPPED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
STOPPED_EARLY = ("non_finite_loss", "interrupted")
TRAIN_EXIT = ("exit status: 0 done; 1 training stopped early (a non-finite loss, or Ctrl-C: what was trained so far "
              "is saved); 2 bad input or a file problem (one line 'error: ...' on stderr); 130 Ctrl-C before "
              "training began.")
PLAIN_EXIT = "exit status: 0 done; 2 bad input or a file problem (one line 'error: ...' on stderr)."


# ---------------------------------------------------------------- argument types (argparse reports their message)
SEED_MAX = 2**32 - 1            # the trainer derives per-epoch seeds from it; torch takes 64 bits


def _whole(text: str) -> int | None:
    """``int(text)``, or None for anything else ("2.5", "1e23", "ten")."""
    try:
        return int(text)
    except ValueError:
        return None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--max-steps 0`` and ``--checkpoint-every 0`` mean nothing)."""
    value = _whole(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, such as 10 (got {text!r})")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to 2**32 - 1."""
    value = _whole(text)
    if value is None or not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {SEED_MAX} (got {text!r})")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number such as 1e-3 (got {text!r})") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, such as 1e-3 (got {text!r})")
    return value


def device(text: str) -> str:
    """argparse type: cpu, cuda, cuda:N, mps or auto."""
    name = text.strip().lower()
    kind, _, index = name.partition(":")
    if kind in ("cpu", "mps", "auto") and not index or kind == "cuda" and (not index or index.isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps (or leave it out: "
                                     "the best available)")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as the one line every other error uses."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see: {self.prog} --help)\n")


# ---------------------------------------------------------------- building blocks
def progress_on(args) -> bool:
    """Progress bars unless --quiet, and only on a terminal (a log file gets no bar redraws)."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def load_lm(args):
    import torch

    from .frozen_lm import FrozenLM

    if not progress_on(args):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()          # the "Loading weights" bar of transformers
    dtype = getattr(args, "dtype", None)
    lm = FrozenLM.load(args.model, device=distributed.device_for(args.device),   # cuda:LOCAL_RANK under a launch
                       dtype=None if dtype in (None, "auto") else getattr(torch, dtype),
                       verbose=not getattr(args, "quiet", False))
    if getattr(args, "compile", None):
        lm.compile(mode=None if args.compile == "default" else args.compile)
    return lm


def load_task_arg(args, name=None):
    """The task of ``--task`` (or one ``name`` of compare's list), with ``--label-words`` as its verbalizer."""
    from .tasks import load_task
    from .tasks.base import check_labels_present, parse_label_words

    words = parse_label_words(args.label_words) if getattr(args, "label_words", None) else None
    template = args.manual_template if name is None else None
    task = load_task(name or args.task, seed=args.data_seed, template=template, max_examples=args.max_examples,
                     verbalizer=words)
    if words is not None:
        check_labels_present(words, task)
    return task


def check_out_dir(args, resume: bool = False) -> Path:
    """Everything about --out that would refuse the run, checked before the model loads or a file is touched."""
    return rundir.check(args.out, overwrite=args.overwrite, resume=resume, break_lock=args.break_lock)


def format_table(summary: list[dict]) -> str:
    """The comparison as a text table: one line per (task, method), mean ± std over seeds."""
    lines = [f"{'task':<10} {'method':<8} {'P@1 (test)':>15} {'cand. acc':>15} {'params':>10} {'train s':>8}"]
    for r in summary:
        lines.append(f"{r['task']:<10} {r['encoder']:<8} "
                     f"{r['test_p_at_1']:>8.3f} ± {r['test_p_at_1_std']:.3f} "
                     f"{r['test_candidate_accuracy']:>8.3f} ± {r['test_candidate_accuracy_std']:.3f} "
                     f"{r['trainable_params']:>10,} {r['train_seconds'] if r['train_seconds'] == r['train_seconds'] else 0:>8.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- commands
def cmd_baseline(args) -> int:
    task = load_task_arg(args)             # bad task input fails before the model loads
    lm = load_lm(args)
    metrics = experiments.baseline(lm, task)
    print(json.dumps(metrics) if args.json else json.dumps(metrics, indent=2))
    return EXIT_OK


def _train_kwargs(args) -> dict:
    kw = {"lr": args.lr, "batch_size": args.batch_size, "num_epochs": args.epochs, "max_steps": args.max_steps,
          "eval_every": args.eval_every, "patience": args.patience,
          "checkpoint_every": getattr(args, "checkpoint_every", None)}
    return {k: v for k, v in kw.items() if v is not None}


def _check_train_settings(args, template: str | None) -> None:
    """The training settings and the template, checked before any file is touched or the model loads."""
    from .templates import Template
    from .trainer import TrainConfig

    from .tracking import check_report_to

    TrainConfig(**_train_kwargs(args))                  # its own range checks (e.g. warm-up, patience)
    check_report_to(args.report_to)                     # an unknown tracker or a missing package costs nothing
    if template is not None:
        Template.parse(template).validate(need_virtual=True)


def _exit_for(stopped) -> int:
    return EXIT_STOPPED if any(s in STOPPED_EARLY for s in stopped) else EXIT_OK


def cmd_train(args) -> int:
    from .prompts import check_method

    check_method(args.encoder, allow_prefix=True)      # typos fail at once, before the model loads
    task = load_task_arg(args)
    _check_train_settings(args, args.template or experiments.default_template(task.template))
    check_out_dir(args, resume=args.resume)
    lm = load_lm(args)
    run = experiments.train_one(lm, task, encoder=args.encoder, template=args.template, init=args.init,
                                seed=args.seed, train=_train_kwargs(args), out=args.out, resume=args.resume,
                                overwrite=args.overwrite, break_lock=args.break_lock, progress=progress_on(args),
                                report_to=args.report_to)
    if distributed.is_main_process():
        print(json.dumps(run.metrics) if args.json else json.dumps(run.metrics, indent=2))
    return _exit_for([run.metrics["stopped"]])


def cmd_compare(args) -> int:
    from .prompts import check_method

    # every name is checked before anything trains: a typo in the last encoder must not cost the first runs
    encoders = [check_method(e.strip(), allow_prefix=True) for e in args.encoders.split(",") if e.strip()]
    if not encoders:
        raise ValueError(f"--encoders {args.encoders!r} names no method; give e.g. --encoders mlp,lstm,direct.")
    names = [t.strip() for t in args.task.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--task {args.task!r} names no task; give e.g. --task capital,continent.")
    tasks = [load_task_arg(args, name=t) for t in names]
    for task in tasks:
        _check_train_settings(args, args.template or experiments.default_template(task.template))
    check_out_dir(args)
    lm = load_lm(args)
    start = time.perf_counter()
    quiet = args.quiet or args.json
    log = (lambda line: None) if quiet else None      # --json: stdout holds the JSON alone
    result = experiments.compare(lm, tasks, encoders, args.seeds, _train_kwargs(args), args.out,
                                 template=args.template, init=args.init, progress=progress_on(args),
                                 overwrite=args.overwrite, log=log, report_to=args.report_to)
    out = Path(args.out)
    if args.json:
        print(json.dumps({"model": lm.name, "out": str(out), "rows": result.rows, "summary": result.summary}))
    else:
        print(f"\nmodel: {lm.name}   ({time.perf_counter() - start:.0f} s)")
        print(format_table(result.summary))
        print(f"\nwrote {out / 'summary.json'} and {out / 'report.html'}")
    return _exit_for([r.get("stopped") for r in result.rows])


def cmd_decode(args) -> int:
    from .manifold import decode_run, nearest_tokens

    from .prompts import KEY_VALUE, NOT_IN_VOCAB_SPACE, format_prefix_norms, prefix_from_run, produces

    run = ckpt.load_run(args.run)
    if produces(run.config["encoder"].get("method")) == KEY_VALUE:   # K/V prefixes: nothing to decode; show norms

        if args.json:
            print(json.dumps({"run": str(args.run), "method": "prefix", "note": NOT_IN_VOCAB_SPACE}))
        else:
            print(f"{args.run}: {NOT_IN_VOCAB_SPACE}\n\n{format_prefix_norms(prefix_from_run(run))}")
        return EXIT_OK
    lm = load_lm(args) if args.model != "auto" else _lm_for_run(run, args)
    run.check_model(lm)
    if args.json:
        table = nearest_tokens(run.prompt, lm.embedding, lm.token_strings, k=args.k, word_like=args.word_like)
        print(json.dumps({"run": str(args.run), "model": lm.name, "num_virtual_tokens": int(run.prompt.shape[0]),
                          "k": args.k, "word_like": args.word_like,
                          "neighbours": json.loads(table.to_json(orient="records"))}))
    else:
        print(decode_run(run, lm, k=args.k, word_like=args.word_like))
    return EXIT_OK


def _lm_for_run(run, args):
    from .frozen_lm import FrozenLM

    return FrozenLM.load(run.config.get("model", "auto"), device=args.device, verbose=not args.quiet)


def cmd_demo(args) -> int:
    args.task, args.encoders = "capital", args.encoders or "mlp,lstm,direct"
    args.max_steps = args.max_steps or 40          # about 20 s of training per method on 2 CPU cores
    check_out_dir(args)                            # a second demo into the same --out is refused before the probe
    lm = load_lm(args)
    if not args.json:
        print(f"model: {lm.name} ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters, "
              f"vocabulary {lm.vocab_size} x {lm.hidden_size})\n")
        print("Manual prompt as a knowledge probe: 'The capital of [X] is' ->")
        for country, top in zip(["France", "Japan", "Egypt", "Peru"],
                                lm.predict_next("The capital of [X] is", ["France", "Japan", "Egypt", "Peru"], k=3)):
            print(f"  {country:<8} " + ", ".join(f"{t!r} {p:.2f}" for t, p in top))
        print(f"\nP-tuning on 'capital' ({args.encoders}, {args.seeds} seed(s)); runs land in {args.out}")
    return cmd_compare(args)


def cmd_warm_cache(args) -> int:
    lm = load_lm(args)                          # converts the embedded model to safetensors on its first load
    size = course.size(args.size)
    info = course.prewarm(lm, size=size, umap=False if args.no_umap else None)
    if not info["umap"] and not args.no_umap:
        print("UMAP map skipped: umap-learn is not installed (pip install umap-learn)", file=sys.stderr)
    print(f"cache warm for {lm.name}")
    return EXIT_OK


def cmd_export_peft(args) -> int:
    from .frozen_lm import FrozenLM
    from .peft_interop import INFO_FILE, _default_base, export_peft

    run = ckpt.load_run(args.run)
    model = args.model or run.config.get("model") or "auto"
    lm = FrozenLM.load(model, device=args.device, verbose=False)
    out = export_peft(run, args.out, _default_base(lm.name) if args.model else None, lm=lm,
                      peft_type=args.peft_type, overwrite=args.overwrite)
    info = json.loads((out / INFO_FILE).read_text())
    print(f"wrote a PEFT {info['peft_type']} adapter to {out} ({info['why_this_peft_type']})")
    print(f"PEFT input text: {info['input_text_format']!r}   ([X] = the input; keep the leading space)")
    print("load it with: PeftModel.from_pretrained(base_model, " + repr(str(out)) + ")")
    return EXIT_OK


def cmd_import_peft(args) -> int:
    import os

    from .frozen_lm import FrozenLM
    from .peft_interop import import_peft, save_imported

    rundir.check(args.out, overwrite=args.overwrite, break_lock=args.break_lock)
    imported = import_peft(args.adapter)
    model = args.model or imported.config.get("model") or "auto"
    lm = FrozenLM.load(model, device=args.device, verbose=False)
    imported.check_model(lm)
    with rundir.claim(args.out, overwrite=args.overwrite, break_lock=args.break_lock) as path:
        staging = path / ".import.tmp"           # save_imported writes a new directory; the claimed one holds the lock
        save_imported(imported, staging, lm=lm)
        for item in staging.iterdir():
            os.replace(item, path / item.name)
        staging.rmdir()
    out = args.out
    print(f"imported a {imported.peft_config.get('peft_type')} prompt ({imported.num_virtual_tokens} virtual "
          f"tokens, width {imported.prompt.shape[1]}) into {out}; try: ptuning-lab decode {out}")
    return EXIT_OK


def cmd_tasks(args) -> int:
    """Every built-in task: kind, split sizes, manual template, label words and where its data comes from."""
    import os

    from .tasks import FEWGLUE_ENV, TaskError, load_task, task_names
    from .tasks.superglue import TASKS as FEWGLUE

    data_dir = args.fewglue or os.environ.get(FEWGLUE_ENV)
    rows = []
    for name in task_names():
        row = {"name": name}
        try:
            task = load_task(name, data_dir=data_dir, source="files") if name in FEWGLUE else load_task(name)
        except TaskError as err:         # a FewGLUE task without its directory, a data wheel not installed
            row.update(kind=None, error=str(err))
            rows.append(row)
            continue
        words = {label: list((w,) if isinstance(w, str) else w) for label, w in (task.verbalizer or {}).items()}
        row.update(kind=task.kind, train=len(task.train), dev=len(task.dev), test=len(task.test),
                   template=task.template, label_words=words, metrics=list(task.metrics), source=task.source)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        if r["kind"] is None:
            print(f"{r['name']:<27} unavailable: {r['error']}")
            continue
        words = "; ".join(f"{k}={'/'.join(v)}" for k, v in r["label_words"].items()) or "-"
        print(f"{r['name']:<27} {r['kind']:<15} {r['train']:>5}/{r['dev']}/{r['test']:<5} {r['template']!r}\n"
              f"{'':<27} label words: {words} | source: {r['source'] or 'built in'}")
    return 0


# ---------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ptuning-lab", description="P-tuning from the command line: probe, train, compare and "
               "inspect prompts. `ptuning-lab <command> --help` lists its options.",
               epilog="exit status: 0 done; 1 training stopped early (train, compare, demo); 2 bad input or a "
                      "file problem, reported as one line 'error: ...'.")
    from ._version import __version__
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, func, helptext, train_like=False):
        sp = sub.add_parser(name, help=helptext, description=helptext, epilog=TRAIN_EXIT if train_like else PLAIN_EXIT)
        sp.set_defaults(func=func)
        return sp

    def common(sp):
        sp.add_argument("--model", default="auto", help="'auto' (GPT-2 where reachable, else the embedded "
                        "SmolLM2-135M), 'smollm2-135m', a Hugging Face id or a local path.")
        sp.add_argument("--device", default=None, type=device, help="cpu, cuda, cuda:N, mps (default: best "
                        "available).")
        sp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="The frozen weights' dtype; auto: bfloat16 on an Ampere or newer GPU, else float32.")
        sp.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the frozen model; on a GPU use --compile reduce-overhead (CUDA "
                             "graphs, about 2x faster steps on an H200). Each new batch shape compiles once (tens "
                             "of seconds): for long runs, not for a few dozen steps.")
        sp.add_argument("--quiet", action="store_true", help="No progress bars or model messages (bars are also "
                        "off when stderr is not a terminal).")

    def json_flag(sp, what):
        sp.add_argument("--json", action="store_true", help=f"Print {what} as one line of JSON (machine-readable).")

    def task_args(sp, many=False):
        sp.add_argument("--task", default="capital", help="capital, continent, language, currency, polarity, or a "
                        "JSONL/CSV file" + (" (comma-separated list allowed)" if many else ""))
        sp.add_argument("--manual-template", default=None, help="Manual template for a task file (with [X]).")
        sp.add_argument("--data-seed", type=seed_int, default=0, help="Seed of the train/dev/test split.")
        sp.add_argument("--max-examples", type=positive_int, default=None, help="Use at most this many examples.")
        sp.add_argument("--label-words", nargs="+", default=None, metavar="LABEL=WORDS",
                        help="Label words of a classification task, several per label: positive=great,good "
                             "negative=terrible,bad (default: the task's own, or a file's '# label words:' line).")

    def out_args(sp, default=None):
        sp.add_argument("--out", required=default is None, default=default,
                        help="Run directory to write" + (f" (default: {default})." if default else "."))
        sp.add_argument("--overwrite", action="store_true", help="Replace a ptuning_lab run in --out: the new run "
                        "is written beside it and swapped in when complete; a directory of other files is refused.")
        sp.add_argument("--break-lock", action="store_true", help="Remove the lock a killed run left in --out "
                        "(never one of a running process).")

    def train_args(sp):
        sp.add_argument("--template", default=None, help="Template with [P] and [X] (default: '[P]*3 <manual "
                        "template> [P]*3').")
        sp.add_argument("--init", default="auto", help="auto (each [P] starts as the manual word beside it), random, "
                        "vocab, or text:\"some words\".")
        sp.add_argument("--report-to", default="none", metavar="TRACKER", help="none, tensorboard (event files in "
                        "OUT/tensorboard/) or wandb (offline unless WANDB_MODE is set): train loss, lr, dev "
                        "metrics, config and final metrics.")
        sp.add_argument("--lr", type=positive_float, default=None, help="Peak learning rate (default: 1e-3 for "
                        "lstm, 3e-3 for the others).")
        sp.add_argument("--batch-size", type=positive_int, default=None)
        sp.add_argument("--epochs", type=positive_int, default=None)
        sp.add_argument("--max-steps", type=positive_int, default=None)
        sp.add_argument("--eval-every", type=positive_int, default=None)
        sp.add_argument("--patience", type=positive_int, default=None)

    sp = command("baseline", cmd_baseline, "Manual-prompt metrics of a task.")
    common(sp); task_args(sp); json_flag(sp, "the metrics (always JSON; --json: on one line)")

    sp = command("train", cmd_train, "Train one prompt encoder.", train_like=True)
    common(sp); task_args(sp); train_args(sp); out_args(sp); json_flag(sp, "the metrics")
    sp.add_argument("--encoder", default="mlp", help="mlp, lstm, direct, or prefix (K/V prefixes at every layer; "
                    "the template's [P] count sets its virtual tokens).")
    sp.add_argument("--seed", type=seed_int, default=0)
    sp.add_argument("--resume", action="store_true", help="Continue the run in --out from its last state.")
    sp.add_argument("--checkpoint-every", type=positive_int, default=None,
                    help="Write a resumable state every k steps.")

    for name, func, helptext in (("compare", cmd_compare, "Manual baseline vs encoders x seeds, with a report."),
                                 ("demo", cmd_demo, "Knowledge probe, then compare on 'capital'.")):
        sp = command(name, func, helptext, train_like=True)
        common(sp); task_args(sp, many=True); train_args(sp)
        out_args(sp, "runs/compare" if name == "compare" else "runs/demo")
        json_flag(sp, "the comparison (rows and summary) instead of the table")
        sp.add_argument("--encoders", default="mlp,lstm,direct" if name == "compare" else None,
                        help="Comma-separated methods: mlp, lstm, direct, prefix.")
        sp.add_argument("--seeds", type=positive_int, default=3 if name == "compare" else 1,
                        help="How many seeds per method (seeds 0 .. N-1).")

    sp = command("decode", cmd_decode, "Nearest vocabulary tokens of a run's virtual tokens.")
    common(sp); json_flag(sp, "the nearest tokens (one record per virtual token, metric and rank)")
    sp.add_argument("run", help="A run directory.")
    sp.add_argument("-k", type=positive_int, default=5, help="Nearest tokens per virtual token and metric.")
    sp.add_argument("--word-like", action="store_true", help="Only word-like tokens.")

    sp = command("warm-cache", cmd_warm_cache, "Prepare the model and the maps the lessons load.")
    common(sp)
    sp.add_argument("--size", default=None, choices=list(course.SIZES), help="The subsets the notebooks use "
                    "(default: PTUNING_LAB_SIZE, else lesson).")
    sp.add_argument("--no-umap", action="store_true", help="Skip the UMAP map of notebook 01 (fitted when "
                    "umap-learn is installed).")

    def peft_args(sp, model_help, out_help):
        sp.add_argument("--model", default=None, help=model_help)
        sp.add_argument("--device", default=None, type=device, help="cpu, cuda, cuda:N, mps (default: best "
                        "available).")
        sp.add_argument("--overwrite", action="store_true", help=out_help)

    from .peft_interop import PEFT_TYPES

    sp = command("export-peft", cmd_export_peft, "Write a run's prompt as a Hugging Face PEFT adapter.")
    sp.add_argument("run", help="A run directory (its template must have all [P] first).")
    sp.add_argument("out", help="Adapter directory to write.")
    peft_args(sp, "Base model PEFT should use, and to check against (default: the run's model).",
              "Replace an earlier export in OUT (a directory without an adapter config is refused).")
    sp.add_argument("--peft-type", default="auto", choices=PEFT_TYPES,
                    help="auto: P-tuning when PEFT's encoder matches ours, else prompt tuning (same logits).")

    sp = command("import-peft", cmd_import_peft, "Turn a PEFT prompt adapter into a run directory.")
    sp.add_argument("adapter", help="Directory written by PeftModel.save_pretrained.")
    sp.add_argument("out", help="Run directory to write (then: ptuning-lab decode OUT).")
    peft_args(sp, "The adapter's base model (default: the one it records, else auto).",
              "Replace a ptuning_lab run in OUT (written beside it, swapped in when complete).")
    sp.add_argument("--break-lock", action="store_true", help="Remove the lock a killed run left in OUT.")

    sp = command("tasks", cmd_tasks, "List every built-in task: size, template, label words and source.")
    sp.add_argument("--fewglue", default=None, metavar="DIR", help="FewGLUE_32dev directory for the SuperGLUE "
                    "tasks (default: $PTUNING_LAB_FEWGLUE; without it they are listed as unavailable).")
    sp.add_argument("--json", action="store_true", help="One JSON list instead of the table.")
    return p


# ---------------------------------------------------------------- errors at the boundary
def _os_error_line(err: OSError, args) -> str:
    """One line for an OS error: what failed, on which path, and what to do."""
    where = err.filename or getattr(args, "out", None) or "a file"
    reason = err.strerror or str(err)
    fix = {errno.ENOSPC: "free disk space or choose an --out on another disk",
           errno.EDQUOT: "free disk space (your quota is full) or choose an --out on another disk",
           errno.EROFS: "choose an --out on a writable disk",
           errno.EACCES: "choose a path you can write to, or fix its permissions",
           errno.EPERM: "choose a path you can write to, or fix its permissions",
           errno.ENOENT: "check the path",
           errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
           errno.EISDIR: "give a file, not a directory"}.get(err.errno, "check the path and the disk")
    return f"{reason}: {where}. {fix[0].upper() + fix[1:]}.{_kept(args)}"


def _kept(args) -> str:
    """What a failed write left: an old run being replaced is whole (the new one was written beside it)."""
    if getattr(args, "overwrite", False) and getattr(args, "out", None):
        return f" The earlier run in {args.out} was left as it was."
    return ""


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from safetensors import SafetensorError

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
        return EXIT_BAD_INPUT
    except OSError as err:                         # disk full, read-only disk, a path that is a file, ...
        print(f"error: {_os_error_line(err, args)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SafetensorError as err:                 # safetensors reports its OS errors (disk full) as its own type
        where = getattr(args, "out", None) or "the output directory"
        print(f"error: could not write tensors in {where}: {str(err).splitlines()[0]}. Free disk space or choose "
              f"an --out on another disk.{_kept(args)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        distributed.shutdown(finished)


if __name__ == "__main__":
    sys.exit(main())
