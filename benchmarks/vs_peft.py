"""Speed of ptuning_lab against Hugging Face PEFT: same model, data, batch, virtual tokens and encoder sizes.

    HF_HUB_OFFLINE=1 python benchmarks/vs_peft.py --device cpu     # embedded SmolLM2-135M, capital, B=16 (~5 min)
    python benchmarks/vs_peft.py --device cuda                     # GPT-2-small shape, random bf16 weights, B=256
    python benchmarks/vs_peft.py --device cuda --shape llama3-8b   # Llama-3-8B's shape, random bf16 weights, B=32

What is compared (PEFT is a benchmark dependency only):

- PEFT ``PromptEncoderConfig`` MLP and LSTM and ``PromptTuningConfig``, wrapped the default way
  (``PeftModelForCausalLM``), trained the default way: the template's tokens plus the answer's first
  token, ``labels`` -100 everywhere except that token, so the model computes logits at every
  position and its own loss. The frozen model runs in eval mode on both sides (no dropout; PEFT's
  default, the whole model in train mode, would add dropout work to its side). Inputs are tokenized once before timing and padded per step (what a
  ``datasets.map`` + collator pipeline does). Evaluation: one forward without gradients, the logits
  at each example's last position. PEFT can only prepend, so its template is ``[P]*6 <manual>``.
- ptuning_lab ``mlp``/``lstm``/``direct`` with PEFT-shaped encoders (``MLPConfig(num_layers=3,
  residual=False)``, ``LSTMConfig(num_layers=2, residual=False)`` with PEFT's hidden sizes), trained
  by ``Trainer.train_step`` (the library's own step: encoder, loss, clip, AdamW, schedule) on the
  hybrid template ``[P]*3 <manual> [P]*3`` (the CLI default), evaluated by the trainer's scorer.
  Extra ``mlp`` rows show the plain reference path (``TrainConfig(fast=False)``), PEFT's own layout
  and the suffix layout ``<manual> [P]*6`` on the fast path, and (CPU) bf16 frozen weights.

Both sides: the same seeded batches, AdamW with the same settings, gradient clipping at 1.0, the
same number of virtual tokens. Timings are interleaved in one process (one step of each variant
in turn), after warm-up, median of repeats. tokens/s counts the template's tokens (virtual ones
included) per second. Time-to-accuracy (CPU): wall seconds from the start of training until dev
P@1 >= manual prompt + 10 points, each side in its own process (which also gives its peak RSS).

On a GPU the bare frozen model is timed too (``bare``: the same compiled model, PEFT's tokens per
example, forward + backward to the input embeddings, logits at the answer position only): the
ceiling a prompt method that runs every token can reach. ``ours / ceiling`` compares tokens/s
(ours may pass 1: the fast path runs fewer tokens than the template has). Achieved TFLOP/s =
the FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (run eagerly) over
the measured step time; ``% peak`` against the H200's measured bf16 matrix rate.

``--cuda-graphs`` adds ``ours-<method>-graphs`` rows: the trainer's steps recorded as CUDA graphs and
replayed (``ptuning_lab.step_graphs``, the library's GPU default); the ``ours-<method>`` rows launch
each step kernel by kernel (``FastConfig(cuda_graphs=False)``), so both are in one run. A recorded
step's peak memory includes the free part of its graphs' private pool (a replay writes its
activations there without the allocator counting them).

The last lines are ``RATIO <method> ...``: ours / PEFT (and ours / ceiling on a GPU).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ptuning_lab.fast import FastConfig  # noqa: E402
from ptuning_lab.prompts import LSTMConfig, MLPConfig, build_encoder  # noqa: E402
from ptuning_lab.frozen_lm import FrozenLM  # noqa: E402
from ptuning_lab.tasks import Example, Task  # noqa: E402
from ptuning_lab.trainer import Callback, TrainConfig, Trainer  # noqa: E402

METHODS = ("mlp", "lstm", "direct")
LR = 3e-3
PEAK_TFLOPS = 790.0          # bf16 dense matrix products on the lent H200 (device notes: 769-798 measured)
# model shapes (random weights): the configs of the named models; default batch per shape (issue 22's table)
SHAPES = {
    "gpt2-small": dict(kind="gpt2", n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024),
    "smollm2-1.7b": dict(kind="llama", hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, intermediate_size=8192, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=130000.0, tie_word_embeddings=True),
    "llama3-8b": dict(kind="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False),
}
SHAPE_BATCH = {"gpt2-small": 256, "smollm2-1.7b": 64, "llama3-8b": 32}


# ---------------------------------------------------------------------------------------------- set-up
def synthetic_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``w0 .. w{V}`` plus the template's words: no files, exact lengths."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>", "The", "capital", "of", "is"]
    vocab = {w: i for i, w in enumerate(words)}
    for i in range(vocab_size - len(words)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def synthetic_task(seq_len: int, num_virtual: int, n_train: int, n_dev: int, vocab: int, seed: int = 0) -> Task:
    """'The capital of [X] is' with X = random words, so PEFT's sequence is exactly ``seq_len`` tokens."""
    k = seq_len - num_virtual - 4                     # "The capital of" + X + "is"
    if k < 1:
        raise SystemExit(f"--seq-len {seq_len} is too short for {num_virtual} virtual tokens and the template.")
    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(vocab - 10)}" for _ in range(n))  # noqa: E731
    exs = [Example(words(k), words(1)) for _ in range(n_train + n_dev)]
    return Task("synthetic", "The capital of [X] is", exs[:n_train], exs[n_train:], exs[n_train:],
                sorted({e.target for e in exs}), metrics=("p_at_1",))


