"""``python -m badc_mpi``: the CLI, with an MPI-aware abort so an exception never hangs a job.

Under plain ``python script.py`` an uncaught exception on one rank deadlocks the whole MPI job
(mpi4py's atexit ``MPI_Finalize`` waits for peers that wait for it). Users type
``python -m badc_mpi``, not ``python -m mpi4py``, so this entry point installs the abort itself.
"""

from __future__ import annotations

import sys


def _abort_on_uncaught(exc_type, exc, tb):  # noqa: ANN001 - sys.excepthook signature
    sys.__excepthook__(exc_type, exc, tb)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
        import socket

        rank = mpi.COMM_WORLD.Get_rank()
        sys.stderr.write(f"badc-mpi: rank {rank} on {socket.gethostname()}: uncaught {exc_type.__name__}; aborting the job\n")
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(70)


def _main() -> int:
    sys.excepthook = _abort_on_uncaught
    from badc_mpi.transport import netmod

    netmod.apply()  # before MPI starts: a multi-node step of the MPICH wheel needs OFI
    from badc_mpi.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
