"""``badc-mpi aggregate``: one canonical Parquet dataset from one run, several, or a whole folder.

Writes ``detections.parquet``, ``chunks.parquet``, ``runs.parquet``, ``attempts.parquet`` and
``aggregate.json`` (counts, problems, inputs) into a folder, each file to a temporary name first
and renamed into place; ``aggregate.json`` last. Detections stream through bounded batches
(:mod:`badc_mpi.results.aggregate.sources`); the latest success per chunk counts, exactly once
(:mod:`badc_mpi.results.aggregate.verdicts`), made with one fingerprint, the newest run's
(:mod:`badc_mpi.results.aggregate.fingerprints`; ``accept_mixed`` keeps other ones). Every file skipped or read in part is listed with its path.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from badc_mpi.errors import BadcError, UsageError
from badc_mpi.inputs.manifest import load_manifest
from badc_mpi.logs import get_logger
from badc_mpi.records import Chunk
from badc_mpi.results.aggregate import fingerprints as F
from badc_mpi.results.aggregate import schema as S
from badc_mpi.results.aggregate.detection_id import with_detection_ids
from badc_mpi.results.aggregate.overlap import MergeReport, check_mode, chunks_overlap, merge_file
from badc_mpi.results.aggregate.readers import READERS
from badc_mpi.results.aggregate.run_table import attempt_table, final_attempts, run_rows
from badc_mpi.results.aggregate.runs import (
    Problem,
    RunFiles,
    RunSelection,
    distinct_files,
    find_runs,
)
from badc_mpi.results.aggregate.sources import DoneChunk
from badc_mpi.results.aggregate.times import add_absolute_times, missing_time_columns
from badc_mpi.results.aggregate.verdicts import FAILED_CSV, Settings, Verdict, decide
from badc_mpi.storage.atomic import atomic_write_text, ensure_dir, fsync_dir, temp_path_for
from badc_mpi.storage.jsonl import dumps
from badc_mpi.storage.outputs import DETECTIONS_SUFFIX
from badc_mpi.storage.store import PER_CHUNK

log = get_logger(__name__)

AGGREGATE_SCHEMA = "badc-mpi.aggregate/1"
TABLES = ("detections", "chunks", "runs", "attempts")
ROW_GROUP_ROWS = 1 << 20


@dataclass
class AggregateResult:
    folder: str
    counts: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    reused: bool = False

    def path(self, table: str) -> str:
        return os.path.join(self.folder, f"{table}.parquet")


class AtomicParquet:
    """A ParquetWriter on a temporary name, renamed onto ``path`` by :meth:`commit`."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path, self.tmp = path, temp_path_for(path)
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self.rows += table.num_rows

    def commit(self) -> None:
        self.writer.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(os.path.dirname(self.path))

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def write_table(path: str, table: pa.Table) -> None:
    out = AtomicParquet(path, table.schema)
    try:
        out.write(table)
        out.commit()
    except BaseException:
        out.abort()
        raise


def inputs_fingerprint(runs: Sequence[RunFiles], manifests: Sequence[str], options: dict[str, Any]) -> str:
    """What the aggregate was built from (paths, sizes, modification times): equal means reusable."""
    items: list[Any] = [options]
    for path in sorted({*manifests, *(p for r in runs for p in (r.ledger.path, r.telemetry, r.summary) if p)}):
        try:
            st = os.stat(path)
            items.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            items.append([path, None, None])
    return dumps(items)


def _manifest_chunks(paths: list[str], problems: list[Problem]) -> tuple[list[Chunk], list[str]]:
    chunks: list[Chunk] = []
    extras: list[str] = []
    for path in paths:
        try:
            manifest = load_manifest(path, check_sources=False)
        except (BadcError, OSError) as exc:
            problems.append(Problem(path, f"manifest unreadable ({exc}); only its chunks named in ledgers are listed"))
            continue
        chunks.extend(manifest.chunks)
        extras.extend(c for c in manifest.extra_columns if c not in extras)
    return chunks, extras


