"""The bundle's DuckDB views, as constant SQL (docs/results.md).

No SQL text is ever built from data: values come from the one-row table ``bundle_settings``
(``bucket_minutes``), inserted with parameters; the only choice made here is between two constant
``timeline`` texts (with or without a ``recording_start_utc`` column).
"""

from __future__ import annotations

SETTINGS = "CREATE TABLE bundle_settings (bucket_minutes DOUBLE, top_n INTEGER)"
SETTINGS_INSERT = "INSERT INTO bundle_settings VALUES (?, ?)"

#: row order of the loaded tables is not kept (detections are unordered; sort when order matters):
#: loading 10M rows takes about 40 % less time
FAST_LOAD = "SET preserve_insertion_order = false"

#: table name -> statement loading it from Parquet (the path is a parameter)
LOAD = {
    "detections": "CREATE TABLE detections AS SELECT * FROM read_parquet(?)",
    "chunks": "CREATE TABLE chunks AS SELECT * FROM read_parquet(?)",
    "runs": "CREATE TABLE runs AS SELECT * FROM read_parquet(?)",
    "attempts": "CREATE TABLE attempts AS SELECT * FROM read_parquet(?)",
}

LABEL_SUMMARY = """
CREATE VIEW label_summary AS
SELECT coalesce(label_code, label) AS label,
       max(label_name) AS label_name,
       count(*) AS detections,
       count(DISTINCT recording_id) AS recordings,
       avg(confidence)::DOUBLE AS mean_confidence,
       max(confidence)::DOUBLE AS max_confidence
FROM detections
GROUP BY 1
ORDER BY detections DESC, label
"""

RECORDING_SUMMARY = """
CREATE VIEW recording_summary AS
WITH c AS (
  SELECT recording_id,
         count(*) AS chunks,
         count(*) FILTER (WHERE status = 'analysed') AS analysed,
         count(*) FILTER (WHERE status = 'failed') AS failed,
         count(*) FILTER (WHERE status = 'not_analysed') AS not_analysed,
         count(*) FILTER (WHERE status = 'stale') AS stale
  FROM chunks GROUP BY recording_id
), d AS (
  SELECT recording_id,
         count(*) AS detections,
         count(DISTINCT coalesce(label_code, label)) AS labels,
         min(start_ms) AS first_detection_ms,
         max(end_ms) AS last_detection_ms,
         avg(confidence)::DOUBLE AS mean_confidence
  FROM detections GROUP BY recording_id
)
SELECT c.recording_id, c.chunks, c.analysed, c.failed, c.not_analysed, c.stale,
       coalesce(d.detections, 0) AS detections, coalesce(d.labels, 0) AS labels,
       d.first_detection_ms, d.last_detection_ms, d.mean_confidence
FROM c LEFT JOIN d USING (recording_id)
ORDER BY c.recording_id
"""

#: time from recording-relative milliseconds: bucket k covers [k, k+1) x bucket_minutes
TIMELINE_RELATIVE = """
CREATE VIEW timeline AS
WITH s AS (SELECT (bucket_minutes * 60000)::BIGINT AS width_ms FROM bundle_settings)
SELECT coalesce(label_code, label) AS label,
       'recording' AS time_basis,
       (start_ms // s.width_ms) * s.width_ms AS bucket_start_ms,
       CAST(NULL AS TIMESTAMPTZ) AS bucket_start_utc,
       count(*) AS detections,
       count(DISTINCT recording_id) AS recordings,
       avg(confidence)::DOUBLE AS mean_confidence
FROM detections, s
GROUP BY 1, 3, s.width_ms
ORDER BY 1, 3
"""

#: absolute time: the manifest's recording_start_utc plus the recording-relative start
TIMELINE_ABSOLUTE = """
CREATE VIEW timeline AS
WITH s AS (SELECT (bucket_minutes * 60000)::BIGINT AS width_ms FROM bundle_settings),
t AS (
  SELECT coalesce(label_code, label) AS label, recording_id, confidence,
         epoch_ms(TRY_CAST(CAST(recording_start_utc AS VARCHAR) AS TIMESTAMPTZ)) + start_ms AS at_ms
  FROM detections
)
SELECT label,
       'utc' AS time_basis,
       (at_ms // s.width_ms) * s.width_ms AS bucket_start_ms,
       make_timestamptz(((at_ms // s.width_ms) * s.width_ms) * 1000) AS bucket_start_utc,
       count(*) AS detections,
       count(DISTINCT recording_id) AS recordings,
       avg(confidence)::DOUBLE AS mean_confidence
FROM t, s
WHERE at_ms IS NOT NULL
GROUP BY 1, 3, s.width_ms
ORDER BY 1, 3
"""

