"""The command line: ``badc-mpi`` / ``python -m badc_mpi``. A thin layer over :mod:`badc_mpi.api`.

This is the only place where exceptions become messages and exit codes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from badc_mpi import __version__
from badc_mpi.errors import BadcError, ExitCode
from badc_mpi.logs import configure_logging, get_logger

log = get_logger(__name__)

EXIT_CODES_HELP = """\
exit codes:
  0   every chunk succeeded
  1   some chunks failed permanently (listed in <telemetry>.failed.csv; rerun it as a manifest)
  2   usage or input error (bad manifest, options or state files); nothing was run
  3   the chunk-status guard refused (recordings not fully chunked)
  4   another run holds the output directory (lock)
  70  a rank hit an unexpected error; the whole MPI job was aborted
  75  interrupted by SIGTERM/SIGINT after a clean stop; resume with `make resume`"""

RUN_EPILOG = """\
launch:
  mpiexec -n 4 python -m badc_mpi run manifest.csv          (here; .venv/bin/mpiexec)
  srun -n 8 python -m badc_mpi run manifest.csv             (Sockeye; --mpi=pmi2 with the MPICH wheel)
  python -m badc_mpi run manifest.csv                       (one rank, no launcher)
  Every rank works on chunks; rank 0 also coordinates and writes telemetry and summaries.

where outputs go:
{locations}

{binding}

