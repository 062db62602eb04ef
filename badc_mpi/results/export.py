"""``badc-mpi export``: WildTrax, Raven, the lab's tables and detection histories from an aggregate.

The thin I/O shell around the pure formatters (:mod:`export_wildtrax`, :mod:`export_raven`,
:mod:`histories`): find the aggregate (a bundle folder, or aggregate the MANIFEST/DATASET's runs
when their inputs changed), read its Parquet files with constant, parameterised DuckDB queries,
build every file in memory, and only then write them (each to a temporary name, renamed), so a
missing column or a bad option writes nothing. ``export.json`` (last) lists what was written and
every note (metadata that was missing or guessed, tags left out).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from badc_mpi.results.export_meta import ExportError, Recording, recordings, require
from badc_mpi.results.export_raven import RAVEN_COLUMNS, RAVEN_SUFFIX, TABLE_COLUMNS, raven_rows, safe_name, table_row
from badc_mpi.results.export_wildtrax import TAG_COLUMNS, TASK_COLUMNS, wildtrax_rows
from badc_mpi.results.histories import LONG_COLUMNS, build_histories
from badc_mpi.results.schema import ANALYSED
from badc_mpi.storage.atomic import atomic_write_text, ensure_dir

EXPORT_SCHEMA = "badc-mpi.export/1"
FORMATS = ("wildtrax", "raven", "tables", "histories")

#: the columns the exports read (constant SQL; the path and the threshold are parameters)
DETECTIONS_SQL = """
SELECT recording_id, chunk_id, label, label_code, label_name, confidence, start_ms, end_ms, hawkears_version
FROM read_parquet(?)
WHERE confidence >= CAST(? AS FLOAT)
ORDER BY recording_id, start_ms, end_ms, label
"""
CHUNKS_SQL = "SELECT * FROM read_parquet(?) ORDER BY recording_id, start_ms, chunk_id"


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = ("wildtrax",)
    output: str | None = None  #: folder (default: <aggregate>/exports)
    min_confidence: float = 0.0
    focus_species: tuple[str, ...] = ()
    task_method: str = "None"
    task_duration: int | None = None


@dataclass
class ExportResult:
    folder: str
    aggregate: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_formats(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return FORMATS
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ExportError(
            f"--format {text!r}: unknown format {', '.join(bad) or '(none)'}", fix=f"use {', '.join(FORMATS)} or all"
        )
    return tuple(dict.fromkeys(names))


def is_aggregate(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in ("detections.parquet", "chunks.parquet"))


def find_aggregate(sources: Sequence[str], **kwargs: Any) -> str:
    """The aggregate folder: SOURCE itself when it is a bundle, else aggregate (reused when unchanged)."""
    if len(sources) == 1 and is_aggregate(sources[0]):
        return os.path.abspath(sources[0])
    from badc_mpi.results.aggregate import aggregate
    from badc_mpi.results.bundle import bundle_folder
    from badc_mpi.results.runs import find_runs

    sel = find_runs(sources, telemetry_dir=kwargs.get("telemetry_dir"))
    folder = bundle_folder(sources, sel, kwargs.get("name"), kwargs.get("dest"))
    aggregate(sources, folder, output_dir=kwargs.get("output_dir"), reuse=True, selection=sel)
    return folder


def _query(path: str, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    import duckdb

    con = duckdb.connect()
    try:
        cur = con.execute(sql, [path, *params])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def _csv(rows: Sequence[Sequence[Any]], header: Sequence[str] | None, delimiter: str = ",") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def build_files(
    detections: list[dict[str, Any]], chunks: list[dict[str, Any]], options: ExportOptions
) -> tuple[dict[str, str], list[str]]:
    """Every file of the export (relative path -> text) and the notes (pure)."""
    files: dict[str, str] = {}
    notes: list[str] = []
    recs = recordings(chunks)
    analysed_ids = sorted({c["recording_id"] for c in chunks if c["status"] == ANALYSED})
    analysed = {r: recs[r] for r in analysed_ids}
    incomplete = {c["recording_id"] for c in chunks if c["status"] != ANALYSED}
    by_rec: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in detections:
        by_rec[d["recording_id"]].append(d)
    guessed = sorted(r.recording_id for r in analysed.values() if r.start_basis and r.start_basis != "recording_start_local")
    if guessed:
        basis = sorted({analysed[r].start_basis or "" for r in guessed})
        notes.append(f"recording date-time of {len(guessed)} recording(s) from {', '.join(basis)} (no recording_start_local)")
    if "wildtrax" in options.formats:
        require(analysed.values(), "wildtrax export", ("location", "start_local"), "WildTrax's location and recording_date_time")
        wt = wildtrax_rows(
            detections, analysed, method=options.task_method, task_duration=options.task_duration, incomplete=incomplete
        )
        files["wildtrax_tags.csv"] = _csv(wt.tags, TAG_COLUMNS)
        files["wildtrax_tasks.csv"] = _csv(wt.tasks, TASK_COLUMNS)
        for reason, n in sorted(wt.left_out.items()):
            notes.append(f"wildtrax: {n} tag(s) left out: {reason}")
        if wt.codes_left_out:
            listed = ", ".join(f"{c or '(empty)'} ({n})" for c, n in sorted(wt.codes_left_out.items()))
            notes.append(f"wildtrax: species codes without a WildTrax code left out: {listed}")
    if "raven" in options.formats:
        for rid in analysed_ids:
            files[f"raven/{safe_name(rid)}{RAVEN_SUFFIX}"] = _csv(raven_rows(by_rec.get(rid, [])), RAVEN_COLUMNS, "\t")
    if "tables" in options.formats:
        files.update(_tables(by_rec, analysed, notes))
    if "histories" in options.formats:
        species = list(options.focus_species)
        hist = build_histories(chunks, recs, detections, species)
        files["histories/detection_history_long.csv"] = _csv(hist.long_rows(), LONG_COLUMNS)
        files["histories/effort_minutes.csv"] = _csv(hist.wide_rows(None), None)
        for sp in species:
            files[f"histories/{safe_name(sp)}.csv"] = _csv(hist.wide_rows(sp), None)
    return files, notes


def _tables(by_rec: dict[str, list[dict[str, Any]]], recs: dict[str, Recording], notes: list[str]) -> dict[str, str]:
    areas: dict[str, list[list[Any]]] = defaultdict(list)
    every: list[list[Any]] = []
    for rec in recs.values():
        if rec.study_area:
            areas.setdefault(rec.study_area, [])
    for rid, rec in recs.items():
        for d in by_rec.get(rid, []):
            row = table_row(d, rec)
            every.append(row)
            if rec.study_area:
                areas[rec.study_area].append(row)
    files = {"tables/all.csv": _csv(every, TABLE_COLUMNS)}
    lacking = sum(1 for r in recs.values() if not r.study_area)
    if lacking:
        notes.append(f"tables: {lacking} recording(s) have no study_area column value: only in tables/all.csv")
    names: dict[str, str] = {}
    for area, rows in sorted(areas.items()):
        name = safe_name(area)
        if name in names or name == "all":
            raise ExportError(
                f"study areas {names.get(name, 'all')!r} and {area!r} map to one file name tables/{name}.csv",
                fix="rename one study area in the manifest",
            )
        names[name] = area
        files[f"tables/{name}.csv"] = _csv(rows, TABLE_COLUMNS)
    return files


def export(sources: Sequence[str], options: ExportOptions, **kwargs: Any) -> ExportResult:
    """Write the export of ``sources`` (see the module doc); ``kwargs``: ``telemetry_dir,
    output_dir, name, dest`` as for ``badc-mpi aggregate``."""
    if not 0.0 <= options.min_confidence <= 1.0:
        raise ExportError(f"--min-confidence {options.min_confidence} is outside 0..1", fix="give a score such as 0.3")
    if "histories" in options.formats and not options.focus_species:
        raise ExportError("detection histories need species", fix="give --focus-species ROPT,RUGR,STGR,SPGR,WIPT")
    folder = find_aggregate(sources, **kwargs)
    out_dir = os.path.abspath(options.output or os.path.join(folder, "exports"))
    det_path, chunk_path = (os.path.join(folder, f) for f in ("detections.parquet", "chunks.parquet"))
    detections = _query(det_path, DETECTIONS_SQL, [float(options.min_confidence)])
    chunks = _query(chunk_path, CHUNKS_SQL, [])
    files, notes = build_files(detections, chunks, options)
    result = ExportResult(out_dir, folder, notes=notes)
    ensure_dir(out_dir)
    for rel, text in files.items():
        result.files.append(atomic_write_text(os.path.join(out_dir, rel), text))
    doc = {
        "schema": EXPORT_SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "aggregate": folder,
        "options": asdict(options),
        "files": sorted(files),
        "notes": notes,
    }
    atomic_write_text(os.path.join(out_dir, "export.json"), json.dumps(doc, indent=1) + "\n")
    return result
