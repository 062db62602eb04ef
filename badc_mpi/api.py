"""The Python interface: everything the CLI does is a function call here.

Call :func:`run` on every rank under ``mpiexec``/``srun`` (or plainly, as one rank)::

    import badc_mpi
    outcome = badc_mpi.run(["manifest.csv"], runner="command",
                           runner_cmd="python scripts/hawkears/fake_hawkears.py --input {input} --output {output_dir}")
    if outcome.summary is not None:      # rank 0
        print(outcome.summary["counts"])

Planning and inspection helpers work without MPI: :func:`badc_mpi.inputs.manifest.load_manifest`,
:func:`badc_mpi.inputs.chunk_status.check_chunk_status`, :func:`badc_mpi.inputs.locations.default_locations`,
:func:`badc_mpi.gpu.report.gpus_report`, :func:`badc_mpi.coordinator.planning.prepare_plan`.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Iterable
from typing import Any

from badc_mpi.coordinator.outcome import RunOutcome
from badc_mpi.errors import BadcError, ExitCode
from badc_mpi.logs import get_logger
from badc_mpi.options import RunOptions

log = get_logger(__name__)

#: exit status of a job aborted because a rank raised an unexpected exception
ABORT_EXIT_CODE = 70


def abort_job(comm: Any, rank: int, exc: BaseException) -> None:
    """Print what went wrong on which rank and host, then end the whole MPI job (never hang)."""
    host = socket.gethostname()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(f"badc-mpi: rank {rank} on {host}: unexpected {type(exc).__name__}: {exc}; aborting the job\n{text}")
    sys.stderr.flush()
    comm.Abort(ABORT_EXIT_CODE)


def run(
    manifests: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    options: RunOptions | None = None,
    *,
    comm: Any = None,
    **overrides: Any,
) -> RunOutcome:
    """Run inference over ``manifests`` (one queue) on every rank of ``comm`` (default COMM_WORLD).

    ``options`` is a :class:`~badc_mpi.options.RunOptions`; keyword ``overrides`` replace its
    fields (e.g. ``runner="stub"``, ``max_retries=0``). Returns a
    :class:`~badc_mpi.coordinator.run.RunOutcome` on every rank (``exit_code`` agreed by all ranks; the
    summary and file paths on rank 0). Bad input raises a :class:`~badc_mpi.errors.BadcError` on
    rank 0 (other ranks get its exit code); an unexpected exception on any rank aborts the job.
    """
    from mpi4py import MPI

    from badc_mpi.coordinator.run import Coordinator
    from badc_mpi.worker.loop import worker_main
    from badc_mpi.worker.start import bind_rank

    paths = [os.fspath(manifests)] if isinstance(manifests, (str, os.PathLike)) else [os.fspath(m) for m in manifests]
    opts = options or RunOptions()
    if overrides:
        opts = RunOptions(**{**opts.__dict__, **overrides})
    comm = comm if comm is not None else MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        opts.validate()
        if not paths:
            from badc_mpi.errors import UsageError

            raise UsageError("no manifest given", fix="badc-mpi run path/to/manifest.csv")
    except BadcError as exc:
        if rank == 0:
            raise
        return RunOutcome(int(exc.exit_code))
    coordinating = False
    try:
        binding, warnings, _reason = bind_rank(comm, opts)  # detect() logs CPU mode once
        for warning in warnings:
            log.warning("%s", warning)
        if rank == 0:
            coordinating = True  # from here on rank 0 stops the workers itself on bad input
            return Coordinator(comm, paths, opts, binding).run()
        return RunOutcome(worker_main(comm, binding, opts))
    except BadcError as exc:
        if size > 1 and not coordinating:
            sys.stderr.write(f"badc-mpi: error: rank {rank} on {socket.gethostname()}: {exc}\n")
            sys.stderr.flush()
            comm.Abort(int(exc.exit_code))
        raise
    except Exception as exc:  # noqa: BLE001 - any bug on any rank must end the job, not hang it
        if size > 1:
            abort_job(comm, rank, exc)
        raise


__all__ = ["run", "RunOptions", "RunOutcome", "ExitCode"]