{exit_codes}"""


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="chunk manifest CSV(s); several form one queue")
    g = p.add_argument_group("runner")
    g.add_argument("--runner", choices=("hawkears", "command", "stub"), default="hawkears",
                   help="how chunks are analysed (default: hawkears, the real classifier)")
    g.add_argument("--dry-run", action="store_true", help="the stub runner: no analysis, telemetry and summaries only")
    g.add_argument("--stub-sleep-s", type=_positive_float, default=0.0, metavar="S",
                   help="simulated seconds per chunk with --dry-run (default 0)")
    g.add_argument("--runner-cmd", metavar="TEMPLATE",
                   help="argv template for --runner command, run without a shell; placeholders {input} "
                        "{output_dir} {chunk_id} {recording_id} {start_ms} {end_ms}")
    g.add_argument("--output-format", choices=("scores2", "labels1"), default="scores2",
                   help="raw output of --runner command: scores2 = HawkEars 2.x scores.csv, "
                        "labels1 = HawkEars 1.x HawkEars_labels.csv (default scores2)")
    from badc_mpi.runners.hawkears import add_hawkears_arguments

    add_hawkears_arguments(p)
    g = p.add_argument_group("input and outputs")
    g.add_argument("--output-dir", metavar="DIR", help="per-chunk outputs (default: see 'where outputs go')")
    g.add_argument("--telemetry-dir", metavar="DIR", help="telemetry JSONL and summaries (default: see below)")
    g.add_argument("--chunks-dir", metavar="DIR", help="where <recording_id>/.chunk_status.json live")
    g.add_argument("--scratch-dir", metavar="DIR", help="per-attempt scratch (default <output-dir>/.badc-scratch/<run>)")
    g.add_argument("--allow-missing", action="store_true",
                   help="missing audio files become per-chunk 'input' failures instead of an error")
    g.add_argument("--allow-partial-chunks", action="store_true",
                   help="run even when the chunk-status guard finds unfinished recordings (warns)")
    g.add_argument("--no-chunk-check", dest="check_chunks", action="store_false",
                   help="skip the chunk-status guard (manifests not made by the chunker)")
    g = p.add_argument_group("scheduling, retries, timeouts")
    g.add_argument("--order", choices=("manifest", "longest-first"), default="manifest",
                   help="dispatch order (longest-first needs start_ms/end_ms)")
    g.add_argument("--inflight", type=int, default=2, metavar="N",
                   help="chunks in flight per worker, queued + running (default 2; 1-8)")
    g.add_argument("--max-retries", type=int, default=2, metavar="N",
                   help="extra attempts per chunk after a failure (default 2; 'input' failures are not retried)")
    g.add_argument("--backoff-s", type=_positive_float, default=5.0, metavar="S",
                   help="first retry delay; doubles per retry, jittered +/-25%% (default 5); the worker takes other chunks meanwhile")
    g.add_argument("--backoff-max-s", type=_positive_float, default=300.0, metavar="S", help="retry delay cap (default 300)")
    g.add_argument("--timeout-s", type=float, metavar="S",
                   help="per-attempt timeout; default max(--timeout-min-s, --timeout-factor x chunk duration), "
                        "or 900 s when the duration is unknown; a timeout kills the runner's process group")
    g.add_argument("--timeout-factor", type=_positive_float, default=5.0, metavar="X", help="(default 5)")
    g.add_argument("--timeout-min-s", type=_positive_float, default=120.0, metavar="S", help="(default 120)")
    g.add_argument("--seed", type=int, help="seed for the retry jitter (reproducible schedules)")
    g.add_argument("--summary-interval-s", type=_positive_float, default=30.0, metavar="S",
                   help="write the summary snapshot at least this often (default 30)")
    g.add_argument("--progress-interval-s", type=_positive_float, metavar="S",
                   help="progress line interval (default: live on a TTY, 30 s otherwise)")
    g = p.add_argument_group("GPUs")
    g.add_argument("--max-gpus", type=int, metavar="N", help="use at most N GPUs per node (0 = CPU only)")
    g.add_argument("--workers-per-gpu", type=int, default=1, metavar="K",
                   help="ranks per GPU, for deliberate sharing (default 1)")
    g.add_argument("--cpu-workers", type=int, default=0, metavar="N",
                   help="local ranks beyond the GPU slots that work on the CPU (default 0: they share GPUs, with a warning)")
    g = p.add_argument_group("resume and stopping")
    g.add_argument("--resume", action="store_true",
                   help="skip chunks that earlier runs of the same manifest(s) finished (same telemetry and output dirs)")
    g.add_argument("--resume-summary", action="append", default=[], metavar="PATH",
                   help="skip chunks that succeeded in this summary (repeatable)")
    g.add_argument("--skip-failed", action="store_true", help="with --resume: do not rerun chunks that failed")
    g.add_argument("--grace-s", type=_positive_float, default=60.0, metavar="S",
                   help="on SIGTERM/SIGINT, let chunks in flight finish for up to S seconds (default 60)")
    g.add_argument("--force-unlock", action="store_true",
                   help="take over the output directory's lock even if held by a process on another host")


def run_options_from_args(args: argparse.Namespace) -> Any:
    from badc_mpi.options import RunOptions
    from badc_mpi.runners.hawkears import HawkearsOptions

    return RunOptions(
        runner=args.runner, dry_run=args.dry_run, stub_sleep_s=args.stub_sleep_s, runner_cmd=args.runner_cmd,
        output_format=args.output_format, hawkears=HawkearsOptions.from_namespace(args),
        output_dir=args.output_dir, telemetry_dir=args.telemetry_dir, chunks_dir=args.chunks_dir,
        scratch_dir=args.scratch_dir, allow_missing=args.allow_missing,
        allow_partial_chunks=args.allow_partial_chunks, check_chunks=args.check_chunks,
        max_retries=args.max_retries, backoff_s=args.backoff_s, backoff_max_s=args.backoff_max_s,
        timeout_s=args.timeout_s, timeout_factor=args.timeout_factor, timeout_min_s=args.timeout_min_s,
        order=args.order, inflight=args.inflight, max_gpus=args.max_gpus, workers_per_gpu=args.workers_per_gpu,
        cpu_workers=args.cpu_workers, summary_interval_s=args.summary_interval_s,
        progress_interval_s=args.progress_interval_s, seed=args.seed, resume=args.resume,
        resume_summaries=tuple(args.resume_summary), skip_failed=args.skip_failed, grace_s=args.grace_s,
        force_unlock=args.force_unlock,
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI (also used by ``make man`` through argparse-manpage)."""
    from badc_mpi.dataset import LOCATIONS_HELP
    from badc_mpi.gpu import BINDING_HELP

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

    p = sub.add_parser("run", help="run inference over manifest(s) on every rank",
                       description="Run HawkEars (or --runner command / --dry-run) on every chunk of the "
                                   "manifest(s), dispatching chunks dynamically to all MPI ranks.",
                       epilog=RUN_EPILOG.format(locations=LOCATIONS_HELP, binding=BINDING_HELP,
                                                exit_codes=EXIT_CODES_HELP),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(p)

    p = sub.add_parser("check-chunks", help="the chunk-status guard alone (exit 3 if recordings are not chunked)",
                       description="Check that every recording of the manifest(s) has a completed "
                                   "<chunks-dir>/<recording_id>/.chunk_status.json.",
                       epilog=LOCATIONS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--chunks-dir", metavar="DIR", help="override <dataset>/artifacts/chunks")
    p.add_argument("--allow-partial-chunks", action="store_true", help="warn instead of refusing")
    p.add_argument("--allow-missing", action="store_true", help="do not refuse manifests whose audio is missing")
    p.add_argument("--json", action="store_true", help="print the statuses as JSON")
    p.add_argument("--run-args", nargs=argparse.REMAINDER, default=[], metavar="...",
                   help="the rest of the line is `badc-mpi run` options (as `make infer` passes ARGS); "
                        "their --chunks-dir and --allow-partial-chunks apply")

    p = sub.add_parser("validate", help="validate manifest(s) without running anything",
                       description="Load and validate manifest(s): columns, ids, numbers, hashes, duplicates, "
                                   "missing audio. Exit 0 when usable, 2 otherwise.")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--allow-missing", action="store_true", help="report missing audio instead of refusing")

    p = sub.add_parser("gpus", help="show detected GPUs and the binding a rank here would use",
                       epilog=BINDING_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--max-gpus", type=int, metavar="N")
    p.add_argument("--workers-per-gpu", type=int, default=1, metavar="K")
    p.add_argument("--cpu-workers", type=int, default=0, metavar="N")
    return parser


# -- commands ------------------------------------------------------------------------------
def cmd_check_chunks(args: argparse.Namespace) -> int:
    from badc_mpi.chunk_status import check_chunk_status, enforce_chunk_status
    from badc_mpi.dataset import default_locations
    from badc_mpi.manifest import load_manifests

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
        print(json.dumps({"chunks_dir": report.chunks_dir, "ok": report.ok,
                          "statuses": [s.__dict__ for s in report.statuses]}, indent=1))
    else:
        print(report.format())
    enforce_chunk_status(report, args.allow_partial_chunks)
    return ExitCode.OK


def cmd_validate(args: argparse.Namespace) -> int:
    from badc_mpi.manifest import load_manifests

    manifests = load_manifests(args.manifests, check_sources=True, allow_missing=args.allow_missing)
    for m in manifests:
        recordings = len({c.recording_id for c in m.chunks})
        print(f"{m.path}: {len(m.chunks)} chunks, {recordings} recordings, "
              f"{len(m.missing)} missing audio, extra columns: {', '.join(m.extra_columns) or '-'}")
    return ExitCode.OK


def cmd_gpus(args: argparse.Namespace) -> int:
    from badc_mpi.gpu import BindingOptions, format_gpus_report, gpus_report

    report = gpus_report(options=BindingOptions(args.max_gpus, args.workers_per_gpu, args.cpu_workers))
    print(json.dumps(report, indent=1, default=str) if args.json else format_gpus_report(report))
    return ExitCode.USAGE if report.get("error") else ExitCode.OK


def cmd_run(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    from badc_mpi.api import run

    comm = MPI.COMM_WORLD
    configure_logging(comm.Get_rank(), comm.Get_size(), _verbosity(args))
    return run(args.manifests, run_options_from_args(args), comm=comm).exit_code


COMMANDS = {"run": cmd_run, "check-chunks": cmd_check_chunks, "validate": cmd_validate, "gpus": cmd_gpus}


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
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("badc-mpi: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
