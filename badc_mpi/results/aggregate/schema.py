"""The aggregate's tables as Arrow schemas, and pure conversions into them (docs/results.md).

``detections`` (one row per detection of a chunk's winning result), ``chunks`` (one row per
chunk of the manifests: ``analysed`` / ``failed`` / ``not_analysed`` / ``stale``), ``runs`` (one row per run)
and ``attempts`` (one row per finished attempt, from telemetry: worker figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from badc_mpi.results.aggregate.times import TIME_FIELDS

ANALYSED, FAILED, NOT_ANALYSED, STALE = "analysed", "failed", "not_analysed", "stale"
#: ``stale``: the chunk's only success was made with another fingerprint than the aggregate's
#: (results/aggregate/fingerprints.py): not counted unless --accept-mixed
CHUNK_STATES = (ANALYSED, FAILED, NOT_ANALYSED, STALE)

TEXT = pa.string()
DICT = pa.dictionary(pa.int32(), pa.string())

#: what a detection source hands over: the keys of ``<chunk>.detections.jsonl`` (storage/detections.py)
RAW_DETECTION_SCHEMA = pa.schema(
    [
        ("recording_id", TEXT),
        ("chunk_id", TEXT),
        ("label", TEXT),
        ("label_code", TEXT),
        ("label_name", TEXT),
        ("confidence", pa.float64()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("chunk_start_ms", pa.int64()),
        ("chunk_end_ms", pa.int64()),
        ("source_path", TEXT),
        ("chunk_sha256", TEXT),
        ("hawkears_version", TEXT),
        ("model_version", TEXT),
        ("run_id", TEXT),
    ]
)

#: manifest columns read as text whatever they look like: the JSON reader would otherwise turn
#: ISO times into timestamps (normalised to UTC: a local wall clock lost) and coordinates into floats
METADATA_TEXT_FIELDS = [
    (name, TEXT)
    for name in (
        "recording_start_utc", "recording_start_local", "date", "location", "study_area", "latitude", "longitude", "region",
        "deploy_start", "deploy_end",
    )
]  # fmt: skip
#: what the per-chunk reader parses with
RAW_READ_SCHEMA = pa.schema(list(RAW_DETECTION_SCHEMA) + METADATA_TEXT_FIELDS)

DETECTION_FIELDS = [
    ("detection_id", pa.int64()),  #: stable across rebuilds (results/aggregate/detection_id.py)
    ("run_id", DICT),
    ("recording_id", DICT),
    ("chunk_id", DICT),
    ("label", DICT),
    ("label_code", DICT),
    ("label_name", DICT),
    ("confidence", pa.float32()),
    ("start_ms", pa.int64()),  #: recording-relative
    ("end_ms", pa.int64()),
    *TIME_FIELDS,  #: absolute times from the manifest's recording start (results/aggregate/times.py), else null
    ("chunk_offset_start_ms", pa.int64()),  #: chunk-relative
    ("chunk_offset_end_ms", pa.int64()),
    ("chunk_start_ms", pa.int64()),  #: the chunk's own span in the recording (manifest)
    ("chunk_end_ms", pa.int64()),
    ("source_path", DICT),
    ("chunk_sha256", DICT),
    ("hawkears_version", DICT),
    ("model_version", DICT),
    ("fingerprint", DICT),  #: the id of its run's fingerprint (results/aggregate/fingerprints.py)
    (
        "merged_count",
        pa.int32(),
    ),  #: detections this row stands for: 1, or more after the overlap merge (results/aggregate/overlap.py)
]

CHUNK_SCHEMA = pa.schema(
    [
        ("recording_id", TEXT),
        ("chunk_id", TEXT),
        ("status", TEXT),  #: analysed | failed | not_analysed | stale
        ("detections", pa.int64()),  #: null unless analysed
        ("run_id", TEXT),  #: the run whose result counts (latest success, else latest failure)
        ("attempts", pa.int64()),  #: attempts of that result
        ("runs_tried", pa.int64()),  #: runs whose ledger names the chunk
        ("runtime_s", pa.float64()),  #: last attempt of that result (telemetry)
        ("worker", TEXT),
        ("failure_class", TEXT),  #: of the latest failure when failed
        ("error", TEXT),
        ("finished_at", TEXT),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("sha256", TEXT),
        ("in_manifest", pa.bool_()),
        ("note", TEXT),  #: why a chunk with a ledger record is not analysed, or other remarks
        ("fingerprint", TEXT),  #: the fingerprint id of the run whose result counts (analysed, stale)
    ]
)

RUN_SCHEMA = pa.schema(
    [
        ("run_id", TEXT),
        ("created_at", TEXT),
        ("finished_at", TEXT),  #: latest final outcome in its ledger
        ("state", TEXT),  #: from the summary: finished | interrupted | ... (null: no summary, e.g. killed)
        ("host", TEXT),
        ("badc_mpi_version", TEXT),
        ("hawkears_version", TEXT),
        ("model_version", TEXT),  #: the model fingerprint: main=[file:sha12,...] (``tiny:`` prefix for the tiny model)
        ("tiny_model", pa.bool_()),
        ("runner", TEXT),
        ("manifests", TEXT),  #: JSON list
        ("output_dir", TEXT),
        ("ledger", TEXT),
        ("telemetry", TEXT),
        ("summary", TEXT),
        ("ledger_success", pa.int64()),
        ("ledger_failed", pa.int64()),
        ("chunks_won", pa.int64()),  #: chunks whose counted result is this run's
        ("options", TEXT),  #: JSON of the summary's meta options and runner description
        ("fingerprint", TEXT),  #: its fingerprint's id (results/aggregate/fingerprints.py)
        ("settings", TEXT),  #: its fingerprint (JSON): what determines its detections
    ]
)

#: telemetry fields read per attempt (everything else in a line is ignored)
_TELEMETRY_READ = pa.schema(
    [
        ("run_id", TEXT),
        ("event", TEXT),
        ("recording_id", TEXT),
        ("chunk_id", TEXT),
        ("attempt", pa.int64()),
        ("worker", TEXT),
        ("host", TEXT),
        ("rank", pa.int64()),
        ("gpu_index", pa.int64()),
        ("gpu_name", TEXT),
        ("started_at", TEXT),
        ("finished_at", TEXT),
        ("runtime_s", pa.float64()),
        ("failure_class", TEXT),
        ("detections", pa.int64()),
        ("vram_used_mib", pa.float64()),
        ("gpu_util_pct_mean", pa.float64()),
        ("gpu_util_pct_max", pa.float64()),
        ("model_version", TEXT),
        ("hawkears_version", TEXT),
    ]
)
ATTEMPT_SCHEMA = pa.schema([f for f in _TELEMETRY_READ if f.name != "started_at"] + [("started_at", TEXT)])
_ATTEMPT_EVENTS = pa.array(["success", "retry", "failure"])


def extra_key_map(extra_columns: Sequence[str]) -> list[tuple[str, str]]:
    """(manifest column, key in a detection record): a clash with a canonical key gets ``meta_``
    (as :func:`badc_mpi.storage.detections.canonical_records` names it)."""
    taken = set(RAW_DETECTION_SCHEMA.names)
    out = []
    for name in extra_columns:
        key = name
        while key in taken:
            key = f"meta_{key}"
        taken.add(key)
        out.append((name, key))
    return out


def detection_schema(extra_keys: Sequence[str]) -> pa.Schema:
    """The ``detections`` table: :data:`DETECTION_FIELDS`, then the manifests' extra columns (strings)."""
    return pa.schema(DETECTION_FIELDS + [(k, DICT) for k in extra_keys])


