"""The command line: ``badc-mpi`` / ``python -m badc_mpi``. A thin layer over :mod:`badc_mpi.api`.

:func:`main` parses (``parser.py``), runs the command's handler (``commands.py``) and maps what
it raises to a message and an exit code (``exits.py``, the only place that does). A run that stops
early prints its resume command (``resume.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from badc_mpi.cli.commands import COMMANDS, verbosity
from badc_mpi.cli.exits import run_command
from badc_mpi.cli.parser import build_parser
from badc_mpi.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``badc-mpi``; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(verbosity=verbosity(args))
    return run_command(COMMANDS[args.command], args)