def _check_keys(batch: Any) -> tuple[set[int], set[int]]:
    """Positions (in ``batch.chunks``) of chunks whose records name another chunk, and of chunks
    whose records name another run than the ledger's success (a later run wrote the file, then
    was killed before its ledger recorded it)."""
    if not batch.table.num_rows:
        return set(), set()
    counts = np.asarray(batch.counts, dtype=np.int64)
    owner = pa.array(np.repeat(np.arange(len(counts)), counts))

    def differs(column: str, values: list[str]) -> set[int]:
        same = pc.equal(batch.table.column(column), pa.array(values).take(owner)).fill_null(False)
        return set(np.asarray(owner)[np.flatnonzero(~np.asarray(same))].tolist())

    wrong = differs("recording_id", [c.recording_id for c in batch.chunks])
    wrong |= differs("chunk_id", [c.chunk_id for c in batch.chunks])
    return wrong, differs("run_id", [c.run_id for c in batch.chunks]) - wrong


def _chunk_table(
    verdicts: list[Verdict],
    finals: dict[tuple[str, str], tuple[str | None, float | None]],
    meta: dict[str, tuple[str, dict[str, str]]],
    key_map: list[tuple[str, str]],
) -> pa.Table:
    """The ``chunks`` table, built column by column (a million chunks in about a second); the
    manifest's ``source_path`` and extra columns (``meta``: chunk key -> (source, column -> value))."""
    last = [finals.get((v.run_id, v.key), (None, None)) if v.run_id else (None, None) for v in verdicts]
    columns: dict[str, list[Any]] = {"worker": [w for w, _ in last], "runtime_s": [t for _, t in last]}
    for name in S.CHUNK_SCHEMA.names:
        if name not in columns:
            columns[name] = [getattr(v, name) for v in verdicts]
    columns["detections"] = [n if v.status == S.ANALYSED else None for v, n in zip(verdicts, columns["detections"])]
    found = [meta.get(v.key) for v in verdicts]
    columns["source_path"] = [f[0] if f else None for f in found]
    rows = [f[1] if f else {} for f in found]
    for name, key in key_map:
        columns[key] = [r.get(name) or None for r in rows]
    return pa.Table.from_pydict(columns, schema=S.chunk_schema([k for _, k in key_map]))


def _stream_detections(
    done: list[tuple[Verdict, DoneChunk]],
    out: AtomicParquet,
    schema: pa.Schema,
    problems: list[Problem],
    fingerprints: dict[str, str | None],
) -> None:
    verdicts = {d.key: v for v, d in done}
    for layout, reader in READERS.items():
        chunks = [d for _, d in done if d.layout == layout]
        if chunks:
            for batch in reader(chunks):
                _take_batch(batch, verdicts, out, schema, problems, fingerprints)


def _take_batch(
    batch: Any,
    verdicts: dict[str, Verdict],
    out: AtomicParquet,
    schema: pa.Schema,
    problems: list[Problem],
    fingerprints: dict[str, str | None],
) -> None:
    problems.extend(Problem(path, reason, kind) for path, reason, kind in batch.problems)
    for chunk, path, reason in batch.unreadable:
        problems.append(Problem(path, f"{chunk.key}: {reason}" if chunk.layout != PER_CHUNK else reason))
        verdicts[chunk.key].status, verdicts[chunk.key].note = S.NOT_ANALYSED, f"detections unreadable: {reason}"
    wrong, other_run = (set(), set()) if batch.keyed else _check_keys(batch)
    table, offset = batch.table, 0
    keep = np.ones(table.num_rows, dtype=bool)
    for i, (chunk, n) in enumerate(zip(batch.chunks, batch.counts)):
        if i in wrong:
            keep[offset : offset + n] = False
            problems.append(Problem(chunk.where, "records name another chunk: file not counted"))
            verdicts[chunk.key].status, verdicts[chunk.key].note = S.NOT_ANALYSED, "detections name another chunk"
        else:
            verdicts[chunk.key].detections = n
            if i in other_run:
                verdicts[chunk.key].note = (
                    f"detections file rewritten by a later run than {chunk.run_id} (killed before its ledger "
                    "recorded it); its detections are counted, once"
                )
        offset += n
    if wrong:
        table = table.filter(pa.array(keep))
    out.write(with_detection_ids(F.with_fingerprints(add_absolute_times(S.normalise_detections(table, schema)), fingerprints)))


