"""Results at campaign scale, after the runs, on one process; a run's files are read, never written.

Three rooms, imports pointing down: ``bundle/`` (DuckDB views, charts, the report, ``open_bundle``)
over ``export/`` (WildTrax, Raven, tables, histories) over ``aggregate/`` (runs, verdicts, readers,
schema, the overlap merge, Parquet: :func:`badc_mpi.results.aggregate.dataset.aggregate`).
``build_bundle`` and ``open_bundle`` here are imported when called so ``import badc_mpi`` stays light. The live monitor is :mod:`badc_mpi.monitor`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_bundle", "open_bundle"]


def build_bundle(*args: Any, **kwargs: Any) -> Any:
    """See :func:`badc_mpi.results.bundle.build.build_bundle`."""
    from badc_mpi.results.bundle.build import build_bundle as run

    return run(*args, **kwargs)


def open_bundle(*args: Any, **kwargs: Any) -> Any:
    """See :func:`badc_mpi.results.bundle.access.open_bundle`: a bundle's views as pyarrow tables / DuckDB relations."""
    from badc_mpi.results.bundle.access import open_bundle as run

    return run(*args, **kwargs)
