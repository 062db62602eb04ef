"""The command-line options of ``aggregate``, ``bundle`` and ``export`` (parsers only; the
commands themselves are in :mod:`badc_mpi.cli`). ``export`` and ``bundle --export`` share
:func:`add_export_options` and :func:`export_options`: one meaning in both."""

from __future__ import annotations

import argparse
import os
from typing import Any

RESULTS_SOURCES_HELP = (
    "SOURCE: a manifest (its runs in its telemetry folder), a DataLad dataset folder (every run in "
    "artifacts/telemetry/infer), a telemetry folder (every run in it) or one run's file (.ledger.jsonl, "
    ".jsonl, .summary.json). A manifest's runs are those naming it and those into the same output folder "
    "holding its chunks (a retry through X.failed.csv). The latest success per chunk made with the newest "
    "run's settings counts, once (others are 'stale' unless --accept-mixed); files that cannot be read "
    "are listed with their path. Written to <dataset>/artifacts/aggregate/<name>/ "
    "(./artifacts/aggregate/<name>/ outside a dataset); <name> defaults to the manifest's stem. "
    "Schema: docs/results.md."
)


def add_results_commands(sub: Any) -> None:
    for name, text in (
        ("aggregate", "aggregate runs into Parquet: detections, chunks, runs, attempts"),
        ("bundle", "aggregate when needed, then DuckDB views, quicklook CSVs, summary.json and report.html"),
    ):
        p = sub.add_parser(name, help=text, description=text + ".", epilog=RESULTS_SOURCES_HELP)
        p.add_argument("sources", nargs="+", metavar="SOURCE")
        add_source_options(p, "bundle folder name", "write here instead of <dataset>/artifacts/aggregate/<name>")
        p.add_argument(
            "--source",
            default="auto",
            choices=("auto", "store", "per-chunk"),
            help="where detections are read: auto (default: what each run's ledger says it wrote), "
            "store (<output>/detections/), per-chunk (<output>/<recording>/<chunk>.detections.jsonl)",
        )
        p.add_argument("--force", action="store_true", help="aggregate again even when the inputs did not change")
        p.add_argument(
            "--merge-overlaps",
            default="auto",
            choices=("auto", "on", "off"),
            help="merge a label's detections that overlap across chunk boundaries in one recording "
            "(auto, the default: when chunks overlap; docs/results.md)",
        )
        if name == "bundle":
            p.add_argument(
                "--export",
                default="",
                metavar="FORMATS",
                help="also write these exports into <bundle>/exports/, as `badc-mpi export` does: "
                "wildtrax, raven, tables, histories (comma-separated) or all",
            )
            add_export_options(p, bundle=True)
            p.add_argument("--bucket-minutes", type=float, default=60.0, metavar="MIN", help="timeline bucket (default 60)")
            p.add_argument("--top-n", type=int, default=20, metavar="N", help="species in the charts (default 20)")
            p.add_argument(
                "--record-datalad",
                action="store_true",
                help="inside a DataLad dataset, `datalad save` the bundle folder afterwards (make bundle does, unless RECORD_DATALAD=0)",
            )


EXPORT_EPILOG = """\
formats (comma-separated, or all; files under --output, default <aggregate>/exports/):
  wildtrax   wildtrax_tags.csv + wildtrax_tasks.csv (WildTrax's upload templates; --task-method, --task-duration,
             --task-status, --wildtrax-species) + wildtrax_clips.csv: recordings over 1800 s are split into 1800-s
             clips, a task each (the cut list); a tag in every task (and 1SPM minute) a species was heard in
  raven      raven/<recording>.HawkEars.selections.txt, one Raven Pro selection table per analysed recording
  tables     tables/all.csv and tables/<study_area>.csv (filename, start_time, end_time, class_name, class_code,
             score, study_area, location, recording_date_time)
  histories  histories/: detection histories (location x occasion: 1, 0, NA = not surveyed; --occasion,
             --survey-window, --min-effort-min) per --focus-species species, the long table with minutes
             analysed and doy/hr covariates, and effort_minutes.csv; each location spans its own deployment
Location, study area and date-time come from the manifest's columns (location, study_area,
recording_start_local), else from file names (LOCATION_YYYYMMDD_HHMMSS). A missing field the format
needs is a one-line error (exit 2) and nothing is written. Details: docs/results.md."""


