"""The ``orchestrate`` subcommand's arguments, and the DataLad options it shares with ``run``.

Light on purpose: every ``badc-mpi`` invocation builds the parser.
"""

from __future__ import annotations

import argparse
from typing import Any

from badc_mpi.orchestrate.sbatch import DEFAULT_SIGNAL_S, SbatchOptions

ORCHESTRATE_EPILOG = """\
what it does, in order: find the manifests (--manifest, --plan, or DATASET/--manifest-dir matching
--pattern); load them; read each recording's .chunk_status.json and the ledgers of earlier runs
into the same output folder; print the plan table (chunks, chunk status, done/failed/remaining);
refuse (exit 3) unless every recording is chunked (--allow-partial-chunks); then, as asked: write
--plan-csv/--plan-json, print the `datalad run` command, write --sockeye-script, --submit it
(sbatch; BADC_MPI_SBATCH names another), or --apply: run the plan as one queue here (srun inside a
SLURM allocation, mpiexec elsewhere), recorded with `datalad run` inside a DataLad dataset.
Options of `badc-mpi run` go after --run-args (last on the line).
exit codes: 0 planned (and done what was asked); 2 bad input or options; 3 chunk-status guard;
with --apply, the run's own exit code."""


def add_run_no_record(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``run --no-record-datalad``: run never records itself; accepted so the same ARGS serve
    ``run`` and ``make infer`` (orchestrate honours it among its --run-args)."""
    p.add_argument(
        "--no-record-datalad",
        dest="record_datalad",
        action="store_false",
        help="run never records itself (make infer and orchestrate --apply wrap it in `datalad run`); "
        "accepted here so the same ARGS work for both, and orchestrate honours it in --run-args",
    )


def add_record_arguments(p: argparse.ArgumentParser) -> None:
    """DataLad options shared by ``run`` and ``orchestrate``."""
    g = p.add_argument_group("DataLad")
    g.add_argument(
        "--print-datalad-run",
        action="store_true",
        help="print the exact `datalad run` command (dataset-relative inputs and outputs) that records this run, and exit 0",
    )
    g.add_argument(
        "--np", type=int, metavar="N", help="ranks of the printed or applied command (default: SLURM_NTASKS, or local GPUs, or 2)"
    )


def add_orchestrate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "orchestrate",
        help="plan a dataset's manifests as one queue; run it here, or write/submit a SLURM batch script",
        description="Plan the manifests of a dataset as one queue (chunk status, done and remaining from earlier runs), "
        "then run it in this allocation (--apply), write a SLURM batch script (--sockeye-script) or submit it (--submit).",
        epilog=ORCHESTRATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dataset", nargs="?", metavar="DATASET", help="the dataset folder (default: the first --manifest's dataset, or .)"
    )
    g = p.add_argument_group("which manifests")
    g.add_argument("--manifest-dir", default="manifests", metavar="DIR", help="relative to DATASET (default manifests)")
    g.add_argument("--pattern", default="*.csv", help="file names in --manifest-dir (default '*.csv')")
    g.add_argument(
        "--manifest", action="append", default=[], metavar="PATH", help="this manifest (repeatable; instead of scanning)"
    )
    g.add_argument("--plan", metavar="FILE", help="the manifests of a plan written by --plan-csv or --plan-json")
    g.add_argument("--allow-partial-chunks", action="store_true", help="plan and run even when recordings are not fully chunked")
    g = p.add_argument_group("what to do with the plan")
    g.add_argument("--plan-csv", metavar="PATH", help="write the plan table as CSV (one row per recording)")
    g.add_argument("--plan-json", metavar="PATH", help="write the plan as JSON")
    g.add_argument("--apply", action="store_true", help="run the plan as one queue in this allocation")
    g.add_argument(
        "--no-resume-completed",
        dest="resume_completed",
        action="store_false",
        help="--apply: run every chunk even when earlier runs finished some (default: --resume when an earlier run exists)",
    )
    g.add_argument(
        "--mpi", default="pmi2", metavar="PLUGIN", help="srun --mpi for --apply inside SLURM (default pmi2: the MPICH wheel)"
    )
    g.add_argument("--mpiexec", metavar="PATH", help="--apply outside SLURM: this mpiexec (default: .venv's, else PATH's)")
    g.add_argument(
        "--no-record-datalad",
        dest="record_datalad",
        action="store_false",
        help="--apply inside a DataLad dataset: do not wrap the run in `datalad run`",
    )
    add_record_arguments(p)
    g = p.add_argument_group("SLURM (Sockeye: 4 GPUs per node, one rank per GPU)")
    g.add_argument("--sockeye-script", metavar="PATH", help="write the batch script for the plan here")
    g.add_argument("--submit", action="store_true", help="sbatch the --sockeye-script (BADC_MPI_SBATCH names the sbatch)")
    defaults = SbatchOptions()
    for name, kind, text in (
        ("job-name", str, f"(default {defaults.job_name})"),
        ("account", str, "allocation, e.g. st-abc123-1-gpu"),
        ("partition", str, "partition"),
        ("gres", str, f"GPU request (default {defaults.gres}; 'none' for a GPU-less node)"),
        ("time", str, f"time limit (default {defaults.time})"),
        ("cpus-per-task", int, f"(default {defaults.cpus_per_task})"),
        ("mem", str, f"memory per node (default {defaults.mem})"),
        ("nodes", int, f"nodes, 4 ranks each (default {defaults.nodes})"),
        (
            "log-dir",
            str,
            "SLURM log, telemetry, detections and bundle here (default: in the dataset if writable, else $SCRATCH/badc-mpi/<dataset>)",
        ),
        ("bundle-aggregate-dir", str, "bundle into DIR/<name> (default: <dataset>/artifacts/aggregate)"),
        ("bundle-bucket-minutes", float, f"timeline bucket of the bundle (default {defaults.bundle_bucket_minutes:g})"),
        ("mpi", str, f"srun --mpi (default {defaults.mpi}: the MPICH wheel; pmix with a site Open MPI)"),
        ("signal-s", int, f"SIGTERM this many seconds before the time limit (default {DEFAULT_SIGNAL_S})"),
    ):
        g.add_argument(f"--sockeye-{name}", type=kind, metavar=name.split("-")[-1].upper(), help=text)
    g.add_argument(
        "--sockeye-resume-completed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--resume when an earlier run exists (default on)",
    )
    g.add_argument(
        "--sockeye-bundle", action=argparse.BooleanOptionalAction, default=True, help="bundle after the run (default on)"
    )
    g.add_argument("--sockeye-array", action="store_true", help="one manifest per array task (each its own output folder)")
    p.add_argument(
        "--run-args",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="...",
        help="the rest of the line: `badc-mpi run` options for the queue (e.g. --hawkears-data-root DIR --max-retries 3)",
    )
