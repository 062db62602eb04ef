"""``badc-mpi export`` (and ``badc-mpi bundle --export``): WildTrax, Raven, the lab's tables and
detection histories from an aggregate.

The thin shell around the pure formatters (:mod:`export_wildtrax`, :mod:`export_raven`,
:mod:`histories`): find the aggregate (a bundle folder, or aggregate the MANIFEST/DATASET's runs
when their inputs changed), then two streamed passes over its Parquet files, recording by
recording (:mod:`export_stream`; memory is one recording's rows, never the campaign's):

1. **check** (chunks only): every recording's location, date-time, study area and file names;
   a field a format needs that is missing, or two names that would share a file, is a one-line
   error before anything is written;
2. **write**: each recording's rows go straight into the files, staged in a hidden folder and
   renamed into place when all are written (:mod:`export_files`); ``export.json`` (last) lists
   what was written and every note (metadata guessed, tags left out, recordings split); then the
   files of the previous export in that folder that this one did not write are removed.

Only the chunks analysed with the aggregate's fingerprint are exported, unless ``accept_mixed``
(an aggregate built with ``--accept-mixed`` exported without it reads its other chunks as stale).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from badc_mpi.results.aggregate.folders import find_aggregate
from badc_mpi.results.aggregate.schema import ANALYSED
from badc_mpi.results.export.checks import checked, mark_tiny
from badc_mpi.results.export.histories import LONG_COLUMNS, HistoryBuilder, lacks_days
from badc_mpi.results.export.histories import check as check_histories
from badc_mpi.results.export.meta import ExportError, Recording, recordings, require
from badc_mpi.results.export.occasions import OccasionRule, occasion_rule
from badc_mpi.results.export.raven import RAVEN_SUFFIX, TABLE_COLUMNS, raven_text, safe_name, table_text
from badc_mpi.results.export.staging import LISTING, StagedFiles, previous_files
from badc_mpi.results.export.stream import ANY_FINGERPRINT, Group, connect, parquet_groups
from badc_mpi.results.export.thresholds import Thresholds, read_thresholds
from badc_mpi.results.export.wildtrax import (
    CLIP_COLUMNS,
    RENAME_COLUMNS,
    TAG_COLUMNS,
    TASK_COLUMNS,
    WildTraxRows,
    check_options,
    load_species_list,
    plan_clips,
    recording_rows,
)
from badc_mpi.results.export.wildtrax import notes as wildtrax_notes

EXPORT_SCHEMA = "badc-mpi.export/1"
FORMATS = ("wildtrax", "raven", "tables", "histories")
EXPORT_DIR = "exports"


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = ("wildtrax",)  #: empty: no files (a bundle's report still uses the rest)
    output: str | None = None  #: folder (default: <aggregate>/exports)
    min_confidence: float = 0.0
    focus_species: tuple[str, ...] = ()
    task_method: str = "None"
    task_duration: float | None = None
    accept_mixed: bool = False  #: also export chunks analysed with another fingerprint than the aggregate's
    thresholds: str | None = None  #: a thresholds.csv: per-species thresholds; other species: min_confidence
    allow_tiny_model: bool = False  #: export the tiny test model's detections (each file then says so)
    species_default: bool = False  #: focus_species are the default ones (said in a note)
    task_status: str = "incomplete"  #: WildTrax task_is_complete: incomplete (f) | complete (t)
    wildtrax_species: str | None = None  #: a WildTrax project species list (file)
    occasion: str = "day"  #: detection-history occasions: day | dawn | N-min
    survey_window: str | None = None  #: HH:MM-HH:MM local
    min_effort_min: float = 1.0  #: minutes analysed an occasion needs to be surveyed

    def check(self) -> None:
        """Raise :class:`ExportError` for a bad option (before anything is read or written)."""
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ExportError(f"--min-confidence {self.min_confidence} is outside 0..1", fix="give a score such as 0.3")
        if "histories" in self.formats and not self.focus_species:
            raise ExportError("detection histories need species", fix="give --focus-species ROPT,RUGR,STGR,SPGR,WIPT")
        check_options(self.task_method, self.task_duration, self.task_status)
        self.occasions()

    def occasions(self) -> OccasionRule:
        """The detection histories' occasion rule (ExportError for a bad one)."""
        return occasion_rule(self.occasion, self.survey_window, self.min_effort_min)


