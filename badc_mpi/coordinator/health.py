"""Rank health, kept by the coordinator: which ranks may still get work.

Pure bookkeeping (no MPI, no I/O; time is passed in), so a fault in one place stays there:

- **quarantine**: a rank whose attempts fail ``quarantine_after`` times in a row, on as many
  different chunks (a GPU with ECC/Xid errors, a HawkEars that keeps crashing, a full local disk),
  gets no more work. ``input`` failures are the chunk's fault and do not count; a success resets
  the streak.
- **deadlines**: every chunk in flight has one. When the worker reports the attempt started, the
  deadline is its start plus its timeout plus a margin (the runner enforces the timeout itself, so
  passing it means the rank is stuck, e.g. in a hung file system). A chunk sent but not yet started
  may wait behind the chunks ahead of it on that worker.
- **silence**: every rank reports at least every heartbeat; one that stays silent for
  ``silent_after_s`` (a hung node) is lost.

A quarantined or lost rank's chunks go back to the queue (the coordinator releases them); the run
goes on with the other ranks and stops cleanly when none is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from badc_mpi.records import INPUT


@dataclass
class Health:
    quarantine_after: int = 3  #: 0 = never quarantine
    silent_after_s: float = 120.0
    margin_s: float = 60.0
    _streak: dict[int, list[str]] = field(default_factory=dict)  #: rank -> distinct chunks failed in a row
    _heard: dict[int, float] = field(default_factory=dict)  #: rank -> last message (monotonic s)
    _deadline: dict[str, tuple[int, float]] = field(default_factory=dict)  #: key -> (rank, due)
    _ahead: dict[int, float] = field(default_factory=dict)  #: rank -> timeout seconds queued there

    # -- streaks ---------------------------------------------------------------------------
    def attempt_ended(self, rank: int, key: str, ok: bool, failure_class: str | None) -> str | None:
        """Record an attempt's end; the quarantine reason when this rank must get no more work."""
        if ok:
            self._streak.pop(rank, None)
            return None
        if failure_class == INPUT or not self.quarantine_after:
            return None
        streak = self._streak.setdefault(rank, [])
        if key not in streak:
            streak.append(key)
        if len(streak) < self.quarantine_after:
            return None
        return f"{len(streak)} attempts failed in a row on different chunks (last: {failure_class})"

    # -- deadlines -------------------------------------------------------------------------
    def sent(self, rank: int, key: str, timeout_s: float, now: float) -> None:
        """A chunk went to ``rank``: it may wait behind the work already queued there."""
        ahead = self._ahead.get(rank, 0.0)
        self._ahead[rank] = ahead + timeout_s
        self._deadline[key] = (rank, now + ahead + timeout_s + self.margin_s)

    def started(self, rank: int, key: str, timeout_s: float, started_at: float) -> None:
        if key in self._deadline:
            self._deadline[key] = (rank, started_at + timeout_s + self.margin_s)

    def ended(self, key: str, timeout_s: float) -> None:
        got = self._deadline.pop(key, None)
        if got is not None:
            rank = got[0]
            self._ahead[rank] = max(0.0, self._ahead.get(rank, 0.0) - timeout_s)

    def forget_rank(self, rank: int) -> None:
        """The rank is set aside: its deadlines go (its chunks are released), its streak too."""
        for key in [k for k, (r, _) in self._deadline.items() if r == rank]:
            del self._deadline[key]
        self._ahead.pop(rank, None)
        self._streak.pop(rank, None)
        self._heard.pop(rank, None)

    def overdue(self, now: float) -> list[tuple[int, str]]:
        """(rank, key) of every chunk past its deadline."""
        return [(rank, key) for key, (rank, due) in self._deadline.items() if due < now]

    # -- silence ---------------------------------------------------------------------------
    def heard(self, rank: int, now: float) -> None:
        self._heard[rank] = now

    def silent(self, now: float) -> list[int]:
        """Ranks not heard from for ``silent_after_s``."""
        return [rank for rank, at in self._heard.items() if now - at > self.silent_after_s]
