"""One run per output directory: ``<output-dir>/.badc-mpi.lock``.

Two runs writing into one output directory would corrupt each other, so rank 0 takes this lock
before anything is written and removes it at the end. The lock names the holder's host, pid, start
time and run, and, inside a SLURM job, the job id (``SLURM_JOB_ID``), cluster and restart count;
rank 0 refreshes its mtime as a heartbeat.

The lock is never seen half-written: the complete JSON goes to a temporary file in the same
folder, is fsynced, then hard-linked to the lock name (``os.link`` fails if the name exists: the
lock is held) and the temporary name removed. A lock that cannot be parsed is therefore treated as
held (a writer of another version mid-write, or a damaged file) until its mtime is older than
:data:`STALE_AFTER_S`.

A second run refuses (exit 4), naming the holder and ``--force-unlock``, unless the holder is
provably gone:

- same host and the holder's pid is gone, or now belongs to another process (the lock records the
  holder's start time, :func:`process_start`; a pid reused since, whose start differs, is not the
  holder): taken over at once, with a warning. A lock of an older version without a start time,
  whose pid is alive, counts as held;
- the lock names a SLURM job (of this cluster) that is no longer running (``squeue`` shows no
  job, or a final state), or an earlier incarnation of this very job (requeued): taken over at
  once; when ``squeue`` is missing or fails the job's fate is unknown and the other rules apply;
- ``--force-unlock`` always takes it over (a warning names the holder); on another host a
  heartbeat older than :data:`STALE_AFTER_S` does too (the holder's node died).

:func:`squeue_state` is the one place that asks SLURM: tests replace it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from badc_mpi.errors import LockError
from badc_mpi.logs import get_logger

log = get_logger(__name__)

LOCK_NAME = ".badc-mpi.lock"
STALE_AFTER_S = 900.0
HEARTBEAT_S = 30.0
SQUEUE_TIMEOUT_S = 10.0

#: SLURM job states after which a job runs nothing any more (``squeue -o %T`` spelling)
FINAL_JOB_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


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


BOOT_SLACK_S = 2  #: /proc/stat's btime is derived from the clock: reads may differ by a second


def boot_time_s() -> int | None:
    """This host's boot time (``btime`` of ``/proc/stat``, epoch seconds), or None off Linux."""
    try:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_start(pid: int) -> dict[str, int] | None:
    """When ``pid`` started: ``{"pid_start_ticks": field 22 of /proc/PID/stat (clock ticks after
    boot), "boot_time_s": btime}``, or None when it cannot be read (no such process, not Linux).
    A pid and its start identify one process for good: a reused pid has another start."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of the line; fields[0] is field 3 (the state)
    except (OSError, ValueError, IndexError):
        return None
    boot = boot_time_s()
    return {"pid_start_ticks": ticks, "boot_time_s": boot} if boot is not None else None


def same_process(holder: dict[str, Any], now: dict[str, int] | None) -> bool | None:
    """Whether the live process with the holder's pid is the holder (pure): True, False (the pid
    was reused: another start, or the host rebooted since), None (the lock records no start)."""
    ticks, boot = holder.get("pid_start_ticks"), holder.get("boot_time_s")
    if not isinstance(ticks, int) or not isinstance(boot, int) or now is None:
        return None
    return ticks == now["pid_start_ticks"] and abs(boot - now["boot_time_s"]) <= BOOT_SLACK_S


def squeue_state(job_id: str) -> str | None:
    """``squeue -h -j JOB -o %T``: the job's state line(s), ``""`` when SLURM no longer knows the
    job, or None when it cannot tell (no squeue, a time-out, any other error). The test seam."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=SQUEUE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        # a single job id that slurmctld has purged (finished a while ago) is an error, not an empty list
        return "" if "Invalid job id specified" in proc.stderr else None
    return proc.stdout.strip()


def state_means_gone(state: str | None) -> bool | None:
    """From :func:`squeue_state`'s answer: True (no such job, or a final state), False (pending,
    running, completing, suspended, or anything else), None (unknown). Pure."""
    if state is None:
        return None
    states = {line.strip().upper() for line in state.splitlines() if line.strip()}
    return not states or states <= FINAL_JOB_STATES