def build_lm(args) -> FrozenLM:
    dtype = getattr(torch, args.dtype)
    if args.model == "embedded":
        return FrozenLM.load("smollm2-135m", device=args.device, dtype=dtype, verbose=False)
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if args.model == "gpt2-tiny":          # for the smoke test: seconds on a CPU
        spec = dict(kind="gpt2", n_layer=2, n_head=2, n_embd=64, vocab_size=1000, n_positions=128)
    elif args.model == "llama-tiny":
        spec = dict(kind="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, vocab_size=1000, max_position_embeddings=128)
    else:
        spec = SHAPES[args.shape]
    spec = dict(spec)
    kind = spec.pop("kind")
    cfg = GPT2Config(**spec) if kind == "gpt2" else LlamaConfig(**spec)
    # built on the device in its dtype: an 8B model initialised on a CPU in float32 takes minutes
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = (GPT2LMHeadModel if kind == "gpt2" else LlamaForCausalLM)(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    name = f"{args.model if args.model.endswith('tiny') else args.shape}-shape (random)"
    return FrozenLM(model, synthetic_tokenizer(cfg.vocab_size), name)


def build_task(args, lm):
    """The benchmark's task. Its evaluation reports P@1 and the loss, as PEFT's side computes (a relation's
    default also scores exact match, a second pass over every answer token, which PEFT's side never runs)."""
    if args.data == "capital":
        from ptuning_lab.tasks import load_task

        return dataclasses.replace(load_task("capital", seed=0), metrics=("p_at_1",))
    return synthetic_task(args.seq_len, args.virtual_tokens, 8 * args.batch_size, args.eval_batch_size,
                          lm.vocab_size)


def peft_config(method: str, lm: FrozenLM, n: int):
    from peft import PromptEncoderConfig, PromptTuningConfig, TaskType

    d = lm.hidden_size
    if method == "direct":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, token_dim=d)
    return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, token_dim=d,
                               encoder_reparameterization_type=method.upper(),
                               encoder_hidden_size=d if method == "mlp" else d // 2, encoder_num_layers=2)


def ours_config(method: str, lm: FrozenLM):
    """PEFT-shaped encoders: the same layers and sizes as ``peft_config`` (see encoders.py)."""
    d = lm.hidden_size
    return {"mlp": MLPConfig(encoder_hidden_size=d, num_layers=3, residual=False),
            "lstm": LSTMConfig(encoder_hidden_size=d // 2, num_layers=2, residual=False),
            "direct": None}[method]


def manual_template(task) -> str:
    return task.template


def hybrid(task, n):
    return f"[P]*{n // 2} {task.template} [P]*{n - n // 2}"


def autocast(args):
    if args.autocast:
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return torch.autocast(args.device, enabled=False)


def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- variants
class Ours:
    """ptuning_lab through its own Trainer (the fast path unless ``fast=False``)."""

    def __init__(self, name, lm, task, method, template, args, fast=True, encoder_config="peft", init="random",
                 pack_tokens=None, cuda_graphs=False):
        self.name, self.method, self.args = name, method, args
        n = args.virtual_tokens
        cfg = ours_config(method, lm) if encoder_config == "peft" else None
        enc = build_encoder(method, n, lm.embedding.detach(), init=init, tokenize=lm.tokenize, seed=0, config=cfg)
        # a GPU holds the whole prefix cache of the data set
        # random weights in bf16: at the Llama shapes the rounding noise alone (fast path and plain path both
        # ~0.05 of the largest logit from float64 at 32 layers) exceeds the one-off self-check's tolerance,
        # so it would fall back to the plain path; exactness is what tests/test_speed_paths.py checks in float64
        verify = not (args.model == "gpt2-random" and args.shape != "gpt2-small")
        settings = FastConfig(max_cache_mb=max(FastConfig().max_cache_mb, 8192 if args.device == "cuda" else 0),
                              pack_tokens=pack_tokens or FastConfig().pack_tokens, verify=verify,
                              cuda_graphs=cuda_graphs)
        self.trainer = Trainer(lm, enc, task, template,
                               TrainConfig(lr=LR, batch_size=args.batch_size, max_steps=10_000, fast=fast),
                               progress=False, fast=settings if fast else None)
        self.task, self.lm, self.wants_fast = task, lm, fast
        if fast:
            # tokenize once, as the PEFT side does; measure the steady state of a multi-epoch run: the
            # prefix cache filled (the first epoch's extra work is in the time to accuracy)
            inputs = [ex.input for ex in task.train + task.dev]
            with torch.no_grad(), autocast(args):
                prompt = self.trainer.current_prompt()
                for i in range(0, len(inputs), args.eval_batch_size):
                    self.trainer.forward.last_logits(inputs[i:i + args.eval_batch_size], prompt)

    def tokens(self, examples) -> int:
        return sum(len(ids) for ids, _ in self.lm.sequences(self.trainer.template, [e.input for e in examples]))

    def train_step(self, step):
        with autocast(self.args):
            return self.trainer.train_step(self.trainer.batch_examples(step))

    def train_steps(self, step, k):
        """``k`` steps in a row as ``Trainer.fit`` runs them between evaluations (on a GPU each loss is
        read one step late: ptuning_lab.step_queue)."""
        self.trainer.step = step
        with autocast(self.args):
            return self.trainer.train_steps(k)[-1]

    def evaluate(self):
        with autocast(self.args):
            return self.trainer.score(self.task.dev[: self.args.eval_batch_size])


class _ReadsLossAtEnd:
    """A variant whose ``_step(step)`` returns its loss on the device, unread."""

    def train_step(self, step):
        return self._step(step).item()

    def train_steps(self, step, k):
        """``k`` steps in a row, the loss read once at the end (as the HF Trainer's loop between logs)."""
        for i in range(k):
            loss = self._step(step + i)
        return loss.item()


class Peft(_ReadsLossAtEnd):
    """Hugging Face PEFT's prompt learning, trained and evaluated the default way."""

    def __init__(self, name, lm, task, method, args, trainer_for_batches):
        from peft import PeftModelForCausalLM

        self.name, self.method, self.args, self.lm = name, method, args, lm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = PeftModelForCausalLM(lm.model, peft_config(method, lm, args.virtual_tokens))
        self.model.to(lm.device)
        self.n = args.virtual_tokens
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=LR)
        self.sched = trainer_for_batches.scheduler.lr_lambdas[0]
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.sched)
        self.batches = trainer_for_batches.batch_examples
        # tokenized once (datasets.map); padded per batch (the collator)
        ex_all = task.train + task.dev
        seqs = lm.sequences(task.template, [e.input for e in ex_all])
        gold = [lm.answer_ids(e.target)[0] for e in ex_all]
        self.tok = {id(e): (ids, g) for e, (ids, _), g in zip(ex_all, seqs, gold)}
        self.task = task

    def tokens(self, examples) -> int:
        return sum(len(self.tok[id(e)][0]) + self.n for e in examples)

    def collate(self, examples, with_answer: bool):
        rows = [self.tok[id(e)][0] + ([self.tok[id(e)][1]] if with_answer else []) for e in examples]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.lm.pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.long)
        labels = torch.full((len(rows), T), -100, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r)
            att[b, :len(r)] = 1
            if with_answer:
                labels[b, len(r) - 1] = r[-1]
        dev = self.lm.device
        return ids.to(dev, non_blocking=True), att.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)

    def _step(self, step):
        self.lm.begin_step()
        self.model.train()          # the prompt encoder trains ...
        self.lm.model.eval()        # ... the frozen model runs without dropout, as ours does (less work than PEFT's default)
        ids, att, labels = self.collate(self.batches(step), with_answer=True)
        with autocast(self.args):
            loss = self.model(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.lr_sched.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, examples=None):
        self.lm.begin_step()
        self.model.eval()
        examples = examples if examples is not None else self.task.dev[: self.args.eval_batch_size]
        hits, loss_sum = 0, 0.0
        for start in range(0, len(examples), self.args.eval_batch_size):
            chunk = examples[start:start + self.args.eval_batch_size]
            ids, att, _ = self.collate(chunk, with_answer=False)
            with autocast(self.args):
                logits = self.model(input_ids=ids, attention_mask=att).logits
            last = att.sum(1) - 1 + self.n
            logits = logits[torch.arange(len(chunk), device=logits.device), last].float()
            gold = torch.tensor([self.tok[id(e)][1] for e in chunk], device=logits.device)
            hits += int((logits.argmax(-1) == gold).sum())
            loss_sum += float(F.cross_entropy(logits, gold, reduction="sum"))
        return {"n": len(examples), "p_at_1": hits / len(examples), "loss": loss_sum / len(examples)}


