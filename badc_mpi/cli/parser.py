"""The ``badc-mpi`` parser: every command's arguments and help texts (also read by ``make man``
through argparse-manpage: ``--module badc_mpi.cli.parser --function build_parser``). The ``run``
command's own arguments are in :mod:`badc_mpi.arguments`; other commands add theirs from their
packages (``chunker``, ``orchestrate``, ``results``)."""

from __future__ import annotations

import argparse

from badc_mpi._version import __version__
from badc_mpi.arguments import EXIT_CODES_HELP, RUN_EPILOG, add_run_arguments
from badc_mpi.cli.helpgroups import MAIN_EPILOG, arrange_run_help, order_commands


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI (also used by ``make man`` through argparse-manpage)."""
    from badc_mpi.chunker.command import add_chunk_parser
    from badc_mpi.gpu.binding import BINDING_HELP
    from badc_mpi.inputs.locations import LOCATIONS_HELP
    from badc_mpi.orchestrate.arguments import add_orchestrate_parser, add_record_arguments, add_run_no_record
    from badc_mpi.orchestrate.init import add_init_parser
    from badc_mpi.results.calibrate.arguments import add_calibrate_parser
    from badc_mpi.results.export.arguments import add_export_command, add_results_commands
    from badc_mpi.results.review.arguments import add_review_command

    parser = argparse.ArgumentParser(
        prog="badc-mpi",
        description="Run the HawkEars bird classifier over chunk manifests on every GPU of an MPI job "
        "(mpiexec/srun), losing nothing and recording what ran.",
        epilog=MAIN_EPILOG + "\n\n" + EXIT_CODES_HELP,
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
    datalad_group = next(g for g in p._action_groups if g.title == "DataLad")
    add_run_no_record(datalad_group)
    arrange_run_help(p)

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
    add_calibrate_parser(sub)
    add_review_command(sub)
    add_orchestrate_parser(sub)
    add_chunk_parser(sub)
    add_init_parser(sub)

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
    order_commands(sub)
    return parser


MONITOR_EPILOG = """\
--follow redraws in place on a terminal and prints one snapshot per interval elsewhere (a SLURM
log); it waits for a telemetry file that does not exist yet and starts over when it is replaced.
exit codes:
  0   snapshot shown, or --follow ended (the summary says finished/interrupted/stopped/aborted, or Ctrl-C)
  2   no such telemetry file (without --follow), a sidecar named instead, or a bad option"""
