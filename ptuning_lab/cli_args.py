"""The ``ptuning-lab`` command line's arguments: their types, each command's options, the parser.

Each argument type turns a bad value into argparse's one-line usage error (``error: ... (see:
ptuning-lab --help)``, exit status 2) that names the value and an example of a good one.
:func:`build_parser` takes the functions that run the commands from :mod:`ptuning_lab.cli`.
"""
from __future__ import annotations

import argparse
import math

from . import course

EXIT_OK, EXIT_STOPPED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
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



def build_parser(handlers: dict) -> argparse.ArgumentParser:
    """The parser of every command; ``handlers`` maps each command's name to the function that runs it."""
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
        sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="The frozen weights' dtype. bfloat16 halves their memory (same P@1 on the probe suite) "
                             "but was slower for small models and batches on an H200; see the README.")
        sp.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the frozen model (its kernels fused). On a GPU the training steps are "
                             "recorded as CUDA graphs either way; MODE reduce-overhead records the model's own graphs "
                             "instead (slower than plain --compile on an H200). Each new batch shape compiles once "
                             "(tens of seconds): for long runs, not for a few dozen steps.")
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

    sp = command("baseline", handlers["baseline"], "Manual-prompt metrics of a task.")
    common(sp); task_args(sp); json_flag(sp, "the metrics (always JSON; --json: on one line)")

    sp = command("train", handlers["train"], "Train one prompt encoder.", train_like=True)
    common(sp); task_args(sp); train_args(sp); out_args(sp); json_flag(sp, "the metrics")
    sp.add_argument("--encoder", default="mlp", help="mlp, lstm, direct, or prefix (K/V prefixes at every layer; "
                    "the template's [P] count sets its virtual tokens).")
    sp.add_argument("--seed", type=seed_int, default=0)
    sp.add_argument("--resume", action="store_true", help="Continue the run in --out from its last state.")
    sp.add_argument("--checkpoint-every", type=positive_int, default=None,
                    help="Write a resumable state every k steps.")

    for name, func, helptext in (("compare", handlers["compare"], "Manual baseline vs encoders x seeds, with a report."),
                                 ("demo", handlers["demo"], "Knowledge probe, then compare on 'capital'.")):
        sp = command(name, func, helptext, train_like=True)
        common(sp); task_args(sp, many=True); train_args(sp)
        out_args(sp, "runs/compare" if name == "compare" else "runs/demo")
        json_flag(sp, "the comparison (rows and summary) instead of the table")
        sp.add_argument("--encoders", default="mlp,lstm,direct" if name == "compare" else None,
                        help="Comma-separated methods: mlp, lstm, direct, prefix.")
        sp.add_argument("--seeds", type=positive_int, default=3 if name == "compare" else 1,
                        help="How many seeds per method (seeds 0 .. N-1).")

    sp = command("decode", handlers["decode"], "Nearest vocabulary tokens of a run's virtual tokens.")
    common(sp); json_flag(sp, "the nearest tokens (one record per virtual token, metric and rank)")
    sp.add_argument("run", help="A run directory.")
    sp.add_argument("-k", type=positive_int, default=5, help="Nearest tokens per virtual token and metric.")
    sp.add_argument("--word-like", action="store_true", help="Only word-like tokens.")

    sp = command("warm-cache", handlers["warm-cache"], "Prepare the model and the maps the lessons load.")
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

    sp = command("export-peft", handlers["export-peft"], "Write a run's prompt as a Hugging Face PEFT adapter.")
    sp.add_argument("run", help="A run directory (its template must have all [P] first).")
    sp.add_argument("out", help="Adapter directory to write.")
    peft_args(sp, "Base model PEFT should use, and to check against (default: the run's model).",
              "Replace an earlier export in OUT (a directory without an adapter config is refused).")
    sp.add_argument("--peft-type", default="auto", choices=PEFT_TYPES,
                    help="auto: P-tuning when PEFT's encoder matches ours, else prompt tuning (same logits).")

    sp = command("import-peft", handlers["import-peft"], "Turn a PEFT prompt adapter into a run directory.")
    sp.add_argument("adapter", help="Directory written by PeftModel.save_pretrained.")
    sp.add_argument("out", help="Run directory to write (then: ptuning-lab decode OUT).")
    peft_args(sp, "The adapter's base model (default: the one it records, else auto).",
              "Replace a ptuning_lab run in OUT (written beside it, swapped in when complete).")
    sp.add_argument("--break-lock", action="store_true", help="Remove the lock a killed run left in OUT.")

    sp = command("tasks", handlers["tasks"], "List every built-in task: size, template, label words and source.")
    sp.add_argument("--fewglue", default=None, metavar="DIR", help="FewGLUE_32dev directory for the SuperGLUE "
                    "tasks (default: $PTUNING_LAB_FEWGLUE; without it they are listed as unavailable).")
    sp.add_argument("--json", action="store_true", help="One JSON list instead of the table.")
    return p


# ---------------------------------------------------------------- errors at the boundary
