"""Run directories: recognise ours, lock one writer at a time, replace an old run only by renaming.

The rules that keep a user's files safe (``train``, ``compare``, ``demo`` and ``import-peft`` go through
:func:`claim`):

* Everything is checked before any file is touched (:func:`check`).
* A directory is ours when it holds the marker file ``.ptuning_lab_run`` (written when a run starts),
  or, for runs written before the marker existed, a run ``config.json`` / comparison ``summary.json``.
  ``--overwrite`` replaces only such a directory, and only when every file in it is one this tool
  writes (:func:`foreign_entries`); anything else is refused and listed.
* ``--overwrite`` writes the new run beside the old one (``.NAME.ptuning-new``) and swaps the two by
  renaming at the end, so a failed or killed new run leaves the old one whole.
* One writer per directory: a lock file ``.ptuning_lab.lock`` holding the owner's pid and host, made
  with ``O_CREAT | O_EXCL``. A lock left by a dead process is reported; ``break_lock`` removes it.

    >>> with claim("runs/x", overwrite=True) as path:      # doctest: +SKIP
    ...     train_into(path)                               # an exception here leaves runs/x as it was
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from . import distributed

MARKER = ".ptuning_lab_run"
LOCK = ".ptuning_lab.lock"
# the files a run or a comparison holds (see checkpoint.py and experiments.compare); state/ is the trainer's
RESULT_FILES = frozenset({"config.json", "prompt.safetensors", "history.json", "snapshots.safetensors",
                          "metrics.json", "summary.json", "report.html"})
STATE_DIR = "state"
NEW_SUFFIX, OLD_SUFFIX = ".ptuning-new", ".ptuning-old"


class RunDirError(ValueError):
    """An output directory that cannot be used as asked; the message names it and says what to do."""


class RunDirBusyError(RunDirError, FileExistsError):
    """The output directory already holds a run (or other files) and neither overwrite nor resume was asked."""


def _leftover(name: str) -> bool:
    """A temporary file of checkpoint's atomic writes (``.prompt.safetensors.x1y2.tmp``) left by a crash."""
    return name.startswith(".") and name.endswith(".tmp")


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(f".{out.name}{suffix}")


# ---------------------------------------------------------------- recognising our directories
def kind_of(path) -> str | None:
    """``"run"``, ``"compare"`` (from our marker or the files we write), or None: not a directory of ours."""
    path = Path(path)
    marker = path / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            return str(json.loads(marker.read_text()).get("kind", "run"))
        except (OSError, ValueError, AttributeError):
            return "run"                               # our name, damaged content: still ours
    try:
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else None
        if isinstance(config, dict) and isinstance(config.get("encoder"), dict) and \
                {"hidden_size", "vocab_size"} <= set(config):
            return "run"
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
        if isinstance(summary, dict) and {"rows", "summary"} <= set(summary):
            return "compare"
    except (OSError, ValueError):
        pass
    return None


def foreign_entries(path, _prefix: str = "") -> list[str]:
    """Paths under ``path`` (relative) that this tool does not write: what ``--overwrite`` must not delete.

    Ours: the result files, the marker and lock, checkpoint leftovers (``.*.tmp``), a run's ``state/``,
    and sub-directories made only of those (a comparison's ``<task>/<method>-seed<k>/``). Empty
    directories hold nothing to lose. Symbolic links, FIFOs and devices are never ours.
    """
    path = Path(path)
    found = []
    is_run = kind_of(path) == "run"
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        rel = _prefix + entry.name
        if entry.is_file(follow_symlinks=False):
            if entry.name not in RESULT_FILES | {MARKER, LOCK} and not _leftover(entry.name):
                found.append(rel)
        elif entry.is_dir(follow_symlinks=False):
            if not (entry.name == STATE_DIR and is_run):
                found.extend(foreign_entries(entry.path, rel + "/"))
        else:
            found.append(rel)
    return found


