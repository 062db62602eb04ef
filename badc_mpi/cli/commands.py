"""The commands' handlers: each reads its parsed arguments, calls the library, prints what the
operator reads, and returns an exit code; errors are raised, for ``exits.py`` to turn into a
message and an exit code. ``COMMANDS`` maps each command name to its handler."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from badc_mpi.arguments import run_options_from_args
from badc_mpi.cli import nextstep
from badc_mpi.cli.exits import end_job
from badc_mpi.cli.parser import build_parser
from badc_mpi.cli.resume import own_flags, resume_command, run_flags
from badc_mpi.errors import ExitCode
from badc_mpi.logs import configure_logging


def cmd_check_chunks(args: argparse.Namespace) -> int:
    from badc_mpi.inputs.chunk_status import check_chunk_status, enforce_chunk_status
    from badc_mpi.inputs.locations import default_locations
    from badc_mpi.inputs.manifest import load_manifests

    if args.run_args:
        run = build_parser().parse_args(["run", *args.manifests, *args.run_args])
        args.chunks_dir = args.chunks_dir or run.chunks_dir
        args.allow_partial_chunks = args.allow_partial_chunks or run.allow_partial_chunks
        args.allow_missing = args.allow_missing or run.allow_missing
        if not run.check_chunks:
            return ExitCode.OK
    manifests = load_manifests(args.manifests, check_sources=not args.allow_missing)
    loc = default_locations(args.manifests[0], chunks_dir=args.chunks_dir)
    report = check_chunk_status(manifests, loc.chunks_dir)
    if args.json:
        print(
            json.dumps(
                {"chunks_dir": report.chunks_dir, "ok": report.ok, "statuses": [s.__dict__ for s in report.statuses]},
                indent=1,
            )
        )
    else:
        print(report.format())
    enforce_chunk_status(report, args.allow_partial_chunks)
    return ExitCode.OK


def cmd_validate(args: argparse.Namespace) -> int:
    from badc_mpi.inputs.manifest import load_manifests

    manifests = load_manifests(args.manifests, check_sources=True, allow_missing=args.allow_missing)
    for m in manifests:
        recordings = len({c.recording_id for c in m.chunks})
        print(
            f"{m.path}: {len(m.chunks)} chunks, {recordings} recordings, "
            f"{len(m.missing)} missing audio, extra columns: {', '.join(m.extra_columns) or '-'}"
        )
    return ExitCode.OK


def cmd_gpus(args: argparse.Namespace) -> int:
    from badc_mpi.gpu.report import format_gpus_report, gpus_report
    from badc_mpi.options import BindingOptions

    report = gpus_report(options=BindingOptions(args.max_gpus, args.workers_per_gpu, args.cpu_workers))
    print(json.dumps(report, indent=1, default=str) if args.json else format_gpus_report(report))
    return ExitCode.USAGE if report.get("error") else ExitCode.OK


def cmd_monitor(args: argparse.Namespace) -> int:
    from badc_mpi.monitor.loop import MonitorOptions, run_monitor

    try:
        return run_monitor(MonitorOptions(args.telemetry, follow=args.follow, interval_s=args.interval_s))
    except KeyboardInterrupt:  # Ctrl-C is how a --follow ends: not an error
        print(file=sys.stdout, flush=True)
        return int(ExitCode.OK)


def cmd_chunk(args: argparse.Namespace) -> int:
    from badc_mpi.chunker.command import format_summary, options_from_args, run_chunk
    from badc_mpi.errors import RecordingsError

    try:
        result = run_chunk(options_from_args(args))
    except RecordingsError as exc:  # one line per file or row, then the error line (main)
        for line in exc.problems[:200]:
            print(f"  {line}", file=sys.stderr)
        if len(exc.problems) > 200:
            print(f"  ... and {len(exc.problems) - 200} more", file=sys.stderr)
        raise
    print(format_summary(result))
    if args.record_datalad:
        from badc_mpi.orchestrate.command import save_bundle

        note = f"badc-mpi chunk: {result.recordings} recording(s), {result.chunks} chunk(s)"
        save_bundle(result.manifest_path, note, "the manifest and chunk status", also=[result.chunks_dir])
    if result.recordings > len(result.failed):
        print(nextstep.after_chunk(result.manifest_path, os.environ, os.getcwd()))
    return ExitCode.CHUNKS_FAILED if result.failed else ExitCode.OK


def cmd_orchestrate(args: argparse.Namespace) -> int:
    from badc_mpi.orchestrate.command import cmd_orchestrate as orchestrate

    return orchestrate(args)


def cmd_run(args: argparse.Namespace) -> int:
    if args.print_datalad_run:
        from badc_mpi.orchestrate.command import print_run_record

        return print_run_record(args.manifests, run_flags(args) + own_flags(args), args.np)
    from badc_mpi.orchestrate.command import check_species_lists

    check_species_lists(args)
    from mpi4py import MPI

    from badc_mpi.api import run

    comm = MPI.COMM_WORLD
    configure_logging(comm.Get_rank(), comm.Get_size(), verbosity(args))
    outcome = run(args.manifests, run_options_from_args(args), comm=comm)
    if outcome.stop_reason and outcome.resume_dirs:
        command = resume_command(args, outcome.resume_dirs, comm.Get_size())
        print(f"badc-mpi: {outcome.stop_reason}; resume with:\n  {command}", flush=True)
    elif comm.Get_rank() == 0 and outcome.exit_code in (ExitCode.OK, ExitCode.CHUNKS_FAILED):
        failed = outcome.exit_code == ExitCode.CHUNKS_FAILED
        print(nextstep.after_run(args.manifests, os.environ, os.getcwd(), failed=failed), flush=True)
    if outcome.lost_ranks:
        end_job(comm, outcome.exit_code, outcome.lost_ranks)
    return outcome.exit_code


def _print_problems(problems: list[Any]) -> None:
    from badc_mpi.results.aggregate.dataset import iter_problem_lines

    if problems:
        print(f"badc-mpi: {len(problems)} file(s) skipped or read in part:", file=sys.stderr)
        for line in iter_problem_lines(problems):
            print(line, file=sys.stderr)


def _counts_line(counts: dict[str, int]) -> str:
    return (
        f"{counts['runs']} run(s), {counts['chunks']} chunks: {counts['analysed']} analysed, {counts['failed']} failed, "
        f"{counts['not_analysed']} not analysed"
        + (f", {counts['stale']} stale (other settings)" if counts.get("stale") else "")
        + (f", {counts['mixed']} with other settings kept (--accept-mixed)" if counts.get("mixed") else "")
        + f"; {counts['detections']} detections"
    )


def cmd_aggregate(args: argparse.Namespace) -> int:
    from badc_mpi.results.aggregate.dataset import aggregate
    from badc_mpi.results.aggregate.folders import bundle_folder
    from badc_mpi.results.aggregate.runs import find_runs

    sel = find_runs(args.sources, telemetry_dir=args.telemetry_dir)
    folder = bundle_folder(args.sources, sel, args.name, args.dest)
    result = aggregate(
        args.sources,
        folder,
        output_dir=args.output_dir,
        reader=args.source,
        reuse=not args.force,
        selection=sel,
        merge_overlaps=args.merge_overlaps,
        accept_mixed=args.accept_mixed,
    )
    _print_problems(result.problems)
    print(f"aggregate{' (unchanged, reused)' if result.reused else ''}: {_counts_line(result.counts)}")
    _print_merge(result.folder)
    print(f"  parquet  {result.folder}")
    return ExitCode.OK


def cmd_bundle(args: argparse.Namespace) -> int:
    from badc_mpi.results.bundle.build import build_bundle
    from badc_mpi.results.export.arguments import export_options
    from badc_mpi.results.export.write import parse_formats

    formats = parse_formats(args.export) if args.export else ()
    if not args.focus_species:
        from badc_mpi.results.export.histories import FOCUS_DEFAULT

        print(
            f"badc-mpi: note: the report's Sites panel shows the default focus species {','.join(FOCUS_DEFAULT)} (--focus-species to choose)"
        )
    result = build_bundle(
        args.sources,
        export=export_options(args, formats),
        name=args.name,
        dest=args.dest,
        bucket_minutes=args.bucket_minutes,
        top_n=args.top_n,
        telemetry_dir=args.telemetry_dir,
        output_dir=args.output_dir,
        reuse=not args.force,
        merge_overlaps=args.merge_overlaps,
    )
    summary = result.summary
    _print_problems(result.aggregate.problems)
    if summary["tiny_model"]:
        print("badc-mpi: WARNING: the tiny random-weight model made these detections: they are meaningless")
    print(f"bundle: {_counts_line(summary['counts'])}")
    print("top species:")
    for row in summary["top_labels"][:10]:
        name = f" ({row['label_name']})" if row["label_name"] and row["label_name"] != row["label"] else ""
        print(f"  {row['detections']:>9,}  {row['label']}{name}  mean confidence {row['mean_confidence']:.2f}")
    print(f"  bundle   {result.folder}")
    print(f"  report   {result.report}")
    _print_exports(summary.get("exports"), result.folder)
    if args.record_datalad:
        from badc_mpi.orchestrate.command import save_bundle

        save_bundle(result.folder, f"badc-mpi bundle {os.path.basename(result.folder)}: {_counts_line(summary['counts'])}")
    manifests = [s for s in args.sources if s.endswith(".csv")]
    print(
        nextstep.after_bundle(
            result.folder,
            manifests,
            os.environ,
            os.getcwd(),
            exported=bool(summary.get("exports")) or os.path.isdir(os.path.join(result.folder, "exports")),
        )
    )
    return ExitCode.OK


def _print_exports(exports: dict[str, Any] | None, folder: str) -> None:
    if not exports:
        return
    for note in exports["notes"]:
        print(f"  note: {note}", file=sys.stderr)
    print(f"  exports  {os.path.join(folder, exports['folder'])} ({exports['files']} file(s))")


def _print_merge(folder: str) -> None:
    try:
        with open(os.path.join(folder, "aggregate.json"), encoding="utf-8") as fh:
            merge = json.load(fh).get("overlap_merge") or {}
    except (OSError, ValueError):
        return
    if merge.get("applied"):
        print(
            f"  overlap merge: {merge['detections_before']} detections -> {merge['detections_after']} "
            f"({merge['merged_groups']} merged across chunk boundaries)"
        )


def cmd_export(args: argparse.Namespace) -> int:
    from badc_mpi.results.export.arguments import export_options
    from badc_mpi.results.export.write import export, parse_formats

    options = export_options(args, parse_formats(args.format), args.output)
    formats = options.formats
    result = export(
        args.sources, options, telemetry_dir=args.telemetry_dir, output_dir=args.output_dir, name=args.name, dest=args.dest
    )
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    print(f"export ({', '.join(formats)}): {len(result.files)} file(s) from {result.aggregate}")
    print(f"  exports  {result.folder}")
    if args.record_datalad:
        from badc_mpi.orchestrate.command import save_bundle

        message = f"badc-mpi export {', '.join(formats)}: {len(result.files)} file(s)"
        save_bundle(result.folder, message, "the exports and their aggregate", also=[result.aggregate])
    return ExitCode.OK


def cmd_init(args: argparse.Namespace) -> int:
    from badc_mpi.orchestrate.init import init_dataset

    print(init_dataset(args.folder))
    return ExitCode.OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from badc_mpi.results.bundle.calibration import calibrate_bundle
    from badc_mpi.results.calibrate.arguments import fit_options
    from badc_mpi.results.calibrate.verdicts import VerdictsError

    try:
        cal, written = calibrate_bundle(args.bundle, args.verdicts, fit_options(args), args.note)
    except VerdictsError as exc:  # one line per file and row, then the error line (main)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        raise
    s = cal.settings
    print(
        f"calibrate: {s['verdicts']} verdicts ({cal.blank} rows without a verdict skipped), {s['species']} species, "
        f"{s['species_with_threshold']} with a threshold at target precision {s['target_precision']:g}"
    )
    for f in cal.fits:
        if f.threshold is None:
            print(f"  {f.species_code:<12} no threshold: {f.reason}")
        else:
            interval = f" ({f.threshold_low:.3f}-{f.threshold_high:.3f})" if f.threshold_low is not None else ""
            extra = f"; {f.note}" if f.note else ""
            print(f"  {f.species_code:<12} {f.threshold:.3f}{interval}  {f.correct}/{f.correct + f.wrong} correct{extra}")
    folder = os.path.dirname(written[-1])
    print(f"  thresholds  {os.path.join(folder, 'thresholds.csv')}   (badc-mpi export ... --thresholds FILE)")
    print(f"  report      {written[-1]}")
    if args.record_datalad:
        from badc_mpi.orchestrate.command import save_bundle

        save_bundle(
            folder, f"badc-mpi calibrate: {s['verdicts']} verdicts, {s['species_with_threshold']} thresholds", "the calibration"
        )
    return ExitCode.OK


def cmd_review(args: argparse.Namespace) -> int:
    from badc_mpi.results.review.arguments import run_review

    return run_review(args)


COMMANDS = {
    "init": cmd_init,
    "run": cmd_run,
    "check-chunks": cmd_check_chunks,
    "validate": cmd_validate,
    "gpus": cmd_gpus,
    "monitor": cmd_monitor,
    "aggregate": cmd_aggregate,
    "bundle": cmd_bundle,
    "export": cmd_export,
    "calibrate": cmd_calibrate,
    "review": cmd_review,
    "orchestrate": cmd_orchestrate,
    "chunk": cmd_chunk,
}


def verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else args.verbose
