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

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.results.aggregate.schema import ANALYSED, STALE

#: ``only_fingerprint``'s default: every fingerprint
ANY_FINGERPRINT = object()

BATCH_ROWS = 65_536
MEMORY_LIMIT = "256MB"  #: DuckDB's cap for the sorts (beyond it they spill to the temporary folder; at 10M detections 256 MB is as fast as 512 MB: docs/benchmarks.md)

#: the detection columns the exports read
DETECTION_COLUMNS = "recording_id, chunk_id, label, label_code, label_name, confidence, start_ms, end_ms, hawkears_version"
#: ties broken to the last column the files show (a sort that spills is not stable: the same export,
#: byte for byte, whatever the memory cap)
DETECTION_ORDER = "recording_id, start_ms, end_ms, label, confidence DESC, chunk_id"
#: the detections' times and scores as the export files write them, formatted by DuckDB after the
#: sort (its ``printf`` rounds as Python's ``format`` does: the same text, byte for byte)
DETECTION_TEXT = (
    "printf('%.3f', start_ms / 1000.0) AS begin_s3, printf('%.3f', end_ms / 1000.0) AS end_s3, "
    "printf('%.3f', confidence::DOUBLE) AS score3, printf('%.2f', confidence::DOUBLE) AS score2"
)
CHUNK_ORDER = "recording_id, start_ms, chunk_id"


class Detections:
    """One recording's detections as columns (name -> list, all of one length, by start);
    iterating gives one dict per detection (for small consumers; the exports read columns)."""

    __slots__ = ("columns",)

    def __init__(self, columns: dict[str, list[Any]] | None = None) -> None:
        self.columns: dict[str, list[Any]] = columns or {}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), ()))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.columns)
        return (dict(zip(names, values)) for values in zip(*self.columns.values()))

    def column(self, name: str) -> list[Any]:
        """One column (a list of Nones when the relation had no such column)."""
        found = self.columns.get(name)
        return found if found is not None else [None] * len(self)

    def codes(self) -> list[str | None]:
        """Each detection's species code, else its label."""
        return [c or lab for c, lab in zip(self.column("label_code"), self.column("label"))]

    @classmethod
    def of(cls, detections: Iterable[dict[str, Any]]) -> Detections:
        """Dicts (tests, small inputs) as columns; a :class:`Detections` as it is."""
        if isinstance(detections, Detections):
            return detections
        rows = list(detections)
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(row))
        return cls({n: [row.get(n) for row in rows] for n in names})


@dataclass
class Group:
    """One recording: its rows of the ``chunks`` table (by start) and its detections (by start)."""

    recording_id: str
    chunks: list[dict[str, Any]]
    detections: Detections = field(default_factory=Detections)


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
    text: bool = False,
) -> Any:
    """``rel`` (the ``detections`` table) filtered by confidence (compared as FLOAT, the column's
    type: a score equal to the threshold passes), optionally species codes and one fingerprint
    id (None: rows without one), sorted by recording. ``thresholds``: a relation of
    (:data:`THRESHOLD_SPECIES`, :data:`THRESHOLD_VALUE`) on ``rel``'s cursor (:func:`thresholds_relation`):
    a species it names is held to its own threshold instead of ``min_confidence``; ``text``: with
    the :data:`DETECTION_TEXT` columns."""
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
    rel = rel.project(DETECTION_COLUMNS).order(DETECTION_ORDER)
    return rel.project(f"{DETECTION_COLUMNS}, {DETECTION_TEXT}") if text else rel


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


def _starts(ids: Any) -> list[int]:
    """Where each run of equal ids begins in an Arrow array (its first row: 0)."""
    import pyarrow.compute as pc

    n = len(ids)
    if n < 2:
        return [0] * n
    changed = pc.not_equal(ids.slice(1), ids.slice(0, n - 1))
    return [0] + [i + 1 for i in pc.indices_nonzero(changed).to_pylist()]


def _runs(rel: Any, batch_rows: int, as_columns: bool = False) -> Iterator[tuple[str, Any]]:
    """(recording id, rows) for each run of one recording in a relation sorted by recording:
    rows as dicts, or (``as_columns``) as one :class:`Detections`."""
    current: str | None = None
    rows: Any = None
    for batch in rel.to_arrow_reader(batch_rows):
        ids = batch.column("recording_id")
        starts = _starts(ids)
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(ids)
            piece = batch.slice(start, end - start)
            rid = ids[start].as_py()
            if rid != current:
                if current is not None:
                    yield current, rows
                current = rid
                rows = Detections(piece.to_pydict()) if as_columns else piece.to_pylist()
            elif as_columns:
                for name, values in piece.to_pydict().items():
                    rows.columns[name].extend(values)
            else:
                rows.extend(piece.to_pylist())
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
    dets = _runs(detections, batch_rows, as_columns=True) if detections is not None else iter(())
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
            cur.read_parquet(detections_path),
            min_confidence,
            species,
            only_fingerprint,
            thresholds_relation(cur, thresholds),
            text=True,
        )
    return recording_groups(chunks, dets, batch_rows=batch_rows or BATCH_ROWS, only_fingerprint=only_fingerprint)
