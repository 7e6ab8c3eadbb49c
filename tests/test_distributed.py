"""Data-parallel training: shards, gradient sums and gathered metrics equal the single-process ones.

The sharding maths is checked in-process on a float64 tiny GPT-2 (exact to 1e-10); the real thing
runs the CLI under ``accelerate launch`` with 2 CPU processes (gloo) and compares the saved prompt
with a 1-process run of the same global batch.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_tiny_lm
from ptuning_lab import checkpoint as ckpt
from ptuning_lab import distributed
from ptuning_lab.distributed import (Distributed, combine_metrics, launch_info, launched, shard, shard_bounds,
                                     shard_loss)
from ptuning_lab.prompts import build_encoder
from ptuning_lab.evaluation import evaluate
from ptuning_lab.tasks import Example, Task, load_task
from ptuning_lab.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light", "table", "sugar", "horse", "glass"]


def toy_task(n=24):
    answers = ["north", "south", "east", "west"]
    exs = [Example(WORDS[i % len(WORDS)] + str(i), answers[i % 4]) for i in range(n)]
    return Task("toy", "Direction of [X] is", exs[: n // 2], exs[n // 2: 3 * n // 4], exs[3 * n // 4:],
                sorted(answers))


def toy_trainer(lm, **cfg):
    enc = build_encoder("mlp", 3, lm.embedding.detach(), init="vocab", seed=0).double()
    return Trainer(lm, enc, toy_task(), "[P][P] Direction of [X] is [P]", TrainConfig(**cfg), progress=False)


# ---------------------------------------------------------------- launch detection and sharding
def test_launch_info_reads_the_launcher_variables():
    assert launch_info({}) == distributed.LaunchInfo(1, 0, 0) and not launched({})
    info = launch_info({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (info.world_size, info.rank, info.local_rank) == (4, 2, 0)
    assert launched({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert not launched({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="RANK=4.*accelerate launch"):
        launch_info({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        launch_info({"WORLD_SIZE": "two"})


def test_shards_concatenate_to_the_global_batch():
    for n in range(14):
        items = [f"ex{i}" for i in range(n)]
        for world in range(1, 6):
            parts = [shard(items, r, world) for r in range(world)]
            assert sum(parts, []) == items                               # in rank order: the global batch
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            assert parts == [shard(items, r, world) for r in range(world)]   # deterministic
    assert shard_bounds(5, 0, 2) == (0, 3) and shard_bounds(5, 1, 2) == (3, 5)
    assert shard(["a"], 1, 2) == []                                      # more ranks than examples
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard_bounds(5, 2, 2)


# ---------------------------------------------------------------- the gradient maths, in one process
@pytest.mark.parametrize("world, gamma", [(2, 0.0), (3, 0.5), (6, 0.5)])
def test_shard_gradients_sum_to_the_global_batch_gradient(gpt2, world, gamma):
    """Sum over ranks of grad(loss(shard) * |shard|/B) == grad(mean loss over B), waywardness included.

    B = 5: world 2 gives shards 3/2, world 3 gives 2/2/1, world 6 leaves one rank empty.
    """
    cfg = {"waywardness_gamma": gamma, "waywardness_target": "the capital"} if gamma else {}
    trainer = toy_trainer(gpt2, **cfg)
    batch = trainer.task.train[:5]
    params = list(trainer.encoder.parameters())
    full = trainer.loss(batch)
    want = torch.autograd.grad(full, params)
    total = 0.0
    for rank in range(world):                    # gradients accumulate in .grad exactly like the SUM all-reduce
        local = shard_loss(trainer.loss, trainer.encoder, batch, rank, world)
        if local.requires_grad:
            local.backward()
        total += float(local.detach())
    assert total == pytest.approx(float(full.detach()), rel=1e-12)
    for p, g in zip(params, want):
        assert torch.allclose(p.grad, g, atol=1e-10, rtol=1e-8)
    assert max(g.abs().max() for g in want) > 1e-4                       # a real gradient, not zeros


def test_single_process_context_changes_nothing(gpt2, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.context()
    assert (ctx.world_size, ctx.rank, ctx.is_main_process, ctx.device, ctx.accelerator) == (1, 0, True, None, None)
    assert distributed.is_main_process() and distributed.device_for("cpu") == "cpu" and distributed.device_for(None) is None
    assert ctx.shard([1, 2, 3]) == [1, 2, 3] and ctx.gather_object({"a": 1}) == [{"a": 1}]
    trainer = toy_trainer(gpt2)
    assert trainer.dist is ctx
    before = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
    ctx.broadcast_parameters(trainer.encoder)
    assert all(torch.equal(before[k], v) for k, v in trainer.encoder.state_dict().items())
    batch = trainer.task.train[:4]
    # backward_shard in one process: the plain mean loss and its gradient
    loss = ctx.backward_shard(trainer.loss, trainer.encoder, batch)
    want = torch.autograd.grad(trainer.loss(batch), list(trainer.encoder.parameters()))
    assert float(loss) == pytest.approx(float(trainer.loss(batch).detach()), rel=1e-12)
    assert all(torch.allclose(p.grad, g, atol=1e-12) for p, g in zip(trainer.encoder.parameters(), want))
    # evaluate: exactly the function on the whole split
    prompt = trainer.current_prompt()
    assert ctx.evaluate(lambda exs: evaluate(gpt2, trainer.template, exs, prompt), trainer.task.dev) == \
        evaluate(gpt2, trainer.template, trainer.task.dev, prompt)


def test_non_finite_loss_is_raised_with_gradients_cleared(gpt2):
    trainer = toy_trainer(gpt2)
    with pytest.raises(FloatingPointError, match="nan"):
        Distributed().backward_shard(lambda exs: trainer.loss(exs) * float("nan"), trainer.encoder,
                                     trainer.task.train[:4])
    assert all(p.grad is None for p in trainer.encoder.parameters())


# ---------------------------------------------------------------- gathered metrics
def test_combined_shard_metrics_equal_the_whole_split(gpt2):
    trainer = toy_trainer(gpt2)
    task, prompt = trainer.task, trainer.current_prompt()
    examples = task.dev + task.test                                      # 12 examples

    def run(exs):
        return evaluate(gpt2, trainer.template, exs, prompt, answers=task.answers)

    want = run(examples)
    for world in (2, 5):                                                 # shards 6/6 and 3/3/2/2/2
        per_rank = [run(shard(examples, r, world)) for r in range(world)]
        got = combine_metrics(per_rank + [{"n": 0}])                     # plus a rank left without examples
        assert got["n"] == want["n"] == 12
        assert got["p_at_1"] == want["p_at_1"] and got["candidate_accuracy"] == want["candidate_accuracy"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)


def test_f1_and_em_are_recomputed_on_the_pooled_shards(gpt2):
    """Macro-F1 and EM are not means over examples: the combined shards give the whole split's values."""
    words = {"yes": (" yes",), "no": (" no",)}
    examples = [Example(input=f"item {i}", target=" yes" if i % 3 else " no", label="yes" if i % 3 else "no",
                        group=f"q{i // 3}") for i in range(15)]
    prompt = torch.randn(2, gpt2.hidden_size, generator=torch.Generator().manual_seed(0))
    metrics = ("accuracy", "f1_macro", "em")

    def run(exs):
        return evaluate(gpt2, "[P] [X] [P] answer:", exs, prompt, verbalizer=words, metrics=metrics,
                        keep_predictions=True)

    want = run(examples)
    assert len(want["predictions"]["pred"]) == 15
    naive_differs = False
    for world in (2, 4):
        shards = [run(shard(examples, r, world)) for r in range(world)]
        got = combine_metrics(shards)
        assert "predictions" not in got
        for name in metrics:
            assert got[name] == pytest.approx(want[name], abs=1e-12), name
        # the n-weighted mean of the shards' values (what a plain combine would give) is not the answer
        naive = {m: sum(r[m] * r["n"] for r in shards) / 15 for m in ("f1_macro", "em")}
        naive_differs |= any(abs(naive[m] - want[m]) > 1e-9 for m in naive)
    assert naive_differs


