"""Hostile input at the command line: every case exits 2 with one `error:` line, and no file is lost.

Each case runs ``ptuning-lab`` (``ptuning_lab.cli.main``) in a process of its own, forked from one
driver that imported the package once (a fresh interpreter per case would cost ~2.5 s of imports
each). The driver redirects the process's own stdout/stderr file descriptors, so what a case
prints is what a terminal would show. All cases share one directory of pre-existing files (user
files, fake runs, odd paths); its tree is hashed before and after every case and must be identical:
nothing removed, nothing changed, nothing left behind.

The data-loss cases of issue 18.1 are in the table (``--out .`` in a directory of user files,
``--overwrite`` on unrelated files, ``demo --out`` on user files); the concurrent-train case of 18.2
and the focused tests of each guarantee follow it.
"""
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "100"}

# the driver: one import of the package, then one forked process per case (real exit status, real fds)
DRIVER = r"""
import json, os, signal, sys, traceback
sys.path.insert(0, os.environ["HOSTILE_TESTS"])
from test_hostile import tree_state
from ptuning_lab.cli import main
job = json.load(sys.stdin)
results = []
for case in job["cases"]:
    out_path, err_path = os.path.join(job["logs"], "out"), os.path.join(job["logs"], "err")
    before = tree_state(job["root"])
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.chdir(case["cwd"])
            for fd, path in ((1, out_path), (2, err_path)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            signal.alarm(case.get("timeout", 60))          # a hang (a FIFO read) ends the case, as a failure
            code = main(case["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 98
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    after = tree_state(job["root"])
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    results.append({"code": os.waitstatus_to_exitcode(status), "stdout": open(out_path).read(),
                    "stderr": open(err_path).read(), "changed": changed})
print(json.dumps(results))
"""


