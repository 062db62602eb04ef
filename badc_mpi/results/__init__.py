"""Runs read back, never written by a run: ``badc-mpi monitor`` (telemetry, live), and results at
campaign scale: aggregate runs into Parquet, bundle them with DuckDB and a report.

The monitor: ``monitor_tail`` reads the telemetry JSONL incrementally and the summary's head (I/O);
``monitor_parse``/``monitor_state`` parse blocks of lines and aggregate them (no I/O);
``monitor_view`` formats a snapshot (pure); ``monitor`` is the loop. Results: ``aggregate``
(:mod:`badc_mpi.results.aggregate`), ``build_bundle`` (:mod:`badc_mpi.results.bundle`) and
``open_bundle`` (:mod:`badc_mpi.results.access`), imported when called so ``import badc_mpi`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["aggregate", "build_bundle", "open_bundle"]


def aggregate(*args: Any, **kwargs: Any) -> Any:
    """See :func:`badc_mpi.results.aggregate.aggregate`."""
    from badc_mpi.results.aggregate import aggregate as run

    return run(*args, **kwargs)


def build_bundle(*args: Any, **kwargs: Any) -> Any:
    """See :func:`badc_mpi.results.bundle.build_bundle`."""
    from badc_mpi.results.bundle import build_bundle as run

    return run(*args, **kwargs)


def open_bundle(*args: Any, **kwargs: Any) -> Any:
    """See :func:`badc_mpi.results.access.open_bundle`: a bundle's views as pyarrow tables / DuckDB relations."""
    from badc_mpi.results.access import open_bundle as run

    return run(*args, **kwargs)