RUN_SUMMARY = """
CREATE VIEW run_summary AS
WITH a AS (
  SELECT run_id, count(*) AS attempts, sum(runtime_s) AS busy_s, count(DISTINCT worker) AS workers
  FROM attempts GROUP BY run_id
), d AS (SELECT run_id, count(*) AS detections FROM detections GROUP BY run_id)
SELECT r.run_id, r.created_at, r.finished_at, r.state, r.badc_mpi_version, r.hawkears_version,
       r.model_version, r.tiny_model, r.ledger_success, r.ledger_failed, r.chunks_won,
       coalesce(d.detections, 0) AS detections_counted,
       coalesce(a.attempts, 0) AS attempts, coalesce(a.workers, 0) AS workers,
       coalesce(a.busy_s, 0.0) AS busy_s
FROM runs r LEFT JOIN a USING (run_id) LEFT JOIN d USING (run_id)
ORDER BY r.created_at, r.run_id
"""

WORKER_THROUGHPUT = """
CREATE VIEW worker_throughput AS
SELECT run_id, worker, any_value(host) AS host, any_value(gpu_name) AS gpu_name,
       count(*) AS attempts,
       count(*) FILTER (WHERE event = 'success') AS chunks_ok,
       count(*) FILTER (WHERE event = 'failure') AS chunks_failed,
       count(*) FILTER (WHERE event = 'retry') AS retries,
       sum(runtime_s) AS busy_s,
       avg(runtime_s) AS mean_runtime_s,
       3600.0 * count(*) FILTER (WHERE event = 'success') / nullif(sum(runtime_s), 0) AS chunks_per_busy_hour,
       avg(gpu_util_pct_mean) AS gpu_util_pct_mean,
       max(gpu_util_pct_max) AS gpu_util_pct_max,
       max(vram_used_mib) AS vram_used_mib_max,
       min(started_at) AS first_start, max(finished_at) AS last_finish
FROM attempts
GROUP BY run_id, worker
ORDER BY run_id, worker
"""

VIEWS = ("label_summary", "recording_summary", "timeline", "run_summary", "worker_throughput")


def view_statements(has_absolute_time: bool) -> list[str]:
    timeline = TIMELINE_ABSOLUTE if has_absolute_time else TIMELINE_RELATIVE
    return [LABEL_SUMMARY, RECORDING_SUMMARY, timeline, RUN_SUMMARY, WORKER_THROUGHPUT]


#: report queries (constant; limits, bins and label lists are parameters)
CONFIDENCE_BINS = """
SELECT coalesce(label_code, label) AS label, least(floor(confidence * ?), ? - 1)::INTEGER AS bin, count(*) AS n
FROM detections WHERE coalesce(label_code, label) IN (SELECT unnest(?::VARCHAR[]))
GROUP BY 1, 2 ORDER BY 1, 2
"""
WORKER_SERIES = """
SELECT worker, epoch_ms(TRY_CAST(finished_at AS TIMESTAMPTZ)) AS at_ms, runtime_s, gpu_util_pct_mean, event
FROM attempts WHERE finished_at IS NOT NULL ORDER BY worker, at_ms
"""
FAILED_CHUNKS = """
SELECT recording_id, chunk_id, status, failure_class, attempts, run_id, coalesce(error, note) AS reason
FROM chunks WHERE status <> 'analysed' ORDER BY status, recording_id, chunk_id LIMIT ?
"""
FAILURE_CLASSES = """
SELECT coalesce(failure_class, '?') AS failure_class, count(*) AS n FROM chunks WHERE status = 'failed'
GROUP BY 1 ORDER BY n DESC, 1
"""
