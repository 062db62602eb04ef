"""badc-mpi: run the HawkEars bird classifier over chunk manifests on every GPU of an MPI job.

Public entry points (all documented in README.md):

- :func:`badc_mpi.run` -- the whole inference job; call it on every rank under ``mpiexec``/``srun``.
- :func:`badc_mpi.inputs.manifest.load_manifest` -- read and validate a chunk manifest.
- :func:`badc_mpi.inputs.chunk_status.check_chunk_status` -- the chunk-status guard.
"""

from __future__ import annotations

from badc_mpi._version import __version__

__all__ = ["__version__", "run"]


def run(manifests, **options):  # noqa: ANN001, ANN201 - thin lazy wrapper, see badc_mpi.api.run
    """Run inference over ``manifests`` on every rank; returns the run summary on rank 0.

    See :func:`badc_mpi.api.run` for the options.
    """
    from badc_mpi.api import run as _run

    return _run(manifests, **options)
