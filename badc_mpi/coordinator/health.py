"""Rank health, kept by the coordinator: which ranks may still get work.

Pure bookkeeping (no MPI, no I/O; time is passed in), so a fault in one place stays there:

- **quarantine** (:mod:`badc_mpi.coordinator.blame`): a rank is set aside when
  ``quarantine_after`` chunks that failed there succeeded on other ranks, with no success there in
  between (a GPU with ECC/Xid errors, a HawkEars that keeps crashing, a full local disk). A chunk
  that fails on two ranks is the chunk's fault: it fails, and no rank is blamed for it.
- **deadlines**: every chunk in flight has one. When the worker reports the attempt started, the
  deadline is its start plus a timeout plus a margin (the runner enforces the timeout itself, so
  passing it means the rank is stuck, e.g. in a hung file system). The timeout is the longest of
  the chunks on that rank: a batch (``--hawkears-batch``) starts its chunks together and must end
  within the longest of their timeouts, so a short chunk of a slow healthy batch is not overdue. A
  chunk sent but not yet started may wait behind the chunks ahead of it on that worker.
- **silence**: every rank reports at least every heartbeat; one that stays silent for
  ``silent_after_s`` (a hung node) is lost. Start-up (from the set-up until the rank's first message:
  building its runner, hashing every checkpoint on a slow shared file system) is governed by
  ``startup_timeout_s`` alone.

A quarantined or lost rank's chunks go back to the queue (the coordinator releases them); the run
goes on with the other ranks and stops cleanly when none is left.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from badc_mpi.coordinator.blame import Blame


@dataclass
class Health:
    quarantine_after: int = 3  #: 0 = never quarantine
    silent_after_s: float = 120.0
    margin_s: float = 60.0
    startup_timeout_s: float = 600.0
    blame: Blame = field(init=False)
    _heard: dict[int, float] = field(default_factory=dict)  #: rank -> last message (monotonic s)
    _starting: dict[int, float] = field(default_factory=dict)  #: rank -> set-up time, until its first message
    _deadline: dict[str, tuple[int, float]] = field(default_factory=dict)  #: key -> (rank, due)
    _on: dict[int, dict[str, float]] = field(default_factory=dict)  #: rank -> {key: timeout_s} sent there
    _ahead: dict[int, float] = field(default_factory=dict)  #: rank -> timeout seconds queued there

    def __post_init__(self) -> None:
        self.blame = Blame(self.quarantine_after)

    # -- strikes ---------------------------------------------------------------------------
    def attempt_ended(
        self, rank: int, key: str, ok: bool, failure_class: str | None, final: bool = False
    ) -> list[tuple[int, str]]:
        """Record an attempt's end (``final``: its chunk has no attempt left); the ranks that must
        get no more work, with the reason (see :class:`~badc_mpi.coordinator.blame.Blame`)."""
        return self.blame.attempt_ended(rank, key, ok, failure_class, final)

    def working(self, alive: Collection[int]) -> set[int]:
        """The live ranks that may get new work: those not waiting for verdicts on their failed chunks."""
        return self.blame.working(alive)

    # -- deadlines -------------------------------------------------------------------------
    def sent(self, rank: int, key: str, timeout_s: float, now: float) -> None:
        """A chunk went to ``rank``: it may wait behind the work already queued there."""
        ahead = self._ahead.get(rank, 0.0)
        self._ahead[rank] = ahead + timeout_s
        self._on.setdefault(rank, {})[key] = timeout_s
        self._deadline[key] = (rank, now + ahead + timeout_s + self.margin_s)

    def started(self, rank: int, key: str, timeout_s: float, started_at: float) -> None:
        """The attempt started: it must end within the longest timeout of the chunks on ``rank``
        (any of them may be in its batch), plus the margin."""
        if key in self._deadline:
            longest = max(self._on.get(rank, {}).values(), default=timeout_s)
            self._deadline[key] = (rank, started_at + max(timeout_s, longest) + self.margin_s)

    def ended(self, key: str, timeout_s: float = 0.0) -> None:
        got = self._deadline.pop(key, None)
        if got is not None:
            rank = got[0]
            sent_s = self._on.get(rank, {}).pop(key, timeout_s)
            self._ahead[rank] = max(0.0, self._ahead.get(rank, 0.0) - sent_s)

    def forget_rank(self, rank: int) -> None:
        """The rank is set aside: its deadlines go (its chunks are released), its strikes too."""
        for key in [k for k, (r, _) in self._deadline.items() if r == rank]:
            del self._deadline[key]
        self._ahead.pop(rank, None)
        self._on.pop(rank, None)
        self._heard.pop(rank, None)
        self._starting.pop(rank, None)
        self.blame.forget_rank(rank)

    def overdue(self, now: float) -> list[tuple[int, str]]:
        """(rank, key) of every chunk past its deadline."""
        return [(rank, key) for key, (rank, due) in self._deadline.items() if due < now]

    # -- silence ---------------------------------------------------------------------------
    def starting(self, rank: int, now: float) -> None:
        """``rank`` was set up at ``now``: until its first message, ``startup_timeout_s`` applies."""
        self._starting[rank] = now
        self._heard[rank] = now

    def heard(self, rank: int, now: float) -> None:
        self._heard[rank] = now
        self._starting.pop(rank, None)

    def silent(self, now: float) -> list[tuple[int, str]]:
        """Ranks not heard from for ``silent_after_s`` (``startup_timeout_s`` while starting), with why."""
        out = []
        for rank, at in self._heard.items():
            if rank in self._starting:
                if now - at > self.startup_timeout_s:
                    out.append((rank, f"silent: no message within --startup-timeout-s {self.startup_timeout_s:g} of its set-up"))
            elif now - at > self.silent_after_s:
                out.append((rank, f"silent: no message for {self.silent_after_s:g} s"))
        return out
