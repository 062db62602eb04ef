"""The overlap merge: one detection where overlapping chunks scored the same seconds twice.

Rule (docs/results.md, "Overlap merge"): within one recording and one label, detections whose
recording-relative spans ``[start_ms, end_ms]`` overlap or touch form an island (sorted by start, a
row joins while its start is at or before the latest end so far). Only islands holding rows of
**two or more chunks** are looked at. Inside one, rows are taken by start (ties: higher
confidence) and *events* grow greedily: a row joins the current event when it overlaps or touches
it, comes from a chunk none of the event's rows came from, and its chunk shares time with every
chunk of the event (one window scored by each of them); otherwise it starts the next event. An
event of two or more rows becomes one row: the union span, the highest confidence,
``merged_count`` = the detections it stands for, every other field from its first row.

The bound: an event's chunks all share one stretch of the recording and it never reaches past
their rows; with chunks of length L overlapping by O < L/2 an event holds rows of at most two
chunks, so it is at most ``2 L - O`` long. A species heard without a break across many chunks
stays one row per pair of chunks, never one row for the whole recording (continuous presence is
never chained). A chunk whose span is unknown counts as the row's own span. ``auto`` (the
default) merges only when some chunks of a recording overlap.

Streaming: DuckDB sorts per recording and label (spilling to $TMPDIR past 512 MB) and returns only
the rows of islands spanning two or more chunks, in island order; the events are planned over
those rows (:func:`plan_events`, pure) and the Parquet file is rewritten batch by batch with
numpy masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from badc_mpi.errors import UsageError
from badc_mpi.results.aggregate.detection_id import with_detection_ids
from badc_mpi.results.aggregate.times import add_absolute_times

MODES = ("auto", "on", "off")
BATCH_ROWS = 1 << 20
MEMORY_LIMIT = "512MB"  #: DuckDB's cap for the window query (beyond it, it spills under $TMPDIR)

#: rows of islands spanning two or more chunks, in island order (constant SQL; the Parquet path is
#: the one parameter): file row, whether it opens its island, the chunk id's hash, span, the chunk's span (the
#: row's own when unknown), confidence and count
ISLANDS_SQL = """
WITH d AS (
  SELECT file_row_number AS rid, recording_id, label, chunk_id, start_ms, end_ms, confidence, merged_count,
         chunk_start_ms, chunk_end_ms
  FROM read_parquet(?, file_row_number = true)
), o AS (
  SELECT *, max(end_ms) OVER (PARTITION BY recording_id, label ORDER BY start_ms, end_ms, rid
                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
  FROM d
), g AS (
  SELECT *, sum(CASE WHEN prev_end IS NULL OR start_ms > prev_end THEN 1 ELSE 0 END)
              OVER (PARTITION BY recording_id, label ORDER BY start_ms, end_ms, rid ROWS UNBOUNDED PRECEDING) AS grp
  FROM o
), m AS (
  SELECT *, min(chunk_id) OVER p AS c_lo, max(chunk_id) OVER p AS c_hi,
         row_number() OVER (PARTITION BY recording_id, label, grp
                            ORDER BY start_ms, confidence DESC, end_ms, chunk_id, rid) AS k
  FROM g
  WINDOW p AS (PARTITION BY recording_id, label, grp)
)
SELECT rid, k = 1 AS first, hash(chunk_id) AS chunk, start_ms, end_ms, coalesce(chunk_start_ms, start_ms) AS w_lo,
       coalesce(chunk_end_ms, end_ms) AS w_hi, confidence, merged_count
FROM m WHERE c_lo <> c_hi ORDER BY recording_id, label, grp, k
"""


@dataclass
class MergeReport:
    """What ``aggregate.json`` says under ``overlap_merge``."""

    mode: str
    chunks_overlap: bool
    applied: bool
    detections_before: int
    detections_after: int
    merged_groups: int = 0  #: rows that now stand for two or more detections

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"--merge-overlaps {mode!r} is not a mode", fix=f"use one of: {', '.join(MODES)}")
    return mode


def chunks_overlap(chunks: pa.Table) -> bool:
    """Whether two chunks of one recording share time (``recording_id, start_ms, end_ms``; pure)."""
    known = chunks.filter(pc.and_(pc.is_valid(chunks.column("start_ms")), pc.is_valid(chunks.column("end_ms"))))
    if known.num_rows < 2:
        return False
    known = known.take(pc.sort_indices(known, [("recording_id", "ascending"), ("start_ms", "ascending")]))
    rec = pc.dictionary_encode(known.column("recording_id")).combine_chunks().indices.to_numpy(zero_copy_only=False)
    start = known.column("start_ms").to_numpy()
    end = known.column("end_ms").to_numpy()
    same = rec[1:] == rec[:-1]
    return bool(np.any(same & (start[1:] < end[:-1])))


def _islands(path: str) -> pa.Table:
    import tempfile

    import duckdb

    with tempfile.TemporaryDirectory(prefix="badc-mpi-merge-") as spill:
        con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill})
        try:
            return con.sql(ISLANDS_SQL, params=[path]).to_arrow_table()
        finally:
            con.close()


def plan_events(
    first: np.ndarray,
    chunk: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    w_lo: np.ndarray,
    w_hi: np.ndarray,
    confidence: np.ndarray,
    count: np.ndarray,
) -> dict[str, np.ndarray]:
    """The events of island-ordered rows (see the module doc; pure). ``first``: the row opens
    its island; ``chunk``: an integer per chunk; ``w_lo``/``w_hi``: the row's chunk span. Returns,
    for the rows of events of two or more rows only: ``row`` (index into the inputs), ``keep``
    (the event's first row), ``lo``/``hi`` (union span), ``best`` (confidence), ``n`` (count)."""
    n_rows = len(first)
    event = np.empty(n_rows, dtype=np.int64)
    fl, ch, st, en, lo_w, hi_w = (a.tolist() for a in (first, chunk, start, end, w_lo, w_hi))
    current = -1
    ev_end = ev_lo = ev_hi = 0
    ev_chunks: set[int] = set()
    for i in range(n_rows):
        c = ch[i]
        joins = (
            current >= 0 and not fl[i] and st[i] <= ev_end and c not in ev_chunks and max(ev_lo, lo_w[i]) < min(ev_hi, hi_w[i])
        )
        if joins:
            ev_chunks.add(c)
            ev_end, ev_lo, ev_hi = max(ev_end, en[i]), max(ev_lo, lo_w[i]), min(ev_hi, hi_w[i])
        else:
            current += 1
            ev_chunks = {c}
            ev_end, ev_lo, ev_hi = en[i], lo_w[i], hi_w[i]
        event[i] = current
    sizes = np.bincount(event, minlength=current + 1) if n_rows else np.zeros(0, dtype=np.int64)
    rows = np.flatnonzero(sizes[event] > 1) if n_rows else np.zeros(0, dtype=np.int64)
    ev = event[rows]
    n_events = current + 1
    lo = np.full(n_events, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n_events, np.iinfo(np.int64).min, dtype=np.int64)
    best = np.full(n_events, -np.inf)
    total = np.zeros(n_events, dtype=np.int64)
    np.minimum.at(lo, ev, start[rows].astype(np.int64))
    np.maximum.at(hi, ev, end[rows].astype(np.int64))
    np.maximum.at(best, ev, confidence[rows].astype(np.float64))
    np.add.at(total, ev, count[rows].astype(np.int64))
    keep = np.ones(len(rows), dtype=bool)
    if len(rows):
        keep[1:] = ev[1:] != ev[:-1]  # an event's rows are consecutive; its first is kept
    return {"row": rows, "keep": keep, "lo": lo[ev], "hi": hi[ev], "best": best[ev], "n": total[ev]}


def apply_groups(batch: pa.Table, offset: int, groups: dict[str, np.ndarray]) -> pa.Table:
    """One batch of the detections (file rows ``offset...``) with the merge applied (pure)."""
    rid = groups["rid"]
    lo_i, hi_i = np.searchsorted(rid, [offset, offset + batch.num_rows])
    if lo_i == hi_i:
        return batch
    local = rid[lo_i:hi_i] - offset
    keep_flags = groups["keep"][lo_i:hi_i]
    drop = np.zeros(batch.num_rows, dtype=bool)
    drop[local[~keep_flags]] = True
    kept_rows = local[keep_flags]
    columns = {name: batch.column(name).to_numpy() for name in ("start_ms", "end_ms", "confidence", "merged_count")}
    columns = {k: v.copy() for k, v in columns.items()}
    sel = slice(lo_i, hi_i)
    columns["start_ms"][kept_rows] = groups["lo"][sel][keep_flags]
    columns["end_ms"][kept_rows] = groups["hi"][sel][keep_flags]
    columns["confidence"][kept_rows] = groups["best"][sel][keep_flags]
    columns["merged_count"][kept_rows] = groups["n"][sel][keep_flags]
    chunk_start = batch.column("chunk_start_ms").to_numpy(zero_copy_only=False)
    for name, source in (("start_ms", "start_ms"), ("end_ms", "end_ms")):
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(columns[source], pa.int64()))
    for name in ("confidence", "merged_count"):
        field = batch.schema.field(name)
        batch = batch.set_column(batch.schema.get_field_index(name), field, pa.array(columns[name]).cast(field.type))
    with np.errstate(invalid="ignore"):
        has_start = ~np.isnan(chunk_start.astype(np.float64))
    base = np.where(has_start, np.nan_to_num(chunk_start.astype(np.float64)), 0.0).astype(np.int64)
    for name, source in (("chunk_offset_start_ms", "start_ms"), ("chunk_offset_end_ms", "end_ms")):
        old = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        new = old.copy()
        new[kept_rows] = columns[source][kept_rows] - base[kept_rows]
        mask = np.isnan(new)
        batch = batch.set_column(
            batch.schema.get_field_index(name), name, pa.array(np.nan_to_num(new).astype(np.int64), mask=mask)
        )
    batch = with_detection_ids(add_absolute_times(batch))
    return batch.filter(pa.array(~drop))


def merge_file(path: str, writer: Any, schema: pa.Schema, *, mode: str, chunks_overlapping: bool) -> MergeReport:
    """Rewrite the detections Parquet ``path`` through ``writer`` (an ``AtomicParquet`` on the
    same path; the caller commits) with the merge applied. Returns the report; with nothing to
    merge the writer is left unused and the caller aborts it."""
    before = pq.ParquetFile(path).metadata.num_rows
    applied = mode == "on" or (mode == "auto" and chunks_overlapping)
    if not applied or before == 0:
        return MergeReport(mode, chunks_overlapping, False, before, before)
    table = _islands(path)
    ints = {n: table.column(n).to_numpy(zero_copy_only=False).astype(np.int64) for n in ("start_ms", "end_ms", "w_lo", "w_hi")}
    events = plan_events(
        table.column("first").to_numpy(zero_copy_only=False).astype(bool),
        table.column("chunk").to_numpy(zero_copy_only=False).view(np.int64),  # a chunk id's hash: equal ids, equal numbers
        ints["start_ms"],
        ints["end_ms"],
        ints["w_lo"],
        ints["w_hi"],
        table.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64),
        table.column("merged_count").to_numpy(zero_copy_only=False).astype(np.int64),
    )
    rid = table.column("rid").to_numpy(zero_copy_only=False).astype(np.int64)[events["row"]]
    order = np.argsort(rid, kind="stable")
    groups = {"rid": rid[order], **{k: v[order] for k, v in events.items() if k != "row"}}
    merged = int(groups["keep"].sum())
    after = before - (len(groups["rid"]) - merged)
    if not len(groups["rid"]):
        return MergeReport(mode, chunks_overlapping, False, before, before)
    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        part = pa.Table.from_batches([batch])
        writer.write(apply_groups(part, offset, groups).cast(schema))
        offset += part.num_rows
    return MergeReport(mode, chunks_overlapping, True, before, after, merged)
