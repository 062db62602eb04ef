"""Where exceptions become messages and exit codes: the only place (docs/architecture.md, Rules).

A :class:`~badc_mpi.errors.BadcError` prints one ``badc-mpi: error: ...`` line (on rank 0) and
exits with its code; ranks that may not answer any more end the whole job (:func:`end_job`);
Ctrl-C is ``interrupted`` (75); a closed pipe (``| head``) is not an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from badc_mpi.errors import BadcError, ExitCode


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``command(args)``'s exit code, or the code its exception maps to."""
    try:
        return int(command(args))
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


def end_job(comm: Any, exit_code: int, lost_ranks: list[int]) -> None:
    """Ranks that went silent or stuck would hang MPI_Finalize: end the whole job now, with the
    run's exit code, after everything was written and said."""
    print(f"badc-mpi: ranks {', '.join(map(str, lost_ranks))} were lost; ending the job", file=sys.stderr, flush=True)
    sys.stdout.flush()
    comm.Abort(int(exit_code))


def _rank() -> int:
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized():
        return mpi.COMM_WORLD.Get_rank()
    return 0
