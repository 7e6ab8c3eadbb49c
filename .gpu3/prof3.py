import sys, time, os, torch, warnings
sys.path.insert(0, "benchmarks")
import vs_peft as B
out = open(os.environ["OUT"] + "/prof3.txt", "w")
def say(*a):
    print(*a, flush=True); print(*a, file=out, flush=True)
def mk(dtype="float32", autocast=True):
    return B.argparse.Namespace(device="cuda", model="gpt2-random", data="synthetic", dtype=dtype, autocast=autocast,
        batch_size=256, eval_batch_size=256, virtual_tokens=6, seq_len=24, repeats=20, warmup=2, threads=0)
def bench(v, n=20):
    for s in range(3): v.train_step(s)
    torch.cuda.synchronize(); t = time.perf_counter()
    for s in range(n): v.train_step(s)
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1000
def ebench(v, n=10):
    for s in range(2): v.evaluate()
    torch.cuda.synchronize(); t = time.perf_counter()
    for s in range(n): v.evaluate()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1000
for dt, ac in [("float32", True), ("bfloat16", False)]:
    args = mk(dt, ac)
    lm = B.build_lm(args); task = B.build_task(args, lm)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        vs = {m: B.Ours("o", lm, task, m, B.hybrid(task, 6), args) for m in ["mlp", "direct"]}
        vs["suffix"] = B.Ours("o", lm, task, "mlp", "The capital of [X] is [P]*6", args)
        q = B.Peft("p", lm, task, "mlp", args, vs["mlp"].trainer)
        say(dt, ac, "peft mlp ms/step %.1f eval %.1f" % (bench(q), ebench(q)))
        for k, v in vs.items():
            say(dt, ac, k, "ms/step %.1f eval %.1f" % (bench(v), ebench(v)), v.trainer.fast.active)
        v = vs["mlp"]; v.trainer.fast.config.pack_tokens = 100000
        say(dt, ac, "mlp pack-all ms/step %.1f eval %.1f" % (bench(v), ebench(v)))
        v.trainer.fast.config.pack_tokens = 512
        say("warnings", [str(x.message)[:150] for x in w if "fast" in str(x.message)])
    if dt == "float32":
        torch._dynamo.config.cache_size_limit = 64
        lm.model.base_model.compile(dynamic=True)
        try:
            say("compiled mlp ms/step %.1f eval %.1f" % (bench(v, 30), ebench(v)), v.trainer.fast.active)
            say("compiled peft ms/step %.1f eval %.1f" % (bench(q, 30), ebench(q)))
        except Exception as e:
            say("compile failed", repr(e)[:300])
    del lm, vs, q, v
    torch.cuda.empty_cache()
