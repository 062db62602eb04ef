"""Which result counts for each chunk, across runs (pure).

Runs are read oldest first. Per chunk: the latest ``success`` in any ledger wins (its detections
are counted, once); a chunk with ledger records but no success is ``failed`` (its latest
failure); a chunk of the manifests that no ledger names, or whose records no longer apply (its
sha256 changed in the manifest, or they were made from another audio file:
:func:`~badc_mpi.storage.ledger.record_applies`), is ``not_analysed``; so is a chunk whose only successes
wrote no outputs (``--dry-run``: nothing was analysed).

One fingerprint (:mod:`badc_mpi.results.aggregate.fingerprints`): given the runs' fingerprint ids
and the aggregate's, the latest success made with the aggregate's fingerprint counts; a chunk whose
successes were all made with another one is ``stale`` (not counted), or with ``accept_mixed`` its
latest success counts and the verdict is marked ``mixed``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from badc_mpi.records import Chunk
from badc_mpi.results.aggregate.schema import ANALYSED, FAILED, NOT_ANALYSED, STALE
from badc_mpi.storage.ledger import (
    ATTEMPTS,
    CRC32,
    ERROR,
    FAILURE_CLASS,
    FINISHED_AT,
    HAS_OUTPUTS,
    SEGMENT,
    SHA256,
    STATUS,
    record_applies,
    why_not_applies,
)

FAILED_CSV = ".failed.csv"  #: a run's failed chunks as a manifest (a retry runs it)


@dataclass(slots=True)
class Verdict:
    """One chunk's row of the ``chunks`` table, before detections are counted."""

    recording_id: str
    chunk_id: str
    status: str
    run_index: int | None  #: index of the run whose record counts
    run_id: str | None
    attempts: int | None
    runs_tried: int
    failure_class: str | None
    error: str | None
    finished_at: str | None
    start_ms: int | None
    end_ms: int | None
    sha256: str | None
    in_manifest: bool
    note: str | None = None
    detections: int | None = None
    ref: tuple[int, int, int, int] | None = None  #: a store success's record (segment, offset, length, CRC-32)
    fingerprint: str | None = None  #: the fingerprint id of the run whose record counts
    mixed: bool = False  #: analysed with another fingerprint than the aggregate's (accept_mixed)

    @property
    def key(self) -> str:
        return f"{self.recording_id}/{self.chunk_id}"


@dataclass(frozen=True)
class Settings:
    """The runs' fingerprint ids (by run index) and the one the aggregate holds."""

    ids: Sequence[str | None]
    chosen: str | None
    accept_mixed: bool = False


def _pick(history: list[tuple[int, tuple[Any, ...]]], settings: Settings | None) -> tuple[str, int, tuple[Any, ...], bool]:
    """(status, run index, record, mixed) from a chunk's records, oldest run first."""
    success = [(i, rec) for i, rec in history if rec[STATUS] == "success"]
    if success and settings is not None:
        same = [(i, rec) for i, rec in success if settings.ids[i] == settings.chosen]
        if same:
            return ANALYSED, *same[-1], False
        i, rec = success[-1]
        return (ANALYSED, i, rec, True) if settings.accept_mixed else (STALE, i, rec, False)
    if success:
        i, rec = success[-1]
        return ANALYSED, i, rec, False
    i, rec = history[-1]
    return FAILED, i, rec, False


