"""The MPICH wheel's network module for a job over several nodes, chosen before MPI starts.

The MPICH wheel from PyPI speaks PMI-1 to ``srun --mpi=pmi2``; with its default network module
(UCX) each node's first rank puts a 4096-byte address card into PMI, hex-encoded into lines of up
to ~1 KiB, and SLURM's pmi2 plugin reads a PMI-1 request with a single 1024-byte read: a longer
line is cut, its value lost, and UCX aborts on the garbage address it then gets ("addr version
9"). OFI's card is a 16-byte socket address (docs/howto/testing-slurm.md has the evidence). So a
multi-node step of the wheel runs with ``MPIR_CVAR_CH4_NETMOD=ofi`` unless the user set the
variable; a site MPI (``make install MPI=system``) is never touched. Pure but for :func:`apply`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

NETMOD_VAR = "MPIR_CVAR_CH4_NETMOD"
#: SLURM's node count of the step (srun sets it), else of the job
NODE_VARS = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")


def nodes(env: Mapping[str, str]) -> int:
    for name in NODE_VARS:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def netmod_for(env: Mapping[str, str], mpich_wheel: bool) -> str | None:
    """``ofi`` for a step of the MPICH wheel over more than one node when the variable is unset."""
    if not mpich_wheel or NETMOD_VAR in env or nodes(env) < 2:
        return None
    return "ofi"


def mpich_wheel() -> bool:
    """Whether mpi4py runs on the MPICH wheel from PyPI (the ``mpich`` distribution)."""
    from importlib import metadata

    try:
        metadata.version("mpich")
    except metadata.PackageNotFoundError:
        return False
    return True


def apply(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Set the network module where :func:`netmod_for` says so (before ``mpi4py.MPI`` is
    imported); rank 0 of the step says it once. Returns what was set."""
    choice = netmod_for(env, mpich_wheel())
    if choice is not None:
        env[NETMOD_VAR] = choice
        if env.get("SLURM_PROCID", "0") == "0":
            sys.stderr.write(
                f"badc-mpi: MPICH wheel over {nodes(env)} nodes: {NETMOD_VAR}={choice} "
                "(its UCX address cards overflow srun's PMI lines; docs/howto/sockeye.md)\n"
            )
    return choice


__all__ = ["NETMOD_VAR", "apply", "netmod_for", "nodes"]
