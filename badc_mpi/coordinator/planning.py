"""Rank 0's preparation of a run: everything that can fail on bad input, before any work.

Loads and validates the manifests (one queue), runs the chunk-status guard, decides where
outputs and telemetry go, checks the runner can start, orders the chunks, applies resume state,
and names the run's files. Raises :class:`badc_mpi.errors.BadcError` subclasses; writes nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from badc_mpi._version import __version__
from badc_mpi.errors import UsageError
from badc_mpi.inputs.chunk_table import BLOCK_ROWS, ChunkSet
from badc_mpi.inputs.sources import input_problem
from badc_mpi.logs import get_logger
from badc_mpi.options import RunOptions
from badc_mpi.records import Chunk
from badc_mpi.storage import telemetry as tel
from badc_mpi.storage.ledger import LEDGER_SUFFIX
from badc_mpi.storage.store import PER_CHUNK, STORE, store_dir
from badc_mpi.transport.messages import WorkerConfig

log = get_logger(__name__)


@dataclass
class RunPlan:
    chunks: Sequence[Chunk]  #: to run, in dispatch order (a ChunkSet: columns, no object per chunk)
    unavailable: list[tuple[int, Chunk, str]]  #: (index in chunks, chunk, reason): failed as ``input`` before dispatch
    columns: list[str]  #: manifest header (union, in order) for the failed-chunks CSV
    output_dir: str
    telemetry_path: Path
    summary_path: Path
    failed_csv: Path
    workers_csv: Path
    worker_config: WorkerConfig
    meta: dict[str, Any]
    ledger_path: Path = Path()
    chunks_dir: str = ""
    carried_counts: dict[str, int] = field(default_factory=dict)  #: resume: skipped chunks per status
    resume_note: str = ""


#: the SLURM job and step a run was launched in (summary ``slurm``), from srun's/sbatch's variables
SLURM_META = (
    ("job_id", "SLURM_JOB_ID"),
    ("step_id", "SLURM_STEP_ID"),
    ("array_job_id", "SLURM_ARRAY_JOB_ID"),
    ("array_task_id", "SLURM_ARRAY_TASK_ID"),
    ("restart_count", "SLURM_RESTART_COUNT"),
    ("cluster", "SLURM_CLUSTER_NAME"),
    ("job_name", "SLURM_JOB_NAME"),
    ("nodelist", "SLURM_JOB_NODELIST"),
    ("ntasks", "SLURM_NTASKS"),
)


def slurm_meta(env: Mapping[str, str]) -> dict[str, str] | None:
    """Which SLURM job and step this run is (None outside SLURM): the values as SLURM set them. Pure."""
    if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")):
        return None
    out = {key: env[var] for key, var in SLURM_META if env.get(var)}
    out.setdefault("job_id", env.get("SLURM_JOBID", ""))
    return out


def runner_options(options: RunOptions) -> Any:
    """The picklable options object of the chosen runner."""
    kind = options.runner_kind
    if kind == "stub":
        from badc_mpi.runners.stub import StubOptions

        return StubOptions(options.stub_sleep_s, options.stub_detections)
    if kind == "command":
        from badc_mpi.runners.command import CommandOptions

        return CommandOptions(options.runner_cmd or "", options.output_format)
    from badc_mpi.runners.hawkears.options import HawkearsOptions

    return options.hawkears if options.hawkears is not None else HawkearsOptions()


def order_chunks(chunks: list[Chunk], order: str) -> list[Chunk]:
    """Manifest order, or longest first (unknown durations last, ties in manifest order)."""
    if order == "longest-first":
        return sorted(chunks, key=lambda c: -(c.duration_s if c.duration_s is not None else -1.0))
    return list(chunks)


def order_positions(chunks: ChunkSet, rows: np.ndarray | None, order: str) -> np.ndarray | None:
    """:func:`order_chunks` for global rows of a chunk set (vectorised, stable); ``rows`` None:
    all of them (then None again in manifest order). Longest first sorts an integer key per row,
    ``start_ms - end_ms`` (unknown: 1), built block by block: 4 bytes a row while durations fit."""
    if order != "longest-first":
        return rows
    keys = _longest_first_keys(chunks)
    if rows is not None:
        keys = keys[rows]
    by_key = np.argsort(keys, kind="stable")
    del keys
    return by_key if rows is None else rows[by_key]


def _longest_first_keys(chunks: ChunkSet) -> np.ndarray:
    arrays = [a for t in chunks.tables for a in t.ints.values()]
    keys = np.ones(chunks.size, dtype=np.int32 if all(a.dtype.itemsize <= 4 for a in arrays) else np.int64)
    for table, offset in zip(chunks.tables, chunks.offsets):
        if "start_ms" not in table.ints or "end_ms" not in table.ints:
            continue
        start, end = table.ints["start_ms"], table.ints["end_ms"]
        for begin in range(0, len(table), BLOCK_ROWS):
            s, e = start[begin : begin + BLOCK_ROWS], end[begin : begin + BLOCK_ROWS]
            out = keys[offset + begin : offset + begin + len(s)]
            np.copyto(out, s - e, where=(s >= 0) & (e >= 0))
    return keys


def union_columns(manifests: list[Any]) -> list[str]:
    cols: list[str] = []
    for m in manifests:
        for c in m.columns:
            if c not in cols:
                cols.append(c)
    return cols


def device_kind(devices: Sequence[str]) -> str | None:
    """The run's device kind for its fingerprint: ``cuda``, ``cpu`` or ``cpu+cuda`` (ranks of both
    kinds, ``--cpu-workers``), from the ranks' bindings; None when none is known."""
    return "+".join(sorted(set(devices))) or None