def decide(
    chunks: Iterable[Chunk],
    ledgers: Sequence[tuple[str, dict[str, tuple[Any, ...]]]],
    settings: Settings | None = None,
) -> tuple[list[Verdict], list[str]]:
    """Verdicts for the manifests' chunks (in order), then for ledger keys no manifest names
    (``in_manifest`` False), and the keys listed twice in the manifests (counted once).

    ``ledgers``: (run_id, ``LedgerContents.records``) per run, oldest first; ``settings``: the
    runs' fingerprints (None: fingerprints are not compared).
    """
    history: dict[str, list[tuple[int, tuple[Any, ...]]]] = {}
    for index, (_run_id, records) in enumerate(ledgers):
        for key, rec in records.items():
            history.setdefault(key, []).append((index, rec))
    out: list[Verdict] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    for chunk in chunks:
        key = chunk.key
        if key in seen:
            if not chunk.manifest.endswith(FAILED_CSV):  # a retry's manifest repeats its chunks: no news
                duplicates.append(key)
            continue
        seen.add(key)
        out.append(_verdict(chunk.recording_id, chunk.chunk_id, history.get(key), ledgers, chunk, True, settings))
    for key in sorted(set(history) - seen):
        rec_id, chunk_id = key.split("/", 1)
        out.append(_verdict(rec_id, chunk_id, history[key], ledgers, None, False, settings))
    return out, duplicates


def _verdict(
    recording_id: str,
    chunk_id: str,
    history: list[tuple[int, tuple[Any, ...]]] | None,
    ledgers: Sequence[tuple[str, dict[str, tuple[Any, ...]]]],
    chunk: Chunk | None,
    in_manifest: bool,
    settings: Settings | None = None,
) -> Verdict:
    sha = chunk.sha256 if chunk else None
    verdict = functools.partial(
        Verdict,
        recording_id=recording_id,
        chunk_id=chunk_id,
        start_ms=chunk.start_ms if chunk else None,
        end_ms=chunk.end_ms if chunk else None,
        in_manifest=in_manifest,
    )
    note = None
    if chunk is not None and history:  # only records made from this chunk's audio count
        current = [(i, rec) for i, rec in history if record_applies(rec, chunk)]
        if not current:
            note = why_not_applies([rec for _, rec in history], chunk)
        history = current
    if not history:
        return verdict(
            status=NOT_ANALYSED,
            run_index=None,
            run_id=None,
            attempts=None,
            runs_tried=0,
            failure_class=None,
            error=None,
            finished_at=None,
            sha256=sha,
            note=note,
        )
    dry = [(i, rec) for i, rec in history if rec[STATUS] == "success" and not rec[HAS_OUTPUTS]]
    if dry and len(dry) == len(history):
        note = "success without outputs (a --dry-run): nothing was analysed"
        return verdict(
            status=NOT_ANALYSED,
            run_index=None,
            run_id=None,
            attempts=None,
            runs_tried=len({i for i, _ in history}),
            failure_class=None,
            error=None,
            finished_at=None,
            sha256=sha,
            note=note,
        )
    history = [(i, rec) for i, rec in history if not (rec[STATUS] == "success" and not rec[HAS_OUTPUTS])]
    status, index, rec, mixed = _pick(history, settings)
    if status == STALE:
        note = (
            f"done only with other settings (run {ledgers[index][0]}): run it again (badc-mpi run --resume "
            "--rerun-changed), or keep it with --accept-mixed"
        )
    elif mixed:
        note = f"done with other settings (run {ledgers[index][0]}), kept by --accept-mixed"
    return verdict(
        status=status,
        run_index=index,
        run_id=ledgers[index][0],
        attempts=rec[ATTEMPTS],
        runs_tried=len({i for i, _ in history}),
        failure_class=rec[FAILURE_CLASS] if status == FAILED else None,
        error=(rec[ERROR] or None) if status == FAILED else None,
        finished_at=rec[FINISHED_AT],
        sha256=sha if sha is not None else rec[SHA256],
        note=note,
        ref=_ref(rec) if status == ANALYSED else None,
        fingerprint=settings.ids[index] if settings is not None and status != FAILED else None,
        mixed=mixed,
    )


def _ref(rec: tuple[Any, ...]) -> tuple[int, int, int, int] | None:
    """The store record a ledger success names (None: a per-chunk run, an older ledger, a summary)."""
    if len(rec) <= CRC32 or rec[SEGMENT] is None:
        return None
    return (int(rec[SEGMENT]), int(rec[SEGMENT + 1]), int(rec[SEGMENT + 2]), int(rec[CRC32]))
