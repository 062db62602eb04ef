"""The MPI transport: the only module that calls MPI point-to-point operations.

Ranks never block in MPI receives (a blocked receive burns a whole core, see
``shared/notes/mpi.md``): :class:`Mailbox` polls with ``iprobe`` and sleeps with a capped
exponential back-off (:class:`Backoff`: 1 µs doubling to 1 ms by default, the cap settable by
argument, then ``BADC_MPI_BACKOFF_MAX_S``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from badc_mpi.records import LAUNCHER_LOCAL_VARS

BACKOFF_ENV = "BADC_MPI_BACKOFF_MAX_S"
DEFAULT_BACKOFF_MAX_S = 0.001


def node_local(comm: Any, env: dict[str, str] | None = None) -> tuple[int, int]:
    """This rank's index among the ranks on its node, and how many there are.

    From the launcher's variables when it sets both (no communication: a rank that never joins
    cannot hang the others here), else from ``COMM_TYPE_SHARED`` (a collective)."""
    env = dict(os.environ) if env is None else env
    for rank_var, size_var in LAUNCHER_LOCAL_VARS:
        rank, size = env.get(rank_var, "").strip(), env.get(size_var, "").strip()
        if rank.isdigit() and size.isdigit() and int(rank) < int(size):
            return int(rank), int(size)
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def backoff_cap_s(value: float | None = None) -> float:
    """The back-off cap: argument, then ``BADC_MPI_BACKOFF_MAX_S``, then 1 ms."""
    if value is not None:
        return float(value)
    env = os.environ.get(BACKOFF_ENV)
    return float(env) if env else DEFAULT_BACKOFF_MAX_S


class Backoff:
    """Exponential back-off sleep: 1 µs doubling to ``max_s``; ``reset()`` after any progress."""

    def __init__(self, max_s: float | None = None, min_s: float = 1e-6) -> None:
        self.max_s = backoff_cap_s(max_s)
        self.min_s = min(min_s, self.max_s)
        self.delay_s = self.min_s

    def reset(self) -> None:
        self.delay_s = self.min_s

    def sleep(self) -> None:
        time.sleep(self.delay_s)
        self.delay_s = min(self.delay_s * 2, self.max_s)


class Mailbox:
    """Non-blocking point-to-point transport over an mpi4py communicator."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.comm = comm
        self._status = MPI.Status()
        self._any_source = MPI.ANY_SOURCE
        self._any_tag = MPI.ANY_TAG
        self._pending: list[Any] = []

    def send(self, dest: int, tag: int, message: object) -> None:
        """Buffered non-blocking send; completed requests are reaped on later calls."""
        self._pending.append(self.comm.isend(message, dest=dest, tag=tag))
        if len(self._pending) > 64:
            self._reap()

    def _reap(self) -> None:
        self._pending = [req for req in self._pending if not req.Test()]

    def poll(self, source: int | None = None) -> tuple[int, int, Any] | None:
        """One waiting message as ``(source, tag, message)``, or None without blocking."""
        src = self._any_source if source is None else source
        if not self.comm.iprobe(source=src, tag=self._any_tag, status=self._status):
            if self._pending:
                self._reap()
            return None
        sender, tag = self._status.Get_source(), self._status.Get_tag()
        return sender, tag, self.comm.recv(source=sender, tag=tag)

    def wait(self, source: int | None = None, backoff: Backoff | None = None) -> tuple[int, int, Any]:
        """Wait for one message, sleeping between probes (never spinning)."""
        backoff = backoff or Backoff()
        while True:
            got = self.poll(source)
            if got is not None:
                return got
            backoff.sleep()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait (politely) until every send posted so far has completed."""
        deadline = time.monotonic() + timeout_s
        backoff = Backoff()
        while self._pending and time.monotonic() < deadline:
            self._reap()
            if self._pending:
                backoff.sleep()
