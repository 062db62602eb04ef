"""The ``run`` subcommand's arguments, the help texts around them, and how they become :class:`RunOptions`."""

from __future__ import annotations

import argparse

from badc_mpi.options import RunOptions
from badc_mpi.runners.hawkears.options import HawkearsOptions, add_hawkears_arguments

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


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="chunk manifest CSV(s); several form one queue")
    g = p.add_argument_group("runner")
    g.add_argument(
        "--runner",
        choices=("hawkears", "command", "stub"),
        default="hawkears",
        help="how chunks are analysed (default: hawkears, the real classifier)",
    )
    g.add_argument("--dry-run", action="store_true", help="the stub runner: no analysis, telemetry and summaries only")
    g.add_argument(
        "--stub-sleep-s",
        type=_positive_float,
        default=0.0,
        metavar="S",
        help="simulated seconds per chunk with --dry-run (default 0)",
    )
    g.add_argument(
        "--stub-detections",
        type=int,
        default=0,
        metavar="N",
        help="benchmarks: each --dry-run chunk carries N synthetic detections through the detection store "
        "(rank 0's real write path); a dry run is never counted as analysed (default 0)",
    )
    g.add_argument(
        "--runner-cmd",
        metavar="TEMPLATE",
        help="argv template for --runner command, run without a shell; placeholders {input} "
        "{output_dir} {chunk_id} {recording_id} {start_ms} {end_ms}",
    )
    g.add_argument(
        "--output-format",
        choices=("scores2", "labels1"),
        default="scores2",
        help="raw output of --runner command: scores2 = HawkEars 2.x scores.csv, "
        "labels1 = HawkEars 1.x HawkEars_labels.csv (default scores2)",
    )
    add_hawkears_arguments(p)
    g = p.add_argument_group("input and outputs")
    g.add_argument(
        "--output-dir",
        metavar="DIR",
        help="detections: DIR/detections/<run>.NNNNNN.jsonl (default: see 'where outputs go')",
    )
    g.add_argument(
        "--per-chunk-outputs",
        action="store_true",
        help="write DIR/<recording_id>/<chunk_id>.{scores.csv,detections.jsonl} per chunk (the lab's original layout; "
        "two files per chunk: for small datasets only) instead of the append-only detection store",
    )
    g.add_argument("--telemetry-dir", metavar="DIR", help="telemetry JSONL and summaries (default: see below)")
    g.add_argument("--chunks-dir", metavar="DIR", help="where <recording_id>/.chunk_status.json live")
    g.add_argument(
        "--scratch-dir",
        metavar="DIR",
        help="where ranks keep per-attempt scratch files: each run creates DIR/badc-mpi-<run>/<host>-r<rank>/ and "
        "removes only that (default: node-local $SLURM_TMPDIR, then $TMPDIR, then /tmp)",
    )
    g.add_argument(
        "--allow-missing",
        action="store_true",
        help="missing audio files become per-chunk 'input' failures instead of an error",
    )
    g.add_argument(
        "--allow-partial-chunks",
        action="store_true",
        help="run even when the chunk-status guard finds unfinished recordings (warns)",
    )
    g.add_argument(
        "--no-chunk-check",
        dest="check_chunks",
        action="store_false",
        help="skip the chunk-status guard (manifests not made by the chunker)",
    )
    g = p.add_argument_group("scheduling, retries, timeouts")
    g.add_argument(
        "--order",
        choices=("manifest", "longest-first"),
        default="manifest",
        help="dispatch order (longest-first needs start_ms/end_ms)",
    )
    g.add_argument(
        "--inflight",
        type=int,
        default=2,
        metavar="N",
        help="chunks in flight per worker, queued + running (default 2; 1-8)",
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=2,
        metavar="N",
        help="extra attempts per chunk after a failure (default 2; 'input' failures are not retried)",
    )
    g.add_argument(
        "--backoff-s",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="first retry delay; doubles per retry, jittered +/-25%% (default 5); the worker takes other chunks meanwhile",
    )
    g.add_argument("--backoff-max-s", type=_positive_float, default=300.0, metavar="S", help="retry delay cap (default 300)")
    g.add_argument(
        "--timeout-s",
        type=float,
        metavar="S",
        help="per-attempt timeout; default max(--timeout-min-s, --timeout-factor x chunk duration), "
        "or 900 s when the duration is unknown; a timeout kills the runner's process group",
    )
    g.add_argument("--timeout-factor", type=_positive_float, default=5.0, metavar="X", help="(default 5)")
    g.add_argument("--timeout-min-s", type=_positive_float, default=120.0, metavar="S", help="(default 120)")
    g.add_argument("--seed", type=int, help="seed for the retry jitter (reproducible schedules)")
    g.add_argument(
        "--summary-interval-s",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="write the summary snapshot at least this often (default 30)",
    )
    g.add_argument(
        "--progress-interval-s",
        type=_positive_float,
        metavar="S",
        help="progress line interval (default: live on a TTY; in a log the first line at once, then after 2, 4, 8 ... s up to 30 s)",
    )
    g = p.add_argument_group("GPUs")
    g.add_argument("--max-gpus", type=int, metavar="N", help="use at most N GPUs per node (0 = CPU only)")
    g.add_argument(
        "--workers-per-gpu", type=int, default=1, metavar="K", help="ranks per GPU, for deliberate sharing (default 1)"
    )
    g.add_argument(
        "--cpu-workers",
        type=int,
        default=0,
        metavar="N",
        help="local ranks beyond the GPU slots that work on the CPU (default 0: they share GPUs, with a warning)",
    )
    g.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run on the CPU even though the job was given GPUs (CUDA_VISIBLE_DEVICES, SLURM's GPU variables, "
        "--max-gpus) that this rank cannot use; without it such a rank does not start (exit 2 when none can)",
    )
    g = p.add_argument_group("resume and stopping")
    g.add_argument(
        "--resume",
        action="store_true",
        help="skip chunks that earlier runs of the same manifest(s) finished (same telemetry and output dirs)",
    )
    g.add_argument(
        "--resume-summary",
        action="append",
        default=[],
        metavar="PATH",
        help="skip chunks that succeeded in this summary (repeatable)",
    )
    g.add_argument("--skip-failed", action="store_true", help="with --resume: do not rerun chunks that failed")
    g.add_argument(
        "--grace-s",
        type=_positive_float,
        default=20.0,
        metavar="S",
        help="on SIGTERM/SIGINT, let chunks in flight finish for up to S seconds (default 20: with the stop "
        "that follows, within SLURM's default KillWait of 30 s); a second signal stops at once",
    )
    g.add_argument(
        "--rerun-changed",
        action="store_true",
        help="with --resume: run again the chunks earlier runs did with other settings (HawkEars or model "
        "version, --min-score, --label, region/date options, species lists, runner); without it or "
        "--accept-mixed such a resume stops with exit 2 naming what differs",
    )
    g.add_argument(
        "--accept-mixed",
        action="store_true",
        help="with --resume: keep the chunks earlier runs did with other settings (results then mix settings)",
    )
    g.add_argument(
        "--force-unlock",
        action="store_true",
        help="take over the output directory's lock whoever holds it (a warning names the holder): only when no run uses that folder any more",
    )
    g = p.add_argument_group("faulty ranks (a bad GPU, a full disk, a hung node)")
    g.add_argument(
        "--quarantine-after",
        type=int,
        default=3,
        metavar="N",
        help="set a rank aside once N chunks that failed on it succeeded on other ranks, with no success "
        "on it in between (a chunk that fails on two ranks is the chunk's fault: it fails, no rank is "
        "blamed); its chunks go to the other ranks (default 3; 0 = never)",
    )
    g.add_argument(
        "--silent-after-s",
        type=_positive_float,
        default=120.0,
        metavar="S",
        help="a rank not heard from for S seconds (ranks report at least every S/4) is lost; its chunks go "
        "to the other ranks (default 120)",
    )
    g.add_argument(
        "--deadline-margin-s",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="a chunk with no result S seconds after its timeout marks its rank as stuck and goes elsewhere (default 60)",
    )
    g.add_argument(
        "--startup-timeout-s",
        type=_positive_float,
        default=600.0,
        metavar="S",
        help="ranks that have not joined S seconds after the start, or not spoken S seconds after their "
        "set-up (building the runner, hashing checkpoints), are lost (default 600)",
    )