def check_run_files_free(tpath: Path) -> None:
    """UsageError when a file of this run exists already: a run never writes into another's files."""
    for path in tel.run_files(tpath):
        if os.path.lexists(path):
            raise UsageError(
                f"{path}: this run's file exists already (another run wrote it); nothing was dispatched",
                fix="start the run again (a new run gets a new id), or move that file aside if it is a copy",
            )


def prepare_plan(manifest_paths: list[str], options: RunOptions, run_id: str, devices: Sequence[str] = ()) -> RunPlan:
    from badc_mpi.inputs.locations import check_name_lengths, check_writable, default_locations
    from badc_mpi.inputs.manifest import load_manifests
    from badc_mpi.runners import build_runner

    options.validate()
    manifests = load_manifests(manifest_paths, check_sources=True, allow_missing=options.allow_missing)
    loc = default_locations(
        manifest_paths[0],
        output_dir=options.output_dir,
        telemetry_dir=options.telemetry_dir,
        chunks_dir=options.chunks_dir,
    )
    if options.check_chunks:
        from badc_mpi.inputs.chunk_status import check_chunk_status, enforce_chunk_status

        report = check_chunk_status(manifests, loc.chunks_dir)
        enforce_chunk_status(report, options.allow_partial_chunks)
    tables = [m.chunks for m in manifests]
    catalog = ChunkSet(tables)
    check_name_lengths(tables, loc.output_dir, loc.telemetry_dir, Path(manifest_paths[0]).stem)
    kind = options.runner_kind
    ropts = runner_options(options)
    probe = build_runner(kind, ropts)  # validates templates, finds HawkEars' environment
    described = probe.describe()
    fingerprint = probe.fingerprint()
    probe.close()
    device = device_kind(devices)
    if kind == "hawkears" and device is not None:
        # HawkEars chooses by device what --models/--low-band leave open (all models and the
        # low-band classifier on CUDA, 3 models without it on a CPU), and scores differ in the last
        # bits between devices: results of another device kind are results of other settings
        fingerprint["device"] = device
        if "+" in device:
            log.warning(
                "ranks on %s in one run: HawkEars' defaults differ by device (--models, --low-band "
                "fix them) and each chunk's ledger line names its device",
                device.replace("+", " and "),
            )
    missing = np.concatenate([m.missing_rows + offset for m, offset in zip(manifests, catalog.offsets)])
    rows: np.ndarray | None = None  # all, in manifest order
    carried_counts: dict[str, int] = {}
    resume_note = ""
    resume_ledgers: list[str] = []
    if options.resume or options.resume_summaries:
        from badc_mpi.coordinator.resume import apply_resume

        rows, carried_counts, resume_note, resume_ledgers = apply_resume(catalog, loc, options, fingerprint)
    ordered = ChunkSet(tables, order_positions(catalog, rows, options.order))
    where = np.flatnonzero(np.isin(ordered.global_rows(), missing)) if len(missing) else np.zeros(0, np.int64)
    unavailable = [
        (i, c, input_problem(c.input_path) or "input missing") for i, c in zip(where.tolist(), ordered.chunks_at(where))
    ]
    now = time.time()
    check_writable(loc.output_dir, "output folder", "--output-dir")  # last: nothing is created on bad input
    check_writable(loc.telemetry_dir, "telemetry folder", "--telemetry-dir")
    if not options.per_chunk_outputs:
        check_writable(store_dir(loc.output_dir), "detection store folder", "--output-dir")
    tpath = tel.telemetry_path(loc.telemetry_dir, manifest_paths, run_id)
    check_run_files_free(tpath)
    output_dir = os.path.abspath(loc.output_dir)
    config = WorkerConfig(
        run_id=run_id,
        runner_kind=kind,
        runner_options=ropts,
        output_dir=output_dir,
        scratch_root=os.path.abspath(options.scratch_dir) if options.scratch_dir else None,
        capacity=options.inflight,
        heartbeat_s=options.silent_after_s / 4,
        layout=PER_CHUNK if options.per_chunk_outputs else STORE,
    )
    meta = {
        "badc_mpi_version": __version__,
        "created_at": tel.utc_iso(now),
        "host": socket.gethostname(),
        "slurm": slurm_meta(os.environ),
        "manifests": [os.path.abspath(p) for p in manifest_paths],
        "dataset_root": loc.dataset_root,
        "output_dir": output_dir,
        "telemetry": str(tpath),
        "ledger": str(tel.sidecar(tpath, LEDGER_SUFFIX)),
        "resumed_from": list(options.resume_summaries) if options.resume_summaries else None,
        "resume_ledgers": resume_ledgers,
        "runner": described,
        "fingerprint": fingerprint,
        "layout": config.layout,
        "options": options.public(),
    }
    return RunPlan(
        chunks=ordered,
        unavailable=unavailable,
        columns=union_columns(manifests),
        output_dir=output_dir,
        telemetry_path=tpath,
        summary_path=tel.sidecar(tpath, ".summary.json"),
        failed_csv=tel.sidecar(tpath, ".failed.csv"),
        workers_csv=tel.sidecar(tpath, ".workers.csv"),
        ledger_path=tel.sidecar(tpath, LEDGER_SUFFIX),
        chunks_dir=os.path.abspath(loc.chunks_dir),
        worker_config=config,
        meta=meta,
        resume_note=resume_note,
        carried_counts=carried_counts,
    )
