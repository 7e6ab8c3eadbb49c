"""Where one of our GPU training steps spends its time: GPT-2-small shape, random bf16 weights, compiled
with CUDA graphs, batch 256, hybrid template (needs a CUDA GPU and PEFT, as vs_peft.py does).

    python benchmarks/gpu_step_profile.py [mlp|lstm|direct]

Prints the time per step with the losses read one step late (in a row) and one by one, the kernel
time per step (torch.profiler) with the largest kernels, and a cProfile of the host side of one epoch.
"""
import argparse, cProfile, pstats, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import vs_peft as p
method = sys.argv[1] if len(sys.argv) > 1 else "mlp"
a = argparse.Namespace(device="cuda", model="gpt2-random", shape="gpt2-small", dtype="bfloat16", seq_len=24,
                       virtual_tokens=6, batch_size=256, eval_batch_size=256, autocast=True, data="synthetic")
lm = p.build_lm(a); task = p.build_task(a, lm)
torch._dynamo.config.cache_size_limit = 64
lm.compile(mode="reduce-overhead", dynamic=False)
o = p.Ours("ours-" + method, lm, task, method, p.hybrid(task, 6), a)
steps_per_epoch = o.trainer.steps_per_epoch
o.train_steps(0, 2 * steps_per_epoch)      # every batch shape compiled
torch.cuda.synchronize()
def inrow(k, s):
    torch.cuda.synchronize(); t = time.perf_counter(); o.train_steps(s, k); torch.cuda.synchronize()
    return (time.perf_counter() - t) / k * 1000
def single(k, s):
    torch.cuda.synchronize(); t = time.perf_counter()
    for i in range(k): o.train_step(s + i)
    torch.cuda.synchronize(); return (time.perf_counter() - t) / k * 1000
for r in range(2):
    print(f"in a row: {inrow(3 * steps_per_epoch, 0):.2f} ms/step; one by one: {single(3 * steps_per_epoch, 0):.2f} ms/step")
from torch.profiler import ProfilerActivity, profile
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    o.train_steps(0, steps_per_epoch); torch.cuda.synchronize()
ev = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA and not e.key.startswith("##")]
attr = "self_device_time_total" if hasattr(ev[0], "self_device_time_total") else "self_cuda_time_total"
print(f"kernels: {sum(getattr(e, attr) for e in ev) / 1e3 / steps_per_epoch:.2f} ms/step; launches/step "
      f"{sum(e.count for e in ev) / steps_per_epoch:.0f}")
for e in sorted(ev, key=lambda e: -getattr(e, attr))[:12]:
    print(f"   {getattr(e, attr) / 1e3 / steps_per_epoch:7.3f} ms  x{e.count / steps_per_epoch:5.1f}  {e.key[:90]}")
pr = cProfile.Profile(); pr.enable(); o.train_steps(0, steps_per_epoch); torch.cuda.synchronize(); pr.disable()
st = pstats.Stats(pr); st.sort_stats("tottime").print_stats(25)
st.sort_stats("cumulative").print_stats("ptuning_lab", 25)
