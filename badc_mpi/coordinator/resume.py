"""Resume: which chunks earlier runs finished, so a rerun does only what is left.

State comes from ledgers (the truth) and, with ``--resume-summary``, from named summaries (a
snapshot) overlaid with their runs' ledgers. ``--resume`` finds every earlier run with the same
output folder in the telemetry folder, whatever its manifests were called or where they lay (a
renamed or re-mounted manifest, a retry through ``X.failed.csv``): chunks are matched by key.
Later records win.

Results are never mixed silently: every run records the fingerprint of what determines its
detections (HawkEars and model versions, options, species lists); a chunk done by a run with
another fingerprint stops the resume with exit 2 naming what differs, unless ``--rerun-changed``
(run such chunks again) or ``--accept-mixed`` (keep them).

A chunk is skipped when its latest record is ``success``, was made from the chunk's audio (its
sha256 still matches the manifest's when the manifest has one; otherwise its source path, ``p``,
is the chunk's input path: :func:`~badc_mpi.storage.ledger.record_applies`; a record without
``p``, from an older badc-mpi, is matched by key as then) and its detections still exist: its
file, or its record in the run's store, verified against the ledger's reference
(:mod:`badc_mpi.storage.store_check`: a record torn by a full disk or lost in a node crash makes
the chunk run again, never "done"); ``failed`` chunks run again unless ``--skip-failed``.
Identity is ``(recording_id, chunk_id)`` plus the source (sha256 or path), never row position.
Unreadable state is a loud :class:`~badc_mpi.errors.StateError`, never "nothing to skip".

Memory: :func:`load_state` reads only the ledgers' headers; :func:`decide` reads each ledger one
block (4 MiB; the next one is parsed ahead on a second thread) at a time into columns
(:class:`Layer`: the key, success or not, the first 8 bytes of the sha256, has-outputs, a run
code, the source path's hash, each distinct path hashed once) and matches the block against the chunks' sorted key hashes
(:class:`~badc_mpi.inputs.key_index.KeyIndex`, 8 bytes a chunk; candidates confirmed on the
strings). What it keeps is the latest record's flags, sha256 prefix, source path hash and run per
chunk (21 bytes);
the outcome is an array of positions, not a dict per chunk.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.coordinator.resume_sources import find_run_ledgers, read_summary_state
from badc_mpi.errors import StateError
from badc_mpi.inputs.chunk_table import BLOCK_ROWS, ChunkSet, digest_prefix, hex_digests
from badc_mpi.inputs.hashing import string_hashes
from badc_mpi.inputs.key_index import KeyIndex
from badc_mpi.logs import get_logger
from badc_mpi.records import Chunk
from badc_mpi.storage.ledger import HAS_OUTPUTS, LEDGER_SUFFIX, RUN, SHA256, SOURCE, STATUS, iter_ledger, ledger_head
from badc_mpi.storage.store import STORE, run_segments
from badc_mpi.storage.store_check import StoreCheck

log = get_logger(__name__)
DETECTIONS_SUFFIX = ".detections.jsonl"


@dataclass(frozen=True, eq=False)
class Layer:
    """Final records as columns (one ledger, or a summary's entries): later layers win."""

    keys: pa.Array  #: large_string ``recording_id/chunk_id``
    ok: np.ndarray  #: bool: the record is a success
    sha: np.ndarray  #: uint64: the first 8 bytes of the recorded sha256
    has_sha: np.ndarray  #: bool
    outputs: np.ndarray  #: bool: the success recorded outputs
    run: np.ndarray  #: int32 code in ResumeState.runs
    torn: np.ndarray  #: bool: a success whose store record is torn or missing (not ``ok``, not failed)
    src: np.ndarray  #: uint64: the hash of the recorded source path (``p``)
    has_src: np.ndarray  #: bool: the record names its source (older ledgers do not)


def _layer(keys: Any, status: Any, sha: Any, outputs: Any, runs: Any, codes: list[str | None], src: Any) -> Layer:
    digests, has = hex_digests(sha)
    src = src.combine_chunks() if isinstance(src, pa.ChunkedArray) else src
    run_values = pc.unique(runs).to_pylist()
    table = np.array([_code(codes, r) for r in run_values], dtype=np.int32)
    run_index = pc.index_in(runs, value_set=pa.array(run_values, pa.string())).to_numpy(zero_copy_only=False)
    return Layer(
        keys.cast(pa.large_string()),
        np.array(pc.fill_null(pc.equal(status, "success"), False).to_numpy(zero_copy_only=False)),  # writable
        digest_prefix(digests),
        has,
        pc.fill_null(outputs, False).to_numpy(zero_copy_only=False),
        table[run_index.astype(np.int64)] if len(table) else np.zeros(len(keys), np.int32),
        np.zeros(len(keys), dtype=bool),
        _repeated_hashes(src),
        src.is_valid().to_numpy(zero_copy_only=False),
    )


def _repeated_hashes(values: pa.Array) -> np.ndarray:
    """:func:`string_hashes` of a column whose values repeat (a recording's chunks share its source
    path): each distinct value hashed once. Nulls hash like empty strings, as there."""
    encoded = pc.dictionary_encode(values)
    if not isinstance(encoded, pa.DictionaryArray) or len(encoded.dictionary) * 2 > len(values):
        return string_hashes(values)
    hashes = string_hashes(encoded.dictionary)
    index = pc.fill_null(encoded.indices, len(hashes)).to_numpy(zero_copy_only=False)
    return np.append(hashes, string_hashes(pa.array([""]))).take(index)


def _verify_refs(layer: Layer, batch: Any, check: StoreCheck, codes: list[str | None]) -> None:
    """Successes of a store run whose ledger line names its record: kept only when the record is
    there and whole; the others become ``torn`` (their chunks run again)."""
    if "g" not in batch.schema.names:
        return
    has_ref = pc.is_valid(batch.column("g")).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(layer.ok & has_ref)
    if not len(rows):
        return
    columns = [pc.fill_null(batch.column(name), -1).to_numpy(zero_copy_only=False)[rows] for name in ("g", "x", "l", "k")]
    for code in np.unique(layer.run[rows]):
        run = codes[int(code)]
        mine = layer.run[rows] == code
        good = check.verify(run or "", *(c[mine] for c in columns)) if run else np.zeros(int(mine.sum()), bool)
        bad = rows[mine][~good]
        layer.ok[bad] = False
        layer.torn[bad] = True


def _code(codes: list[str | None], run: str | None) -> int:
    if run not in codes:
        codes.append(run)
    return codes.index(run)


@dataclass
class ResumeState:
    """Latest known outcome per chunk key (as columns), and where it came from."""

    records: dict[str, tuple[Any, ...]] = field(
        default_factory=dict
    )  #: key -> ledger.RECORD_FIELDS values (tests, old summaries)
    sources: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    fingerprints: dict[str, dict[str, Any] | None] = field(default_factory=dict)  #: run id -> its fingerprint
    layers: list[Layer | str] = field(default_factory=list)  #: in reading order (later wins), after ``records``;
    #: a ``str`` is a ledger, read block by block when the chunks are decided on
    runs: list[str | None] = field(default_factory=list)  #: the layers' run codes
    checks: dict[str, StoreCheck] = field(default_factory=dict)  #: a store-layout ledger -> its output folder's check

    def add_records(self, records: dict[str, tuple[Any, ...]]) -> None:
        """Entries of a summary (or a test) as a layer."""
        if records:
            values = list(records.values())
            self.layers.append(
                _layer(
                    pa.array(list(records), pa.string()),
                    pa.array([v[STATUS] for v in values], pa.string()),
                    pa.array([v[SHA256] for v in values], pa.string()),
                    pa.array([bool(v[HAS_OUTPUTS]) for v in values], pa.bool_()),
                    pa.array([v[RUN] for v in values], pa.string()),
                    self.runs,
                    pa.array([v[SOURCE] if len(v) > SOURCE else None for v in values], pa.string()),
                )
            )

    def blocks(self) -> Iterator[Layer]:
        """Every layer, a ledger block by block, in reading order (later records win)."""
        if self.records:  # set directly (tests): they come first
            records, self.records = self.records, {}
            later, self.layers = self.layers, []
            self.add_records(records)
            self.layers += later
        for layer in self.layers:
            if isinstance(layer, Layer):
                yield layer
                continue
            check = self.checks.get(layer)
            for batch in iter_ledger(layer):
                keys = pc.binary_join_element_wise(batch.column("r"), batch.column("c"), "/")
                status, sha, outputs, runs, src = (batch.column(name) for name in ("s", "h", "o", "run", "p"))
                built = _layer(keys, status, sha, outputs, runs, self.runs, src)
                if check is not None:
                    _verify_refs(built, batch, check, self.runs)
                yield built


@dataclass
class ResumeDecision:
    to_run: np.ndarray  #: indices (into the chunks decided on) to run, in their order
    carried_counts: dict[str, int]  #: skipped chunks per final status
    skipped: int
    orphans: int
    changed_hash: int
    missing_outputs: int
    changed_source: int = 0  #: recorded from another audio file than the manifest names now
    changed_settings: int = 0  #: done with another fingerprint, run again (--rerun-changed)
    mixed: int = 0  #: done with another fingerprint, kept (--accept-mixed)
    torn_records: int = 0  #: a success whose store record is torn or missing: run again

    def note(self) -> str:
        parts = [
            f"resume: {self.skipped} skipped (done earlier), {len(self.to_run)} to run"
            + (
                f", {self.orphans} chunk(s) that earlier runs did are no longer in the manifest (left as they are)"
                if self.orphans
                else ""
            )
        ]
        if self.changed_hash:
            parts.append(f"{self.changed_hash} rerun because their sha256 changed")
        if self.changed_source:
            parts.append(f"{self.changed_source} rerun because their records were made from another audio file")
        if self.missing_outputs:
            parts.append(f"{self.missing_outputs} rerun because their outputs are gone")
        if self.torn_records:
            parts.append(f"{self.torn_records} rerun because their detection-store record is torn or missing")
        if self.changed_settings:
            parts.append(f"{self.changed_settings} rerun because they were done with other settings")
        if self.mixed:
            parts.append(f"{self.mixed} kept although done with other settings (--accept-mixed)")
        return "; ".join(parts)


def _overlay_ledger(state: ResumeState, path: str) -> None:
    """Add a ledger (its records are read when the chunks are decided on)."""
    header, _, _, torn = ledger_head(path)
    if torn:
        log.warning("%s: the last line was cut short (a run killed mid-write); ignored", path)
        state.torn.append(path)
    state.layers.append(path)
    state.sources.append(path)
    if header.get("layout") == STORE and header.get("output_dir"):
        folder = str(header["output_dir"])
        state.checks[path] = next((c for c in state.checks.values() if c.output_dir == folder), None) or StoreCheck(folder)
    if header.get("run_id"):
        state.fingerprints[header["run_id"]] = header.get("fingerprint")


def load_state(*, summaries: Iterable[str], telemetry_dir: str | None, output_dir: str, discover: bool) -> ResumeState:
    state = ResumeState()
    for summary in summaries:
        records, ledger_path, head = read_summary_state(summary)
        for earlier in head.get("resume_ledgers") or []:  # what that run's own resume carried
            if earlier not in state.sources and os.path.exists(earlier):
                _overlay_ledger(state, earlier)
        state.add_records(records)
        state.sources.append(summary)
        if head.get("run_id"):
            state.fingerprints[head["run_id"]] = head.get("fingerprint")
        # chunks that run carried from earlier runs were checked against its own settings (unless it
        # was told --accept-mixed): its fingerprint vouches for them, until their own ledgers say more
        vouch = head.get("fingerprint") if not (head.get("options") or {}).get("accept_mixed") else None
        if vouch is not None:
            for rec in records.values():
                state.fingerprints.setdefault(rec[RUN], vouch)
        if ledger_path and os.path.exists(ledger_path) and ledger_path not in state.sources:
            _overlay_ledger(state, ledger_path)
    if discover and telemetry_dir and os.path.isdir(telemetry_dir):
        for ledger_path in find_run_ledgers(telemetry_dir, output_dir):
            if ledger_path not in state.sources:
                _overlay_ledger(state, ledger_path)
    return state


def fingerprint_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between two runs' fingerprints, one ``key: old -> new`` each (pure)."""
    if old is None:
        return ["fingerprint: none recorded (a run of an older badc-mpi) -> " + ", ".join(f"{k}={v}" for k, v in new.items())]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _with_detections(keys: pa.Array, output_dir: str) -> np.ndarray:
    """Which keys have ``<output_dir>/<recording>/<chunk>.detections.jsonl``: one listing per
    recording folder, matched in one hash lookup (no stat per chunk, no Python string per file)."""
    if not len(keys):
        return np.zeros(0, dtype=bool)
    recordings = pc.unique(pc.list_element(pc.split_pattern(keys, "/", max_splits=1), 0)).to_pylist()
    listings: list[list[str]] = []
    for recording in recordings:
        try:
            listings.append(os.listdir(os.path.join(output_dir, recording)))
        except OSError:
            listings.append([])
    names = pa.array(itertools.chain.from_iterable(listings), pa.large_string())
    folder_of = pa.array(recordings, pa.large_string()).take(
        pa.array(np.repeat(np.arange(len(recordings)), [len(names_) for names_ in listings]))
    )
    files = pc.ends_with(names, DETECTIONS_SUFFIX)
    chunk_ids = pc.utf8_slice_codeunits(names.filter(files), 0, -len(DETECTIONS_SUFFIX))
    present = pc.binary_join_element_wise(folder_of.filter(files), chunk_ids, pa.scalar("/", pa.large_string()))
    return pc.is_in(keys, value_set=present).to_numpy(zero_copy_only=False)


_SEEN, _OK, _HAS_SHA, _OUTPUTS, _TORN, _HAS_SRC = 1, 2, 4, 8, 16, 32  #: bits of _Latest.flags


@dataclass
class _Latest:
    """The latest record of each chunk, by the chunk's index: flags, sha256 prefix, source hash,
    run code."""

    flags: np.ndarray  #: uint8: _SEEN | _OK | _HAS_SHA | _OUTPUTS | _TORN | _HAS_SRC
    sha: np.ndarray  #: uint64
    src: np.ndarray  #: uint64: hash of the recorded source path
    run: np.ndarray  #: int32 code in ResumeState.runs
    orphans: int  #: distinct keys recorded that are no chunk's


def _latest_records(index: KeyIndex, state: ResumeState) -> _Latest:
    """Match the records block by block (a ledger is never in memory whole): later ones win."""
    n = len(index)
    latest = _Latest(np.zeros(n, np.uint8), np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.int32), 0)
    unknown: list[pa.Array] = []
    for layer in state.blocks():
        found, at = index.find(layer.keys)
        records = np.flatnonzero(found)
        if len(at):  # within a block too, the last record of a chunk wins
            at, last = np.unique(at[::-1], return_index=True)
            records = records[len(records) - 1 - last]
            bits = (
                _SEEN
                | _OK * layer.ok[records]
                | _HAS_SHA * layer.has_sha[records]
                | _OUTPUTS * layer.outputs[records]
                | _TORN * layer.torn[records]
                | _HAS_SRC * layer.has_src[records]
            )
            latest.flags[at] = bits
            latest.sha[at] = layer.sha[records]
            latest.src[at] = layer.src[records]
            latest.run[at] = layer.run[records]
        if len(records) < len(layer.keys):
            unknown.append(pc.unique(layer.keys.filter(pa.array(~found))))
    if unknown:
        latest.orphans = pc.count_distinct(pa.chunked_array(unknown)).as_py()
    return latest