@dataclass
class ExportResult:
    folder: str
    aggregate: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    focus_species: tuple[str, ...] = ()  #: as codes of the taxonomy (names mapped)


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


def _recording(group: Group) -> tuple[Recording, bool]:
    rec = recordings(group.chunks)[group.recording_id]
    return rec, any(c["status"] == ANALYSED for c in group.chunks)


@dataclass
class Survey:
    """What the check pass found (kept: the recordings that lack something, names, counts)."""

    lacking: dict[str, list[Recording]] = field(default_factory=dict)  #: what -> recordings
    raven_names: dict[str, str] = field(default_factory=dict)  #: file name -> recording id
    area_names: dict[str, str] = field(default_factory=dict)  #: file name -> study area
    upload_names: dict[str, str] = field(default_factory=dict)  #: WildTrax upload name -> recording id
    guessed: Counter[str] = field(default_factory=Counter)  #: start basis -> analysed recordings
    no_study_area: int = 0

    def lack(self, what: str, rec: Recording) -> None:
        self.lacking.setdefault(what, []).append(rec)


def _claim(names: dict[str, str], name: str, owner: str, what: str, fix: str) -> None:
    if names.setdefault(name, owner) != owner:
        raise ExportError(f"{what} {names[name]!r} and {owner!r} map to one file name {name}", fix=fix)


def survey(groups: Any, options: ExportOptions) -> Survey:
    """The check pass over chunk groups (pure but for the iteration); raises the first problem."""
    out = Survey()
    formats = options.formats
    for group in groups:
        rec, analysed = _recording(group)
        if "histories" in formats:
            if rec.location is None:
                out.lack("histories location", rec)
            if lacks_days(rec, group.chunks):
                out.lack("histories day", rec)
        if not analysed:
            continue
        if rec.start_basis and rec.start_basis != "recording_start_local":
            out.guessed[rec.start_basis] += 1
        for name in ("location", "start_local"):
            if "wildtrax" in formats and getattr(rec, name) is None:
                out.lack(f"wildtrax {name}", rec)
        if "wildtrax" in formats and rec.location is not None and rec.start_local is not None:
            for clip in plan_clips(rec, options.task_duration):  # one location at one time: one WildTrax recording
                _claim(out.upload_names, clip.file_name, rec.recording_id, "recordings",
                       "they share a location and start time: tell their locations apart, or fix their start times")  # fmt: skip
        if "raven" in formats:
            _claim(out.raven_names, safe_name(rec.recording_id), rec.recording_id, "recording ids",
                   "rename one recording (the ids come from the paths under the scanned root)")  # fmt: skip
        if "tables" in formats:
            if rec.study_area:
                area = rec.study_area
                _claim(out.area_names, safe_name(area), area, "study areas", "rename one study area in the manifest")
                if safe_name(area) == "all":
                    raise ExportError(f"study area {area!r} maps to the file name tables/all.csv", fix="rename the study area")
            else:
                out.no_study_area += 1
    lacking = out.lacking
    require(lacking.get("wildtrax location", []), "wildtrax export", ("location",), "WildTrax's location and recording_date_time")
    require(lacking.get("wildtrax start_local", []), "wildtrax export", ("start_local",), "WildTrax's recording_date_time")
    check_histories(lacking.get("histories location", []), lacking.get("histories day", []))
    return out


