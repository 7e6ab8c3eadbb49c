"""Run time and peak memory of every lesson notebook, each in a fresh kernel, at one course size.

    HF_HUB_OFFLINE=1 python benchmarks/notebook_times.py                 # lesson size (the default)
    HF_HUB_OFFLINE=1 python benchmarks/notebook_times.py --size ci 01    # CI size, notebooks matching 01

Each notebook runs top to bottom in its own process (nbclient, a new kernel), like a student's
"Restart and run all". Reported per notebook: wall seconds and the kernel's peak resident memory
(``ru_maxrss`` of the finished kernel process). The notebooks on disk are not modified. The last
lines compare each notebook with the course's budget (5 minutes, 2 GB on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_S, BUDGET_MB = 300, 2048


def run_one(path: str, timeout: int, save_dir: str | None = None) -> dict:
    """Execute one notebook in a new kernel (this process's only child): seconds and the kernel's peak MB."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(Path(path).parent)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as err:          # a failing cell: report it, keep the other notebooks going
        error = f"{type(err).__name__}: {str(err)[-400:]}"
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if save_dir:                      # the executed copy, to read the results; never over the source
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(save_dir) / Path(path).name)
    return {"notebook": Path(path).name, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb), "error": error}


def main(argv=None) -> int:
    from ptuning_lab import course

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("only", nargs="*", help="run only notebooks whose name contains one of these")
    p.add_argument("--size", default="lesson", choices=["lesson", "ci"])
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell before giving up")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--save-dir", default=None, help="write the executed notebooks (with outputs) here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.timeout, args.save_dir)))
        return 0

    paths = [nb for nb in course.notebook_files() if not args.only or any(o in nb.name for o in args.only)]
    if not paths:
        raise SystemExit(f"no notebook matches {args.only}; the notebooks are {[nb.name for nb in course.notebook_files()]}.")
    env = {**os.environ, course.SIZE_ENV: args.size}
    print(f"{len(paths)} notebook(s), size {args.size}, {os.cpu_count()} CPU cores", flush=True)
    results = []
    for path in paths:
        save = ["--save-dir", args.save_dir] if args.save_dir else []
        out = subprocess.run([sys.executable, __file__, "--one", str(path), "--timeout", str(args.timeout), *save],
                             env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        r = json.loads(lines[-1]) if lines else {"notebook": path.name, "seconds": None, "peak_rss_mb": None,
                                                  "error": (out.stderr or "no output")[-400:]}
        results.append(r)
        print(f"{r['notebook']:<40}{r['seconds'] or 0:>8.1f} s{r['peak_rss_mb'] or 0:>8} MB"
              f"{'  FAILED: ' + r['error'] if r['error'] else ''}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "cores": os.cpu_count(), "results": results}, indent=1))
    ok = [r for r in results if not r["error"] and r["seconds"] <= BUDGET_S and r["peak_rss_mb"] <= BUDGET_MB]
    print(f"within budget ({BUDGET_S} s, {BUDGET_MB} MB): {len(ok)}/{len(results)}; "
          f"total {sum(r['seconds'] or 0 for r in results):.0f} s")
    return 0 if all(not r["error"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
