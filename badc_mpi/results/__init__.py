"""Results at campaign scale: aggregate runs into Parquet, bundle them with DuckDB and a report.

``aggregate`` (:mod:`badc_mpi.results.aggregate`), ``build_bundle`` (:mod:`badc_mpi.results.bundle`)
and ``open_bundle`` (:mod:`badc_mpi.results.access`); imported lazily, so that ``import badc_mpi``
stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["aggregate", "build_bundle", "open_bundle"]


def __getattr__(name: str) -> Any:
    if name == "aggregate":
        from badc_mpi.results.aggregate import aggregate

        return aggregate
    if name == "build_bundle":
        from badc_mpi.results.bundle import build_bundle

        return build_bundle
    if name == "open_bundle":
        from badc_mpi.results.access import open_bundle

        return open_bundle
    raise AttributeError(name)
