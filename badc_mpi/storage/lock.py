"""One run per output directory: ``<output-dir>/.badc-mpi.lock``.

Two runs writing into one output directory would corrupt each other, so rank 0 takes this lock
before anything is written and removes it at the end. The lock file (created with ``O_EXCL``)
names the holder's host, pid, start time and run; rank 0 refreshes its mtime as a heartbeat.

A second run refuses (exit 4), naming the holder, unless the lock is stale:

- same host and the holder's pid is gone: taken over with a warning;
- another host: only with ``--force-unlock``, or when the heartbeat is older than
  :data:`STALE_AFTER_S` (the holder's node died; taken over with a warning).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from badc_mpi.errors import LockError
from badc_mpi.logs import get_logger

log = get_logger(__name__)

LOCK_NAME = ".badc-mpi.lock"
STALE_AFTER_S = 900.0
HEARTBEAT_S = 30.0


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie, killed but unreaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


@dataclass
class OutputLock:
    path: Path
    info: dict[str, Any]
    _last_beat: float = 0.0

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_beat >= HEARTBEAT_S:
            try:
                os.utime(self.path)
            except OSError as exc:
                log.warning("cannot refresh the output lock %s: %s", self.path, exc)
            self._last_beat = now

    def release(self) -> None:
        try:
            current = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if current.get("run_id") == self.info["run_id"]:
            self.path.unlink(missing_ok=True)


def describe(info: dict[str, Any]) -> str:
    return (
        f"run {info.get('run_id', '?')} (host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
        f"started {info.get('started_at', '?')})"
    )


def _try_create(path: Path, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _read(path: Path) -> tuple[dict[str, Any], float] | None:
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except ValueError:
        info = {"host": "?", "pid": "?", "started_at": "?", "run_id": "?", "unreadable": True}
    return info, mtime


def stale_reason(holder: dict[str, Any], mtime: float, host: str, now: float, force: bool) -> str | None:
    """Why the holder's lock may be taken over, or None when it must be respected (pure)."""
    if holder.get("unreadable"):
        return "the lock file is unreadable (a writer killed mid-write)"
    if holder.get("host") == host:
        pid = holder.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            return f"its process {pid} on this host is gone"
        return None
    if force:
        return "--force-unlock"
    if now - mtime > STALE_AFTER_S:
        return f"its heartbeat stopped {int(now - mtime)} s ago"
    return None


def acquire(output_dir: str | os.PathLike[str], run_id: str, *, force: bool = False) -> OutputLock:
    """Take the output directory's lock or raise LockError naming the holder and the fix."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    host = socket.gethostname()
    info = {
        "host": host,
        "pid": os.getpid(),
        "run_id": run_id,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for _ in range(3):
        if _try_create(path, info):
            lock = OutputLock(path, info)
            lock.heartbeat(force=True)
            return lock
        found = _read(path)
        if found is None:
            continue  # released meanwhile: try again
        holder, mtime = found
        why = stale_reason(holder, mtime, host, time.time(), force)
        if why is None:
            same_host = holder.get("host") == host
            raise LockError(
                f"{directory} is in use by {describe(holder)}",
                fix="wait for that run to finish, or give this run another --output-dir"
                + ("" if same_host else "; if that host's run is dead, pass --force-unlock"),
            )
        log.warning("taking over the stale output lock of %s: %s", describe(holder), why)
        stale = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.replace(path, stale)  # only one contender wins the rename
        except FileNotFoundError:
            continue
        moved = _read(stale)
        if moved is not None and moved[0].get("run_id") != holder.get("run_id"):
            os.replace(stale, path)  # another contender's fresh lock: put it back and refuse
            raise LockError(
                f"{directory} was just taken by {describe(moved[0])}",
                fix="wait for that run to finish, or give this run another --output-dir",
            )
        stale.unlink(missing_ok=True)
    raise LockError(f"{directory}: could not take the output lock", fix="another run is starting there; retry")
