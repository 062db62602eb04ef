"""Logging, configured once per process by the entry point, with the MPI rank in every line."""

from __future__ import annotations

import logging
import os
import socket
import sys

LOGGER_NAME = "badc_mpi"


def configure_logging(rank: int | None = None, size: int | None = None, verbosity: int = 0) -> None:
    """Configure the ``badc_mpi`` logger: stderr, one line per record, rank-aware.

    ``verbosity`` 0 = INFO, 1 = DEBUG, -1 = WARNING. Safe to call again (replaces the handler).
    """
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    env_level = os.environ.get("BADC_MPI_LOG_LEVEL")
    if env_level:
        level = logging.getLevelName(env_level.upper()) if not env_level.isdigit() else int(env_level)
    where = ""
    if size is not None and size > 1:
        where = f"[{rank}/{size} {socket.gethostname()}] "
    fmt = f"%(asctime)s.%(msecs)03d badc-mpi {where}%(levelname)s %(message)s"
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%dT%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """Module loggers are children of ``badc_mpi``; they do nothing until configured."""
    return logging.getLogger(name if name.startswith(LOGGER_NAME) else f"{LOGGER_NAME}.{name}")