def decide(
    chunks: Sequence[Chunk],
    state: ResumeState,
    *,
    output_dir: str,
    skip_failed: bool,
    verify_outputs: bool = True,
    fingerprint: dict[str, Any] | None = None,
    on_change: str = "refuse",
) -> ResumeDecision:
    """Split the chunks into to-run (indices) and skipped (carried: counted in the new summary).

    A chunk done by a run whose fingerprint differs from ``fingerprint``: ``on_change`` is
    ``refuse`` (StateError naming what differs), ``rerun`` or ``accept``."""
    index = KeyIndex(chunks)
    n = len(index)
    latest = _latest_records(index, state)
    orphans = latest.orphans
    rows = np.flatnonzero(latest.flags & _SEEN).astype(np.int32 if n < 2**31 else np.int64)
    flags, run_of = latest.flags[rows], latest.run[rows]
    record_ok, has_sha, outputs, torn, has_src = ((flags & bit) != 0 for bit in (_OK, _HAS_SHA, _OUTPUTS, _TORN, _HAS_SRC))
    del flags
    changed = np.zeros(len(rows), dtype=bool)  # a sha256 recorded and another in the manifest
    moved = np.zeros(len(rows), dtype=bool)  # made from another audio file (the sha256 does not vouch)
    for start in range(0, len(rows), BLOCK_ROWS):
        part = rows[start : start + BLOCK_ROWS]
        digests, has_digest = index.digests_at(part)
        same = has_sha[start : start + BLOCK_ROWS] & (latest.sha[part] == digests)
        changed[start : start + BLOCK_ROWS] = has_digest & ~same
        named = np.flatnonzero(has_src[start : start + BLOCK_ROWS] & ~has_digest)
        if len(named):
            moved[start + named] = latest.src[part[named]] != index.sources_at(part[named])
    del latest
    changed_source = moved & ~changed
    changed |= moved
    ok = record_ok & ~changed
    missing = np.zeros(len(rows), dtype=bool)
    if verify_outputs:
        # store runs: the store was synced before the ledger line (storage/store.py), so their
        # segments being there is enough; per-chunk runs: look for each chunk's file
        stored = np.array([bool(run and run_segments(output_dir, run)) for run in state.runs] or [False])
        check = np.flatnonzero(ok & outputs & ~stored[run_of])
        missing[check] = ~_with_detections(index.keys_at(rows[check]), output_dir)
    ok &= ~missing
    stale = np.zeros(len(rows), dtype=bool)
    stale_runs: dict[str | None, int] = {}
    differs: dict[str | None, list[str]] = {}
    if fingerprint is not None:
        differs = {run: fingerprint_changes(fp, fingerprint) for run, fp in state.fingerprints.items()}
        differs = {run: changes for run, changes in differs.items() if changes}
        unvouched = np.array([run in differs or run not in state.fingerprints for run in state.runs] or [False])
        stale = ok & unvouched[run_of] if len(state.runs) else stale
        counted = np.bincount(run_of[stale], minlength=len(state.runs)).tolist()
        stale_runs = {run: c for run, c in zip(state.runs, counted) if c}
    if stale_runs and on_change == "refuse":
        run, count = max(stale_runs.items(), key=lambda item: item[1])
        what = "; ".join(differs.get(run, ["no fingerprint found for that run"])[:4])
        raise StateError(
            f"--resume would keep {sum(stale_runs.values())} chunk(s) done with other settings "
            f"(run {run}, {count} chunk(s): {what})",
            fix="pass --rerun-changed to run them again with these settings, or --accept-mixed to keep them "
            "(the results then mix settings)",
        )
    keep_ok = ok & ~stale if on_change == "rerun" else ok
    keep_failed = ~record_ok & ~changed & ~torn if skip_failed else np.zeros(len(rows), dtype=bool)
    carried = np.zeros(n, dtype=bool)
    carried[rows] = keep_ok | keep_failed
    stale_count = int(stale.sum())
    return ResumeDecision(
        to_run=np.flatnonzero(~carried),
        carried_counts={k: v for k, v in (("success", int(keep_ok.sum())), ("failed", int(keep_failed.sum()))) if v},
        skipped=int(carried.sum()),
        orphans=orphans,
        changed_hash=int((changed & ~changed_source).sum()),
        changed_source=int(changed_source.sum()),
        missing_outputs=int(missing.sum()),
        changed_settings=stale_count if on_change == "rerun" else 0,
        mixed=stale_count if on_change != "rerun" else 0,
        torn_records=int(torn.sum()),
    )


def apply_resume(
    chunks: ChunkSet, loc: Any, options: Any, fingerprint: dict[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, int], str, list[str]]:
    """The planning hook: (global rows to run, skipped chunks per status, a one-line note, the
    ledgers read: the summary names them so that ``--resume-summary`` can read them again)."""
    state = load_state(
        summaries=options.resume_summaries,
        telemetry_dir=loc.telemetry_dir,
        output_dir=os.path.abspath(loc.output_dir),
        discover=options.resume,
    )
    if not state.sources:
        log.warning(
            "resume: no earlier run with output folder %s found in %s; running everything",
            loc.output_dir,
            loc.telemetry_dir,
        )
    on_change = "rerun" if options.rerun_changed else "accept" if options.accept_mixed else "refuse"
    decision = decide(
        chunks,
        state,
        output_dir=os.path.abspath(loc.output_dir),
        skip_failed=options.skip_failed,
        fingerprint=fingerprint,
        on_change=on_change,
    )
    note = decision.note()
    log.info("%s (state from %d file(s))", note, len(state.sources))
    ledgers = [s for s in state.sources if s.endswith(LEDGER_SUFFIX)]
    return chunks.global_rows(decision.to_run), decision.carried_counts, note, ledgers
