"""The ``ptuning-lab`` command line: parse the arguments, call the library, print the result.

Commands: baseline, train, compare, decode, demo, warm-cache, export-peft, import-peft. Every
command takes ``--model`` (default ``auto``: GPT-2 where reachable, else the embedded SmolLM2-135M).
The experiments themselves live in :mod:`ptuning_lab.experiments`; the JSON files each command
writes are documented in README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from . import course, distributed, experiments


# ---------------------------------------------------------------- building blocks
def load_lm(args):
    from .frozen_lm import FrozenLM

    lm = FrozenLM.load(args.model, device=distributed.device_for(args.device))   # cuda:LOCAL_RANK under a launch
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


def prepare_out_dir(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to write over another run unless asked to (``--overwrite`` or ``--resume``)."""
    try:
        experiments.prepare_out_dir(out, overwrite=overwrite, resume=resume)
    except FileExistsError:
        raise SystemExit(f"error: {out} already holds files (another run?). Choose another --out, pass "
                         "--overwrite to replace it, or --resume to continue it.") from None


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
    run = experiments.train_one(lm, task, encoder=args.encoder, template=args.template, init=args.init,
                                seed=args.seed, train=_train_kwargs(args), out=out, resume=args.resume)
    if distributed.is_main_process():
        print(json.dumps(run.metrics, indent=2))
    return 0


def cmd_compare(args) -> int:
    from .prompts import check_method

    # every name is checked before anything trains: a typo in the last encoder must not cost the first runs
    encoders = [check_method(e.strip(), allow_prefix=True) for e in args.encoders.split(",") if e.strip()]
    tasks = [load_task_arg(args, name=t) for t in args.task.split(",")]
    out = Path(args.out)
    prepare_out_dir(out, args.overwrite)
    lm = load_lm(args)
    start = time.perf_counter()
    result = experiments.compare(lm, tasks, encoders, args.seeds, _train_kwargs(args), out, template=args.template,
                                 init=args.init, progress=not args.quiet)
    print(f"\nmodel: {lm.name}   ({time.perf_counter() - start:.0f} s)")
    print(format_table(result.summary))
    print(f"\nwrote {out / 'summary.json'} and {out / 'report.html'}")
    return 0


def cmd_decode(args) -> int:
    from .manifold import decode_run

    from .prompts import KEY_VALUE, NOT_IN_VOCAB_SPACE, format_prefix_norms, prefix_from_run, produces

    run = ckpt.load_run(args.run)
    if produces(run.config["encoder"].get("method")) == KEY_VALUE:   # K/V prefixes: nothing to decode; show norms

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
    lm = load_lm(args)                          # converts the embedded model to safetensors on its first load
    size = course.size(args.size)
    info = course.prewarm(lm, size=size, umap=False if args.no_umap else None)
    if not info["umap"] and not args.no_umap:
        print("UMAP map skipped: umap-learn is not installed (pip install umap-learn)", file=sys.stderr)
    print(f"cache warm for {lm.name}")
    return 0


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
    return 0


def cmd_import_peft(args) -> int:
    from .frozen_lm import FrozenLM
    from .peft_interop import import_peft, save_imported

    imported = import_peft(args.adapter)
    model = args.model or imported.config.get("model") or "auto"
    lm = FrozenLM.load(model, device=args.device, verbose=False)
    imported.check_model(lm)
    out = save_imported(imported, args.out, lm=lm, overwrite=args.overwrite)
    print(f"imported a {imported.peft_config.get('peft_type')} prompt ({imported.num_virtual_tokens} virtual "
          f"tokens, width {imported.prompt.shape[1]}) into {out}; try: ptuning-lab decode {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptuning-lab", description="P-tuning from the command line: probe, train, "
                                "compare and inspect prompts. `ptuning-lab <command> --help` lists its options.")
    from ._version import __version__
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
        sp.add_argument("--label-words", nargs="+", default=None, metavar="LABEL=WORDS",
                        help="Label words of a classification task, several per label: positive=great,good "
                             "negative=terrible,bad (default: the task's own, or a file's '# label words:' line).")

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

    sp = sub.add_parser("decode", help="Nearest vocabulary tokens of a run's virtual tokens.")
    common(sp)
    sp.add_argument("run", help="A run directory.")
    sp.add_argument("-k", type=int, default=5)
    sp.add_argument("--word-like", action="store_true", help="Only word-like tokens.")
    sp.set_defaults(func=cmd_decode)

    sp = sub.add_parser("warm-cache", help="Prepare the model and the maps the lessons load.")
    common(sp)
    sp.add_argument("--size", default=None, choices=list(course.SIZES), help="The subsets the notebooks use "
                    "(default: PTUNING_LAB_SIZE, else lesson).")
    sp.add_argument("--no-umap", action="store_true", help="Skip the UMAP map of notebook 01 (fitted when "
                    "umap-learn is installed).")
    sp.set_defaults(func=cmd_warm_cache)

    def peft_args(sp, model_help):
        sp.add_argument("--model", default=None, help=model_help)
        sp.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available).")
        sp.add_argument("--overwrite", action="store_true", help="Replace an existing OUT directory.")

    from .peft_interop import PEFT_TYPES

    sp = sub.add_parser("export-peft", help="Write a run's prompt as a Hugging Face PEFT adapter.")
    sp.add_argument("run", help="A run directory (its template must have all [P] first).")
    sp.add_argument("out", help="Adapter directory to write.")
    peft_args(sp, "Base model PEFT should use, and to check against (default: the run's model).")
    sp.add_argument("--peft-type", default="auto", choices=PEFT_TYPES,
                    help="auto: P-tuning when PEFT's encoder matches ours, else prompt tuning (same logits).")
    sp.set_defaults(func=cmd_export_peft)

    sp = sub.add_parser("import-peft", help="Turn a PEFT prompt adapter into a run directory.")
    sp.add_argument("adapter", help="Directory written by PeftModel.save_pretrained.")
    sp.add_argument("out", help="Run directory to write (then: ptuning-lab decode OUT).")
    peft_args(sp, "The adapter's base model (default: the one it records, else auto).")
    sp.set_defaults(func=cmd_import_peft)
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
