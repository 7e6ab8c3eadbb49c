"""How many input shapes a training run gives the frozen model, with the fast path's rows rounded or not.

A model compiled with ``dynamic=False`` (``FrozenLM.compile``; on a GPU ``--compile reduce-overhead``)
compiles once per new shape, tens of seconds each. Batches of real data differ in length, so their
packed rows differ; ``FastConfig.row_multiple`` pads the rows to a multiple of N tokens (masked padding,
results unchanged), and a compiled model gets N = 16 by default.

    HF_HUB_OFFLINE=1 python benchmarks/compile_shapes.py                         # count shapes (CPU, no compile)
    python benchmarks/compile_shapes.py --device cuda --compile reduce-overhead  # and time the compiles

Per row multiple: the distinct (rows, tokens) shapes of the training steps and of the dev evaluations
over ``--epochs`` epochs, the wall time of the run (with ``--compile``: its compiles included) and,
with ``--compile``, of one more epoch once every shape is compiled; the multiples run one after the
other in this process.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ptuning_lab.experiments import default_template  # noqa: E402
from ptuning_lab.fast import FastConfig  # noqa: E402
from ptuning_lab.frozen_lm import FrozenLM  # noqa: E402
from ptuning_lab.prompts import build_encoder  # noqa: E402
from ptuning_lab.tasks import load_task  # noqa: E402
from ptuning_lab.trainer import TrainConfig, Trainer  # noqa: E402


def run(args, multiple: int) -> dict:
    lm = FrozenLM.load(args.model, device=args.device, verbose=False)
    if args.compile:
        torch._dynamo.reset()
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        lm.compile(mode=None if args.compile == "default" else args.compile, dynamic=False)
    task = load_task(args.task, seed=0)
    template = default_template(task.template, 3)
    enc = build_encoder("mlp", 6, lm.embedding.detach(), init="vocab", tokenize=lm.tokenize, seed=0)
    steps_per_epoch = -(-len(task.train) // args.batch_size)
    cfg = TrainConfig(batch_size=args.batch_size, num_epochs=args.epochs, eval_every=steps_per_epoch,
                      snapshot_every=10_000)
    trainer = Trainer(lm, enc, task, template, cfg, progress=False, fast=FastConfig(row_multiple=multiple))
    shapes = {"train": set(), "eval": set()}
    embed = trainer.forward._embed

    def spy(tok, *rest):
        shapes["train" if torch.is_grad_enabled() else "eval"].add(tuple(tok.shape))
        return embed(tok, *rest)

    trainer.forward._embed = spy
    start = time.perf_counter()
    result = trainer.fit()
    end = time.perf_counter()
    out = {"row_multiple": multiple, "steps": trainer.step, "train_shapes": len(shapes["train"]),
           "eval_shapes": len(shapes["eval"]), "seconds": round(end - start, 1),
           "best_dev_p_at_1": result.best_dev.get("p_at_1")}
    if args.compile:      # the first epoch's batches again: every shape compiled by now
        trainer.step = 0
        start = time.perf_counter()
        trainer.train_steps(steps_per_epoch)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        out["steady_epoch_seconds"] = round(time.perf_counter() - start, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="capital")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--multiples", default="1,16")
    p.add_argument("--compile", nargs="?", const="default", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = [run(args, int(m)) for m in args.multiples.split(",")]
    for r in rows:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