def test_count_metrics_are_combined_exactly():
    """P@1 from counts: 1/3 on 3 examples and 3/7 on 7 give exactly 4/10, the single-process float."""
    got = combine_metrics([{"n": 3, "p_at_1": 1 / 3, "loss": 2.0}, {"n": 7, "p_at_1": 3 / 7, "loss": 1.0},
                           {"n": 0}])
    assert got["p_at_1"] == 4 / 10 and got["loss"] == pytest.approx((3 * 2.0 + 7 * 1.0) / 10)
    with pytest.raises(ValueError, match="empty"):
        combine_metrics([{"n": 0}, {"n": 0}])


# ---------------------------------------------------------------- the real launch: 2 CPU processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HOME": str(tmp_path / "hf_home")}          # no user accelerate config can change the launch
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow          # two launches of the CLI: about 30 s on 2 cores
def test_two_processes_give_the_single_process_prompt(tiny_model_dir, tmp_path):
    # 16 train / 5 dev / 5 test; global batch 5 -> shards 3/2, and the epoch's last batch of 1 -> 1/0
    task = load_task("capital", seed=0, max_examples=26)
    assert (len(task.train), len(task.dev), len(task.test)) == (16, 5, 5)
    train = ["train", "--task", "capital", "--encoder", "mlp", "--model", tiny_model_dir, "--device", "cpu",
             "--max-examples", "26", "--batch-size", "5", "--max-steps", "6", "--eval-every", "2",
             "--checkpoint-every", "3", "--lr", "0.02"]
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()                                                          # an earlier run of ours: --overwrite
    (two / ".ptuning_lab_run").write_text('{"kind": "run"}')             # replaces it, once (the main process)
    (two / "metrics.json").write_text('{"stale": true}')
    launched_run = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "--main_process_port", str(_free_port()), "-m", "ptuning_lab.cli", *train,
                         "--out", str(two), "--overwrite"], tmp_path)
    _run([sys.executable, "-m", "ptuning_lab.cli", *train, "--out", str(one)], tmp_path)

    assert "process 0 of 2" in launched_run.stderr and "process 1 of 2" in launched_run.stderr
    printed = json.loads(launched_run.stdout)                           # one JSON: only the main process prints
    assert "stale" not in json.loads((two / "metrics.json").read_text())

    a, b = ckpt.load_run(one), ckpt.load_run(two)
    moved = (a.prompt - a.snapshots[0]).abs().max()
    assert moved > 1e-2                                                  # training changed the prompt...
    assert torch.allclose(b.prompt, a.prompt, atol=1e-5, rtol=0)         # ...identically in both runs
    for k in a.encoder_state:
        assert torch.allclose(b.encoder_state[k], a.encoder_state[k], atol=1e-5, rtol=0)
    assert torch.allclose(b.snapshots, a.snapshots, atol=1e-5, rtol=0)
    assert [r["step"] for r in b.history["train"]] == [r["step"] for r in a.history["train"]] == list(range(1, 7))
    assert [r["lr"] for r in b.history["train"]] == [r["lr"] for r in a.history["train"]]
    assert [r["loss"] for r in b.history["train"]] == pytest.approx([r["loss"] for r in a.history["train"]], abs=1e-5)
    for rb, ra in zip(b.history["eval"], a.history["eval"], strict=True):
        assert (rb["step"], rb["dev_p_at_1"]) == (ra["step"], ra["dev_p_at_1"])
        assert rb["dev_loss"] == pytest.approx(ra["dev_loss"], abs=1e-5)
    assert (b.history["best_step"], b.history["stopped"]) == (a.history["best_step"], a.history["stopped"])
    ma = json.loads((one / "metrics.json").read_text())
    for key in ("test_p_at_1", "test_candidate_accuracy", "dev_p_at_1", "steps", "best_step", "stopped"):
        assert b.metrics[key] == ma[key] == printed[key], key
    assert json.loads((two / "state" / "step-000006" / "trainer.json").read_text())["step"] == 6


