"""The exports' reading side: the ``chunks`` and ``detections`` tables streamed recording by
recording, never whole (campaign scale: tens of millions of detections).

DuckDB sorts each table by recording (spilling to a temporary folder past ``memory_limit``) and
hands back Arrow record batches; the two sorted streams (each on its own cursor) are merged by
recording id into :class:`Group`s: one recording's chunk rows and its detections, as dicts. The
queries are built with the relation API (column names and expressions are constants; the
confidence threshold and the paths are values, never SQL text).

``only_fingerprint``: an aggregate built with ``--accept-mixed`` exported without it: detections of
other fingerprints are left out and their chunks read as ``stale`` (never counted as analysed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.results.aggregate.schema import ANALYSED, STALE

#: ``only_fingerprint``'s default: every fingerprint
ANY_FINGERPRINT = object()

BATCH_ROWS = 65_536
MEMORY_LIMIT = "512MB"  #: DuckDB's cap for the sorts (beyond it they spill to the temporary folder)

#: the detection columns the exports read
DETECTION_COLUMNS = "recording_id, chunk_id, label, label_code, label_name, confidence, start_ms, end_ms, hawkears_version"
DETECTION_ORDER = "recording_id, start_ms, end_ms, label"
CHUNK_ORDER = "recording_id, start_ms, chunk_id"


@dataclass
class Group:
    """One recording: its rows of the ``chunks`` table (by start) and its detections (by start)."""

    recording_id: str
    chunks: list[dict[str, Any]]
    detections: list[dict[str, Any]] = field(default_factory=list)


def connect(temp_dir: str | None = None, memory_limit: str = MEMORY_LIMIT) -> Any:
    """An in-memory DuckDB whose sorts spill to ``temp_dir``."""
    import duckdb

    config: dict[str, str | bool | int | float | list[str]] = {"memory_limit": memory_limit}
    if temp_dir:
        config["temp_directory"] = temp_dir
    return duckdb.connect(config=config)


def detections_relation(
    rel: Any,
    min_confidence: float,
    species: Sequence[str] | None = None,
    only_fingerprint: Any = ANY_FINGERPRINT,
    thresholds: Any = None,
) -> Any:
    """``rel`` (the ``detections`` table) filtered by confidence (compared as FLOAT, the column's
    type: a score equal to the threshold passes), optionally species codes and one fingerprint
    id (None: rows without one), sorted by recording. ``thresholds``: a relation of
    (:data:`THRESHOLD_SPECIES`, :data:`THRESHOLD_VALUE`) on ``rel``'s cursor (:func:`thresholds_relation`):
    a species it names is held to its own threshold instead of ``min_confidence``."""
    import duckdb

    threshold = duckdb.ConstantExpression(float(min_confidence))
    if thresholds is not None:
        rel = rel.join(thresholds, THRESHOLD_JOIN, how="left")
        threshold = duckdb.CoalesceOperator(duckdb.ColumnExpression(THRESHOLD_VALUE), threshold)
    rel = rel.filter(duckdb.ColumnExpression("confidence") >= threshold.cast(duckdb.sqltypes.FLOAT))
    if only_fingerprint is not ANY_FINGERPRINT:
        column = duckdb.ColumnExpression("fingerprint")
        rel = rel.filter(column.isnull() if only_fingerprint is None else column == duckdb.ConstantExpression(only_fingerprint))
    if species is not None:
        code = duckdb.CoalesceOperator(duckdb.ColumnExpression("label_code"), duckdb.ColumnExpression("label"))
        rel = rel.filter(
            code.isin(*(duckdb.ConstantExpression(s) for s in species)) if species else duckdb.ConstantExpression(False)
        )
    return rel.project(DETECTION_COLUMNS).order(DETECTION_ORDER)


#: the columns of a thresholds relation (named apart from every detections column)
THRESHOLD_SPECIES, THRESHOLD_VALUE = "threshold_species_code", "threshold_value"
THRESHOLD_JOIN = "coalesce(label_code, label) = threshold_species_code"


def thresholds_relation(cursor: Any, by_species: dict[str, float] | None) -> Any:
    """Per-species thresholds as a relation on ``cursor`` (None when there are none)."""
    if not by_species:
        return None
    import pyarrow as pa

    table = pa.table({THRESHOLD_SPECIES: list(by_species), THRESHOLD_VALUE: pa.array(list(by_species.values()), pa.float64())})
    return cursor.from_arrow(table)


def chunks_relation(rel: Any) -> Any:
    return rel.order(CHUNK_ORDER)


def _runs(rel: Any, batch_rows: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(recording id, rows) for each run of one recording in a relation sorted by recording."""
    current: str | None = None
    rows: list[dict[str, Any]] = []
    for batch in rel.to_arrow_reader(batch_rows):
        ids = batch.column("recording_id").to_pylist()
        starts = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(ids)
            part = batch.slice(start, end - start).to_pylist()
            if ids[start] != current:
                if current is not None:
                    yield current, rows
                current, rows = ids[start], part
            else:
                rows.extend(part)
    if current is not None:
        yield current, rows


def _only(rows: list[dict[str, Any]], fingerprint: Any) -> list[dict[str, Any]]:
    """Chunk rows analysed with another fingerprint than ``fingerprint`` read as ``stale``."""
    if fingerprint is ANY_FINGERPRINT:
        return rows
    for row in rows:
        if row["status"] == ANALYSED and row.get("fingerprint") != fingerprint:
            row["status"] = STALE
    return rows


def recording_groups(
    chunks: Any, detections: Any | None, *, batch_rows: int = BATCH_ROWS, only_fingerprint: Any = ANY_FINGERPRINT
) -> Iterator[Group]:
    """Merge the sorted relations (from :func:`chunks_relation`, :func:`detections_relation`;
    each on its own cursor) into one :class:`Group` per recording of the chunks table, in
    recording order. Detections of a recording without chunk rows (none in an aggregate) are
    skipped."""
    dets = _runs(detections, batch_rows) if detections is not None else iter(())
    pending = next(dets, None)
    for rid, rows in _runs(chunks, batch_rows):
        while pending is not None and pending[0] < rid:
            pending = next(dets, None)
        group = Group(rid, _only(rows, only_fingerprint))
        if pending is not None and pending[0] == rid:
            group.detections = pending[1]
            pending = next(dets, None)
        yield group


def parquet_groups(
    con: Any,
    chunks_path: str,
    detections_path: str | None,
    *,
    min_confidence: float = 0.0,
    species: Sequence[str] | None = None,
    batch_rows: int | None = None,
    only_fingerprint: Any = ANY_FINGERPRINT,
    thresholds: dict[str, float] | None = None,
) -> Iterator[Group]:
    """:func:`recording_groups` over an aggregate's Parquet files (``detections_path`` None:
    chunks only; ``species``: only these codes' detections; ``only_fingerprint``: see the module doc;
    ``thresholds``: per-species thresholds, ``min_confidence`` for the others)."""
    chunks = chunks_relation(con.cursor().read_parquet(chunks_path))
    dets = None
    if detections_path is not None:
        cur = con.cursor()
        dets = detections_relation(
            cur.read_parquet(detections_path), min_confidence, species, only_fingerprint, thresholds_relation(cur, thresholds)
        )
    return recording_groups(chunks, dets, batch_rows=batch_rows or BATCH_ROWS, only_fingerprint=only_fingerprint)
