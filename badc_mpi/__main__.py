"""``python -m badc_mpi``: the CLI, with an MPI-aware abort so an exception never hangs a job."""
from __future__ import annotations

import sys

from badc_mpi.cli import main

if __name__ == "__main__":
    sys.exit(main())
