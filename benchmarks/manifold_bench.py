"""Timings of the vocabulary-manifold analysis on the embedded model (SmolLM2-135M, vocab 49152 x 576).

    HF_HUB_OFFLINE=1 python benchmarks/manifold_bench.py                # everything (~2-4 min on 2 cores)
    HF_HUB_OFFLINE=1 python benchmarks/manifold_bench.py --skip-full-umap

What it measures:
- top-10 nearest-token decoding of 64 prompt vectors, all three metrics (median of repeats), plus
  cosine-only, the word-like filter, and the bare (64 x 576) @ (576 x 49152) matmul for scale;
  "cpu" is the process's CPU time per call (all threads): on a shared machine the wall time also
  counts waiting for a core, and torch's threads spin while they wait;
- VocabStats first build and cached load;
- PCA and UMAP maps, on the default 5000-token subset and on the full vocabulary: first fit and
  cached load (the first UMAP fit in a process includes numba's one-off compilation).

"First" numbers use a fresh temporary cache (PTUNING_LAB_CACHE is pointed at it after the model is
loaded, so the model itself still comes from the usual cache). Cached loads clear the in-memory
memos first, so they include the embedding fingerprint, as a new process would.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ptuning_lab import manifold as M  # noqa: E402
from ptuning_lab.frozen_lm import FrozenLM  # noqa: E402

ROWS: list[tuple[str, str]] = []


def report(name: str, value: str) -> None:
    ROWS.append((name, value))
    print(f"{name:<52} {value}", flush=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def median_ms(fn, repeats: int) -> str:
    """Median and min wall time, and median CPU time of the process (all threads) per call."""
    fn()                                                        # warm-up (memos, allocator)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return (f"median {statistics.median(wall) * 1e3:6.1f} ms   min {min(wall) * 1e3:6.1f} ms   "
            f"cpu {statistics.median(cpu) * 1e3:6.1f} ms")


def cold_memos() -> None:
    M._INDEX_MEMO.clear()
    M._WORD_MEMO.clear()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores).")
    parser.add_argument("--repeats", type=int, default=30, help="Repeats of the decoding timing.")
    parser.add_argument("--skip-full-umap", action="store_true", help="Skip the full-vocabulary UMAP (~1 min+).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    lm, secs = timed(lambda: FrozenLM.load("smollm2-135m", verbose=False))
    E, strings = lm.embedding, lm.token_strings
    print(f"model {lm.name}: vocab {lm.vocab_size} x {lm.hidden_size}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f} (model load {secs:.1f} s)\n", flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="ptuning_lab_bench_")
    os.environ["PTUNING_LAB_CACHE"] = tmp.name

    # ---------------------------------------------------------------- decoding
    g = torch.Generator().manual_seed(0)
    vectors = E[torch.randint(0, lm.vocab_size, (64,), generator=g)].detach() \
        + 0.05 * torch.randn(64, lm.hidden_size, generator=g)
    Et = E.detach()
    report("matmul (64 x 576) @ (576 x 49152), fp32", median_ms(lambda: vectors @ Et.T, args.repeats))
    for label, kwargs in (("nearest_tokens k=10, cosine+l2+dot", {}),
                          ("nearest_tokens k=10, cosine only", {"metrics": ("cosine",)}),
                          ("nearest_tokens k=10, 3 metrics, word_like", {"word_like": True})):
        report(label, median_ms(lambda: M.nearest_tokens(vectors, E, strings, k=10, **kwargs), args.repeats))

    # ---------------------------------------------------------------- VocabStats
    cold_memos()
    _, secs = timed(lambda: M.vocab_stats(E, lm.name))
    report("VocabStats first build (subset 5000, 1000 random)", f"{secs:6.2f} s")
    cold_memos()
    _, secs = timed(lambda: M.vocab_stats(E, lm.name))
    report("VocabStats cached load", f"{secs * 1e3:6.1f} ms")

    # ---------------------------------------------------------------- maps
    plans = [("pca", 5000), ("pca", None), ("umap", 5000)] + ([] if args.skip_full_umap else [("umap", None)])
    for method, subset in plans:
        what = f"{method.upper()} {'subset 5000 word-like' if subset else 'full vocab'}"
        cold_memos()
        proj, secs = timed(lambda: M.fit_projection(E, strings, lm.name, method=method, subset=subset))
        note = " (incl. numba compile)" if method == "umap" and subset == 5000 else ""
        report(f"{what}: first fit ({len(proj.token_ids)} tokens){note}", f"{secs:6.2f} s")
        cold_memos()
        proj, secs = timed(lambda: M.fit_projection(E, strings, lm.name, method=method, subset=subset))
        report(f"{what}: cached load", f"{secs * 1e3:6.1f} ms")
        _, secs = timed(lambda: proj.transform(vectors))
        report(f"{what}: transform of 64 vectors", f"{secs * 1e3:6.1f} ms")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux
    report("peak RSS", f"{peak:6.0f} MiB")
    print(f"\nload avg at the end: {os.getloadavg()[0]:.1f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
