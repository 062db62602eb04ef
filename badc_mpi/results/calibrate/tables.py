"""Calibration inside ``bundle.duckdb`` (docs/results.md, "Calibration"): the tables ``verdicts``,
``thresholds``, ``calibration_recordings`` and ``calibration_settings``, and the views
``calibrated_detections`` and ``calibrated_summary``, as constant SQL; values travel as Arrow
tables registered under constant names, never as SQL text.

- ``calibrated_detections``: every detection, with its species' ``species_threshold``, the
  model's ``p_correct`` (NULL: species not calibrated) and ``above_threshold`` (NULL: species not
  calibrated; false: calibrated without a threshold);
- ``calibrated_summary``: per calibrated species x location x local date: detections, those above
  the threshold, the expected number of true detections (the sum of P(correct)) overall and above
  the threshold. Location and local date follow the exports' rules (:mod:`badc_mpi.results.export.meta`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from badc_mpi.errors import UsageError
from badc_mpi.results.calibrate.fit import EPS, SpeciesFit
from badc_mpi.results.calibrate.verdicts import Detection, Verdict
from badc_mpi.results.export.meta import recordings
from badc_mpi.results.export.stream import chunks_relation, recording_groups
from badc_mpi.results.export.thresholds import COLUMNS

TABLES = ("verdicts", "thresholds", "calibration_recordings", "calibration_settings")
VIEWS = ("calibrated_detections", "calibrated_summary")
STAGED = "badc_calibration_staged"  #: the constant name an Arrow table is registered under while copied

_CLIPPED = f"greatest(least(d.confidence::DOUBLE, {1 - EPS!r}), {EPS!r})"
CALIBRATED_DETECTIONS = f"""
CREATE VIEW calibrated_detections AS
SELECT d.*, coalesce(d.label_code, d.label) AS species_code, t.threshold AS species_threshold,
       CASE WHEN t.slope IS NULL THEN NULL
            ELSE 1.0 / (1.0 + exp(-(t.intercept + t.slope * ln({_CLIPPED} / (1 - {_CLIPPED}))))) END AS p_correct,
       CASE WHEN t.species_code IS NULL THEN NULL
            ELSE coalesce(d.confidence >= t.threshold::FLOAT, false) END AS above_threshold
FROM detections d LEFT JOIN thresholds t ON coalesce(d.label_code, d.label) = t.species_code
"""

CALIBRATED_SUMMARY = """
CREATE VIEW calibrated_summary AS
SELECT c.species_code, r.location,
       CAST(r.recording_start_local + to_milliseconds(c.start_ms) AS DATE) AS local_date,
       count(*) AS detections,
       count(*) FILTER (WHERE c.above_threshold) AS detections_above_threshold,
       sum(c.p_correct) AS expected_true_detections,
       coalesce(sum(c.p_correct) FILTER (WHERE c.above_threshold), 0) AS expected_true_above_threshold
FROM calibrated_detections c LEFT JOIN calibration_recordings r ON c.recording_id = r.recording_id
WHERE c.p_correct IS NOT NULL
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

LOOKUP = f"""
SELECT CAST(d.detection_id AS VARCHAR) AS detection_id, coalesce(d.label_code, d.label) AS species_code,
       d.confidence::DOUBLE AS score
FROM detections d SEMI JOIN {STAGED} s ON CAST(d.detection_id AS VARCHAR) = s.detection_id
"""

VERDICT_SCHEMA = pa.schema(
    [("detection_id", pa.string()), ("species_code", pa.string()), ("verdict", pa.string()), ("score", pa.float64()),
     ("file", pa.string()), ("row", pa.int32())]
)  # fmt: skip
THRESHOLD_TYPES = {c: pa.string() for c in ("species_code", "reason", "note")} | {
    c: pa.int64() for c in ("reviewed", "correct", "wrong", "unsure")
}
THRESHOLD_SCHEMA = pa.schema([(c, THRESHOLD_TYPES.get(c, pa.float64())) for c in COLUMNS])


def _copy(con: Any, name: str, table: pa.Table) -> None:
    """``CREATE TABLE name`` holding ``table`` (``name`` is one of :data:`TABLES`)."""
    assert name in TABLES  # our constants only
    con.register(STAGED, table)
    try:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {STAGED}")
    finally:
        con.unregister(STAGED)


def has_detection_ids(con: Any) -> bool:
    return bool(con.execute("SELECT count(*) FROM (DESCRIBE detections) WHERE column_name = 'detection_id'").fetchall()[0][0])


def lookup(con: Any, ids: Iterable[str]) -> dict[str, Detection]:
    """The bundle's species and score of each detection id named (those it has)."""
    if not has_detection_ids(con):
        raise UsageError(
            "this bundle's detections have no detection_id column (built by an older badc-mpi)",
            fix="build the bundle again with `badc-mpi bundle --force` (make bundle ARGS=--force)",
        )
    con.register(STAGED, pa.table({"detection_id": pa.array(sorted(set(ids)), pa.string())}))
    try:
        rows = con.execute(LOOKUP).fetchall()
    finally:
        con.unregister(STAGED)
    return {r[0]: Detection(r[1], float(r[2])) for r in rows}


def verdict_table(verdicts: Sequence[Verdict], known: dict[str, Detection], names: dict[str, str]) -> pa.Table:
    """The ``verdicts`` table; ``names``: file as read -> its stored name."""
    return pa.table(
        {
            "detection_id": [v.detection_id for v in verdicts],
            "species_code": [known[v.detection_id].species_code for v in verdicts],
            "verdict": [v.verdict for v in verdicts],
            "score": [known[v.detection_id].score for v in verdicts],
            "file": [names.get(v.file, v.file) for v in verdicts],
            "row": [v.row for v in verdicts],
        },
        schema=VERDICT_SCHEMA,
    )


def threshold_rows(fits: Sequence[SpeciesFit]) -> list[dict[str, Any]]:
    return [{c: asdict(f).get(c) for c in COLUMNS} for f in fits]


def recording_places(con: Any) -> pa.Table:
    """Each recording's location and local start (the exports' rules), from the ``chunks`` table."""
    ids, places, starts = [], [], []
    for group in recording_groups(chunks_relation(con.cursor().table("chunks")), None):
        rec = recordings(group.chunks)[group.recording_id]
        ids.append(group.recording_id)
        places.append(rec.location)
        starts.append(rec.start_local)
    return pa.table({"recording_id": ids, "location": places, "recording_start_local": pa.array(starts, pa.timestamp("ms"))})


def install(con: Any, verdicts: pa.Table, thresholds: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """(Re)create the calibration tables and views on ``con`` (the caller holds the transaction)."""
    for view in VIEWS:
        con.execute(f"DROP VIEW IF EXISTS {view}")
    for table in TABLES:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    _copy(con, "verdicts", verdicts)
    _copy(con, "thresholds", pa.Table.from_pylist(thresholds, schema=THRESHOLD_SCHEMA))
    _copy(con, "calibration_recordings", recording_places(con))
    _copy(con, "calibration_settings", pa.Table.from_pylist([settings]))
    con.execute(CALIBRATED_DETECTIONS)
    con.execute(CALIBRATED_SUMMARY)