class Writer:
    """The write pass: each recording's rows into the staged files."""

    def __init__(self, files: StagedFiles, options: ExportOptions) -> None:
        self.files, self.options, self.formats = files, options, options.formats
        self.wildtrax = WildTraxRows()
        self.left_out: dict[str, dict[str, int]] = {}  #: export.json's left_out (what and how many)
        self.project_species = load_species_list(options.wildtrax_species) if options.wildtrax_species else None
        self.histories = HistoryBuilder(options.focus_species, options.occasions()) if "histories" in self.formats else None
        if "wildtrax" in self.formats:  # header-only files when nothing qualifies
            for rel, header in (("wildtrax_tags.csv", TAG_COLUMNS), ("wildtrax_tasks.csv", TASK_COLUMNS),
                                ("wildtrax_clips.csv", CLIP_COLUMNS), ("wildtrax_rename.csv", RENAME_COLUMNS)):  # fmt: skip
                files.writer(rel, header)
        if "tables" in self.formats:
            files.writer("tables/all.csv", TABLE_COLUMNS)

    def add(self, group: Group) -> None:
        rec, analysed = _recording(group)
        dets = group.detections
        if self.histories is not None:
            self.histories.add(rec, group.chunks, dets)
        if not analysed:
            return
        if "wildtrax" in self.formats:
            o = self.options
            rows = recording_rows(rec, group.chunks, dets, method=o.task_method, task_duration=o.task_duration,
                                  task_status=o.task_status, project_species=self.project_species)  # fmt: skip
            self.files.append_text("wildtrax_tags.csv", "".join(rows.tags))
            for rel, part in (
                ("wildtrax_tasks.csv", rows.tasks),
                ("wildtrax_clips.csv", rows.clips),
                ("wildtrax_rename.csv", rows.renames),
            ):
                self.files.writer(rel).writerows(part)
            for total, counts in ((self.wildtrax.left_out, rows.left_out), (self.wildtrax.codes_left_out, rows.codes_left_out),
                                  (self.wildtrax.split, rows.split), (self.wildtrax.not_in_project, rows.not_in_project)):  # fmt: skip
                total.update(counts)
        if "raven" in self.formats:
            self.files.write_text(f"raven/{safe_name(rec.recording_id)}{RAVEN_SUFFIX}", raven_text(dets, rec.sample_rate))
        if "tables" in self.formats:
            text = table_text(dets, rec)
            self.files.append_text("tables/all.csv", text)
            if rec.study_area:
                self.files.append_text(f"tables/{safe_name(rec.study_area)}.csv", text, TABLE_COLUMNS)

    def finish(self, found: Survey) -> list[str]:
        """Write what needs the whole campaign (histories); return the notes."""
        notes = []
        if found.guessed:
            n = sum(found.guessed.values())
            notes.append(
                f"recording date-time of {n} recording(s) from {', '.join(sorted(found.guessed))} (no recording_start_local)"
            )
        if "wildtrax" in self.formats:
            notes.extend(wildtrax_notes(self.wildtrax))
            if self.project_species is not None:
                self.left_out["not_in_wildtrax_species"] = dict(sorted(self.wildtrax.not_in_project.items()))
        if "tables" in self.formats and found.no_study_area:
            notes.append(f"tables: {found.no_study_area} recording(s) have no study_area column value: only in tables/all.csv")
        if self.histories is not None:
            hist = self.histories.result()
            notes.extend(hist.notes())
            self.left_out["outside_deployment"] = dict(sorted(hist.outside.items()))
            self.files.write_rows("histories/detection_history_long.csv", hist.long_rows(), LONG_COLUMNS)
            self.files.write_rows("histories/effort_minutes.csv", hist.wide_rows(None), None)
            for sp in hist.species:
                self.files.write_rows(f"histories/{safe_name(sp)}.csv", hist.wide_rows(sp), None)
        return notes


def _fingerprint(folder: str, options: ExportOptions) -> tuple[Any, dict[str, Any], list[str]]:
    """(the fingerprint id to keep, or every one; the aggregate's fingerprint facts; notes)."""
    try:
        with open(os.path.join(folder, "aggregate.json"), encoding="utf-8") as fh:
            facts = json.load(fh).get("fingerprint") or {}
    except (OSError, ValueError):
        facts = {}
    mixed, stale = int(facts.get("mixed") or 0), int(facts.get("stale") or 0)
    if mixed and not options.accept_mixed:
        note = f"{mixed} chunk(s) analysed with other settings left out (stale; --accept-mixed keeps them)"
        return facts.get("id"), facts, [note]
    if mixed:
        return ANY_FINGERPRINT, facts, [f"{mixed} chunk(s) analysed with other settings kept (--accept-mixed)"]
    if stale and options.accept_mixed:
        note = f"{stale} stale chunk(s) are not in this aggregate: aggregate again with --accept-mixed to keep them"
        return ANY_FINGERPRINT, facts, [note]
    return ANY_FINGERPRINT, facts, []