# ---------------------------------------------------------------- a sharded frozen model (FSDP2): 2 CPU processes
# One launch runs several trainings in one process group (a launch costs most of the time on 2 cores).
# Each job: ["train", argv] runs the CLI's train command; ["stop_at", k, argv] the same, interrupted after
# step k (the state of the last checkpoint stays, as after a crash); ["copy", src, dst] copies a run (main
# process) for a later single-process resume.
FSDP_DRIVER = r'''
import json, shutil, sys
from ptuning_lab import cli, distributed, experiments, trainer

class StopAt(trainer.Callback):
    def __init__(self, step):
        self.step = step
    def on_step_end(self, t, step, loss):
        if step == self.step:
            raise KeyboardInterrupt

ctx = distributed.context(cpu=True)
plain_train_one = experiments.train_one
for job in json.loads(sys.argv[1]):
    if job[0] == "copy":
        ctx.wait_for_everyone()
        if ctx.is_main_process:
            shutil.copytree(job[1], job[2])
        ctx.wait_for_everyone()
        continue
    stop = job[1] if job[0] == "stop_at" else None
    experiments.train_one = ((lambda *a, **k: plain_train_one(*a, **{**k, "callbacks": [StopAt(stop)]})) if stop
                             else plain_train_one)
    args = cli.build_parser().parse_args(job[-1])
    assert args.func(args) == (1 if stop else 0)          # 1: training stopped early (interrupted)
from ptuning_lab import sharding
print(f"rank {ctx.rank} ran {sharding.lockstep().dummy_forwards} dummy forwards", file=sys.stderr, flush=True)
distributed.shutdown(True)
'''

