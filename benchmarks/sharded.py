"""Prompt-encoder training on a frozen model sharded over N GPUs (FSDP2) against the whole model on one.

    # the whole model on one GPU (a launch of 1 is a single process)
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 1 benchmarks/sharded.py --shape llama3-8b
    # the frozen model sharded over 2, 4, 8 GPUs (same global batch)
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 4 benchmarks/sharded.py --shape llama3-8b --shard
    # or through Accelerate's FSDP config (the same sharding; --shard is then implied)
    NCCL_NVLS_ENABLE=0 accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 4 \
        benchmarks/sharded.py --shape llama3-8b
    # equality: the final prompt of N sharded processes == 1 process, same global batch, fp32, tiny shape
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 2 benchmarks/sharded.py --check
    # CPU smoke test (gloo)
    torchrun --nproc_per_node 2 benchmarks/sharded.py --device cpu --shape tiny --shard

Keep NVLink multicast off (``NCCL_NVLS_ENABLE=0``; the script sets it too when it is unset): on the
lent H200 machines NCCL's NVLS path is not available.

The model is a random Llama-shaped model: ``llama3-8b`` has Llama-3-8B's shape (hidden 4096, 32
layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256) in bf16; ``tiny`` is a 2-layer
toy for smoke tests. Every rank builds the same weights (same seed). The prompt encoder (MLP, 3+3
virtual tokens on the CLI's hybrid template) is trained by the library's own ``Trainer.train_step``
on the 'capital' task. ``tokens/s`` counts the templated tokens (virtual ones included) of the
global batch per second, median over the timed steps. ``peak MiB`` is
``torch.cuda.max_memory_allocated`` of each rank during the timed steps (after sharding; loading
puts the whole model on each GPU once, reported as ``load peak``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")        # before any NCCL communicator exists
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                      rope_theta=500000.0, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=None, max_position_embeddings=512, tie_word_embeddings=False),
}
TEMPLATE = "[P]*3 The capital of [X] is [P]*3"
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "ACCELERATE_USE_FSDP", "FSDP_VERSION")


def build_lm(shape: str, dtype: torch.dtype, device):
    """A FrozenLM around a random Llama-shaped model (the same weights on every rank) and the embedded tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ptuning_lab.frozen_lm import FrozenLM
    from ptuning_lab.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    cfg = dict(SHAPES[shape])
    cfg["vocab_size"] = cfg["vocab_size"] or len(tokenizer)
    torch.manual_seed(0)
    with torch.device(device):                   # built in place: an 8B model initialises in seconds on a GPU
        model = LlamaForCausalLM._from_config(LlamaConfig(**cfg), dtype=dtype)
    return FrozenLM(model, tokenizer, f"random-{shape}")


def train(args) -> dict:
    """Train ``args.steps`` timed steps (after ``args.warmup``); this rank's measurements."""
    from ptuning_lab import distributed
    from ptuning_lab.encoders import build_encoder
    from ptuning_lab.tasks import load_task
    from ptuning_lab.trainer import TrainConfig, Trainer

    ctx = distributed.context(cpu=args.device == "cpu")
    device = ctx.device or torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    lm = build_lm(args.shape, dtype, device)
    task = load_task("capital", seed=0)
    encoder = build_encoder("mlp", 6, lm.embedding.detach().float(), init="vocab", seed=0)
    config = TrainConfig(lr=args.lr, batch_size=args.batch_size, max_steps=args.warmup + args.steps,
                         eval_every=10**9, snapshot_every=10**9, fast=not args.plain, warmup_ratio=0.0)
    trainer = Trainer(lm, encoder, task, TEMPLATE, config, progress=False)     # shards the model under --shard
    cuda = device.type == "cuda"
    load_peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) / 2**20 if cuda else float("nan")
    torch.manual_seed(0)
    times, tokens, losses = [], [], []
    for step in range(args.warmup + args.steps):
        batch = trainer.batch_examples(step)
        n_tokens = sum(len(ids) for ids, _ in lm.sequences(trainer.template, [ex.input for ex in batch]))
        start = time.perf_counter()
        losses.append(trainer.train_step(batch))            # .item() inside: the step has finished on the device
        if cuda:
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            tokens.append(n_tokens)
    step_s = statistics.median(times)
    return {"rank": ctx.rank, "world_size": ctx.world_size, "sharded": ctx.sharded, "device": str(device),
            "tokens_per_s": statistics.median(tokens) / step_s, "step_s": step_s, "losses": losses,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan"),
            "resident_mib": resident, "load_peak_mib": load_peak,
            "prompt": trainer.current_prompt().float().cpu()}


