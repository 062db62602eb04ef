"""Test configuration: make tests/ importable (helpers), keep MPI ranks > 0 quiet, and pin every
test (and every process it starts) to a GPU-less host, so the suite means the same on a GPU node."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes.nvml import fake_env  # noqa: E402


def pin_no_gpu(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """No GPU, whatever the host has: the fake NVML seam with ``zero.json`` and no
    ``CUDA_VISIBLE_DEVICES`` or SLURM GPU variables (a scheduler's mask would name a GPU the fake
    does not have, and a rank given GPUs it cannot use refuses to start). Tests
    that want GPUs name another fake (``fake_env("one")``), which overrides this in their env."""
    from badc_mpi.gpu.binding import SLURM_GPU_COUNTS, SLURM_GPU_LISTS

    environ.update(fake_env("zero"))
    for name in ("CUDA_VISIBLE_DEVICES", *SLURM_GPU_LISTS, *SLURM_GPU_COUNTS):  # a GPU job's: not ours to use
        environ.pop(name, None)


pin_no_gpu()  # at import: before any test, fixture or subprocess reads the environment


def pytest_configure(config):  # noqa: ANN001 - pytest hook
    if config.getoption("with_mpi", default=False) or config.getoption("only_mpi", default=False):
        rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
        if rank > 0:
            # ranks > 0 run the same session; their failures still make mpiexec exit non-zero,
            # and their full report goes to a per-rank log instead of interleaving with rank 0's
            import tempfile

            log = Path(tempfile.gettempdir()) / f"badc-mpi-pytest-rank{rank}.log"
            sys.stdout = open(log, "w")  # noqa: SIM115 - lives for the session
            sys.stderr.write(f"pytest-mpi rank {rank}: report in {log}\n")


@pytest.fixture(autouse=True)
def _restore_badc_logging():
    """Tests that call the CLI in-process configure logging; give every test the same start."""
    logger = logging.getLogger("badc_mpi")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]