FSDP_CONFIG = REPO / "configs" / "accelerate_fsdp_cpu.yaml"


def _same_run(b, a, tol=1e-5):
    """Run directories ``b`` and ``a`` hold the same prompt, encoder, snapshots and history (to ``tol``)."""
    rb, ra = ckpt.load_run(b), ckpt.load_run(a)
    dev_losses = [r["dev_loss"] for r in ra.history["eval"]]
    assert max(dev_losses) - min(dev_losses) > 1e-4          # training moved the prompt (same dev set, new loss)...
    assert torch.allclose(rb.prompt, ra.prompt, atol=tol, rtol=0)          # ...the same way in both runs
    # the guarantee is the prompt and the history (above and below, to tol); an encoder weight whose
    # gradient is near zero takes Adam steps of about lr whatever its size, so the order of a sum across
    # processes can move it by more than tol without changing the prompt: weights are held to 10 x tol
    for k in ra.encoder_state:
        assert torch.allclose(rb.encoder_state[k], ra.encoder_state[k], atol=10 * tol, rtol=0), k
    assert rb.snapshot_steps == ra.snapshot_steps and torch.allclose(rb.snapshots, ra.snapshots, atol=tol, rtol=0)
    assert [(r["step"], r["lr"]) for r in rb.history["train"]] == [(r["step"], r["lr"]) for r in ra.history["train"]]
    assert [r["loss"] for r in rb.history["train"]] == pytest.approx([r["loss"] for r in ra.history["train"]], abs=tol)
    assert [(r["step"], r["dev_p_at_1"]) for r in rb.history["eval"]] == [(r["step"], r["dev_p_at_1"])
                                                                          for r in ra.history["eval"]]
    assert [r["dev_loss"] for r in rb.history["eval"]] == pytest.approx([r["dev_loss"] for r in ra.history["eval"]],
                                                                        abs=tol)
    assert (rb.history["best_step"], rb.history["stopped"]) == (ra.history["best_step"], ra.history["stopped"])
    mb, ma = (json.loads((d / "metrics.json").read_text()) for d in (b, a))
    for key in ("test_p_at_1", "test_candidate_accuracy", "dev_p_at_1", "steps", "best_step", "stopped"):
        assert mb[key] == ma[key], key


@pytest.mark.slow          # one launch of 2 CPU processes running 5 trainings, and 4 single-process runs: about 60 s
def test_sharded_frozen_model_gives_the_single_process_runs(tiny_model_dir, tokenizer, tmp_path):
    """FSDP2 over 2 gloo processes == 1 process with the same global batch, for GPT-2 and Llama, on the
    fast path with per-example cached prefixes and packing, for prefix tuning, and across a resume."""
    from ptuning_lab.cli import main

    llama = tmp_path / "tiny-llama"
    make_tiny_lm("llama", tokenizer).model.save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    # 16 train / 5 dev / 5 test; global batch 5 -> shards 3/2, and the epoch's last batch of 1 -> 1/0: rank 1
    # pads it with a weight-0 example. Dev 3/2, test 3/2 with candidate scoring: uneven numbers of forwards.
    common = ["--task", "capital", "--device", "cpu", "--max-examples", "26", "--batch-size", "5", "--max-steps", "6",
              "--eval-every", "2", "--lr", "0.02"]
    runs = {
        # text before the first [P]: each example's constant prefix is cached (misses differ between the ranks)
        "gpt2_cached": ["--model", tiny_model_dir, "--encoder", "mlp", "--template", "The capital of [X] is [P][P][P]",
                        "--checkpoint-every", "3"],
        # the default template: a shared head and packed rows
        "llama_packed": ["--model", str(llama), "--encoder", "lstm"],
        "llama_prefix": ["--model", str(llama), "--encoder", "prefix"],
    }
    argv = {name: ["train", *common, *extra] for name, extra in runs.items()}
    two, one = tmp_path / "two", tmp_path / "one"
    jobs = [["train", [*argv[name], "--out", str(two / name)]] for name in runs]
    jobs += [["stop_at", 4, [*argv["gpt2_cached"], "--out", str(two / "cut")]],          # state saved at step 3
             ["copy", str(two / "cut"), str(two / "cut_single")],
             ["train", [*argv["gpt2_cached"], "--out", str(two / "cut"), "--resume"]]]
    driver = tmp_path / "driver.py"
    driver.write_text(FSDP_DRIVER)
    launch = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
                   "--num_processes", "2", "--main_process_port", str(_free_port()), str(driver), json.dumps(jobs)],
                  tmp_path)
    for rank in (0, 1):      # really sharded: each process holds half of the blocks' weights
        assert f"process {rank}: frozen model sharded over 2 processes (FSDP2)" in launch.stderr
    dummies = [int(line.split()[3]) for line in launch.stderr.splitlines() if " dummy forwards" in line]
    assert len(dummies) == 2 and max(dummies) > 0        # the ranks' forwards differed, and were kept in step
    for name in runs:
        assert main([*argv[name], "--out", str(one / name)]) == 0
        _same_run(two / name, one / name)
    latest = sorted((two / "cut_single" / "state").glob("step-*"))[-1]       # the last complete checkpoint
    state = json.loads((latest / "trainer.json").read_text())
    assert state["step"] == 3 and json.loads((two / "cut_single" / "metrics.json").read_text())["stopped"] == "interrupted"
    _same_run(two / "cut", one / "gpt2_cached")                     # resumed under the launch
    assert main([*argv["gpt2_cached"], "--out", str(two / "cut_single"), "--resume"]) == 0
    _same_run(two / "cut_single", one / "gpt2_cached")              # resumed in a single process


