import sys, time, torch
sys.argv = ["vs_peft.py", "--device", "cuda"]
sys.path.insert(0, "benchmarks")
import vs_peft as B
p = B.argparse.ArgumentParser()
args = B.argparse.Namespace(device="cuda", model="gpt2-random", data="synthetic", dtype="float32", autocast=True,
    batch_size=256, eval_batch_size=256, virtual_tokens=6, seq_len=24, repeats=20, warmup=2, threads=0)
lm = B.build_lm(args); task = B.build_task(args, lm)
def bench(v, n=20):
    for s in range(3): v.train_step(s)
    torch.cuda.synchronize(); t = time.perf_counter()
    for s in range(n): v.train_step(s)
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1000
for pack in [512, 64, 32]:
    v = B.Ours("o", lm, task, "mlp", B.hybrid(task, 6), args)
    v.trainer.fast.config.pack_tokens = pack
    print("pack", pack, "ms/step %.1f" % bench(v), flush=True)
q = B.Peft("p", lm, task, "mlp", args, v.trainer)
print("peft ms/step %.1f" % bench(q))
v = B.Ours("o", lm, task, "mlp", B.hybrid(task, 6), args)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for s in range(5): v.train_step(s)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
# sdpa vs eager
for impl in ["sdpa", "eager"]:
    lm.model.config._attn_implementation = impl
    v = B.Ours("o", lm, task, "mlp", B.hybrid(task, 6), args)
    print("attn", impl, "ms/step %.1f" % bench(v), flush=True)
lm.model.config._attn_implementation = "sdpa"
lm.model.base_model.compile()
v = B.Ours("o", lm, task, "mlp", B.hybrid(task, 6), args)
print("compiled ms/step %.1f" % bench(v, 30), flush=True)
q = B.Peft("p", lm, task, "mlp", args, v.trainer)
print("peft compiled ms/step %.1f" % bench(q, 30))