class Bare(_ReadsLossAtEnd):
    """The frozen model alone: (B, T) fixed tokens, forward + backward to the input embeddings, logits
    at the last position only -- what any prompt method that runs all T tokens must at least do."""

    method = "bare"

    def __init__(self, name, lm, args, trainer_for_batches):
        self.name, self.lm, self.args = name, lm, args
        g = torch.Generator().manual_seed(0)
        self.T = args.seq_len
        B = args.batch_size
        self.ids = torch.randint(10, lm.vocab_size, (B, self.T), generator=g).to(lm.device)
        self.gold = torch.randint(10, lm.vocab_size, (B,), generator=g).to(lm.device)
        self.eval_ids = torch.randint(10, lm.vocab_size, (args.eval_batch_size, self.T), generator=g).to(lm.device)
        self.batches = trainer_for_batches.batch_examples
        self.task = None

    def tokens(self, examples) -> int:
        return self.ids.numel()

    def _step(self, step):
        self.lm.begin_step()
        with autocast(self.args):
            embeds = self.lm.model.get_input_embeddings()(self.ids).detach().requires_grad_(True)
            h = self.lm.transformer(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]
            loss = F.cross_entropy(self.lm.head(h).float(), self.gold)
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self):
        self.lm.begin_step()
        with autocast(self.args):
            embeds = self.lm.model.get_input_embeddings()(self.eval_ids)
            h = self.lm.transformer(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]
            return self.lm.head(h).float().argmax(-1)


