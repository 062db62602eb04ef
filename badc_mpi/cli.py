"""The command line: ``badc-mpi`` / ``python -m badc_mpi``. A thin layer over :mod:`badc_mpi.api`.

This is the only place where exceptions become messages and exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from badc_mpi._version import __version__
from badc_mpi.arguments import EXIT_CODES_HELP, RUN_EPILOG, add_run_arguments, run_options_from_args
from badc_mpi.errors import BadcError, ExitCode
from badc_mpi.logs import configure_logging, get_logger

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI (also used by ``make man`` through argparse-manpage)."""
    from badc_mpi.chunker.command import add_chunk_parser
    from badc_mpi.gpu.binding import BINDING_HELP
    from badc_mpi.inputs.locations import LOCATIONS_HELP
    from badc_mpi.orchestrate.arguments import add_orchestrate_parser, add_record_arguments
    from badc_mpi.results.export.arguments import add_export_command, add_results_commands

    parser = argparse.ArgumentParser(
        prog="badc-mpi",
        description="Run the HawkEars bird classifier over chunk manifests on every GPU of an MPI job "
        "(mpiexec/srun), losing nothing and recording what ran.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"badc-mpi {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail (-v debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="run inference over manifest(s) on every rank",
        description="Run HawkEars (or --runner command / --dry-run) on every chunk of the "
        "manifest(s), dispatching chunks dynamically to all MPI ranks.",
        epilog=RUN_EPILOG.format(locations=LOCATIONS_HELP, binding=BINDING_HELP, exit_codes=EXIT_CODES_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    add_record_arguments(p)

    p = sub.add_parser(
        "check-chunks",
        help="the chunk-status guard alone (exit 3 if recordings are not chunked)",
        description="Check that every recording of the manifest(s) has a completed "
        "<chunks-dir>/<recording_id>/.chunk_status.json.",
        epilog=LOCATIONS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--chunks-dir", metavar="DIR", help="override <dataset>/artifacts/chunks")
    p.add_argument("--allow-partial-chunks", action="store_true", help="warn instead of refusing")
    p.add_argument("--allow-missing", action="store_true", help="do not refuse manifests whose audio is missing")
    p.add_argument("--json", action="store_true", help="print the statuses as JSON")
    p.add_argument(
        "--run-args",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="...",
        help="the rest of the line is `badc-mpi run` options (as `make infer` passes ARGS); "
        "their --chunks-dir and --allow-partial-chunks apply",
    )

    p = sub.add_parser(
        "validate",
        help="validate manifest(s) without running anything",
        description="Load and validate manifest(s): columns, ids, numbers, hashes, duplicates, "
        "missing audio. Exit 0 when usable, 2 otherwise.",
    )
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--allow-missing", action="store_true", help="report missing audio instead of refusing")

    add_results_commands(sub)
    add_export_command(sub)
    add_orchestrate_parser(sub)
    add_chunk_parser(sub)

    p = sub.add_parser(
        "gpus",
        help="show detected GPUs and the binding a rank here would use",
        epilog=BINDING_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--max-gpus", type=int, metavar="N")
    p.add_argument("--workers-per-gpu", type=int, default=1, metavar="K")
    p.add_argument("--cpu-workers", type=int, default=0, metavar="N")

    p = sub.add_parser(
        "monitor",
        help="watch a run live from its telemetry: progress, ETA, per-worker GPU, retries, errors",
        description="Show a run's progress from its telemetry JSONL (and the summary beside it): "
        "per worker chunks done/failed, retries, runtime, GPU utilisation and VRAM, sparklines, "
        "the last error; overall progress, rate, ETA, failures by class. Reads only new bytes.",
        epilog=MONITOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("telemetry", metavar="TELEMETRY", help="the run's telemetry .jsonl, or its folder (newest run)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-f", "--follow", action="store_true", help="refresh until the run is over or Ctrl-C")
    mode.add_argument("--once", action="store_true", help="print one plain snapshot and exit (the default)")
    p.add_argument("--interval-s", type=float, default=2.0, metavar="S", help="refresh interval (default 2)")
    return parser


MONITOR_EPILOG = """\
--follow redraws in place on a terminal and prints one snapshot per interval elsewhere (a SLURM
log); it waits for a telemetry file that does not exist yet and starts over when it is replaced.
exit codes:
  0   snapshot shown, or --follow ended (the summary says finished/interrupted/stopped/aborted, or Ctrl-C)
  2   no such telemetry file (without --follow), a sidecar named instead, or a bad option"""


# -- commands ------------------------------------------------------------------------------
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
    return ExitCode.CHUNKS_FAILED if result.failed else ExitCode.OK


def cmd_orchestrate(args: argparse.Namespace) -> int:
    from badc_mpi.orchestrate.command import cmd_orchestrate as orchestrate

    return orchestrate(args)


def cmd_run(args: argparse.Namespace) -> int:
    if args.print_datalad_run:
        from badc_mpi.orchestrate.command import print_run_record

        return print_run_record(args.manifests, run_flags(args) + _own_flags(args), args.np)
    from mpi4py import MPI

    from badc_mpi.api import run

    comm = MPI.COMM_WORLD
    configure_logging(comm.Get_rank(), comm.Get_size(), _verbosity(args))
    outcome = run(args.manifests, run_options_from_args(args), comm=comm)
    if outcome.stop_reason and outcome.resume_dirs:
        command = resume_command(args, outcome.resume_dirs, comm.Get_size())
        print(f"badc-mpi: {outcome.stop_reason}; resume with:\n  {command}", flush=True)
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
        f"{counts['not_analysed']} not analysed; {counts['detections']} detections"
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

        save_bundle(result.folder, f"badc-mpi export {', '.join(formats)}: {len(result.files)} file(s)", "the exports")
    return ExitCode.OK


def end_job(comm: Any, exit_code: int, lost_ranks: list[int]) -> None:
    """Ranks that went silent or stuck would hang MPI_Finalize: end the whole job now, with the
    run's exit code, after everything was written and said."""
    print(f"badc-mpi: ranks {', '.join(map(str, lost_ranks))} were lost; ending the job", file=sys.stderr, flush=True)
    sys.stdout.flush()
    comm.Abort(int(exit_code))


#: ``run`` options a resume must not copy: it pins the folders and adds --resume itself
_RESUME_OWN = frozenset({"manifests", "output_dir", "telemetry_dir", "chunks_dir", "resume", "help", "print_datalad_run", "np"})


def _own_flags(args: argparse.Namespace) -> list[str]:
    """The folder options and --resume that :func:`run_flags` leaves out, as given."""
    words: list[str] = []
    for dest in ("output_dir", "telemetry_dir", "chunks_dir"):
        if getattr(args, dest, None):
            words += ["--" + dest.replace("_", "-"), getattr(args, dest)]
    return words + (["--resume"] if args.resume else [])


def run_flags(args: argparse.Namespace) -> list[str]:
    """The ``run`` options of ``args`` that differ from their defaults, as command-line words
    (manifests, output folders and ``--resume`` left out)."""
    parser = build_parser()
    run_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    words: list[str] = []
    for action in run_parser._actions:
        if not action.option_strings or action.dest in _RESUME_OWN:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or (isinstance(value, list) and not value):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):  # --low-band / --no-low-band
            words.append(action.option_strings[0] if value else action.option_strings[1])
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_false
            words.append(flag)
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return words


def resume_command(args: argparse.Namespace, dirs: dict[str, str], ranks: int, env: dict[str, str] | None = None) -> str:
    """The command that resumes an interrupted run, runnable from any folder, in the launcher
    the user used: ``make resume`` under make, ``srun`` inside a SLURM job, else ``mpiexec``
    (or plain ``python`` for one rank). Built from the parsed options, never from ``sys.argv``."""
    import shlex

    env = dict(os.environ) if env is None else env
    manifests = [os.path.abspath(m) for m in args.manifests]
    pinned = [
        "--output-dir",
        dirs["output_dir"],
        "--telemetry-dir",
        dirs["telemetry_dir"],
        "--chunks-dir",
        dirs["chunks_dir"],
    ]
    flags = run_flags(args) + pinned
    if env.get("BADC_MPI_VIA_MAKE"):  # set by `make infer` and `make resume`
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return (
            f"make -C {shlex.quote(repo)} resume MANIFEST={shlex.quote(' '.join(manifests))} NP={ranks} "
            f"ARGS={shlex.quote(shlex.join(flags))}"
        )
    python = [sys.executable, "-m", "badc_mpi", "run", *manifests, *flags, "--resume"]
    if env.get("SLURM_JOB_ID"):
        # the step's MPI plugin (srun exports it): the MPICH wheel's ranks see each other only with pmi2
        mpi = [f"--mpi={env['SLURM_MPI_TYPE']}"] if env.get("SLURM_MPI_TYPE") else []
        launcher = ["srun", "-n", str(ranks), *mpi]
    elif ranks > 1:
        local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        launcher = [local if os.access(local, os.X_OK) else "mpiexec", "-n", str(ranks)]
    else:
        launcher = []
    return shlex.join(launcher + python)


COMMANDS = {
    "run": cmd_run,
    "check-chunks": cmd_check_chunks,
    "validate": cmd_validate,
    "gpus": cmd_gpus,
    "monitor": cmd_monitor,
    "aggregate": cmd_aggregate,
    "bundle": cmd_bundle,
    "export": cmd_export,
    "orchestrate": cmd_orchestrate,
    "chunk": cmd_chunk,
}


def _verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else args.verbose


def _rank() -> int:
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized():
        return mpi.COMM_WORLD.Get_rank()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``badc-mpi``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbosity=_verbosity(args))
    try:
        return int(COMMANDS[args.command](args))
    except BadcError as exc:
        if _rank() == 0:
            print(f"badc-mpi: error: {exc}", file=sys.stderr)
        if exc.lost_ranks:
            from mpi4py import MPI

            end_job(MPI.COMM_WORLD, int(exc.exit_code), exc.lost_ranks)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("badc-mpi: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
