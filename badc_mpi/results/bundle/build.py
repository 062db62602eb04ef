"""``badc-mpi bundle``: the aggregate, a DuckDB database with views, quicklook CSVs, a summary
and ``report.html``, in ``<dataset>/artifacts/aggregate/<name>/`` (``./artifacts/aggregate/<name>/``
outside a dataset).

Order of writing: the Parquet files (aggregated again only when their inputs changed), the
exports asked for with ``--export`` (``exports/``, by :func:`badc_mpi.results.export.write.write_exports`,
the code behind ``badc-mpi export``), then ``bundle.duckdb``, ``quicklook/*.csv``, ``report.html``
and ``summary.json`` last, each to a temporary name renamed into place: a bundle whose
``summary.json`` is there is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from badc_mpi.errors import UsageError
from badc_mpi.logs import get_logger
from badc_mpi.results.aggregate.dataset import TABLES, AggregateResult, aggregate
from badc_mpi.results.aggregate.folders import bundle_folder
from badc_mpi.results.aggregate.runs import find_runs
from badc_mpi.results.bundle import views as V
from badc_mpi.results.calibrate.run import reinstall
from badc_mpi.results.export.histories import FOCUS_DEFAULT
from badc_mpi.results.export.write import ExportOptions, ExportResult, write_exports
from badc_mpi.storage.atomic import atomic_write_text, ensure_dir, fsync_dir, temp_path_for

log = get_logger(__name__)

BUNDLE_SCHEMA = "badc-mpi.bundle/1"
DB_NAME = "bundle.duckdb"
TINY_PREFIX = "tiny:"


@dataclass
class BundleResult:
    folder: str
    summary: dict[str, Any]
    aggregate: AggregateResult
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def report(self) -> str:
        return os.path.join(self.folder, "report.html")


def build_database(folder: str, *, bucket_minutes: float, top_n: int) -> str:
    """``bundle.duckdb`` from the Parquet files (tables) plus the views; atomic."""
    import duckdb

    path = os.path.join(folder, DB_NAME)
    tmp = temp_path_for(path)
    try:
        con = duckdb.connect(tmp)
        try:
            con.execute(V.FAST_LOAD)
            for table in TABLES:
                con.execute(V.LOAD[table], [os.path.join(folder, f"{table}.parquet")])
            con.execute(V.SETTINGS)
            con.execute(V.SETTINGS_INSERT, [float(bucket_minutes), int(top_n)])
            columns = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE detections)").fetchall()}
            for statement in V.view_statements("recording_start_utc" in columns):
                con.execute(statement)
            if "detection_id" in columns:  # a kept calibration (<bundle>/thresholds.csv, verdicts/) again
                note = reinstall(folder, con)
                if note:
                    log.warning("%s", note)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    finally:
        for leftover in (tmp, tmp + ".wal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return path


def view_tables(con: Any) -> dict[str, pa.Table]:
    """Every view, computed once (the quicklooks, the summary and the report share them)."""
    out = {}
    for view in V.VIEWS:
        table = con.table(view).arrow()
        out[view] = table.read_all() if isinstance(table, pa.RecordBatchReader) else table
    return out


def export_quicklooks(views: dict[str, pa.Table], folder: str) -> list[str]:
    """Each view as ``quicklook/<view>.csv`` (atomic)."""
    out_dir = ensure_dir(os.path.join(folder, "quicklook"))
    paths = []
    for view, table in views.items():
        path = os.path.join(out_dir, f"{view}.csv")
        tmp = temp_path_for(path)
        try:
            pacsv.write_csv(table, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(path)
    fsync_dir(out_dir)
    return paths


def bundle_summary(
    con: Any, views: dict[str, pa.Table], agg: AggregateResult, *, bucket_minutes: float, top_n: int
) -> dict[str, Any]:
    """What ``summary.json`` and the report's head say."""
    runs = views["run_summary"].to_pylist()
    models = sorted({r["model_version"] for r in runs if r["model_version"]})
    tiny = any(r["tiny_model"] for r in runs) or any(m.startswith(TINY_PREFIX) for m in models)
    return {
        "schema": BUNDLE_SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": agg.counts,
        "labels": views["label_summary"].num_rows,
        "recordings": con.execute("SELECT count(DISTINCT recording_id) FROM chunks").fetchall()[0][0],
        "top_labels": views["label_summary"].slice(0, top_n).to_pylist(),
        "runs": runs,
        "model_versions": models,
        "hawkears_versions": sorted({r["hawkears_version"] for r in runs if r["hawkears_version"]}),
        "badc_mpi_versions": sorted({r["badc_mpi_version"] for r in runs if r["badc_mpi_version"]}),
        "tiny_model": tiny,
        "bucket_minutes": bucket_minutes,
        "problems": [p.__dict__ for p in agg.problems],
        "files": {
            "report": "report.html",
            "database": DB_NAME,
            **{t: f"{t}.parquet" for t in TABLES},
            "quicklook": [f"quicklook/{v}.csv" for v in V.VIEWS],
        },
    }


