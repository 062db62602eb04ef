"""The overlap merge: one detection where overlapping chunks saw the same seconds twice.

Rule (docs/results.md, "Overlap merge"): within one recording and one label, detections whose
recording-relative spans ``[start_ms, end_ms]`` overlap or touch form a group (sorted by start,
a row joins the group while its start is at or before the latest end so far). A group whose
rows come from **two or more chunks** becomes one row: the union span (``min(start_ms)``,
``max(end_ms)``), the highest confidence, ``merged_count`` = the detections it stands for, and
every other field (chunk, run, provenance) from the group's earliest row (ties: higher
confidence). Groups from one chunk are left as they are, so chunks that do not overlap change
nothing. ``auto`` (the default) merges only when some chunks of a recording overlap.

Streaming: DuckDB sorts per recording and label (spilling to $TMPDIR past 512 MB) and returns only
the rows of merged groups; the Parquet file is then rewritten batch by batch with numpy masks.
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

#: rows of groups spanning two or more chunks: file row, whether it is the row kept, the union
#: span, the best confidence and how many detections the group stands for (constant SQL; the
#: Parquet path is the one parameter)
GROUPS_SQL = """
WITH d AS (
  SELECT file_row_number AS rid, recording_id, label, chunk_id, start_ms, end_ms, confidence, merged_count
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
  SELECT rid, min(chunk_id) OVER p AS c_lo, max(chunk_id) OVER p AS c_hi,
         min(start_ms) OVER p AS lo, max(end_ms) OVER p AS hi, max(confidence) OVER p AS best,
         sum(merged_count) OVER p AS n,
         row_number() OVER (PARTITION BY recording_id, label, grp ORDER BY start_ms, confidence DESC, chunk_id, rid) AS pos
  FROM g
  WINDOW p AS (PARTITION BY recording_id, label, grp)
)
SELECT rid, pos = 1 AS keep, lo, hi, best, n FROM m WHERE c_lo <> c_hi ORDER BY rid
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


def _groups(path: str) -> pa.Table:
    import tempfile

    import duckdb

    with tempfile.TemporaryDirectory(prefix="badc-mpi-merge-") as spill:
        con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill})
        try:
            return con.sql(GROUPS_SQL, params=[path]).to_arrow_table()
        finally:
            con.close()


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
    table = _groups(path)
    groups = {
        "rid": table.column("rid").to_numpy().astype(np.int64),
        "keep": table.column("keep").to_numpy(zero_copy_only=False).astype(bool),
        "lo": table.column("lo").to_numpy().astype(np.int64),
        "hi": table.column("hi").to_numpy().astype(np.int64),
        "best": table.column("best").to_numpy().astype(np.float64),
        "n": table.column("n").to_numpy().astype(np.int64),
    }
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
