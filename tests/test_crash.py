"""Crash injection (issue 18): a training run killed with SIGKILL at each file operation of its
checkpoints and final save, then resumed, ends exactly where the uninterrupted run ends, or the
resume is refused with a message (only while no checkpoint has been completed yet).

``PTUNING_LAB_CRASH_AT=n`` makes ptuning_lab.checkpoint kill its own process at its n-th file
operation (writes, renames, removals; see ``checkpoint.crash_point``). The uninterrupted run is
run once in this process with a log of those operations, which gives the list to kill at.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptuning_lab import checkpoint as ckpt
from ptuning_lab import resume

# the run every process trains: 6 steps, a checkpoint every 2 (three checkpoints: the oldest is pruned).
# Run as a script, it loads the model once and forks one child per crash point (argv[3:]); a child is
# killed by its own SIGKILL; the script prints each child's wait status. One thread, nothing run before
# the forks: no thread pool exists to break in a forked child.
RUN = '''
import os
import sys
import torch
from ptuning_lab import checkpoint
from ptuning_lab.frozen_lm import FrozenLM
from ptuning_lab.prompts import build_encoder
from ptuning_lab.tasks import Example, Task
from ptuning_lab.trainer import TrainConfig, Trainer

def build(lm, out):
    answers = ["north", "south", "east", "west"]
    exs = [Example(f"word{i}", answers[i % 4]) for i in range(24)]
    task = Task("toy", "Direction of [X] is", exs[:12], exs[12:18], exs[18:], sorted(answers))
    enc = build_encoder("mlp", 3, lm.embedding.detach(), init="vocab", seed=0)
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_steps=6, eval_every=2, snapshot_every=1, checkpoint_every=2)
    return Trainer(lm, enc, task, "[P][P] Direction of [X] is [P]", cfg, out_dir=out, progress=False)

if __name__ == "__main__":
    torch.set_num_threads(1)
    lm = FrozenLM.load(sys.argv[1], device="cpu", verbose=False)
    for n in sys.argv[3:]:
        pid = os.fork()
        if pid == 0:
            os.environ["PTUNING_LAB_CRASH_AT"] = n
            checkpoint._OPS[0] = 0
            build(lm, os.path.join(sys.argv[2], "run" + n)).fit()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(n, os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status), flush=True)
'''


def _build():
    namespace = {"__name__": "crash_run"}
    exec(compile(RUN, "crash_run", "exec"), namespace)
    return namespace["build"]


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    env.pop("PTUNING_LAB_CRASH_LOG", None)
    env.pop("PTUNING_LAB_CRASH_AT", None)
    return env


def test_a_run_killed_at_every_file_operation_resumes_exactly_or_is_refused(tiny_model_dir, tmp_path, monkeypatch,
                                                                          one_torch_thread):
    from ptuning_lab.frozen_lm import FrozenLM

    build = _build()
    lm = FrozenLM.load(tiny_model_dir, device="cpu", verbose=False)
    log = tmp_path / "operations.log"
    with monkeypatch.context() as m:               # the uninterrupted run, counting its file operations
        m.setenv("PTUNING_LAB_CRASH_AT", "0")
        m.setenv("PTUNING_LAB_CRASH_LOG", str(log))
        m.setattr(ckpt, "_OPS", [0])
        torch.manual_seed(0)
        full = build(lm, tmp_path / "full").fit()
    operations = log.read_text().splitlines()
    labels = [line.split(" ", 1)[1] for line in operations]
    assert labels.count("rename checkpoint") == 3 and "remove old checkpoint" in labels
    assert len(labels) >= 20
    first_complete = labels.index("rename checkpoint") + 1      # killed at this op or before: no checkpoint yet

    script = tmp_path / "run.py"
    script.write_text(RUN)
    done = subprocess.run([sys.executable, str(script), tiny_model_dir, str(tmp_path),
                           *map(str, range(1, len(labels) + 1))], env=_env(), capture_output=True, text=True, timeout=600)
    killed = dict(tuple(map(int, line.split())) for line in done.stdout.splitlines())
    assert sorted(killed) == list(range(1, len(labels) + 1)), done.stderr[-3000:]

    outcomes = {}
    for n, label in enumerate(labels, start=1):
        assert killed[n] == signal.SIGKILL, f"op {n} ({label}): the run was not killed ({killed[n]})"
        out = tmp_path / f"run{n}"
        trainer = build(lm, out)
        try:
            resumed = trainer.fit(resume=True)
        except ckpt.CheckpointError as err:
            assert n <= first_complete, f"op {n} ({label}): refused although a checkpoint was complete: {err}"
            assert "nothing to resume" in str(err) and "without --resume" in str(err), str(err)
            outcomes[n] = "refused"
            continue
        torch.testing.assert_close(resumed.prompt, full.prompt, atol=1e-6, rtol=0, msg=f"op {n} ({label})")
        assert [r["step"] for r in resumed.history["train"]] == list(range(1, 7))
        assert [r["lr"] for r in resumed.history["train"]] == [r["lr"] for r in full.history["train"]]
        assert [r["loss"] for r in resumed.history["train"]] == pytest.approx(
            [r["loss"] for r in full.history["train"]], abs=1e-6), f"op {n} ({label})"
        assert [r["step"] for r in resumed.history["eval"]] == [r["step"] for r in full.history["eval"]]
        assert resumed.snapshot_steps == full.snapshot_steps
        run = ckpt.load_run(out)                                     # never more snapshots than steps
        assert run.snapshots.shape[0] == len(run.snapshot_steps) == len(full.snapshot_steps)
        assert [s for s, _ in resume.checkpoint_dirs(out)] == [6, 4]
        assert not list(out.rglob("*.tmp")), f"op {n} ({label}): leftovers {list(out.rglob('*.tmp'))}"
        outcomes[n] = "resumed"
    # a kill before the first checkpoint is renamed into place leaves nothing to resume; after it, always resumed
    assert [n for n, o in outcomes.items() if o == "refused"] == list(range(1, first_complete + 1))