def add_export_command(sub: Any) -> None:
    text = "write WildTrax, Raven, the lab's tables or detection histories from a bundle, manifest or dataset"
    p = sub.add_parser(
        "export",
        help=text,
        description=text + ".",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a bundle folder, or SOURCEs as for `aggregate`")
    p.add_argument(
        "--format", default="wildtrax", metavar="FORMATS", help="wildtrax, raven, tables, histories (comma-separated) or all"
    )
    p.add_argument("--output", metavar="DIR", help="folder for the files (default: <aggregate>/exports)")
    add_export_options(p, bundle=False)
    add_source_options(p, "aggregate folder name", "the aggregate folder instead of <dataset>/artifacts/aggregate/<name>")
    p.add_argument(
        "--record-datalad",
        action="store_true",
        help="inside a DataLad dataset, `datalad save` the export folder afterwards (make export does, unless RECORD_DATALAD=0)",
    )


def add_source_options(p: Any, name_help: str, dest_help: str) -> None:
    """Where the runs are and where their aggregate goes (aggregate, bundle, export)."""
    p.add_argument("--name", help=f"{name_help} (default: the manifest's stem, else 'all')")
    p.add_argument("--dest", metavar="DIR", help=dest_help)
    p.add_argument("--telemetry-dir", metavar="DIR", help="where a manifest's runs are (default as for run)")
    p.add_argument("--output-dir", metavar="DIR", help="read detections here instead of each run's output folder")
    p.add_argument(
        "--accept-mixed",
        action="store_true",
        help="keep chunks done only with other settings than the newest run's (a fingerprint: docs/results.md); "
        "without it they are 'stale', not counted and not exported; the report says so in a banner",
    )


def add_export_options(p: Any, *, bundle: bool) -> None:
    """The options `export` and `bundle --export` share (one meaning in both)."""
    where = "the exports and the report's Sites panel" if bundle else "every format"
    p.add_argument(
        "--min-confidence", type=float, default=0.0, metavar="X", help=f"leave out detections below X (0..1), in {where}"
    )
    p.add_argument(
        "--focus-species",
        metavar="CODES",
        help="species for detection histories (adds the histories format)"
        + (" and the report's Sites panel (default ROPT,RUGR,STGR,SPGR,WIPT)" if bundle else "")
        + ", e.g. ROPT,RUGR,STGR,SPGR,WIPT",
    )
    p.add_argument(
        "--thresholds",
        metavar="FILE",
        help="per-species thresholds (the thresholds.csv `badc-mpi calibrate` writes) in "
        + ("the exports" if bundle else "every format")
        + "; species without one use --min-confidence and are listed in a note and export.json",
    )
    p.add_argument(
        "--allow-tiny-model",
        action="store_true",
        help="export detections of the tiny random-weight test model (tests, demos): refused otherwise; every file then says so",
    )
    p.add_argument(
        "--task-method", default="None", choices=("None", "1SPT", "1SPM"), help="WildTrax task method (default None: every tag)"
    )
    p.add_argument(
        "--task-duration",
        type=float,
        metavar="S",
        help="WildTrax task duration in s, up to two decimals (default: the recording's, at most 1799.99; longer "
        "recordings are split into 1800-s clips)",
    )
    p.add_argument(
        "--task-status",
        default="incomplete",
        choices=("incomplete", "complete"),
        help="WildTrax task_is_complete: incomplete (default, f: a classifier did not listen, as wildrtrax writes tasks) "
        "or complete (t, unless a chunk of the task was not analysed)",
    )
    p.add_argument(
        "--wildtrax-species",
        metavar="FILE",
        help="a WildTrax project's species list (CSV with a species_code column, or one code a line): tags of other "
        "species are left out and counted (export.json, a note)",
    )
    p.add_argument(
        "--occasion",
        default="day",
        metavar="KIND",
        help="detection-history occasions: day (default: a local calendar day), dawn (the survey window of each day, "
        "default 04:00-10:00) or N-min (e.g. 10-min: consecutive local N-minute blocks)",
    )
    p.add_argument(
        "--survey-window",
        metavar="HH:MM-HH:MM",
        help="detection histories: only this local time of day counts (e.g. 04:00-10:00); dawn's default 04:00-10:00",
    )
    p.add_argument(
        "--min-effort-min",
        type=float,
        default=1.0,
        metavar="MIN",
        help="detection histories: minutes analysed an occasion needs to be surveyed (default 1; less is NA)",
    )


#: set to 1: exports of tiny-model detections are allowed without --allow-tiny-model (CI running the README as written)
ALLOW_TINY_VAR = "BADC_MPI_ALLOW_TINY_MODEL"


def export_options(args: argparse.Namespace, formats: tuple[str, ...], output: str | None = None) -> Any:
    """ExportOptions from the shared options: --focus-species adds histories; histories alone
    take the default focus species."""
    from badc_mpi.results.export.histories import parse_species
    from badc_mpi.results.export.write import ExportOptions

    species = tuple(parse_species(args.focus_species)) if args.focus_species else ()
    if species and "histories" not in formats:
        formats += ("histories",)
    default = "histories" in formats and not species
    if default:
        species = tuple(parse_species(None))
    return ExportOptions(
        formats,
        output,
        args.min_confidence,
        species,
        args.task_method,
        args.task_duration,
        bool(args.accept_mixed),
        getattr(args, "thresholds", None),
        allow_tiny_model=bool(getattr(args, "allow_tiny_model", False)) or os.environ.get(ALLOW_TINY_VAR) == "1",
        species_default=default,
        task_status=args.task_status,
        wildtrax_species=args.wildtrax_species,
        occasion=args.occasion,
        survey_window=args.survey_window,
        min_effort_min=args.min_effort_min,
    )
