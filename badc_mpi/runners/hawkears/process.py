"""The process that hosts the resident HawkEars worker: start, line I/O with deadlines, group kill.

``spawn_worker`` starts ``resident.py`` in its own process group with its stderr drained by
a ``StderrPump`` thread into the runner's ring buffer (and, when asked, a per-rank log file).
``WorkerProcess.read_line`` waits for one reply line in ``poll()`` until a deadline, never spinning;
``kill`` takes down the whole process group (:func:`badc_mpi.runners.process.kill_group`). The
request/reply protocol on top of these lines lives in ``exchange.py`` (and ``resident_protocol.py``).
"""

from __future__ import annotations

import collections
import json
import os
import select
import subprocess
import threading
import time
from typing import IO, Any

from badc_mpi.logs import get_logger
from badc_mpi.runners.process import die_with_parent, kill_group

log = get_logger(__name__)
STAGE_PREFIX = "badc-stage: "  #: the resident worker's start-up stage lines (resident.stage)


class StderrPump(threading.Thread):
    """Drains a child's stderr (a full pipe would block it) into a ring buffer and a log file."""

    def __init__(self, stream: IO[bytes], ring: collections.deque[str], log_path: str | None) -> None:
        super().__init__(name="hawkears-stderr", daemon=True)
        self.stream, self.ring, self.log_path = stream, ring, log_path

    def run(self) -> None:
        sink = open(self.log_path, "a", encoding="utf-8") if self.log_path else None  # noqa: SIM115
        try:
            for raw in iter(self.stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith(STAGE_PREFIX):  # the resident worker names its start-up stages
                    log.info("HawkEars start-up: %s", line[len(STAGE_PREFIX) :])
                self.ring.append(line)
                if sink:
                    sink.write(line + "\n")
                    sink.flush()
        except (OSError, ValueError):
            pass
        finally:
            if sink:
                sink.close()


class WorkerProcess:
    """One incarnation of the resident worker process."""

    def __init__(self, proc: subprocess.Popen[bytes], pump: StderrPump) -> None:
        self.proc, self.pump = proc, pump
        self.buffer = b""
        self.hello: dict[str, Any] = {}
        self.poller = select.poll()
        assert proc.stdout is not None
        self.poller.register(proc.stdout.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)

    def read_line(self, deadline: float) -> bytes | str:
        """One reply line, or ``"timeout"`` / ``"eof"``. Blocks in poll(), never spins."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return "timeout"
            if not self.poller.poll(min(remaining_ms, 60_000)):
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                return "eof"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def await_hello(self, timeout_s: float) -> str | None:
        """Wait for the worker's hello (models loaded): None when it is ready (``self.hello`` set),
        else what went wrong, the worker then killed. Killing the worker's group from another
        thread ends the wait at once (its stdout closes)."""
        try:
            line = self.read_line(time.monotonic() + timeout_s)
        except OSError:  # the pipe closed under us
            line = "eof"
        if isinstance(line, str):
            self.kill()
            return f"no hello within {timeout_s:g} s" if line == "timeout" else f"exited with status {self.proc.returncode}"
        try:
            hello = json.loads(line)
        except ValueError:
            self.kill()
            return f"bad hello {line[:300]!r}"
        if not hello.get("ok"):
            self.kill()
            return str(hello.get("message"))
        self.hello = hello
        return None

    def kill(self, grace_s: float = 3.0, reap_s: float = 10.0) -> None:
        """SIGTERM then SIGKILL to the whole process group; reap; let the stderr pump finish."""
        kill_group(self.proc, grace_s, reap_s)
        self.close_pipes()

    def close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        self.pump.join(timeout=2.0)


def spawn_worker(
    argv: list[str], *, cwd: str, env: dict[str, str], ring: collections.deque[str], log_path: str | None
) -> WorkerProcess:
    """Start ``argv`` in a new session with piped stdio and its stderr pump running (OSError if it cannot)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # a prctl only: the worker dies with this rank (it also asks itself)
    )
    assert proc.stderr is not None
    pump = StderrPump(proc.stderr, ring, log_path)
    pump.start()
    return WorkerProcess(proc, pump)
