"""Whose fault is a failed attempt, the chunk's or the rank's: the quarantine rule. Pure bookkeeping.

A failed attempt (any class but ``input``, which is final at once and always the chunk's) makes its
chunk *suspect* on that rank until the chunk's later attempts decide:

- it fails on another rank too: the chunk's fault (a damaged recording, an OOM on one recording's
  chunks, a chunk that always times out). No rank is blamed for it, whatever its later attempts do;
  it fails with its class once its retries are used;
- it succeeds on another rank: the first rank's fault, one *strike* there, unless that rank has
  succeeded at something since the failure;
- it fails only on that rank and has no attempt left (``--max-retries 0``, or no other rank left to
  retry it): nobody can tell which; no strike.

An ``output`` failure (a file-system error writing the attempt's files on that rank: a full disk,
a quota) is never the chunk's fault: it is a strike on the rank at once. So a full disk on every
node quarantines every rank and the run stops in order (exit 75, resume command) instead of
failing the campaign's chunks one by one.

A rank with ``quarantine_after`` strikes since its last success is set aside (quarantined). A rank
with ``quarantine_after`` undecided suspects since its last success is *held*: it gets no new work
while a rank that is not held can take it, so a rank that fails fast does not burn through the
queue while its first verdicts wait on a back-off; when every live rank is held, none is (their
suspects are retried on each other and decided). Good chunks always run.

Invariants (``tests/test_blame.py``): a chunk that failed on two ranks never gives a strike; a
success resets its rank's strikes and suspects; only a chunk that later succeeded on another rank
gives a strike; a rank is never held when no other live rank can work.

Memory: one entry per chunk whose last attempt failed and that is not final yet (as the
scheduler's last errors: a few per worker in a healthy run), and a few numbers per rank.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from badc_mpi.records import INPUT, OUTPUT

_CHUNKS_FAULT = -1  #: the rank of a suspect entry once the chunk failed on a second rank


@dataclass
class Blame:
    quarantine_after: int = 3  #: strikes that set a rank aside (0 = never)
    _suspect: dict[str, tuple[int, int]] = field(default_factory=dict)  #: key -> (rank, its epoch then)
    _epoch: dict[int, int] = field(default_factory=dict)  #: rank -> successes so far
    _strikes: dict[int, list[str]] = field(default_factory=dict)  #: rank -> chunks blamed since its last success
    _open: dict[int, int] = field(default_factory=dict)  #: rank -> undecided suspects since its last success
    _gone: set[int] = field(default_factory=set)  #: ranks set aside

    def attempt_ended(self, rank: int, key: str, ok: bool, failure_class: str | None, final: bool) -> list[tuple[int, str]]:
        """Record an attempt's end (``final``: the chunk has no attempt left); returns the ranks to
        set aside now, each with its reason (a strike lands on the rank of an earlier attempt)."""
        if not self.quarantine_after:
            return []
        if ok:
            return self._succeeded(rank, key)
        if failure_class == OUTPUT:  # the rank's disk, never the chunk's fault: a strike here at once
            return self._strike(rank, key, "file-system errors writing outputs here")
        got = self._suspect.get(key)
        if failure_class == INPUT:
            final = True  # never retried: the chunk's fault
        elif got is None:
            if not final:
                self._suspect[key] = (rank, self._epoch.get(rank, 0))
                self._open[rank] = self._open.get(rank, 0) + 1
        elif got[0] != _CHUNKS_FAULT and got[0] != rank:
            self._decided(*got)  # failed on two ranks: the chunk's fault
            self._suspect[key] = (_CHUNKS_FAULT, 0)
        elif got[0] == rank and got[1] != self._epoch.get(rank, 0) and not final:
            self._suspect[key] = (rank, self._epoch.get(rank, 0))  # failed here again since a success here
            self._open[rank] = self._open.get(rank, 0) + 1
        if final:
            got = self._suspect.pop(key, None)
            if got is not None:
                self._decided(*got)
        return []

    def _succeeded(self, rank: int, key: str) -> list[tuple[int, str]]:
        self._epoch[rank] = self._epoch.get(rank, 0) + 1
        self._strikes.pop(rank, None)
        self._open.pop(rank, None)
        got = self._suspect.pop(key, None)
        if got is None or got[0] in (rank, _CHUNKS_FAULT):
            return []
        first, epoch = got
        self._decided(first, epoch)
        if first in self._gone or epoch != self._epoch.get(first, 0):
            return []  # set aside already, or it has succeeded since: a passing fault
        return self._strike(first, key, "chunks failed here and then succeeded on other ranks")

    def _strike(self, rank: int, key: str, what: str) -> list[tuple[int, str]]:
        if rank in self._gone:
            return []
        strikes = self._strikes.setdefault(rank, [])
        strikes.append(key)
        if len(strikes) < self.quarantine_after:
            return []
        return [(rank, f"{len(strikes)} {what}, with no success here in between (last: {key})")]

    def _decided(self, rank: int, epoch: int) -> None:
        """A suspect of ``rank`` is decided: one fewer open, if it was opened since its last success."""
        if rank >= 0 and epoch == self._epoch.get(rank, 0) and self._open.get(rank, 0) > 0:
            self._open[rank] -= 1

    def working(self, alive: Collection[int]) -> set[int]:
        """The live ranks that may get new work (O(ranks)): all but the *held* ones, those with
        ``quarantine_after`` suspects open while another live rank has fewer; all when every one has."""
        q = self.quarantine_after
        ranks = set(alive)
        if not q or not self._open:
            return ranks
        held = {r for r in ranks if self._open.get(r, 0) >= q}
        return ranks if held == ranks else ranks - held

    def strikes(self, rank: int) -> int:
        return len(self._strikes.get(rank, ()))

    def forget_rank(self, rank: int) -> None:
        """The rank is set aside: it is blamed no more (its suspects are still decided for the chunks)."""
        self._gone.add(rank)
        self._strikes.pop(rank, None)
        self._open.pop(rank, None)
