"""Rank 0's view of the other ranks: their hellos, their credit (tasks they asked for), stop and goodbye."""

from __future__ import annotations

import time
from typing import Any

from badc_mpi.logs import get_logger
from badc_mpi.transport.mailbox import Backoff, Mailbox
from badc_mpi.transport.messages import TAG_GOODBYE, TAG_HELLO, TAG_STOP, Hello, Stop

log = get_logger(__name__)

GOODBYE_WAIT_S = 120.0  #: at the end of a finished run, how long to wait for every rank's goodbye


class RemoteWorkers:
    """Rank 0's view of the other ranks: hellos, credits, stop and goodbye."""

    def __init__(self, comm: Any, box: Mailbox) -> None:
        self.comm = comm
        self.box = box
        self.size = comm.Get_size()
        self.hellos: dict[int, Hello] = {}
        self.credit: dict[int, int] = {}
        self.stopped = False
        self._pending: set[int] = set()  #: ranks told to stop that have not said goodbye

    def collect_hellos(self, backoff: Backoff, handle: Any, timeout_s: float) -> list[int]:
        """Wait up to ``timeout_s`` for every worker's Hello (other early messages go to ``handle``);
        returns the ranks that never said hello (lost: they get no work and are not waited for)."""
        deadline = time.monotonic() + timeout_s
        while len(self.hellos) < self.size - 1 and time.monotonic() < deadline:
            got = self.box.poll(None)
            if got is None:
                backoff.sleep()
                continue
            src, tag, msg = got
            backoff.reset()
            if tag == TAG_HELLO:
                self.hellos[src] = msg
                self.credit[src] = 0
            else:
                handle(src, tag, msg)
        return [r for r in range(1, self.size) if r not in self.hellos]

    def stop_all(
        self, exit_code: int, message: str = "", wait_s: float = GOODBYE_WAIT_S, lost: frozenset[int] = frozenset()
    ) -> None:
        """Tell every worker to stop; wait (politely, at most ``wait_s``) for their goodbyes, except
        from ``lost`` ranks (silent, stuck or never joined)."""
        self.send_stop(exit_code, message, lost)
        self.await_goodbyes(wait_s)

    def send_stop(self, exit_code: int, message: str = "", lost: frozenset[int] = frozenset()) -> None:
        """Tell every worker to stop (once): each interrupts its runner and says goodbye."""
        if self.stopped:
            return
        self.stopped = True
        for dest in range(1, self.size):
            self.box.send(dest, TAG_STOP, Stop(exit_code, message))
        self._pending = set(range(1, self.size)) - set(lost)

    def await_goodbyes(self, wait_s: float) -> None:
        """Wait at most ``wait_s`` for the goodbyes of the ranks told to stop; a rank that stays
        silent is named and left behind (its own close is bounded too)."""
        pending = self._pending
        deadline = time.monotonic() + wait_s
        backoff = Backoff()
        while pending and time.monotonic() < deadline:
            got = self.box.poll(None)
            if got is None:
                backoff.sleep()
                continue
            if got[1] == TAG_GOODBYE:
                pending.discard(got[0])
        if pending:
            log.warning("ranks %s did not confirm the stop within %.0f s", sorted(pending), wait_s)
            pending.clear()
        self.box.flush(timeout_s=max(1.0, deadline - time.monotonic()))