def _thresholds_used(
    con: Any, det_path: str, thresholds: Thresholds | None, options: ExportOptions
) -> tuple[dict[str, Any] | None, list[str]]:
    """``export.json``'s ``thresholds`` (which file, which species held to which threshold, which
    fell back to ``min_confidence``) and the note listing the latter."""
    if thresholds is None:
        return None, []
    rows = con.cursor().read_parquet(det_path).project("coalesce(label_code, label) AS code").distinct().fetchall()
    present = sorted({r[0] for r in rows if r[0] is not None})
    fallback = [c for c in present if c not in thresholds.by_species]
    used = {
        "file": os.path.abspath(thresholds.path),
        "sha256": thresholds.sha256,
        "species": dict(sorted(thresholds.by_species.items())),
        "fallback_min_confidence": options.min_confidence,
        "fallback_species": fallback,
    }
    if not fallback:
        return used, []
    shown = ", ".join(fallback[:30]) + (f" and {len(fallback) - 30} more" if len(fallback) > 30 else "")
    note = f"thresholds: {len(fallback)} species without a threshold in {thresholds.path} use --min-confidence {options.min_confidence:g}: {shown}"
    return used, [note]


def write_exports(folder: str, options: ExportOptions) -> ExportResult:
    """Write the export of the aggregate ``folder`` (see the module doc)."""
    options.check()
    options, agg_facts, check_notes = checked(options, folder)
    if options.species_default and "histories" in options.formats:
        check_notes.append(
            f"histories of the default focus species {','.join(options.focus_species)} (--focus-species to choose)"
        )
    out_dir = os.path.abspath(options.output or os.path.join(folder, EXPORT_DIR))
    det_path, chunk_path = (os.path.join(folder, f) for f in ("detections.parquet", "chunks.parquet"))
    only, facts, fp_notes = _fingerprint(folder, options)
    thresholds = read_thresholds(options.thresholds) if options.thresholds else None
    with tempfile.TemporaryDirectory(prefix="badc-mpi-export-") as spill:
        con = connect(spill)
        try:
            used, thr_notes = _thresholds_used(con, det_path, thresholds, options)
            found = survey(parquet_groups(con, chunk_path, None, only_fingerprint=only), options)
            files = StagedFiles(out_dir)
            try:
                writer = Writer(files, options)
                species = options.focus_species if set(options.formats) == {"histories"} else None
                groups = parquet_groups(
                    con,
                    chunk_path,
                    det_path,
                    min_confidence=options.min_confidence,
                    species=species,
                    only_fingerprint=only,
                    thresholds=thresholds.by_species if thresholds else None,
                )
                for group in groups:
                    writer.add(group)
                earlier, listing_note = previous_files(out_dir, EXPORT_SCHEMA)
                notes = check_notes + fp_notes + thr_notes + writer.finish(found) + ([listing_note] if listing_note else [])
                if agg_facts.tiny:
                    files.close()
                    mark_tiny(files.staging, files.names)
                removing = sorted(r for r in set(earlier) - set(files.names) if os.path.lexists(os.path.join(out_dir, r)))
                doc = {
                    "schema": EXPORT_SCHEMA,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "aggregate": folder,
                    "options": asdict(options),
                    "tiny_model": agg_facts.tiny,
                    "fingerprint": {k: facts.get(k) for k in ("id", "run_id", "settings", "stale", "mixed")},
                    "thresholds": used,
                    "files": sorted(files.names),
                    "removing": removing,  #: the previous export's files this one replaces (removed after this listing)
                    "notes": notes,
                    "left_out": writer.left_out,  #: tags not in the WildTrax species list, chunks outside a deployment
                }
                files.write_text(LISTING, json.dumps(doc, indent=1) + "\n")
                written = files.commit(last=LISTING, remove=removing)
            except BaseException:
                files.abort()
                raise
        finally:
            con.close()
    return ExportResult(out_dir, folder, [p for p in written if not p.endswith(LISTING)], notes, options.focus_species)


def export(sources: Sequence[str], options: ExportOptions, **kwargs: Any) -> ExportResult:
    """Write the export of ``sources``; ``kwargs``: ``telemetry_dir, output_dir, name, dest`` as
    for ``badc-mpi aggregate``."""
    options.check()
    return write_exports(find_aggregate(sources, accept_mixed=options.accept_mixed, **kwargs), options)