def slurm_identity(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The SLURM job this process runs in (empty outside SLURM)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job:
        return {}
    out: dict[str, Any] = {"slurm_job_id": job}
    if env.get("SLURM_CLUSTER_NAME"):
        out["slurm_cluster"] = env["SLURM_CLUSTER_NAME"]
    try:
        out["slurm_restart_count"] = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        out["slurm_restart_count"] = 0
    return out


def holder_job_gone(holder: dict[str, Any], me: dict[str, Any], query: Callable[[str], str | None] | None = None) -> bool | None:
    """Whether the SLURM job named in the lock is provably over: True, False, or None (no job named,
    another cluster's job, or SLURM cannot tell). ``me`` is this process's :func:`slurm_identity`."""
    job = holder.get("slurm_job_id")
    if not job:
        return None
    theirs, ours = holder.get("slurm_cluster"), me.get("slurm_cluster")
    if theirs and ours and theirs != ours:
        return None  # another cluster's job: this cluster's squeue knows nothing of it
    if str(job) == str(me.get("slurm_job_id")):
        # this very job: an earlier incarnation (requeued) is over; the same one is another step
        before = holder.get("slurm_restart_count")
        if isinstance(before, int) and before < int(me.get("slurm_restart_count") or 0):
            return True
        return None
    return state_means_gone((query or squeue_state)(str(job)))


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
    job = f", SLURM job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return (
        f"run {info.get('run_id', '?')} (host {info.get('host', '?')}, pid {info.get('pid', '?')}{job}, "
        f"started {info.get('started_at', '?')})"
    )


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _try_create(path: Path, info: dict[str, Any]) -> bool:
    """Publish the complete lock at ``path`` atomically; False if a lock is already there."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            json.dump(info, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
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


def stale_reason(
    holder: dict[str, Any], mtime: float, host: str, now: float, force: bool, *, job_gone: bool | None = None
) -> str | None:
    """Why the holder's lock may be taken over, or None when it must be respected (pure).
    ``job_gone``: :func:`holder_job_gone` for the holder's SLURM job (None: unknown or none)."""
    if holder.get("unreadable"):
        if now - mtime > STALE_AFTER_S:
            return f"the lock file is unreadable and untouched for {int(now - mtime)} s"
        return "--force-unlock" if force else None
    if holder.get("host") == host:
        pid = holder.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            return f"its process {pid} on this host is gone"
        if isinstance(pid, int) and same_process(holder, process_start(pid)) is False:
            return f"its process {pid} on this host is gone (that pid now belongs to a process started later)"
    if job_gone:
        return f"its SLURM job {holder.get('slurm_job_id')} is no longer running"
    if force:
        return "--force-unlock"
    if holder.get("host") == host:
        return None
    if now - mtime > STALE_AFTER_S:
        return f"its heartbeat stopped {int(now - mtime)} s ago"
    return None


def _refusal(directory: Path, holder: dict[str, Any]) -> LockError:
    if holder.get("unreadable"):
        return LockError(
            f"{directory} holds an unreadable output lock {directory / LOCK_NAME} (being written, or damaged)",
            fix=f"retry in a moment; if no run uses {directory}, pass --force-unlock "
            f"(it is taken over by itself {int(STALE_AFTER_S)} s after its last change)",
        )
    return LockError(
        f"{directory} is in use by {describe(holder)}",
        fix="wait for that run to finish, or give this run another --output-dir; if that run is gone "
        f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')} may be another program now), pass --force-unlock",
    )


def acquire(output_dir: str | os.PathLike[str], run_id: str, *, force: bool = False) -> OutputLock:
    """Take the output directory's lock or raise LockError naming the holder and the fix."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    host = socket.gethostname()
    me = slurm_identity()
    info = {
        "host": host,
        "pid": os.getpid(),
        "run_id": run_id,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(process_start(os.getpid()) or {}),
        **me,
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
        if why is None and holder.get("slurm_job_id") and not holder.get("unreadable"):
            why = stale_reason(holder, mtime, host, time.time(), force, job_gone=holder_job_gone(holder, me))
        if why is None:
            raise _refusal(directory, holder)
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
