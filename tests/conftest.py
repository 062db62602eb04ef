"""Test configuration: make tests/ importable (helpers), keep MPI ranks > 0 quiet."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