def test_sharding_is_read_from_the_accelerate_fsdp_config():
    from ptuning_lab.sharding import ShardingConfig, sharding_config

    assert sharding_config({}) is None and sharding_config({"ACCELERATE_USE_FSDP": "false"}) is None
    fsdp2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    assert sharding_config(fsdp2) == ShardingConfig()
    assert sharding_config({**fsdp2, "FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_OFFLOAD_PARAMS": "true",
                            "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, GPT2Block"}) == \
        ShardingConfig(False, True, ("LlamaDecoderLayer", "GPT2Block"))
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        sharding_config({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    with pytest.raises(ValueError, match="TRANSFORMER_BASED_WRAP"):
        sharding_config({**fsdp2, "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"})
    with pytest.raises(ValueError, match="activation_checkpointing"):
        sharding_config({**fsdp2, "FSDP_ACTIVATION_CHECKPOINTING": "true"})
    # what the repository's config files ask for, as `accelerate launch` passes it on
    import yaml

    for name in ("accelerate_fsdp.yaml", "accelerate_fsdp_cpu.yaml"):
        cfg = yaml.safe_load((REPO / "configs" / name).read_text())
        assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
        assert cfg["use_cpu"] == name.endswith("_cpu.yaml")


def test_transformer_blocks_are_found(tokenizer):
    from ptuning_lab.sharding import transformer_blocks

    for kind, cls in (("gpt2", "GPT2Block"), ("llama", "LlamaDecoderLayer")):
        model = make_tiny_lm(kind, tokenizer).model
        blocks = transformer_blocks(model)
        assert [type(b).__name__ for b in blocks] == [cls, cls]
        with pytest.raises(ValueError, match="fsdp_transformer_layer_cls_to_wrap"):
            transformer_blocks(model, ("NoSuchBlock",))


@pytest.mark.slow          # a torchrun of 2 CPU processes plus the 1-process reference it starts: about 25 s
def test_sharded_benchmark_checks_equality_on_cpu(tmp_path):
    """benchmarks/sharded.py (written for GPUs) runs sharded under torchrun with gloo, and its --check holds."""
    out = tmp_path / "bench.json"
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(_free_port()), "benchmarks/sharded.py", "--device", "cpu", "--check", "--json", str(out)],
                tmp_path)
    check = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHECK")]
    assert len(check) == 1 and check[0].endswith("OK"), proc.stdout
    ranks = json.loads(out.read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["sharded"] and r["tokens_per_s"] > 0 for r in ranks)
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], abs=0)        # one global loss per step


def test_only_forwards_with_inputs_that_need_grad_count_as_training_forwards(gpt2, monkeypatch):
    """The lockstep tells a training forward (it has a backward on every rank) from one without gradients
    by its inputs: grad mode alone would count the fast path's prefix-cache forward as training."""
    from transformers import DynamicCache

    from ptuning_lab.sharding import _needs_grad

    frozen, trained = torch.zeros(2, 3), torch.zeros(2, 3, requires_grad=True)
    assert not _needs_grad([frozen, None, 3]) and _needs_grad([frozen, trained])
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    assert not _needs_grad([frozen, cache])
    cache.update(torch.zeros(1, 2, 3, 4, requires_grad=True), torch.zeros(1, 2, 3, 4), 1)     # a K/V prefix
    assert _needs_grad([frozen, cache])
    # without a launch an FSDP environment changes nothing: one process has nothing to shard over
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    ctx = Distributed()
    ctx.prepare_frozen_model(gpt2)
    assert not ctx.sharded and all(type(p) is torch.nn.Parameter for p in gpt2.model.parameters())