def holds_results(path) -> bool:
    """True when ``path`` holds anything beyond a marker, a lock and crash leftovers (an empty run)."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            if holds_results(entry.path):
                return True
        elif entry.name not in (MARKER, LOCK) and not _leftover(entry.name):
            return True
    return False


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------- the lock
def read_lock(out) -> dict | None:
    """The owner recorded in ``out``'s lock file ({"pid", "host", "since"}), or None when unlocked."""
    try:
        info = json.loads((Path(out) / LOCK).read_text())
        return info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}                                   # a lock we cannot read is still a lock


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                                 # another user's process: alive
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def lock_is_stale(info: dict) -> bool:
    """A lock of a process on this host that is no longer running (one of another host is never stale)."""
    return info.get("host") == socket.gethostname() and not _alive(info.get("pid"))


def _owner(info: dict) -> str:
    return f"process {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('since', '?')})"


def _lock_error(out: Path, info: dict) -> RunDirError:
    if lock_is_stale(info):
        return RunDirError(f"{out} holds a stale lock of {_owner(info)}, which is no longer running (it was "
                           f"killed or crashed). If no run is using {out}, pass --break-lock to remove the lock.")
    return RunDirError(f"{out} is in use by {_owner(info)}: another run is writing there. Wait for it to "
                       f"finish or choose another --out (--break-lock only if you are sure it is not running).")


def acquire_lock(out) -> None:
    """Create ``out``'s lock file holding our pid and host; RunDirError naming the owner if it exists."""
    out = Path(out)
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "command": " ".join(sys.argv[:1] + sys.argv[1:3])})
    try:
        fd = os.open(out / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _lock_error(out, read_lock(out) or {}) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(body)


def release_lock(out) -> None:
    """Remove ``out``'s lock file if this process holds it (never another's)."""
    info = read_lock(out)
    if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        try:
            (Path(out) / LOCK).unlink()
        except FileNotFoundError:
            pass


def remove_stale_lock(out) -> dict | None:
    """Remove ``out``'s lock file unless a live process on this host holds it; returns the old owner."""
    out = Path(out)
    info = read_lock(out)
    if info is None:
        return None
    if info.get("host") == socket.gethostname() and _alive(info.get("pid")) and info.get("pid") != os.getpid():
        raise RunDirError(f"{out} is locked by {_owner(info)}, which is still running; --break-lock only "
                          "removes the lock of a process that is gone. Wait for it, or stop it first.")
    (out / LOCK).unlink(missing_ok=True)
    return info


# ---------------------------------------------------------------- checking, then claiming
def _writable_ancestor(out: Path) -> None:
    """Refuse a path that cannot be created or written: a file on the way, a read-only place."""
    probe = out if out.exists() else out.parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.is_symlink() and not probe.exists():
        raise RunDirError(f"cannot create {out}: {probe} is a symbolic link to {os.readlink(probe)}, which does "
                          "not exist. Create the target or choose another --out.")
    if not probe.is_dir():
        raise RunDirError(f"cannot create {out}: {probe} is a file, not a directory. Choose another --out.")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise RunDirError(f"cannot write {out}: {probe} is on a read-only file system. Choose an --out on a "
                          "writable disk.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write {out}: no permission to write in {probe}. Choose an --out you can "
                          "write to (or fix its permissions).")


def check(out, *, overwrite: bool = False, resume: bool = False, break_lock: bool = False) -> Path:
    """Everything :func:`claim` will refuse, checked without touching a file; returns ``out`` (links resolved).

    Raises RunDirError: ``out`` is a file or a dangling link, cannot be written, is locked by a live
    process (or a stale one without ``break_lock``), holds files and neither ``overwrite`` nor ``resume``
    is given, or ``overwrite`` would delete files this tool did not write.
    """
    out = Path(os.path.abspath(Path(out).expanduser()))       # "--out ." has a name, and a place beside it
    if overwrite and resume:
        raise RunDirError("--overwrite and --resume contradict each other: --resume continues the run in --out, "
                          "--overwrite replaces it. Pass one of them.")
    if out.is_symlink() and not out.exists():
        raise RunDirError(f"{out} is a symbolic link to {os.readlink(out)}, which does not exist. Create the "
                          "target directory, remove the link, or choose another --out.")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file, not a directory. Choose another --out (a new or empty directory).")
    out = out.resolve() if out.is_symlink() else out
    _writable_ancestor(out)
    if resume:
        if not out.is_dir() or kind_of(out) != "run":
            raise RunDirError(f"nothing to resume at {out}: it is not a ptuning_lab run directory. Give the --out "
                              "of an earlier `ptuning-lab train --checkpoint-every k` run, or drop --resume.")
    for suffix in (NEW_SUFFIX, OLD_SUFFIX):
        stray = _sibling(out, suffix)
        if stray.exists() and not out.exists():
            raise RunDirError(f"an earlier --overwrite of {out} was interrupted while swapping runs: the old and "
                              f"the new run are at {_sibling(out, OLD_SUFFIX)} and {_sibling(out, NEW_SUFFIX)}. "
                              f"Rename the one to keep to {out}, then try again.")
    if not out.is_dir():
        return out
    info = read_lock(out)
    # --break-lock removes a dead process's lock, or one of another host (whose process we cannot see)
    if info is not None and not (break_lock and (lock_is_stale(info) or info.get("host") != socket.gethostname())):
        raise _lock_error(out, info)
    if resume or not holds_results(out):
        return out
    if not overwrite:
        raise RunDirBusyError(f"{out} already holds files (another run?). Choose another --out, pass --overwrite "
                              "(overwrite=True) to replace a ptuning_lab run there, or --resume to continue it.")
    if kind_of(out) is None:
        raise RunDirError(f"refusing to --overwrite {out}: it is not a ptuning_lab run directory (it holds "
                          f"{_listing(sorted(os.listdir(out)))}). --overwrite only replaces a run this tool wrote; "
                          "choose another --out.")
    foreign = foreign_entries(out)
    if foreign:
        raise RunDirError(f"refusing to --overwrite {out}: it holds files ptuning_lab did not write "
                          f"({_listing(foreign)}). Move them out of the run directory, or choose another --out.")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot --overwrite {out}: the new run is written beside it, and {out.parent} is not "
                          "writable. Choose another --out.")
    return out


