"""Reading a user's file without hanging or filling memory: regular files only, size-capped.

``open(path).read()`` on a FIFO waits for a writer forever, and on a symlink to ``/dev/zero`` reads
until memory runs out. :func:`read_text_file` opens without blocking, checks that what it opened is a
regular file, and reads at most ``limit`` bytes.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

DEFAULT_LIMIT = 200 * 1024 * 1024          # 200 MB: far above any task file, far below a machine's memory


class UnreadableFileError(OSError):
    """A path that is not a regular file, or one larger than the limit; ``strerror`` says which and what to do."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB"


def read_bytes_file(path, limit: int = DEFAULT_LIMIT, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), refusing more than ``limit`` bytes.

    Raises FileNotFoundError/PermissionError as ``open`` does, and :class:`UnreadableFileError` for
    a FIFO, a device, a socket or a directory, or a file larger than ``limit``.
    """
    path = Path(path)
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer before fstat could look at it
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFileError(errno.EINVAL, f"{path} is {_kind(info.st_mode)}, not a regular file; give "
                                      f"the path of an ordinary {what}", str(path))
        if info.st_size > limit:
            raise UnreadableFileError(errno.EFBIG, f"{path} is {_megabytes(info.st_size)}, more than the "
                                      f"{_megabytes(limit)} limit for a {what}; use a smaller file", str(path))
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)          # a file that grows while we read is still capped
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnreadableFileError(errno.EFBIG, f"{path} holds more than the {_megabytes(limit)} limit for a "
                                  f"{what}; use a smaller file", str(path))
    return data


def read_text_file(path, limit: int = DEFAULT_LIMIT, what: str = "file", encoding: str = "utf-8-sig") -> str:
    """The text of the regular file ``path``, at most ``limit`` bytes, newlines kept as they are.

    Like ``open(path, encoding=encoding, newline="").read()`` (so the csv module still sees quoted
    line breaks), with :func:`read_bytes_file`'s checks. A bad encoding raises UnicodeDecodeError.
    """
    return read_bytes_file(path, limit, what).decode(encoding)


__all__ = ["DEFAULT_LIMIT", "UnreadableFileError", "read_bytes_file", "read_text_file"]
