"""``open_bundle(path)``: a bundle's tables and views for notebooks, as pyarrow tables or DuckDB
relations, read-only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.results.aggregate.dataset import TABLES
from badc_mpi.results.bundle.build import DB_NAME
from badc_mpi.results.bundle.views import VIEWS
from badc_mpi.results.calibrate.tables import TABLES as CALIBRATION_TABLES
from badc_mpi.results.calibrate.tables import VIEWS as CALIBRATION_VIEWS


@dataclass
class Bundle:
    """An open bundle: ``relation(name)`` (DuckDB, lazy), ``table(name)`` (pyarrow), ``summary``."""

    folder: str
    con: Any
    summary: dict[str, Any]

    names = TABLES + VIEWS + CALIBRATION_TABLES + CALIBRATION_VIEWS  #: the calibration's: after `badc-mpi calibrate`

    def relation(self, name: str) -> Any:
        if name not in self.names:
            raise UsageError(f"no table or view {name!r} in the bundle", fix=f"use one of: {', '.join(self.names)}")
        return self.con.table(name)

    def table(self, name: str) -> Any:
        import pyarrow as pa

        result = self.relation(name).arrow()
        return result.read_all() if isinstance(result, pa.RecordBatchReader) else result

    def sql(self, query: str, params: list[Any] | None = None) -> Any:
        """Run a query of your own (pass values as ``params``, never pasted into the text)."""
        return self.con.execute(query, params or [])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Open a bundle folder (or its ``bundle.duckdb``) read-only."""
    import duckdb

    folder = os.fspath(path)
    if folder.endswith(DB_NAME):
        folder = os.path.dirname(folder)
    db = os.path.join(folder, DB_NAME)
    if not os.path.isfile(db):
        raise UsageError(
            f"{folder}: not bundled yet (no {DB_NAME} here)",
            fix="bundle the runs first: `make bundle MANIFEST=...` (or `badc-mpi bundle MANIFEST`)",
        )
    summary: dict[str, Any] = {}
    if os.path.isfile(os.path.join(folder, "summary.json")):
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as fh:
            summary = json.load(fh)
    return Bundle(folder, duckdb.connect(db, read_only=True), summary)
