"""``badc-mpi bundle``: the aggregate, a DuckDB database with views, quicklook CSVs, a summary
and ``report.html``, in ``<dataset>/artifacts/aggregate/<name>/`` (``./artifacts/aggregate/<name>/``
outside a dataset).

Order of writing: the Parquet files (aggregated again only when their inputs changed), then
``bundle.duckdb``, ``quicklook/*.csv``, ``report.html`` and ``summary.json`` last, each to a
temporary name renamed into place: a bundle whose ``summary.json`` is there is complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from badc_mpi.errors import UsageError
from badc_mpi.logs import get_logger
from badc_mpi.results import views as V
from badc_mpi.results.aggregate import TABLES, AggregateResult, aggregate
from badc_mpi.results.runs import RunSelection, find_runs
from badc_mpi.storage.atomic import atomic_write_text, ensure_dir, fsync_dir, temp_path_for

log = get_logger(__name__)

BUNDLE_SCHEMA = "badc-mpi.bundle/1"
DB_NAME = "bundle.duckdb"
AGGREGATE_DIR = os.path.join("artifacts", "aggregate")
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


def default_name(sources: Sequence[str], sel: RunSelection) -> str:
    """The first manifest's stem among the sources, else the first run's, else ``all``."""
    for source in sources:
        if source.endswith(".csv") and os.path.isfile(source):
            return Path(source).stem
    if len(sources) == 1 and os.path.isfile(sources[0]) and sel.runs and sel.runs[0].manifests:
        return Path(sel.runs[0].manifests[0]).stem
    return "all"


def bundle_folder(sources: Sequence[str], sel: RunSelection, name: str | None, dest: str | None) -> str:
    if dest:
        return os.path.abspath(dest)
    name = name or default_name(sources, sel)
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"bundle name {name!r} is not a folder name", fix="give --name a plain name such as site1")
    base = sel.dataset_root or os.getcwd()
    return os.path.join(base, AGGREGATE_DIR, name)


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
) -> BundleResult:
    """Aggregate (when its inputs changed) and write the whole bundle; returns where and what."""
    import duckdb

    from badc_mpi.results.report import write_report

    if not bucket_minutes > 0:
        raise UsageError(f"--bucket-minutes {bucket_minutes} is not positive", fix="give minutes > 0, e.g. 60")
    if top_n < 1:
        raise UsageError(f"--top-n {top_n} is below 1", fix="give a count of species to show, e.g. 20")
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    sel = find_runs(sources, telemetry_dir=telemetry_dir)
    folder = bundle_folder(sources, sel, name, dest)
    agg = aggregate(sources, folder, output_dir=output_dir, reuse=reuse, selection=sel, merge_overlaps=merge_overlaps)
    seconds["aggregate"] = time.monotonic() - t0
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