class Claim:
    """A run directory being written: write into :attr:`path`; :meth:`commit` puts it in place at :attr:`out`.

    Use it as a context manager (:func:`claim`): leaving the block normally commits, an exception
    aborts (the new files are removed, an old run is left whole) and the lock is released either way.
    """

    def __init__(self, out: Path, path: Path, *, replacing: bool, created: bool, locked: bool):
        self.out, self.path, self.replacing, self.created, self.locked = out, path, replacing, created, locked
        self.created_root = out          # the topmost directory this claim made (set by claim)
        self.done = False

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type is not None else self.commit()

    def commit(self) -> Path:
        """Swap the new run into place (when replacing one) and release the lock."""
        if self.done:
            return self.out
        self.done = True
        if not distributed.is_main_process():
            return self.out
        if self.replacing:
            old = _sibling(self.out, OLD_SUFFIX)
            if old.exists():                         # a swap cut short before its last step
                if kind_of(old) is None or foreign_entries(old):
                    raise RunDirError(f"{old} is in the way of replacing {self.out} and is not ours; move it away.")
                shutil.rmtree(old)
            os.replace(self.out, old)                # the lock file goes with the old run
            os.replace(self.path, self.out)
            shutil.rmtree(old, ignore_errors=True)
        elif self.locked:
            release_lock(self.out)
        return self.out

    def abort(self) -> None:
        """Remove what this claim wrote that holds nothing (or the whole new run beside an old one)."""
        if self.done:
            return
        self.done = True
        if not distributed.is_main_process():
            return
        try:
            if self.replacing:
                shutil.rmtree(self.path, ignore_errors=True)
            elif self.path.is_dir() and not holds_results(self.path):
                # nothing of value was written (e.g. the run failed before its first file): undo the start
                for name in (MARKER,):
                    (self.path / name).unlink(missing_ok=True)
                if self.created:
                    release_lock(self.out)
                    _remove_empty_tree(self.path)
                    for parent in self.path.parents:         # and the parents it made (--out new/dirs/run)
                        if parent == self.created_root.parent or not _rmdir(parent):
                            break
        finally:
            if self.locked and self.out.is_dir():
                release_lock(self.out)


