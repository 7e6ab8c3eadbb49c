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
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from . import cli_args, course, distributed, experiments, rundir
from .cli_args import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, SEED_MAX,  # noqa: F401 (re-exported)
                       Parser, device, positive_float, positive_int, seed_int)

STOPPED_EARLY = ("non_finite_loss", "interrupted")


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
                       dtype=getattr(torch, dtype) if dtype else None,
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
    """The argument parser of every command (:mod:`ptuning_lab.cli_args`), each bound to its ``cmd_*``."""
    return cli_args.build_parser({
        "baseline": cmd_baseline, "train": cmd_train, "compare": cmd_compare, "decode": cmd_decode,
        "demo": cmd_demo, "warm-cache": cmd_warm_cache, "export-peft": cmd_export_peft,
        "import-peft": cmd_import_peft, "tasks": cmd_tasks})


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