def _exports_summary(folder: str, result: ExportResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    rel = os.path.relpath(result.folder, folder)
    return {"folder": rel, "files": len(result.files), "notes": result.notes, "list": os.path.join(rel, "export.json")}


def _fingerprint(folder: str) -> dict[str, Any]:
    """The aggregate's fingerprint facts (aggregate.json): id, settings, stale and mixed counts."""
    try:
        with open(os.path.join(folder, "aggregate.json"), encoding="utf-8") as fh:
            return dict(json.load(fh).get("fingerprint") or {})
    except (OSError, ValueError):
        return {}


def build_bundle(
    sources: Sequence[str],
    *,
    name: str | None = None,
    dest: str | None = None,
    bucket_minutes: float = 60.0,
    top_n: int = 20,
    telemetry_dir: str | None = None,
    output_dir: str | None = None,
    reuse: bool = True,
    merge_overlaps: str = "auto",
    export: ExportOptions | None = None,
) -> BundleResult:
    """Aggregate (when its inputs changed) and write the whole bundle; returns where and what.
    ``export``: its ``accept_mixed`` also decides the aggregate's; its formats are written to ``<bundle>/exports/`` (``export.output`` unset) by
    the export's own code, right after the aggregate (a missing field stops the bundle before
    anything else is written); its ``focus_species`` and ``min_confidence`` also drive the
    report's Sites panel, so the panel and ``exports/histories/`` agree."""
    import duckdb

    from badc_mpi.results.bundle.report import write_report

    if not bucket_minutes > 0:
        raise UsageError(f"--bucket-minutes {bucket_minutes} is not positive", fix="give minutes > 0, e.g. 60")
    if top_n < 1:
        raise UsageError(f"--top-n {top_n} is below 1", fix="give a count of species to show, e.g. 20")
    export = export or ExportOptions(formats=())
    export.check()
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    sel = find_runs(sources, telemetry_dir=telemetry_dir)
    folder = bundle_folder(sources, sel, name, dest)
    agg = aggregate(
        sources,
        folder,
        output_dir=output_dir,
        reuse=reuse,
        selection=sel,
        merge_overlaps=merge_overlaps,
        accept_mixed=export.accept_mixed,
    )
    seconds["aggregate"] = time.monotonic() - t0
    exported = None
    if export.formats:
        te = time.monotonic()
        exported = write_exports(folder, export)
        export = dataclasses.replace(export, focus_species=exported.focus_species or export.focus_species)
        seconds["export"] = time.monotonic() - te
    t1 = time.monotonic()
    build_database(folder, bucket_minutes=bucket_minutes, top_n=top_n)
    seconds["duckdb"] = time.monotonic() - t1
    t2 = time.monotonic()
    con = duckdb.connect(os.path.join(folder, DB_NAME), read_only=True)
    try:
        views = view_tables(con)
        export_quicklooks(views, folder)
        summary = {
            "name": os.path.basename(folder),
            **bundle_summary(con, views, agg, bucket_minutes=bucket_minutes, top_n=top_n),
            "focus_species": list(export.focus_species or FOCUS_DEFAULT),
            "min_confidence": export.min_confidence,
            "exports": _exports_summary(folder, exported),
            "fingerprint": _fingerprint(folder),
        }
        seconds["quicklook"] = time.monotonic() - t2
        t3 = time.monotonic()
        write_report(con, views, summary, os.path.join(folder, "report.html"), top_n=top_n)
        seconds["report"] = time.monotonic() - t3
    finally:
        con.close()
    summary["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    atomic_write_text(os.path.join(folder, "summary.json"), json.dumps(summary, indent=1, default=str) + "\n")
    return BundleResult(folder, summary, agg, seconds)