def _remove_empty_tree(path: Path) -> None:
    """rmdir ``path`` and its sub-directories when they hold only crash leftovers of ours."""
    for entry in list(os.scandir(path)):
        if entry.is_dir(follow_symlinks=False):
            _remove_empty_tree(Path(entry.path))
        elif _leftover(entry.name):
            os.unlink(entry.path)
    _rmdir(path)


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except OSError:
        return False


def _write_marker(path: Path, kind: str) -> None:
    from .checkpoint import write_json

    write_json(path / MARKER, {"tool": "ptuning_lab", "kind": kind, "format": 1})


def claim(out, *, overwrite: bool = False, resume: bool = False, break_lock: bool = False,
          kind: str = "run") -> Claim:
    """Check ``out`` (:func:`check`), lock it and make the directory to write; see :class:`Claim`.

    A new or empty ``out`` is written in place; ``resume`` continues in place; ``overwrite`` of a run
    writes into ``.NAME.ptuning-new`` beside it. Under a launch every rank checks, the main process
    alone writes. OS errors (read-only disk, no permission) come back as RunDirError with the path.
    """
    out = check(out, overwrite=overwrite, resume=resume, break_lock=break_lock)
    replacing = bool(overwrite and out.is_dir() and holds_results(out))
    path = _sibling(out, NEW_SUFFIX) if replacing else out
    created = not out.exists()
    created_root = out
    while not created_root.parent.exists():
        created_root = created_root.parent
    distributed.wait_for_everyone()          # every rank has checked before the main process writes
    locked = False
    if distributed.is_main_process():
        try:
            out.mkdir(parents=True, exist_ok=True)
            if break_lock:
                old = remove_stale_lock(out)
                if old:
                    print(f"removed the lock of {_owner(old)} from {out}", file=sys.stderr)
            acquire_lock(out)
            locked = True
            if replacing:
                if path.exists():             # a killed --overwrite left it; we hold the lock, so it is no one's
                    if kind_of(path) is None or foreign_entries(path):
                        raise RunDirError(f"{path} is in the way of the new run and is not ours; move it away.")
                    shutil.rmtree(path)
                path.mkdir()
            if not (path / MARKER).exists():
                _write_marker(path, kind)
        except OSError as err:
            if locked:
                release_lock(out)
            if created and out.is_dir():
                _remove_empty_tree(out)
            raise RunDirError(f"cannot write {out}: {err.strerror or err}"
                              f"{' (' + err.filename + ')' if err.filename else ''}. Choose an --out on a "
                              "writable disk with free space.") from None
        except BaseException:
            if locked:
                release_lock(out)
            raise
    distributed.wait_for_everyone()
    done = Claim(out, path, replacing=replacing, created=created, locked=locked)
    done.created_root = created_root
    return done


def make_subrun(path, kind: str = "run") -> Path:
    """A new run directory inside a claimed one (a comparison's ``<task>/<method>-seed<k>``), with its marker."""
    path = Path(path)
    if distributed.is_main_process():
        path.mkdir(parents=True, exist_ok=True)
        _write_marker(path, kind)
    return path


__all__ = ["MARKER", "LOCK", "RESULT_FILES", "RunDirError", "RunDirBusyError", "Claim", "kind_of", "foreign_entries", "holds_results",
           "read_lock", "lock_is_stale", "acquire_lock", "release_lock", "remove_stale_lock", "check", "claim", "make_subrun"]
