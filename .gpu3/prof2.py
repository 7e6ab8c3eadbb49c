import sys, time, os, torch
sys.path.insert(0, "benchmarks")
import vs_peft as B
from torch.nn.attention import sdpa_kernel, SDPBackend
out = open(os.environ["OUT"] + "/prof2.txt", "w")
def say(*a):
    print(*a, flush=True); print(*a, file=out, flush=True)
args = B.argparse.Namespace(device="cuda", model="gpt2-random", data="synthetic", dtype="float32", autocast=True,
    batch_size=256, eval_batch_size=256, virtual_tokens=6, seq_len=24, repeats=20, warmup=2, threads=0)
lm = B.build_lm(args); task = B.build_task(args, lm)
def bench(v, n=20):
    for s in range(3): v.train_step(s)
    torch.cuda.synchronize(); t = time.perf_counter()
    for s in range(n): v.train_step(s)
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1000
v = B.Ours("o", lm, task, "mlp", B.hybrid(task, 6), args)
q = B.Peft("p", lm, task, "mlp", args, v.trainer)
say("peft ms/step %.1f" % bench(q))
for pack in [512, 64, 24]:
    v.trainer.fast.config.pack_tokens = pack
    say("pack", pack, "ms/step %.1f" % bench(v), v.trainer.fast.active)
v.trainer.fast.config.pack_tokens = 512
for name, be in [("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
    try:
        with sdpa_kernel([be]):
            say("backend", name, "ms/step %.1f" % bench(v))
    except Exception as e:
        say("backend", name, "failed", repr(e)[:200])
v2 = B.Ours("o", lm, task, "mlp", f"The capital of [X] is [P]*6", args)
say("suffix ms/step %.1f" % bench(v2))
with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
    say("suffix efficient ms/step %.1f" % bench(v2))
from torch.profiler import profile, ProfilerActivity
with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for s in range(5): v.train_step(s)
        torch.cuda.synchronize()
say(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))
say(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
