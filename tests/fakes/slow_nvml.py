"""A fake NVML for one test: no GPU, and on every rank but 0 it answers only after a delay.

Rank 0 plans a run (and names its files) before it hears from the other ranks; delaying their
hello holds it between naming its files and creating them, as a large job's start-up does. Tests
name this class in ``BADC_MPI_NVML_BACKEND``; production code never reads its variable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from badc_mpi.gpu.nvml import NvmlUnavailable

DELAY_ENV = "BADC_MPI_TEST_SLOW_NVML_S"


class SlowNoGpuBackend:
    def __init__(self, env: Mapping[str, str]) -> None:
        if env.get("PMI_RANK", "0") != "0":
            time.sleep(float(env.get(DELAY_ENV, "4")))
        raise NvmlUnavailable("no GPU (slow fake NVML)")