def _orphan_outputs(verdicts: list[Verdict], done: set[str], output_dirs: set[str], problems: list[Problem]) -> int:
    """Detection files on disk whose chunk no ledger calls done (``done``: keys): listed, not counted."""
    recordings = {v.recording_id for v in verdicts}
    found = 0
    for folder in sorted(output_dirs):
        for rec in sorted(recordings):
            try:
                names = os.listdir(os.path.join(folder, rec))
            except OSError:
                continue
            for name in sorted(names):
                final = name.endswith(DETECTIONS_SUFFIX) and not name.startswith(".")
                if final and f"{rec}/{name[: -len(DETECTIONS_SUFFIX)]}" not in done:
                    found += 1
                    problems.append(
                        Problem(
                            os.path.join(folder, rec, name),
                            "detections file without a success in any ledger read (a run killed after writing it, "
                            "or a run not aggregated): not counted",
                            "orphan_output",
                        )
                    )
    return found


def aggregate(
    sources: Sequence[str],
    dest: str,
    *,
    telemetry_dir: str | None = None,
    output_dir: str | None = None,
    reader: str = "auto",
    reuse: bool = False,
    selection: RunSelection | None = None,
    merge_overlaps: str = "auto",
    accept_mixed: bool = False,
) -> AggregateResult:
    """Aggregate the runs ``sources`` name into the folder ``dest`` (see the module doc);
    ``merge_overlaps`` (auto|on|off): the overlap merge (:mod:`badc_mpi.results.aggregate.overlap`);
    ``accept_mixed``: count chunks done only with another fingerprint than the newest run's."""
    check_mode(merge_overlaps)
    if reader != "auto" and reader not in READERS:
        raise UsageError(f"unknown detection source {reader!r}", fix=f"use one of: auto, {', '.join(READERS)}")
    t0 = time.monotonic()
    sel = selection or find_runs(sources, telemetry_dir=telemetry_dir)
    problems = list(sel.problems)
    # runs found by chunk keys (a retry through X.failed.csv) lend records, not their manifests
    named = {*(sel.manifest_filter or []), *(m for r in sel.runs if not r.matched_by_keys for m in r.manifests)}
    manifests = sorted(distinct_files(named), key=lambda m: (m.endswith(FAILED_CSV), m))  # a retry's X.failed.csv after X
    options = {"output_dir": output_dir, "reader": reader, "merge_overlaps": merge_overlaps, "accept_mixed": accept_mixed}
    fingerprint = inputs_fingerprint(sel.runs, manifests, options)
    meta_path = os.path.join(dest, "aggregate.json")
    if reuse and os.path.exists(meta_path) and all(os.path.exists(os.path.join(dest, f"{t}.parquet")) for t in TABLES):
        with open(meta_path, encoding="utf-8") as fh:
            old = json.load(fh)
        if old.get("inputs") == fingerprint:
            return AggregateResult(dest, old["counts"], [Problem(**p) for p in old["problems"]], reused=True)
    ensure_dir(dest)
    chunks, extras = _manifest_chunks(manifests, problems)
    ids = [F.fingerprint_id(r.fingerprint) for r in sel.runs]
    choice = F.choose([(r.run_id, r.fingerprint) for r in sel.runs], accept_mixed=accept_mixed)
    verdicts, duplicates = decide(chunks, _ledgers(sel.runs, chunks), Settings(ids, choice.id, accept_mixed))
    for key in duplicates:
        problems.append(Problem(key, "chunk listed in more than one manifest: counted once", "note"))
    outs = [output_dir or r.output_dir for r in sel.runs]
    layouts = [reader if reader != "auto" else str(r.ledger.header.get("layout") or PER_CHUNK) for r in sel.runs]
    done = [
        (v, DoneChunk(v.recording_id, v.chunk_id, v.run_id or "", outs[v.run_index], layouts[v.run_index], v.ref))
        for v in verdicts
        if v.status == S.ANALYSED and v.run_index is not None
    ]
    key_map = S.extra_key_map(extras)
    det_schema = S.detection_schema([k for _, k in key_map])
    det_out = AtomicParquet(os.path.join(dest, "detections.parquet"), det_schema)
    try:
        _stream_detections(done, det_out, det_schema, problems, {r.run_id: i for r, i in zip(sel.runs, ids)})
        det_out.commit()
    except BaseException:
        det_out.abort()
        raise
    per_chunk_outs = {o for o, layout in zip(outs, layouts) if layout == PER_CHUNK}
    orphans = _orphan_outputs(verdicts, {d.key for _, d in done}, per_chunk_outs, problems)
    attempts = attempt_table(sel.runs, problems)
    finals = final_attempts(attempts)
    chunk_table = _chunk_table(verdicts, finals, {c.key: (c.source_path, dict(c.extra)) for c in chunks}, key_map)
    merge = _merge(det_out.path, det_schema, merge_overlaps, chunks_overlap(chunk_table))
    write_table(os.path.join(dest, "chunks.parquet"), chunk_table)
    write_table(os.path.join(dest, "runs.parquet"), S.rows_table(run_rows(sel.runs, verdicts, attempts, problems), S.RUN_SCHEMA))
    write_table(os.path.join(dest, "attempts.parquet"), attempts)
    states = Counter(v.status for v in verdicts)
    counts = {
        "runs": len(sel.runs),
        "chunks": len(verdicts),
        **{s: states.get(s, 0) for s in S.CHUNK_STATES},
        "detections": merge.detections_after,
        "mixed": sum(1 for v in verdicts if v.mixed and v.status == S.ANALYSED),
        "orphan_outputs": orphans,
        "problems": len(problems),
    }
    doc = {
        "schema": AGGREGATE_SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - t0, 3),
        "sources": [os.path.abspath(s) for s in sources],
        "dataset_root": sel.dataset_root,
        "manifests": manifests,
        "extra_columns": dict(key_map),
        "counts": counts,
        "overlap_merge": merge.as_dict(),
        "fingerprint": choice.as_dict(stale=counts[S.STALE], mixed=counts["mixed"]),
        "absolute_times": _time_note([k for _, k in key_map]),
        "problems": [p.__dict__ for p in problems],
        "inputs": fingerprint,
    }
    atomic_write_text(meta_path, json.dumps(doc, indent=1) + "\n")
    log.debug("aggregate: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return AggregateResult(dest, counts, problems)


def _ledgers(runs: Sequence[RunFiles], chunks: list[Chunk]) -> list[tuple[str, dict[str, tuple[Any, ...]]]]:
    """(run id, records) per run; a run found by chunk keys only lends its records of these chunks."""
    keys = {c.key for c in chunks} if any(r.matched_by_keys for r in runs) else set()
    return [
        (r.run_id, {k: v for k, v in r.ledger.records.items() if k in keys} if r.matched_by_keys else r.ledger.records)
        for r in runs
    ]


def _merge(path: str, schema: pa.Schema, mode: str, overlapping: bool) -> MergeReport:
    out = AtomicParquet(path, schema)
    try:
        report = merge_file(path, out, schema, mode=mode, chunks_overlapping=overlapping)
        if report.applied:
            out.commit()
        else:
            out.abort()
    except BaseException:
        out.abort()
        raise
    return report


def _time_note(columns: list[str]) -> str:
    missing = missing_time_columns(columns)
    if len(missing) == 2:
        return (
            "none: the manifests have no recording_start_utc or recording_start_local column; detection_start_utc/local are null"
        )
    return "from " + " and ".join(c for c in ("recording_start_utc", "recording_start_local") if c not in missing)


#: problem kinds said in plain words on a terminal (aggregate.json keeps the kind)
PLAIN_KINDS = {"orphan_output": "output no finished chunk claims"}


def iter_problem_lines(problems: Sequence[Problem], limit: int = 20) -> Iterator[str]:
    """Problems for a terminal: the first ``limit``, then how many more."""
    for p in problems[:limit]:
        yield f"  {PLAIN_KINDS.get(p.kind, p.kind)}: {p.path}: {p.reason}"
    if len(problems) > limit:
        yield f"  ... and {len(problems) - limit} more (aggregate.json lists every one)"