def run_cases(root, cases, logs):
    """Run each case (``argv``, ``cwd``) through the CLI in its own process.

    Returns per case {"code", "stdout", "stderr", "changed"}: the paths under ``root`` that differ
    after the case (removed, added or changed; see :func:`tree_state`).
    """
    job = {"root": str(root), "logs": str(logs), "cases": cases}
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(job), capture_output=True, text=True,
                          env={**ENV, "HOSTILE_TESTS": str(Path(__file__).parent)}, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tree_state(root: Path) -> dict:
    """Every path under ``root`` -> what it is: a regular file's sha256, a link's target, a FIFO, a directory."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                state[rel] = "link:" + os.readlink(path)
            elif stat.S_ISDIR(info.st_mode):
                state[rel] = "dir"
            elif stat.S_ISREG(info.st_mode) and info.st_size > 1 << 20:
                state[rel] = f"big:{info.st_size}:{info.st_mtime_ns}"          # the sparse 300 MB file
            elif stat.S_ISREG(info.st_mode):
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[rel] = f"special:{stat.S_IFMT(info.st_mode)}"
    return state


def dead_pid() -> int:
    """The pid of a process that has exited (for a stale lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def fake_run(path: Path, extra: dict | None = None, lock_pid: int | None = None) -> Path:
    """A directory that ptuning_lab recognises as one of its runs (marker + metrics), with ``extra`` files."""
    path.mkdir(parents=True)
    (path / ".ptuning_lab_run").write_text(json.dumps({"tool": "ptuning_lab", "kind": "run", "format": 1}))
    (path / "metrics.json").write_text(json.dumps({"test_p_at_1": 0.5, "note": "the old run, keep me"}))
    for name, text in (extra or {}).items():
        (path / name).write_text(text)
    if lock_pid is not None:
        (path / ".ptuning_lab.lock").write_text(json.dumps({"pid": lock_pid, "host": socket.gethostname(),
                                                            "since": "2024-01-01 00:00:00"}))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One directory of files that existed before: the user's, fake runs, and hostile paths."""
    root = tmp_path_factory.mktemp("world")
    user = root / "user"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("my thesis notes")
    (user / "data.csv").write_text("subject,object\nFrance,Paris\n")
    (user / "sub" / "more.txt").write_text("more")
    (root / "afile.txt").write_text("a plain file")
    (root / "dangling").symlink_to(root / "no-such-target")
    os.mkfifo(root / "fifo.csv")
    (root / "zero.csv").symlink_to("/dev/zero")
    with open(root / "big.csv", "wb") as f:                    # sparse: 300 MB long, no disk used
        f.truncate(300 * 1024 * 1024)
    (root / "dir.csv").mkdir()
    (root / "binary.csv").write_bytes(b"subject,object\n\xff\xfe\x00bad,\x80\n")
    (root / "empty.csv").write_text("")
    (root / "noheader.csv").write_text("France,Paris\nJapan,Tokyo\n")
    (root / "tasks.txt").write_text("France Paris")
    fake_run(root / "oldrun")
    fake_run(root / "run-with-notes", {"notes.txt": "my notes inside a run"})
    fake_run(root / "locked", lock_pid=os.getpid())            # a live owner: this test process
    fake_run(root / "stale", lock_pid=dead_pid())
    (root / "notarun").mkdir()
    (root / "notarun" / "config.json").write_text('{"model_type": "gpt2"}')
    (root / "damaged").mkdir()
    (root / "damaged" / "config.json").write_text("{ not json")
    pickles = root / "pickle-model"
    pickles.mkdir()
    (pickles / "config.json").write_text('{"model_type": "gpt2"}')
    (pickles / "pytorch_model.bin").write_bytes(b"\x80\x02 not really a pickle")
    (root / "no-config-model").mkdir()
    return root


M = ["--model", "{model}", "--device", "cpu"]            # cases that get as far as loading the tiny model
T = ["train", "--task", "capital", "--max-examples", "30"]

# (id, argv, cwd below the world, what the one error line must say). None of these loads a model unless
# it names {model}; every one must exit 2 and leave every file as it was.
CASES = [
    # ---- 18.1 data loss: validation first, and only our own runs are ever replaced
    ("out-dot-overwrite-bad-lr", [*T, "--out", ".", "--overwrite", "--lr", "-1"], "user", "--lr"),
    ("out-dot-overwrite", [*T, "--out", ".", "--overwrite", "--model", "/nonexistent"], "user", "not a ptuning_lab run"),
    ("overwrite-user-files", [*T, "--out", "user", "--overwrite"], ".", "not a ptuning_lab run"),
    ("overwrite-run-with-user-notes", [*T, "--out", "run-with-notes", "--overwrite"], ".", "notes.txt"),
    ("overwrite-model-config-dir", [*T, "--out", "notarun", "--overwrite"], ".", "not a ptuning_lab run"),
    ("demo-out-user-files", ["demo", "--out", "user"], ".", "already holds files"),
    ("demo-out-user-files-overwrite", ["demo", "--out", "user", "--overwrite"], ".", "not a ptuning_lab run"),
    ("compare-out-user-files", ["compare", "--out", "user"], ".", "already holds files"),
    ("compare-overwrite-user-files", ["compare", "--out", "user", "--overwrite"], ".", "not a ptuning_lab run"),
    ("train-into-user-files", [*T, "--out", "user"], ".", "already holds files"),
    ("train-into-old-run", [*T, "--out", "oldrun"], ".", "--overwrite"),
    ("import-peft-into-user-files", ["import-peft", "no-adapter", "user"], ".", "already holds files"),
    ("import-peft-overwrite-user", ["import-peft", "no-adapter", "user", "--overwrite"], ".", "not a ptuning_lab run"),
    ("overwrite-and-resume", [*T, "--out", "oldrun", "--overwrite", "--resume"], ".", "contradict"),
    ("resume-user-files", [*T, "--out", "user", "--resume"], ".", "nothing to resume"),
    ("resume-missing", [*T, "--out", "nothing-here", "--resume"], ".", "nothing to resume"),
    # ---- 18.2 the lock
    ("locked-by-live-process", [*T, "--out", "locked", "--overwrite"], ".", f"process {os.getpid()}"),
    ("locked-break-lock-live", [*T, "--out", "locked", "--overwrite", "--break-lock"], ".", "in use by"),
    ("stale-lock", [*T, "--out", "stale", "--overwrite"], ".", "--break-lock"),
    ("stale-lock-resume", [*T, "--out", "stale", "--resume"], ".", "stale lock"),
    # ---- 18.7 paths that cannot be written
    ("out-is-a-file", [*T, "--out", "afile.txt"], ".", "is a file"),
    ("out-below-a-file", [*T, "--out", "afile.txt/run"], ".", "is a file"),
    ("out-dangling-symlink", [*T, "--out", "dangling"], ".", "symbolic link"),
    ("out-below-dangling-symlink", [*T, "--out", "dangling/run"], ".", "symbolic link"),
    ("out-in-sysfs", [*T, "--out", "/sys/ptuning-lab-hostile", *M], ".", "/sys"),
    ("device-tpu", [*T, "--out", "new-run", "--device", "tpu"], ".", "tpu"),
    ("baseline-device-tpu", ["baseline", "--device", "tpu"], ".", "unknown device"),
    ("decode-device-quantum", ["decode", "oldrun", "--device", "quantum"], ".", "unknown device"),
    ("export-device-tpu", ["export-peft", "oldrun", "adapter", "--device", "tpu"], ".", "unknown device"),
    # ---- 18.8 task files that are not plain files
    ("task-fifo", [*T[:1], "--task", "fifo.csv", "--out", "new-run"], ".", "FIFO"),
    ("task-dev-zero", [*T[:1], "--task", "zero.csv", "--out", "new-run"], ".", "character device"),
    ("task-300mb", [*T[:1], "--task", "big.csv", "--out", "new-run"], ".", "200 MB limit"),
    ("task-directory", [*T[:1], "--task", "dir.csv", "--out", "new-run"], ".", "directory"),
    ("task-missing", [*T[:1], "--task", "missing.csv", "--out", "new-run"], ".", "not found"),
    ("task-not-utf8", [*T[:1], "--task", "binary.csv", "--out", "new-run"], ".", "UTF-8"),
    ("task-empty", [*T[:1], "--task", "empty.csv", "--out", "new-run"], ".", "empty.csv"),
    ("task-no-header", [*T[:1], "--task", "noheader.csv", "--out", "new-run"], ".", "columns"),
    ("task-unknown-type", [*T[:1], "--task", "tasks.txt", "--out", "new-run"], ".", ".jsonl"),
    ("baseline-task-fifo", ["baseline", "--task", "fifo.csv"], ".", "FIFO"),
    ("compare-task-fifo", ["compare", "--task", "capital,fifo.csv", "--out", "new-cmp"], ".", "FIFO"),
    # ---- 18.9 nonsense values: argparse types with a message
    ("lr-negative", [*T, "--out", "new-run", "--lr", "-1"], ".", "finite number > 0"),
    ("lr-nan", [*T, "--out", "new-run", "--lr", "nan"], ".", "finite number > 0"),
    ("lr-inf", [*T, "--out", "new-run", "--lr", "inf"], ".", "finite number > 0"),
    ("lr-word", [*T, "--out", "new-run", "--lr", "fast"], ".", "1e-3"),
    ("seed-1e23", [*T, "--out", "new-run", "--seed", "1e23"], ".", "a seed is a whole number"),
    ("seed-huge", [*T, "--out", "new-run", "--seed", "9" * 23], ".", "a seed is a whole number"),
    ("seed-negative", [*T, "--out", "new-run", "--seed", "-1"], ".", "a seed is a whole number"),
    ("data-seed-word", [*T, "--out", "new-run", "--data-seed", "x"], ".", "a seed"),
    ("checkpoint-every-0", [*T, "--out", "new-run", "--checkpoint-every", "0"], ".", "--checkpoint-every"),
    ("max-steps-0", [*T, "--out", "new-run", "--max-steps", "0"], ".", ">= 1"),
    ("max-steps-2.5", [*T, "--out", "new-run", "--max-steps", "2.5"], ".", "whole number"),
    ("batch-size-0", [*T, "--out", "new-run", "--batch-size", "0"], ".", ">= 1"),
    ("batch-size-true", [*T, "--out", "new-run", "--batch-size", "True"], ".", "whole number"),
    ("epochs-negative", [*T, "--out", "new-run", "--epochs", "-3"], ".", ">= 1"),
    ("eval-every-0", [*T, "--out", "new-run", "--eval-every", "0"], ".", ">= 1"),
    ("patience-0", [*T, "--out", "new-run", "--patience", "0"], ".", ">= 1"),
    ("max-examples-0", [*T[:3], "--max-examples", "0", "--out", "new-run"], ".", ">= 1"),
    ("compare-seeds-0", ["compare", "--seeds", "0", "--out", "new-cmp"], ".", "--seeds"),
    ("compare-seeds-negative", ["compare", "--seeds", "-2", "--out", "new-cmp"], ".", "--seeds"),
    ("compare-no-encoders", ["compare", "--encoders", ",", "--out", "new-cmp"], ".", "names no method"),
    ("compare-no-task", ["compare", "--task", ",", "--out", "new-cmp"], ".", "names no task"),
    ("compare-encoder-typo", ["compare", "--encoders", "mlp,lstn", "--out", "new-cmp"], ".", "Did you mean 'lstm'"),
    ("decode-k-0", ["decode", "oldrun", "-k", "0"], ".", ">= 1"),
    ("encoder-typo", [*T, "--out", "new-run", "--encoder", "gru"], ".", "unknown prompt encoder"),
    ("task-typo", [*T[:1], "--task", "capitols", "--out", "new-run"], ".", "Did you mean 'capital'"),
    ("template-without-p", [*T, "--out", "new-run", "--template", "[X] is"], ".", "[P]"),
    ("template-without-x", [*T, "--out", "new-run", "--template", "[P]*3 is"], ".", "[X]"),
    ("missing-out", [*T], ".", "--out"),
    ("no-command", [], ".", "required"),
    ("unknown-command", ["trian"], ".", "invalid choice"),
    ("unknown-flag", [*T, "--out", "new-run", "--learning-rate", "1"], ".", "unrecognized"),
    ("warm-cache-bad-size", ["warm-cache", "--size", "huge"], ".", "invalid choice"),
    ("export-bad-peft-type", ["export-peft", "oldrun", "adapter", "--peft-type", "LORA"], ".", "invalid choice"),
    # ---- runs and models that are not what they claim
    ("decode-missing", ["decode", "nothing-here"], ".", "no run directory"),
    ("decode-a-file", ["decode", "afile.txt"], ".", "no run directory"),
    ("decode-user-dir", ["decode", "user"], ".", "config.json"),
    ("decode-damaged-config", ["decode", "damaged"], ".", "is damaged"),
    ("export-missing-run", ["export-peft", "nothing-here", "adapter"], ".", "no run directory"),
    ("import-missing-adapter", ["import-peft", "no-adapter", "new-import"], ".", "no-adapter"),
    ("model-pickle-only", ["baseline", "--model", "pickle-model", "--device", "cpu"], ".", "pickle"),
    ("model-is-a-file", ["baseline", "--model", "afile.txt", "--device", "cpu"], ".", "is a file"),
    ("model-no-config", ["baseline", "--model", "no-config-model", "--device", "cpu"], ".", "config.json"),
    ("model-missing-path", ["baseline", "--model", "./no-such-model", "--device", "cpu"], ".", "does not exist"),
    ("train-model-pickle-only", [*T, "--out", "new-run", "--model", "pickle-model"], ".", "pickle"),
]


@pytest.fixture(scope="module")
def results(world, tiny_model_dir, tmp_path_factory):
    """Run the whole table once, in one driver; per case: its result and the paths it changed."""
    cases = [{"argv": [a.replace("{model}", tiny_model_dir) for a in argv], "cwd": str(world / cwd), "timeout": 60}
             for _, argv, cwd, _ in CASES]
    got = run_cases(world, cases, tmp_path_factory.mktemp("logs"))
    return {case[0]: res for case, res in zip(CASES, got)}


def test_the_table_has_at_least_60_hostile_inputs():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id, argv, cwd, says", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_error_line_and_loses_nothing(results, case_id, argv, cwd, says):
    res = results[case_id]
    errors = [line for line in res["stderr"].splitlines() if line.startswith("error:")]
    assert "Traceback" not in res["stderr"], res["stderr"][-2000:]
    assert res["code"] == 2, (res["code"], res["stderr"][-2000:])
    assert len(errors) == 1, res["stderr"]
    assert says in errors[0], errors[0]
    assert not res["changed"], f"files changed: {res['changed']}"


# ---------------------------------------------------------------- focused tests, one per guarantee
TRAIN = ["train", "--task", "capital", "--encoder", "direct", "--max-examples", "30", "--device", "cpu",
         "--batch-size", "4", "--eval-every", "2", "--quiet"]


def _train(main, model, out, *extra):
    return main([*TRAIN, "--model", model, "--max-steps", "2", "--out", str(out), *extra])


def test_overwrite_replaces_a_run_by_renaming_and_a_failed_new_run_leaves_the_old_one(tiny_model_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    """18.1: the new run is written beside the old one; only a complete new run takes its place."""
    from ptuning_lab import rundir
    from ptuning_lab.cli import main
    from ptuning_lab.trainer import Trainer

    out = tmp_path / "run"
    assert _train(main, tiny_model_dir, out) == 0
    old = tree_state(out)
    assert ".ptuning_lab_run" in old and ".ptuning_lab.lock" not in old        # marked as ours, lock released
    real_fit = Trainer.fit

    def fit_then_fail(self, resume=False):
        real_fit(self, resume)                       # the new run's files are written (beside the old run)...
        assert self.out_dir.name == ".run.ptuning-new"
        raise OSError(28, "No space left on device", str(self.out_dir / "metrics.json"))   # ...then the disk fills

    monkeypatch.setattr(Trainer, "fit", fit_then_fail)
    capsys.readouterr()
    assert _train(main, tiny_model_dir, out, "--overwrite", "--seed", "1") == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "No space left on device" in err and "left as it was" in err
    assert tree_state(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    monkeypatch.setattr(Trainer, "fit", real_fit)
    assert _train(main, tiny_model_dir, out, "--overwrite", "--seed", "1") == 0
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and rundir.read_lock(out) is None


def test_a_fresh_run_that_fails_before_writing_leaves_no_directory(tiny_model_dir, tmp_path, capsys):
    """18.1: a run the trainer refuses after the directory was claimed (200 virtual tokens do not fit the tiny
    model's 128 positions) leaves nothing behind: no run directory, no marker, no lock."""
    from ptuning_lab.cli import main

    out = tmp_path / "new" / "run"
    code = main([*TRAIN, "--model", tiny_model_dir, "--out", str(out), "--template", "[P]*200 The capital of [X] is"])
    assert code == 2 and "do not fit" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_second_train_on_the_same_out_is_refused_while_the_first_runs(tiny_model_dir, tmp_path):
    """18.2: two trains started at once on one --out: the second exits 2 naming the first one's pid."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ptuning_lab.cli", *TRAIN, "--model", tiny_model_dir, "--out", str(out)]
    first = subprocess.Popen([*cmd, "--max-steps", "400", "--eval-every", "400"], env=ENV, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".ptuning_lab.lock").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        second = subprocess.run([*cmd, "--max-steps", "1"], env=ENV, cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        [line] = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
        # refused either way: by the lock while the first run holds it, or, if the first finished already, as a
        # directory that holds a run (on a loaded machine the first can end before the second looks)
        assert (f"in use by process {first.pid} on {socket.gethostname()}" in line
                or "already holds files" in line), line
    finally:
        first.terminate()                          # Ctrl-C-like: the first run stops and keeps what it trained
        first.communicate(timeout=120)


def test_a_stale_lock_is_reported_and_broken_only_when_asked(tiny_model_dir, tmp_path, capsys):
    """18.2: the lock of a killed run names its pid; --break-lock removes it (never a live owner's)."""
    from ptuning_lab import rundir
    from ptuning_lab.cli import main

    out = fake_run(tmp_path / "run", lock_pid=dead_pid())
    pid = json.loads((out / ".ptuning_lab.lock").read_text())["pid"]
    assert _train(main, tiny_model_dir, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"stale lock of process {pid}" in err and "--break-lock" in err
    assert _train(main, tiny_model_dir, out, "--overwrite", "--break-lock") == 0
    assert f"removed the lock of process {pid}" in capsys.readouterr().err
    assert rundir.read_lock(out) is None and json.loads((out / "metrics.json").read_text())["steps"] == 2
    live = fake_run(tmp_path / "live", lock_pid=os.getpid())
    with pytest.raises(rundir.RunDirError, match="in use by"):
        rundir.check(live, overwrite=True, break_lock=True)


def test_disk_full_while_saving_tensors_is_one_line_naming_the_directory(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys):
    """18.7: the disk fills while a run's tensors are written: one line naming the file and the fix, old run whole."""
    import errno

    from ptuning_lab import checkpoint
    from ptuning_lab.cli import main

    out = tmp_path / "run"
    assert _train(main, tiny_model_dir, out) == 0
    old = tree_state(out)
    real = checkpoint._atomic_bytes

    def full(path, data):
        if str(path).endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(checkpoint, "_atomic_bytes", full)
    capsys.readouterr()
    assert _train(main, tiny_model_dir, out, "--overwrite") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: No space left on device: ") and "disk" in line
    assert ".safetensors" in line and "was left as it was" in line     # names the file; the old run is whole
    assert tree_state(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_read_only_or_unwritable_out_is_refused_before_anything(tmp_path, monkeypatch):
    """18.7: a read-only file system (as the kernel reports it) or a directory without write permission."""
    from ptuning_lab import rundir

    real = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    with pytest.raises(rundir.RunDirError, match="read-only file system"):
        rundir.check(tmp_path / "run")
    monkeypatch.setattr(os, "statvfs", real)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(rundir.RunDirError, match="no permission to write"):
        rundir.check(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_safe_reader_reads_regular_files_only_and_caps_their_size(tmp_path):
    """18.8: FIFO and device refused at once, the size capped, text read like open(newline='')."""
    from ptuning_lab.safe_io import UnreadableFileError, read_text_file

    text = "\ufeffsubject,object\r\n\"New\r\nYork\",x\n"
    (tmp_path / "t.csv").write_bytes(text.encode("utf-8"))
    with open(tmp_path / "t.csv", encoding="utf-8-sig", newline="") as f:
        assert read_text_file(tmp_path / "t.csv") == f.read()
    os.mkfifo(tmp_path / "pipe.csv")
    start = time.monotonic()
    with pytest.raises(UnreadableFileError, match="FIFO"):
        read_text_file(tmp_path / "pipe.csv")                   # no writer: a plain open() would wait forever
    assert time.monotonic() - start < 5
    with pytest.raises(UnreadableFileError, match="character device"):
        read_text_file("/dev/zero")
    with pytest.raises(UnreadableFileError, match="more than the 0 MB limit for a task file"):
        read_text_file(tmp_path / "t.csv", limit=10, what="task file")
    assert read_text_file(tmp_path / "t.csv", limit=len(text.encode())) == text[1:]


def test_argument_types_refuse_nonsense_with_the_rule(capsys):
    """18.9: the types behind --seed, --lr, --max-steps, --checkpoint-every, --seeds, --device."""
    import argparse

    from ptuning_lab import cli

    for func, good, bad in ((cli.positive_int, {"1": 1, "40": 40}, ["0", "-1", "2.5", "True", "1e3", ""]),
                            (cli.seed_int, {"0": 0, str(cli.SEED_MAX): cli.SEED_MAX}, ["-1", "1e23", "9" * 23, "x"]),
                            (cli.positive_float, {"1e-3": 1e-3, "0.5": 0.5}, ["0", "-1", "nan", "inf", "fast"]),
                            (cli.device, {"cpu": "cpu", "CUDA:1": "cuda:1", "mps": "mps"}, ["tpu", "cuda:x", "cpu:0"])):
        assert {text: func(text) for text in good} == good
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError):
                func(text)


def test_a_run_records_where_its_model_is_so_decode_works_from_anywhere(tiny_model_dir, tmp_path, monkeypatch,
                                                                        capsys):
    """18.11: --model given as a relative path is recorded as an absolute one; decode from elsewhere finds it."""
    from ptuning_lab.cli import main

    model = Path(tiny_model_dir)
    monkeypatch.chdir(model.parent)
    assert _train(main, model.name, tmp_path / "run") == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == str(model.resolve())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["decode", "run", "-k", "2", "--device", "cpu", "--json"]) == 0
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["model"] == str(model.resolve()) and decoded["num_virtual_tokens"] == 6
    assert len(decoded["neighbours"]) == 6 * 3 * 2          # virtual tokens x metrics x k