def run_options_from_args(args: argparse.Namespace) -> RunOptions:

    return RunOptions(
        runner=args.runner,
        dry_run=args.dry_run,
        stub_sleep_s=args.stub_sleep_s,
        stub_detections=args.stub_detections,
        per_chunk_outputs=args.per_chunk_outputs,
        runner_cmd=args.runner_cmd,
        output_format=args.output_format,
        hawkears=HawkearsOptions.from_namespace(args),
        output_dir=args.output_dir,
        telemetry_dir=args.telemetry_dir,
        chunks_dir=args.chunks_dir,
        scratch_dir=args.scratch_dir,
        allow_missing=args.allow_missing,
        allow_partial_chunks=args.allow_partial_chunks,
        check_chunks=args.check_chunks,
        max_retries=args.max_retries,
        backoff_s=args.backoff_s,
        backoff_max_s=args.backoff_max_s,
        timeout_s=args.timeout_s,
        timeout_factor=args.timeout_factor,
        timeout_min_s=args.timeout_min_s,
        order=args.order,
        inflight=args.inflight,
        max_gpus=args.max_gpus,
        workers_per_gpu=args.workers_per_gpu,
        cpu_workers=args.cpu_workers,
        allow_cpu=args.allow_cpu,
        summary_interval_s=args.summary_interval_s,
        progress_interval_s=args.progress_interval_s,
        seed=args.seed,
        resume=args.resume,
        resume_summaries=tuple(args.resume_summary),
        skip_failed=args.skip_failed,
        rerun_changed=args.rerun_changed,
        accept_mixed=args.accept_mixed,
        grace_s=args.grace_s,
        force_unlock=args.force_unlock,
        quarantine_after=args.quarantine_after,
        silent_after_s=args.silent_after_s,
        deadline_margin_s=args.deadline_margin_s,
        startup_timeout_s=args.startup_timeout_s,
    )
