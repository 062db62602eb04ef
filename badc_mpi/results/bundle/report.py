"""``report.html``: one self-contained page (charts as ``data:image/png;base64``), read first.

Top: a loud banner when the tiny random-weight model was used, then counts and failures, the next
steps and the files (exports, review packs: :mod:`guide`); then the top species, species x local
time of day, confidence histograms, the Sites panel with per-site and per-recording tables, worker
throughput (GPU utilisation only for GPU runs), the table of chunks not analysed, provenance and the
files that were skipped. Tables fit the page (long ones scroll inside their own box).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.errors import BadcError
from badc_mpi.results.bundle import charts
from badc_mpi.results.bundle import views as V
from badc_mpi.results.bundle.guide import guide_html
from badc_mpi.results.bundle.places import recording_places, rows_of, site_tables, species_by_time_of_day
from badc_mpi.results.calibrate.report import calibration_section
from badc_mpi.results.export.histories import FOCUS_DEFAULT, HistoryBuilder
from badc_mpi.results.export.meta import Recording, recordings
from badc_mpi.results.export.stream import chunks_relation, detections_relation, recording_groups
from badc_mpi.storage.atomic import atomic_write_text

HIST_BINS = 20
HIST_LABELS = 6
FAILED_ROWS = 500
PROBLEM_ROWS = 200
RECORDING_ROWS = 500

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
.banner{background:#b00020;color:#fff;padding:1em;font-size:1.3em;font-weight:bold;border-radius:6px}
.counts{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.counts div{background:#f2f4f7;border-radius:6px;padding:.6em 1em;min-width:7em}
.counts b{display:block;font-size:1.6em} .bad b{color:#b00020}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;display:block;max-width:100%;overflow-x:auto}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left} th{vertical-align:bottom}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img.chart{max-width:100%;display:block;margin:.5em 0 1.5em}
.next{background:#eef6ee;border-radius:6px;padding:.6em 1.2em} .next code{background:#fff;padding:0 .3em}
"""


