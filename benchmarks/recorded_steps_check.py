"""Recorded training steps on real data: the embedded model on `capital`, 120 steps of the CLI's default run.

    HF_HUB_OFFLINE=1 python benchmarks/recorded_steps_check.py        # CPU, ~2 minutes

Three runs: rows rounded to 16 tokens, uncaptured; the same with the recording emulated
(``StepGraphs(record="rerun")``: the graphs' own buffers, learning-rate tensors and found_inf, the
code a CUDA graph records); rows unrounded. Prints whether the first two are equal (history and
prompt, bit for bit) and how far rounding alone moves the prompt after 120 steps (the padding is
masked, so only float rounding differs, which training then amplifies).
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ptuning_lab.experiments import default_init, default_template  # noqa: E402
from ptuning_lab.fast import FastConfig  # noqa: E402
from ptuning_lab.frozen_lm import FrozenLM  # noqa: E402
from ptuning_lab.prompts import build_encoder  # noqa: E402
from ptuning_lab.step_graphs import StepGraphs  # noqa: E402
from ptuning_lab.tasks import load_task  # noqa: E402
from ptuning_lab.trainer import TrainConfig, Trainer  # noqa: E402

lm = FrozenLM.load("smollm2-135m", device="cpu", verbose=False)
task = load_task("capital")
tpl = default_template(task.template)
res = {}
for name, mult, rec in (("rounded", 16, False), ("rounded+recorded(rerun)", 16, True), ("unrounded", 1, False)):
    enc = build_encoder("mlp", 6, lm.embedding.detach(), init=default_init(tpl), tokenize=lm.tokenize, seed=0, lm=lm)
    tr = Trainer(lm, enc, task, tpl, TrainConfig(max_steps=120, eval_every=40, batch_size=16, seed=0), progress=False,
                 fast=FastConfig(row_multiple=mult))
    tr.overlap_steps = True
    if rec:
        tr.step_graphs = StepGraphs(tr, record="rerun")
    t = time.perf_counter()
    r = tr.fit()
    dt = time.perf_counter() - t
    res[name] = r
    print(json.dumps({"run": name, "s": round(dt, 1), "best_dev": r.best_dev.get("p_at_1"),
                      "last_loss": r.history["train"][-1]["loss"], "stats": tr.step_graphs.stats if rec else None}),
          flush=True)
a, b, c = res["rounded"], res["rounded+recorded(rerun)"], res["unrounded"]
print("recorded == uncaptured (history):", a.history["train"] == b.history["train"],
      "prompt equal:", torch.equal(a.prompt, b.prompt))
print("rounded vs unrounded: max |prompt diff|", (a.prompt - c.prompt).abs().max().item(), "of", a.prompt.abs().max().item())