def reference(args, path: Path) -> None:
    """Run the same training in one process (no launch variables) and save its prompt and losses at ``path``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    cmd = [sys.executable, __file__, "--shape", args.shape, "--dtype", args.dtype, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--save", str(path)] + (["--device", args.device] if args.device else []) + (["--plain"] if args.plain else [])
    subprocess.run(cmd, env=env, check=True)


def _mib(x: float) -> str:
    return "n/a" if x != x else f"{x:,.0f}"          # NaN on CPU: no device memory counter


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on GPUs, fp32 on CPUs")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--shard", action="store_true", help="shard the frozen model over the launch's processes (FSDP2)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (examples per step over all ranks)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--plain", action="store_true", help="the plain reference path instead of the fast path")
    p.add_argument("--check", action="store_true", help="equality of N sharded processes with 1 process: tiny "
                   "shape, fp32, 4 steps, global batch 5 (over 8 ranks, 3 have an empty shard and take part)")
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)       # the reference run of --check
    p.add_argument("--json", default=None, help="write every rank's measurements here (main process)")
    args = p.parse_args(argv)
    if args.check:
        args.shape, args.dtype, args.steps, args.warmup, args.batch_size, args.shard = "tiny", "fp32", 4, 0, 5, True
    gpu = torch.cuda.is_available() and args.device != "cpu"
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    if args.shard:
        os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    from ptuning_lab import distributed

    result = train(args)
    if args.save:
        torch.save({"prompt": result["prompt"], "losses": result["losses"]}, args.save)
        return 0
    ctx = distributed.context()
    rows = ctx.gather_object({k: v for k, v in result.items() if k != "prompt"})
    code = 0
    if ctx.is_main_process:
        mode = "sharded (FSDP2)" if result["sharded"] else ("replicated" if ctx.world_size > 1 else "one process")
        print(f"shape {args.shape}, {args.dtype}, {ctx.world_size} process(es), {mode}, global batch "
              f"{args.batch_size}, {'plain' if args.plain else 'fast'} path, {args.steps} timed steps")
        for r in rows:
            print(f"RANK {r['rank']} {r['device']}: tokens/s {r['tokens_per_s']:,.0f}  step {r['step_s'] * 1e3:.1f} ms  "
                  f"peak MiB {_mib(r['peak_mib'])}  resident MiB {_mib(r['resident_mib'])}  "
                  f"load peak MiB {_mib(r['load_peak_mib'])}")
        print(f"RESULT world {ctx.world_size} {mode}: tokens/s {rows[0]['tokens_per_s']:,.0f}, max peak MiB per "
              f"GPU {_mib(max(r['peak_mib'] for r in rows))}")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "ranks": rows}, indent=2))
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.is_main_process:
                reference(args, Path(tmp) / "one.pt")
                one = torch.load(Path(tmp) / "one.pt")
                diff = float((result["prompt"] - one["prompt"]).abs().max())
                loss_diff = max(abs(a - b) for a, b in zip(result["losses"], one["losses"]))
                ok = diff <= 1e-5 and loss_diff <= 1e-5
                print(f"CHECK {ctx.world_size} sharded processes vs 1: max |prompt diff| {diff:.2e}, max |loss diff| "
                      f"{loss_diff:.2e} (tolerance 1e-5): {'OK' if ok else 'FAIL'}")
                code = 0 if ok else 1
            ctx.wait_for_everyone()
    distributed.shutdown(True)
    return code


if __name__ == "__main__":
    sys.exit(main())