def _img(png: bytes, alt: str, chart_id: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="chart" id="{chart_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{value}</td>"
    if isinstance(value, int):
        return f"<td class='n'>{value:,}</td>"
    if isinstance(value, float):
        return f"<td class='n'>{value:,.4g}</td>" if abs(value) < 1e4 else f"<td class='n'>{value:,.0f}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _table(rows: Sequence[dict[str, Any]], table_id: str) -> str:
    if not rows:
        return f'<p id="{table_id}">none</p>'
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(_cell(v) for v in r.values()) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


#: the worker table's columns (view column -> heading): what fits a page
WORKER_COLUMNS = {
    "worker": "worker",
    "host": "host",
    "gpu_name": "GPU",
    "chunks_ok": "chunks ok",
    "chunks_failed": "failed",
    "retries": "retries",
    "busy_s": "busy s",
    "mean_runtime_s": "mean s/chunk",
    "chunks_per_busy_hour": "chunks per busy h",
    "gpu_util_pct_mean": "GPU util %",
    "vram_used_mib_max": "VRAM max MiB",
}


#: the provenance table's columns (run_summary column -> heading)
PROVENANCE_COLUMNS = {
    "run_id": "run",
    "created_at": "started",
    "finished_at": "finished",
    "state": "state",
    "badc_mpi_version": "badc-mpi",
    "hawkears_version": "HawkEars",
    "model_version": "model",
    "chunks_won": "chunks counted",
}


def worker_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worker table (pure): the columns of :data:`WORKER_COLUMNS`, the run named only when
    there are several; GPU columns left out when no worker had a GPU."""
    runs = {r.get("run_id") for r in rows}
    gpu = any(r.get("gpu_name") or r.get("gpu_util_pct_mean") is not None for r in rows)
    keep = [k for k in WORKER_COLUMNS if gpu or k not in ("gpu_name", "gpu_util_pct_mean", "vram_used_mib_max")]
    out = []
    for r in rows:
        row = {"run": r.get("run_id")} if len(runs) > 1 else {}
        row.update({WORKER_COLUMNS[k]: r.get(k) for k in keep})
        out.append(row)
    return out


def _bucket_text(ms: int, basis: str) -> str:
    if basis == "utc":
        return np.datetime64(int(ms), "ms").astype("datetime64[m]").astype(str).replace("T", " ")
    minutes = ms // 60000
    return f"{minutes // 60:d}:{minutes % 60:02d}"


def chart_images(
    con: Any, views: dict[str, pa.Table], summary: dict[str, Any], top_n: int, places: dict[str, Recording]
) -> dict[str, bytes]:
    """Every chart of the report, from the views and ``places`` (computed once) and two queries."""
    top = views["label_summary"].slice(0, top_n).to_pylist()
    names = [_species_name(r) for r in top]
    out = {
        "top_species": charts.top_species_bar(
            names, [r["detections"] for r in top], f"Top {len(top)} species by detections" if top else "No detections"
        )
    }
    labels = [r["label"] for r in top]
    out["heatmap"] = species_time_chart(con, views, summary, top, places)
    hist: dict[str, np.ndarray] = {}
    for r in rows_of(con, V.CONFIDENCE_BINS, [HIST_BINS, HIST_BINS, labels[:HIST_LABELS]]):
        hist.setdefault(r["label"], np.zeros(HIST_BINS))[r["bin"]] = r["n"]
    ordered = {lab: hist[lab] for lab in labels if lab in hist}
    out["confidence"] = charts.confidence_histograms(
        ordered, HIST_BINS, f"Confidence, top {len(ordered)} species" if ordered else "Confidence: no detections"
    )
    series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    points = rows_of(con, V.WORKER_SERIES)
    valid = [p["at_ms"] for p in points if p["at_ms"] is not None]
    t0 = min(valid) if valid else 0
    for worker in sorted({p["worker"] for p in points if p["worker"]}):
        mine = [p for p in points if p["worker"] == worker and p["at_ms"] is not None]
        minutes = np.array([(p["at_ms"] - t0) / 60000 for p in mine])
        done = np.cumsum([1 if p["event"] == "success" else 0 for p in mine])
        util = np.array([np.nan if p["gpu_util_pct_mean"] is None else p["gpu_util_pct_mean"] for p in mine], dtype=float)
        series[worker] = (minutes, done, util)
    out["workers"] = charts.worker_series(series, "Throughput per worker")
    out["sites"] = site_panel(con, summary)
    return out


def species_time_chart(
    con: Any, views: dict[str, pa.Table], summary: dict[str, Any], top: list[dict[str, Any]], places: dict[str, Recording]
) -> bytes:
    """Species (named) x local time of day; without any known recording start, x time in recording."""
    labels = [r["label"] for r in top]
    names = [_species_name(r) for r in top]
    title = f"Species x local time of day ({summary['bucket_minutes']:g}-minute buckets)"
    if not labels:
        return charts.heatmap([], [], np.zeros((0, 0)), "Species x local time of day: no detections", "")
    day = species_by_time_of_day(con, labels, float(summary["bucket_minutes"]), places)
    if day.buckets:
        if day.bucket_minutes != int(round(summary["bucket_minutes"])):
            title = f"Species x local time of day ({day.bucket_minutes}-minute buckets)"
        notes = []
        if day.utc:
            notes.append("some recordings' starts are known only in UTC: their hours are UTC")
        if day.left_out:
            notes.append(f"{day.left_out:,} detection(s) of recordings with no known start left out")
        if notes:
            title += "\n" + "; ".join(notes)
        return charts.heatmap(names, day.buckets, day.grid, title, "local time of day (h:mm), bucket start")
    timeline = views["timeline"]
    basis = timeline.column("time_basis")[0].as_py() if timeline.num_rows else "recording"
    shown = timeline.filter(pc.is_in(timeline.column("label"), value_set=pa.array(labels, pa.string())))
    cells = shown.select(["label", "bucket_start_ms", "detections"]).to_pylist()
    starts = sorted({c["bucket_start_ms"] for c in cells})
    if starts:
        width = int(summary["bucket_minutes"] * 60000)
        starts = list(range(starts[0], starts[-1] + width, width)) if (starts[-1] - starts[0]) // width < 2000 else starts
    grid = np.zeros((len(labels), len(starts)))
    li, si = {v: i for i, v in enumerate(labels)}, {v: i for i, v in enumerate(starts)}
    for c in cells:
        if c["label"] in li and c["bucket_start_ms"] in si:
            grid[li[c["label"]], si[c["bucket_start_ms"]]] = c["detections"]
    return charts.heatmap(
        names,
        [_bucket_text(s, basis) for s in starts],
        grid,
        f"Species x time ({summary['bucket_minutes']:g}-minute buckets; no local recording start known)",
        "UTC time bucket" if basis == "utc" else "time in recording (h:mm), bucket start",
    )


def _species_name(row: dict[str, Any]) -> str:
    name = row.get("label_name")
    return f"{name} ({row['label']})" if name and name != row["label"] else str(row["label"])


def site_grid(con: Any, species: Sequence[str], min_confidence: float = 0.0) -> tuple[list[str], list[str], np.ndarray]:
    """Locations, local days and focus-species detections per location and day (NaN: not
    surveyed), streamed recording by recording through the histories' own builder (so the panel
    and ``histories/`` agree for the same species and ``--min-confidence``); raises
    :class:`BadcError` when locations or days cannot be known."""
    chunks = chunks_relation(con.cursor().table("chunks"))
    dets = detections_relation(con.cursor().table("detections"), min_confidence, species)
    builder = HistoryBuilder(species)
    for group in recording_groups(chunks, dets):
        builder.add(recordings(group.chunks)[group.recording_id], group.chunks, group.detections)
    hist = builder.result()
    grid = np.full((len(hist.locations), len(hist.days)), np.nan)
    for i, loc in enumerate(hist.locations):
        for j, day in enumerate(hist.days):
            if hist.detected("", loc, day) != "NA":
                grid[i, j] = sum(hist.counts.get((sp, loc, day), 0) for sp in species)
    return hist.locations, [d.isoformat() for d in hist.days], grid


def site_panel(con: Any, summary: dict[str, Any]) -> bytes:
    """Focus-species detections per location per local day (map-free site panel): the bundle's
    ``focus_species`` (default :data:`FOCUS_DEFAULT`) at its ``min_confidence``."""
    species = list(summary.get("focus_species") or FOCUS_DEFAULT)
    threshold = float(summary.get("min_confidence") or 0.0)
    title = f"Focus species ({', '.join(species)}) per location and day"
    if threshold:
        title += f", confidence >= {threshold:g}"
    try:
        locations, days, grid = site_grid(con, species, threshold)
    except BadcError as exc:
        return charts.site_days([], [], np.zeros((0, 0)), f"{title}\n{exc.message}")
    return charts.site_days(locations, days, grid, title)


def render_html(
    summary: dict[str, Any],
    images: dict[str, bytes],
    failed: list[dict[str, Any]],
    workers: list[dict[str, Any]],
    *,
    sites: list[dict[str, Any]] | None = None,
    recordings: list[dict[str, Any]] | None = None,
    guide: str = "",
    calibration: str = "",
) -> str:
    """The page (pure); ``guide``: the "next steps" and files section (:mod:`guide`)."""
    c = summary["counts"]
    esc = html.escape
    title = f"badc-mpi results: {summary.get('name', '')}".strip()
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title><style>{CSS}</style></head><body>"
    ]
    if summary["tiny_model"]:
        parts.append(
            '<div class="banner" id="tiny-banner">TINY TEST MODEL: these detections come from the random-weight '
            "tiny HawkEars model (model_version starts with &quot;tiny:&quot;). They are meaningless: do not use them "
            "for science.</div>"
        )
    fp = summary.get("fingerprint") or {}
    if c.get("mixed"):
        parts.append(
            f'<div class="banner" id="mixed-banner">MIXED SETTINGS: {c["mixed"]:,} chunk(s) were analysed with other '
            f"settings than the newest run's (fingerprint {esc(str(fp.get('id')))}, run {esc(str(fp.get('run_id')))}) "
            "and are counted because of --accept-mixed. Their detections carry their own fingerprint.</div>"
        )
    parts.append(f"<h1>{esc(title)}</h1><p class='sub'>built {esc(summary['created_at'])} by badc-mpi bundle</p>")
    boxes = [
        ("chunks", c["chunks"], False),
        ("analysed", c["analysed"], False),
        ("failed", c["failed"], c["failed"] > 0),
        ("not analysed", c["not_analysed"], c["not_analysed"] > 0),
        ("stale (other settings)", c.get("stale", 0), c.get("stale", 0) > 0),
        ("detections", c["detections"], False),
        ("species", summary["labels"], False),
        ("recordings", summary["recordings"], False),
        ("runs", c["runs"], False),
        ("files skipped or partly read", c["problems"], c["problems"] > 0),
    ]
    parts.append(
        '<div class="counts" id="counts">'
        + "".join(f"<div class='{'bad' if bad else ''}'><b>{v:,}</b>{esc(k)}</div>" for k, v, bad in boxes)
        + "</div>"
    )
    if failed:
        parts.append(
            f"<p><b>{c['failed']:,} failed and {c['not_analysed']:,} not analysed chunks</b>: see <a href='#failures'>the table</a>.</p>"
        )
    if c.get("stale"):
        parts.append(
            f"<p id='stale-note'><b>{c['stale']:,} stale chunks</b>: done only with other settings than the newest run's "
            f"(fingerprint {esc(str(fp.get('id')))}); not counted. Run them again (badc-mpi run --resume --rerun-changed) "
            "or bundle with --accept-mixed.</p>"
        )
    parts.append(guide)
    parts.append("<h2>Top species</h2>" + _img(images["top_species"], "top species bar chart", "chart-top-species"))
    parts.append("<h2>Species over time</h2>" + _img(images["heatmap"], "species by time bucket heat map", "chart-heatmap"))
    parts.append("<h2>Confidence</h2>" + _img(images["confidence"], "confidence histograms", "chart-confidence"))
    parts.append("<h2 id='sites'>Sites</h2>" + _img(images["sites"], "focus species per location per day", "chart-sites"))
    parts.append("<h3>Per site</h3>" + _table(sites or [], "site-table"))
    n_rec = summary["recordings"]
    shown = (
        f" (first {len(recordings or [])} of {n_rec:,}; all in quicklook/recording_summary.csv)"
        if len(recordings or []) < n_rec
        else ""
    )
    parts.append(f"<h3 id='recordings'>Per recording{shown}</h3>" + _table(recordings or [], "recording-table"))
    parts.append(calibration)  # the Calibration section (results/calibrate/report.py), "" without one
    parts.append("<h2>Workers</h2>" + _img(images["workers"], "throughput and GPU utilisation per worker", "chart-workers"))
    parts.append(_table(worker_rows(workers), "worker-table"))
    parts.append(f"<h2 id='failures'>Chunks not analysed (first {FAILED_ROWS})</h2>" + _table(failed, "failure-table"))
    prov = [{head: r.get(k) for k, head in PROVENANCE_COLUMNS.items()} for r in summary["runs"]]
    parts.append("<h2>Provenance</h2>" + _table(prov, "provenance-table"))
    parts.append(
        f"<details><summary>run options</summary><pre>{esc(json.dumps(summary.get('options', {}), indent=1, default=str))}</pre></details>"
    )
    problems = summary["problems"][:PROBLEM_ROWS]
    parts.append(f"<h2>Files skipped or partly read ({len(summary['problems']):,})</h2>" + _table(problems, "problem-table"))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(con: Any, views: dict[str, pa.Table], summary: dict[str, Any], path: str, *, top_n: int) -> str:
    places = recording_places(con)
    images = chart_images(con, views, summary, top_n, places)
    failed = rows_of(con, V.FAILED_CHUNKS, [FAILED_ROWS])
    workers = views["worker_throughput"].to_pylist()
    options = {r["run_id"]: json.loads(r["options"] or "{}") for r in rows_of(con, "SELECT run_id, options FROM runs")}
    sites, recs = site_tables(con, views["recording_summary"].to_pylist(), RECORDING_ROWS, places)
    guide = guide_html(summary, os.path.dirname(os.path.abspath(path)))
    page = render_html(
        {**summary, "options": options},
        images,
        failed,
        workers,
        sites=sites,
        recordings=recs,
        guide=guide,
        calibration=calibration_section(con, summary),
    )
    atomic_write_text(path, page)
    return path
