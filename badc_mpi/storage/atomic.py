"""Atomic, fsynced writes: the rule for every file another step reads.

Every such file is written to a temporary name in the same folder, fsynced, renamed onto its final
name, and the folder fsynced. Final names are only ever created by rename, so a reader sees either
nothing or the whole file. Temporary names are ``.<final name>.tmp-<pid>-<hex>``: hidden, and
ending in ``.tmp-...`` they can never equal a final name.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

_TMP_RE = re.compile(r"\.tmp-\d+-[0-9a-f]+\Z")
TEMP_TAIL_RE = re.compile(r"\d+-[0-9a-f]+")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so renames and new entries in it are durable.

    Filesystems that cannot fsync a directory (EINVAL/ENOTSUP) are tolerated.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


FSYNC_THREADS = 16  #: fsyncs in flight at once: a journaling file system commits concurrent ones together


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync one file already written and closed (opened again read-only)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_paths(
    files: Iterable[str | os.PathLike[str]], folders: Iterable[str | os.PathLike[str]] = (), *, threads: int = FSYNC_THREADS
) -> None:
    """Make files written without their own fsync durable: each file, then each folder (its new
    entries), ``threads`` at a time. Only what was written: never ``os.sync()``, which flushes the
    whole node (every user's dirty pages on a shared login node: minutes)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="badc-fsync") as pool:
        list(pool.map(fsync_file, files))  # list(): the first error is raised here
        list(pool.map(fsync_dir, folders))


def ensure_dir(path: str | os.PathLike[str]) -> str:
    """Create ``path`` (and parents) if missing, fsyncing each parent that gained an entry."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(path)
    if parent != path:
        ensure_dir(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return path
    fsync_dir(parent)
    return path


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temporary names."""
    return name.startswith(".") and _TMP_RE.search(name) is not None


def temp_path_for(path: str | os.PathLike[str]) -> str:
    """A fresh temporary path next to ``path`` (``.<name>.tmp-<pid>-<hex>``)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _open_temp(path: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = temp_path_for(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file next to {path}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _atomic_write(path: str | os.PathLike[str], write: Any, *, mkdir: bool = True) -> str:
    """Open a temp file, ``write(fileobj)``, flush+fsync, rename onto ``path``, fsync folder."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if mkdir:
        ensure_dir(folder)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(folder)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mkdir: bool = True) -> str:
    """Write ``data`` to ``path`` atomically and durably; returns the absolute path."""
    return _atomic_write(path, lambda handle: handle.write(data), mkdir=mkdir)


def atomic_write_stream(path: str | os.PathLike[str], write: Any, *, mkdir: bool = True) -> str:
    """``write(binary_file)`` streams the contents (files too large to hold in memory), then the
    same temp-fsync-rename as :func:`atomic_write_bytes`; returns the absolute path."""
    return _atomic_write(path, write, mkdir=mkdir)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", mkdir: bool = True) -> str:
    """Write ``text`` (no newline translation) atomically and durably."""
    return atomic_write_bytes(path, text.encode(encoding), mkdir=mkdir)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, mkdir: bool = True) -> str:
    """Copy the bytes of ``src`` (symlinks followed) to ``dst`` atomically and durably."""
    with open(os.fspath(src), "rb") as source:
        return _atomic_write(dst, lambda handle: shutil.copyfileobj(source, handle, 1 << 20), mkdir=mkdir)


def jsonl_bytes(records: Iterable[Mapping[str, Any]]) -> bytes:
    """One compact JSON object per line (key order kept, UTF-8, NaN refused)."""
    lines = [json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n" for record in records]
    return "".join(lines).encode("utf-8")


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], *, mkdir: bool = True) -> str:
    """Write ``records`` as JSON Lines atomically; no records gives an empty file."""
    return atomic_write_bytes(path, jsonl_bytes(records), mkdir=mkdir)