def chunk_schema(extra_keys: Sequence[str]) -> pa.Schema:
    """The ``chunks`` table: :data:`CHUNK_SCHEMA`, then the manifests' extra columns (strings), so
    that a chunk never analysed still has its location, study area and recording start."""
    return pa.schema(list(CHUNK_SCHEMA) + [("source_path", TEXT)] + [(k, TEXT) for k in extra_keys])


def _column(table: pa.Table, name: str, kind: pa.DataType) -> pa.ChunkedArray:
    if name not in table.column_names:
        return pa.chunked_array([pa.nulls(table.num_rows, kind)])
    col = table.column(name)
    return col if col.type == kind else col.cast(kind)


def normalise_detections(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Raw detection records (:data:`RAW_DETECTION_SCHEMA` plus extra keys) -> ``schema`` (pure)."""
    ms = pa.int64()
    start_s, end_s = _column(table, "start_s", pa.float64()), _column(table, "end_s", pa.float64())
    derived = {
        "chunk_offset_start_ms": pc.round(pc.multiply(start_s, 1000.0)).cast(ms),
        "chunk_offset_end_ms": pc.round(pc.multiply(end_s, 1000.0)).cast(ms),
        "merged_count": pa.chunked_array([pa.array(np.ones(table.num_rows, dtype=np.int32))]),
    }
    columns = []
    for f in schema:
        if f.name in derived:
            columns.append(derived[f.name])
        elif f.type == DICT:
            col = table.column(f.name) if f.name in table.column_names else None
            if col is not None and pa.types.is_dictionary(col.type):
                columns.append(col.cast(DICT))
            else:
                columns.append(_column(table, f.name, TEXT).dictionary_encode())
        else:
            columns.append(_column(table, f.name, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def parse_attempts(body: bytes) -> pa.Table:
    """Finished attempts (``success``/``retry``/``failure`` lines) of a telemetry body, with their
    worker's facts (host, GPU, versions) joined from the latest ``worker`` event of the line's rank
    and the run id from the ``run`` header; raises ``pyarrow.ArrowInvalid`` on a line that does not
    parse. Lines that carry these facts themselves (schema 1) keep their own."""
    if not body:
        return ATTEMPT_SCHEMA.empty_table()
    table = pajson.read_json(
        pa.BufferReader(body),
        parse_options=pajson.ParseOptions(explicit_schema=_TELEMETRY_READ, unexpected_field_behavior="ignore"),
    )
    table = _join_facts(table)
    table = table.filter(pc.is_in(table.column("event"), value_set=_ATTEMPT_EVENTS))
    table = table.set_column(table.schema.get_field_index("started_at"), "started_at", _started_at(table))
    return table.select(ATTEMPT_SCHEMA.names).cast(ATTEMPT_SCHEMA)


#: what a ``worker`` event gives the attempts of its rank
_WORKER_FACTS = ("worker", "host", "gpu_index", "gpu_name", "model_version", "hawkears_version")


def _latest_worker_row(is_worker: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Per row: the index of the latest ``worker`` row of its rank at or before it, else its
    rank's first ``worker`` row (a chunk failed before dispatch precedes it), else -1 (pure)."""
    n = len(rank)
    idx = np.arange(n, dtype=np.int64)
    _, group = np.unique(rank, return_inverse=True)
    group = group.astype(np.int64).reshape(-1)
    order = np.lexsort((idx, group))
    base = group[order] * (n + 1)
    key = base + np.where(is_worker[order], idx[order] + 1, 0)
    latest = np.empty(n, dtype=np.int64)
    latest[order] = np.maximum.accumulate(key) - base - 1  # -1: no worker row yet in its group
    first = np.full(int(group.max()) + 1, n, dtype=np.int64)
    np.minimum.at(first, group[is_worker], idx[is_worker])
    fallback = first[group]
    latest = np.where((latest < 0) & (fallback < n), fallback, latest)
    return latest


def _join_facts(table: pa.Table) -> pa.Table:
    events = table.column("event")
    is_worker = pc.equal(events, "worker").fill_null(False).to_numpy(zero_copy_only=False)
    header = table.filter(pc.equal(events, "run").fill_null(False)).column("run_id").drop_null()
    if len(header):
        run_id = pc.coalesce(table.column("run_id"), pa.scalar(header[0].as_py(), TEXT))
        table = table.set_column(table.schema.get_field_index("run_id"), "run_id", run_id)
    if not is_worker.any():
        return table
    rank = table.column("rank").fill_null(-1).to_numpy(zero_copy_only=False)
    src = _latest_worker_row(is_worker, rank)
    take = pa.array(src, mask=src < 0)
    for name in _WORKER_FACTS:
        col = table.column(name)
        table = table.set_column(table.schema.get_field_index(name), name, pc.coalesce(col, col.take(take)))
    return table


def _started_at(table: pa.Table) -> pa.ChunkedArray:
    """A final line's start: its own ``started_at`` (schema 1), else ``finished_at - runtime_s``."""
    finished = table.column("finished_at").cast(pa.timestamp("ms", tz="UTC"))
    runtime = pc.round(pc.multiply(table.column("runtime_s"), 1000.0)).cast(pa.int64()).cast(pa.duration("ms"))
    derived = pc.strftime(pc.subtract(finished, runtime), format="%Y-%m-%dT%H:%M:%SZ")
    return pc.coalesce(table.column("started_at"), derived)


def rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Python rows -> a table of ``schema`` (missing keys are null)."""
    return pa.Table.from_pylist(rows, schema=schema)
