"""File operations inside one proxy config folder that never follow a symlink.

The folder is bind-mounted into the proxy container (read-only since this module exists, but
an older agent mounted it read-write, and a folder may outlive the mount). Anything that could
write into it could plant ``nginx.conf -> /etc/shadow`` and have the agent, running as root,
read the target into a config or overwrite it. So every name is opened relative to a file
descriptor of the folder itself, with ``O_NOFOLLOW``; writes go to a fresh temp file
(``O_EXCL``) renamed over the name (a rename replaces a symlink, it never writes through one);
a name that is a symlink, a folder or a fifo reads as missing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

MAX_READ = 8 * 1024 * 1024  # configs and ports.json are small; a bigger file is not ours
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a planted fifo
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def open_dir(path: Path | str, *, create: bool = True) -> Iterator[int]:
    """A descriptor of the folder ``path`` (created when missing); the folder itself may not be a symlink."""
    if create:
        Path(path).mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def read_text(dir_fd: int, name: str) -> str | None:
    """The UTF-8 text of regular file ``name`` in the folder; None when it is missing or no regular
    file (a symlink among them). Raises ValueError for a file larger than MAX_READ."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # a symlink, a folder, a socket
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_READ:
                raise ValueError(f"{name} is larger than {MAX_READ} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8")


def write_atomic(dir_fd: int, name: str, text: str, *, durable: bool = False) -> None:
    """Write a fresh temp file and rename it over ``name``: readers see the old or the new file,
    never half of one, and a symlink at ``name`` is replaced, not written through."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, _CREATE_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", closefd=True) as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink(dir_fd, tmp)
        raise
    if durable:
        os.fsync(dir_fd)


def replace(dir_fd: int, src: str, dst: str) -> None:
    """Rename ``src`` over ``dst`` in the folder (a rename never follows a symlink at either name)."""
    os.replace(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def unlink(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a symlink itself, never its target); a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