def step_flops(v, step) -> int:
    """FLOPs of one training step of ``v``, counted op by op (compiled code runs eagerly for this)."""
    from torch.utils.flop_counter import FlopCounterMode

    stance = getattr(torch.compiler, "set_stance", None)
    graphs = getattr(getattr(v, "trainer", None), "step_graphs", None)
    if graphs is not None:          # the same step uncaptured: a replayed graph shows the counter no ops
        v.trainer.step_graphs = None
    try:        # the counter has no formula for SDPA's grouped-query form: count it as the repeated heads it equals
        from transformers.integrations import sdpa_attention
        gqa, sdpa_attention.use_gqa_in_sdpa = sdpa_attention.use_gqa_in_sdpa, lambda *a, **k: False
    except (ImportError, AttributeError):
        sdpa_attention = None
    try:
        with (stance("force_eager") if stance else _nullcontext()), FlopCounterMode(display=False) as counter:
            v.train_step(step)
    finally:
        if sdpa_attention is not None:
            sdpa_attention.use_gqa_in_sdpa = gqa
        if graphs is not None:
            v.trainer.step_graphs = graphs
    return counter.get_total_flops()


def profile_steps(v, step, args, n=3) -> dict:
    """Kernel time per step (torch.profiler) of ``v``: how much of the measured step the GPU is busy."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            v.train_step(step + i)
        sync(args)
    # the kernels themselves: not the CPU ops that launched them, nor annotations spanning them ("## ...")
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
              and not e.key.startswith("##")]
    if not events:
        return {"kernel_s_per_step": 0.0, "top": []}
    attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    kernel_s = sum(getattr(e, attr) for e in events) / 1e6 / n
    top = sorted(events, key=lambda e: -getattr(e, attr))[:6]
    return {"kernel_s_per_step": kernel_s,
            "top": [(e.key[:60], getattr(e, attr) / 1e3 / n) for e in top]}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------- timing
def timed(fn, args):
    sync(args)
    t = time.perf_counter()
    fn()
    sync(args)
    return time.perf_counter() - t


def gpu_peak_mb(fn, args):
    if args.device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def graph_pool_free_mb(v) -> float:
    """Memory a variant's recorded steps keep in their private pool beyond their live tensors: a replay writes
    its activations there without the allocator seeing it, so the peak of allocated memory leaves it out."""
    graphs = getattr(getattr(v, "trainer", None), "step_graphs", None)
    if graphs is None or graphs.pool is None:
        return 0.0
    free = 0
    for seg in torch.cuda.memory._snapshot()["segments"]:
        if tuple(seg.get("segment_pool_id", ())) == tuple(graphs.pool):
            free += sum(b["size"] for b in seg["blocks"] if b["state"] != "active_allocated")
    return free / 2**20


def measure(variants, args):
    """Interleaved timings: warm-up, then one step (and one evaluation) of each variant per repeat."""
    res = {v.name: {"train": [], "eval": []} for v in variants}
    step = {v.name: 0 for v in variants}
    for v in variants:
        for _ in range(args.warmup):
            v.train_step(step[v.name])
            step[v.name] += 1
            v.evaluate()
        res[v.name]["peak_mb"] = gpu_peak_mb(lambda: (v.train_step(step[v.name]), v.evaluate()), args)
        if res[v.name]["peak_mb"] is not None:
            res[v.name]["peak_mb"] += graph_pool_free_mb(v)
        step[v.name] += 1
    for rep in range(args.repeats):
        for v in (variants if rep % 2 == 0 else variants[::-1]):     # alternate the order: no position bias
            s = step[v.name]
            k = args.in_a_row
            if k == 1:
                res[v.name]["train"].append(timed(lambda: v.train_step(s), args))
            else:       # k steps in a row, one wait at the end: the time per step of a training loop
                res[v.name]["train"].append(timed(lambda: v.train_steps(s, k), args) / k)
            step[v.name] += k
            res[v.name]["eval"].append(timed(v.evaluate, args))
        print(f"  repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    out = {}
    for v in variants:
        ex = v.trainer.batch_examples(0) if isinstance(v, Ours) else v.batches(0)
        n_dev = args.eval_batch_size if v.task is None else len(v.task.dev[: args.eval_batch_size])
        t_train = statistics.median(res[v.name]["train"])
        t_eval = statistics.median(res[v.name]["eval"])
        try:
            flops = step_flops(v, step[v.name]) if args.flops else None
        except Exception as err:    # noqa: BLE001 -- a missing FLOP formula must not lose the timings
            print(f"note: FLOPs of {v.name} not counted ({type(err).__name__}: {err})", flush=True)
            flops = None
        step[v.name] += 1
        prof = profile_steps(v, step[v.name], args) if args.profile and v.name in args.profile.split(",") else None
        step[v.name] += 3
        if prof:
            print(f"PROFILE {v.name}: kernels {1000 * prof['kernel_s_per_step']:.2f} ms per step of "
                  f"{1000 * t_train:.2f} ms measured ({100 * prof['kernel_s_per_step'] / t_train:.0f}% busy); top: "
                  + "; ".join(f"{k} {ms:.2f} ms" for k, ms in prof["top"]), flush=True)
        out[v.name] = {"method": v.method, "steps_per_s": 1 / t_train, "tokens_per_s": v.tokens(ex) / t_train,
                       "eval_examples_per_s": n_dev / t_eval, "step_s": t_train,
                       "step_s_all": res[v.name]["train"], "eval_s": t_eval, "peak_mb": res[v.name]["peak_mb"],
                       "step_flops": flops, "tflops": flops / t_train / 1e12 if flops else None,
                       "profile": prof}
    return out


# ---------------------------------------------------------------------------------------------- time to accuracy
class _Stop(Callback):
    def __init__(self, target, budget, start):
        self.target, self.budget, self.start, self.reached = target, budget, start, None

    def on_eval(self, trainer, record):
        if record["dev_p_at_1"] >= self.target:
            self.reached = {"seconds": time.perf_counter() - self.start, "step": record["step"],
                            "dev_p_at_1": record["dev_p_at_1"]}
            raise KeyboardInterrupt

    def on_step_end(self, trainer, step, loss):
        if time.perf_counter() - self.start > self.budget:
            raise KeyboardInterrupt


def tta_worker(args) -> dict:
    """One side's time to accuracy, in a fresh process: also its peak RSS."""
    from ptuning_lab.experiments import default_init, default_template
    from ptuning_lab.evaluation import evaluate

    torch.manual_seed(0)
    lm = build_lm(args)
    task = build_task(args, lm)
    manual = evaluate(lm, task.template, task.dev)["p_at_1"]
    target = manual + 0.10
    steps, every = args.tta_max_steps, args.tta_eval_every
    last = {"dev_p_at_1": None}
    if args.tta_worker == "ours":
        template = args.tta_template or default_template(task.template, args.virtual_tokens // 2)
        n = num_virtual(template)
        enc = build_encoder("mlp", n, lm.embedding.detach(), init=default_init(template), tokenize=lm.tokenize, seed=0)
        start = time.perf_counter()
        stop = _Stop(target, args.tta_budget, start)
        trainer = Trainer(lm, enc, task, template, TrainConfig(lr=LR, batch_size=args.batch_size, max_steps=steps,
                                                               eval_every=every, snapshot_every=10**6),
                          callbacks=[stop], progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = trainer.fit()
        reached, n_steps = stop.reached, trainer.step
        last["dev_p_at_1"] = result.best_dev.get("p_at_1")
    else:
        scratch = Trainer(lm, build_encoder("direct", args.virtual_tokens, lm.embedding.detach()), task,
                          f"[P]*{args.virtual_tokens} {task.template}",
                          TrainConfig(lr=LR, batch_size=args.batch_size, max_steps=steps), progress=False)
        peft = Peft("peft", lm, task, "mlp", args, scratch)
        start = time.perf_counter()
        reached, n_steps = None, 0
        while n_steps < steps and time.perf_counter() - start < args.tta_budget:
            peft.train_step(n_steps)
            n_steps += 1
            if n_steps % every == 0:
                dev = peft.evaluate(task.dev)
                last["dev_p_at_1"] = dev["p_at_1"]
                if dev["p_at_1"] >= target:
                    reached = {"seconds": time.perf_counter() - start, "step": n_steps, "dev_p_at_1": dev["p_at_1"]}
                    break
    rss_mb = peak_rss_mb()
    return {"side": args.tta_worker, "manual_p_at_1": manual, "target": target, "reached": reached,
            "steps": n_steps, "seconds": time.perf_counter() - start, "last_dev_p_at_1": last["dev_p_at_1"],
            "peak_rss_mb": rss_mb}


def peak_rss_mb() -> float:
    """This process's peak resident memory. ``ru_maxrss`` would count the parent's peak (Linux keeps it
    across fork + exec); ``VmHWM`` belongs to this process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def num_virtual(template: str) -> int:
    from ptuning_lab.templates import Template

    return Template.parse(template).num_virtual_tokens


def time_to_accuracy(args, side: str, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--tta-worker", side, "--device", args.device, "--model", args.model,
           "--data", args.data, "--dtype", args.dtype, "--batch-size", str(args.batch_size),
           "--tta-budget", str(args.tta_budget), "--tta-eval-every", str(args.tta_eval_every),
           "--tta-max-steps", str(args.tta_max_steps), "--threads", str(args.threads), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        return {"side": side, "error": (out.stderr or out.stdout)[-800:]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None, choices=["embedded", "gpt2-random", "gpt2-tiny", "llama-tiny"],
                   help="default: embedded on cpu, random weights of --shape on cuda; *-tiny: smoke tests")
    p.add_argument("--shape", default=None, choices=list(SHAPES),
                   help="random weights of this model's shape (default gpt2-small; implies --model gpt2-random)")
    p.add_argument("--data", default=None, choices=["capital", "synthetic"],
                   help="default: capital with the embedded model, synthetic (exact --seq-len) otherwise")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="frozen weights, both sides (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast on both sides (default: on for cuda)")
    p.add_argument("--batch-size", "--batch", type=int, default=None,
                   help=f"default 16 on cpu; on cuda per shape: {SHAPE_BATCH}")
    p.add_argument("--pack-tokens", default=None,
                   help="ours: FastConfig.pack_tokens, or several (e.g. 512,1): one ours variant each (default: "
                        "FastConfig's)")
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=None,
                   help="count each variant's FLOPs per step (default: on for cuda)")
    p.add_argument("--profile", default=None,
                   help="variants to profile on the GPU (comma-separated names, e.g. ours-mlp,peft-mlp,bare)")
    p.add_argument("--bare", action=argparse.BooleanOptionalAction, default=None,
                   help="time the bare frozen model, the ceiling (default: on for cuda)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="default 64 on cpu, 256 on cuda")
    p.add_argument("--virtual-tokens", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=24, help="synthetic data: PEFT's tokens per example")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeats", type=int, default=None, help="default 5 on cpu, 20 on cuda")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--in-a-row", type=int, default=1, metavar="K",
                   help="time K steps in a row per sample, synced once at the end (per-step time = total / K): "
                        "what a training loop sees when the host may run ahead of the GPU (default 1: each step "
                        "synced on its own)")
    p.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True,
                   help="extra mlp rows: plain path, PEFT's layout, suffix layout, bf16 weights (cpu)")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   help="torch.compile the frozen transformer (both sides; FrozenLM.compile), optionally with a "
                        "mode, e.g. reduce-overhead (CUDA graphs); PEFT is also timed uncompiled, its default")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time ours with whole training steps replayed as CUDA graphs (ours-M-graphs rows; "
                        "FastConfig(cuda_graphs=True)); with --compile reduce-overhead they run on a copy of the "
                        "model compiled without its own CUDA graphs")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="time to accuracy (default: on with the embedded model)")
    p.add_argument("--tta-budget", type=float, default=150.0, help="seconds each side may train")
    p.add_argument("--tta-eval-every", type=int, default=5)
    p.add_argument("--tta-max-steps", type=int, default=200)
    p.add_argument("--tta-template", default=None, help="ours: template for time to accuracy (default: the CLI's)")
    p.add_argument("--tta-worker", default=None, choices=["ours", "peft"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, help="write every number here")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    if args.shape:
        args.model = args.model or "gpt2-random"
        if args.model != "gpt2-random":
            p.error(f"--shape {args.shape} gives random weights; drop --model {args.model}.")
    args.model = args.model or ("gpt2-random" if gpu else "embedded")
    args.shape = args.shape or "gpt2-small"
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.flops = gpu if args.flops is None else args.flops
    args.bare = gpu if args.bare is None else args.bare
    args.data = args.data or ("capital" if args.model == "embedded" else "synthetic")
    args.autocast = gpu if args.autocast is None else args.autocast
    args.batch_size = args.batch_size or (SHAPE_BATCH[args.shape] if gpu else 16)
    args.eval_batch_size = args.eval_batch_size or (args.batch_size if gpu else 64)
    args.repeats = args.repeats or (20 if gpu else 5)
    args.tta = (args.model == "embedded") if args.tta is None else args.tta
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tta_worker:
        print(json.dumps(tta_worker(args)))
        return 0

    packs = [int(x) for x in args.pack_tokens.split(",")] if args.pack_tokens else [None]
    header = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else " ".join(argv),
              "host": platform.node(), "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        import peft
        import transformers
        header.update(peft=peft.__version__, transformers=transformers.__version__)
    except ImportError:
        raise SystemExit("this benchmark needs PEFT: pip install peft (a benchmark dependency only).")
    if gpu:
        header["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(header))
    lm = build_lm(args)
    task = build_task(args, lm)
    lm_eager = None
    if args.compile:
        # PEFT's default is an uncompiled model: keep one, to show that ratio too
        lm_eager = FrozenLM(copy.deepcopy(lm.model), lm.tokenizer, lm.name)
        # one compiled graph per shape (train, evaluation, the fast path's self-check, PEFT's):
        # static shapes give the fastest kernels, and every shape must fit under the recompile limit
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        lm.compile(mode=None if args.compile == "default" else args.compile, dynamic=False)
    lm_graphs = lm
    if args.cuda_graphs and args.compile in ("reduce-overhead", "max-autotune"):
        # whole-step graphs cannot hold the body's own graphs: the same weights, compiled without them
        lm_graphs = FrozenLM(copy.deepcopy(lm_eager.model), lm.tokenizer, lm.name)
        lm_graphs.compile(mode="max-autotune-no-cudagraphs" if args.compile == "max-autotune" else None,
                          dynamic=False)
    n = args.virtual_tokens
    methods = [m for m in args.methods.split(",") if m]
    variants = []
    bare = None
    for m in methods:
        ours = Ours(f"ours-{m}", lm, task, m, hybrid(task, n), args, pack_tokens=packs[0])
        variants.append(ours)
        for pk in packs[1:]:
            variants.append(Ours(f"ours-{m}-pack{pk}", lm, task, m, hybrid(task, n), args, pack_tokens=pk))
        if args.cuda_graphs:
            for i, pk in enumerate(packs):
                variants.append(Ours(f"ours-{m}{f'-pack{pk}' if i else ''}-graphs", lm_graphs, task, m, hybrid(task, n),
                                     args, pack_tokens=pk, cuda_graphs=True))
        if args.bare and bare is None:
            bare = Bare("bare", lm, args, ours.trainer)
            variants.append(bare)
        variants.append(Peft(f"peft-{m}", lm, task, m, args, ours.trainer))
        if lm_eager is not None:
            variants.append(Peft(f"peft-{m}-eager", lm_eager, task, m, args, ours.trainer))
    if args.extras and "mlp" in methods:
        variants.append(Ours("ours-mlp-plain", lm, task, "mlp", hybrid(task, n), args, fast=False))
        variants.append(Ours("ours-mlp-peft-layout", lm, task, "mlp", f"[P]*{n} {task.template}", args))
        variants.append(Ours("ours-mlp-suffix", lm, task, "mlp", f"{task.template} [P]*{n}", args))
    lm16 = None
    if args.extras and not gpu and args.dtype == "float32" and not args.autocast and "mlp" in methods:
        lm16 = FrozenLM(copy.deepcopy(lm.model).to(torch.bfloat16), lm.tokenizer, lm.name + "-bf16")
        variants.append(Ours("ours-mlp-bf16", lm16, task, "mlp", hybrid(task, n), args))
        variants.append(Peft("peft-mlp-bf16", lm16, task, "mlp", args, variants[0].trainer))
    print(f"model {lm.name} | data {task.name} ({len(task.train)} train, {len(task.dev)} dev) | batch "
          f"{args.batch_size} | eval batch {args.eval_batch_size} | {n} virtual tokens | dtype {args.dtype}"
          f"{' + bf16 autocast' if args.autocast else ''} | {len(variants)} variants", flush=True)
    results = measure(variants, args)

    tta = {}
    if args.tta:
        tta["ours"] = time_to_accuracy(args, "ours")
        tta["peft"] = time_to_accuracy(args, "peft")

    print(f"\n{'variant':<24}{'steps/s':>9}{'tokens/s':>11}{'eval ex/s':>11}{'step ms':>9}{'peak MB':>9}"
          f"{'GFLOP/step':>11}{'TFLOP/s':>9}{'% peak':>7}{'/ceiling':>9}")
    ceiling = results.get("bare", {}).get("tokens_per_s")
    for name, r in results.items():
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] else "-"
        fl = (f"{r['step_flops'] / 1e9:>11.1f}{r['tflops']:>9.1f}{100 * r['tflops'] / PEAK_TFLOPS:>7.1f}"
              if r["step_flops"] else f"{'-':>11}{'-':>9}{'-':>7}")
        ceil = f"{r['tokens_per_s'] / ceiling:>9.2f}" if ceiling else f"{'-':>9}"
        print(f"{name:<24}{r['steps_per_s']:>9.2f}{r['tokens_per_s']:>11.0f}{r['eval_examples_per_s']:>11.1f}"
              f"{1000 * r['step_s']:>9.1f}{peak:>9}{fl}{ceil}")
    for v in variants:
        if isinstance(v, Ours) and v.wants_fast and not v.trainer.forward.uses_fast_path:
            print(f"note: {v.name} ran on the plain path: {v.trainer.forward.fallback_reason}")
        graphs = getattr(v, "trainer", None) and v.trainer.step_graphs
        if graphs:
            print(f"note: {v.name}: {graphs.stats['replays']} steps replayed, {graphs.stats['captures']} recorded, "
                  f"{graphs.stats['uncaptured']} uncaptured" + (f" (last: {graphs.reason})" if graphs.reason else ""))
    for side, t in tta.items():
        if "error" in t:
            print(f"time to accuracy ({side}): failed: {t['error']}")
            continue
        got = f"{t['reached']['seconds']:.1f} s (step {t['reached']['step']})" if t["reached"] else \
            f"not reached in {t['seconds']:.0f} s / {t['steps']} steps (last dev P@1 {t['last_dev_p_at_1']})"
        print(f"time to accuracy ({side}): dev P@1 >= {t['target']:.3f} (manual {t['manual_p_at_1']:.3f} + 0.10): "
              f"{got}; peak RSS {t['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "args": vars(args), "results": results,
                                               "time_to_accuracy": tta}, indent=1))
    for m in methods:
        keys = [f"ours-{m}"] + [f"ours-{m}-pack{pk}" for pk in packs[1:]]
        for ours_key in keys + [f"{k}-graphs" for k in keys]:
            if ours_key not in results:
                continue
            o = results[ours_key]
            tag = "" if ours_key == f"ours-{m}" else f" ({ours_key})"
            for label, key in (("", f"peft-{m}"), (" vs PEFT uncompiled", f"peft-{m}-eager")):
                if key not in results:
                    continue
                q = results[key]
                extra = ""
                if ceiling:
                    extra += f" | ours / ceiling {o['tokens_per_s'] / ceiling:.2f}"
                if o.get("tflops") and q.get("tflops"):
                    extra += f" | TFLOP/s {o['tflops']:.1f} vs {q['tflops']:.1f}"
                if o.get("peak_mb") and q.get("peak_mb"):
                    extra += f" | peak MB {o['peak_mb']:.0f} vs {q['peak_mb']:.0f}"
                print(f"RATIO {m:<7} train steps/s {o['steps_per_s'] / q['steps_per_s']:.2f}x | tokens/s "
                      f"{o['tokens_per_s'] / q['tokens_per_s']:.2f}x ({o['tokens_per_s']:.0f} vs {q['tokens_per_s']:.0f}) | "
                      f"eval {o['eval_examples_per_s'] / q['eval_examples_per_s']:.2f}x{label}{tag}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
