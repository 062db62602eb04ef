"""``badc-mpi calibrate BUNDLE``: the bundle's side of a calibration (:mod:`badc_mpi.results.calibrate`):
check and fit with ``bundle.duckdb`` open read-only (nothing written on bad input), then write
the calibration, then render ``report.html`` again (its "Calibration" section)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.results.bundle.build import DB_NAME, view_tables
from badc_mpi.results.calibrate.fit import FitOptions
from badc_mpi.results.calibrate.run import Calibration, plan_calibration, write_calibration


def _database(folder: str) -> str:
    db = os.path.join(folder, DB_NAME)
    if not os.path.isfile(db) or not os.path.isfile(os.path.join(folder, "summary.json")):
        raise UsageError(
            f"{folder}: no complete bundle here ({DB_NAME} and summary.json)",
            fix="give the bundle folder `badc-mpi bundle` printed (make bundle first)",
        )
    return db


def refresh_report(folder: str) -> str:
    """``report.html`` again from ``bundle.duckdb`` and ``summary.json`` (atomic)."""
    import duckdb

    from badc_mpi.results.bundle.report import write_report

    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    con = duckdb.connect(os.path.join(folder, DB_NAME), read_only=True)
    try:
        rows = con.execute("SELECT top_n FROM bundle_settings").fetchall()
        top_n = int(rows[0][0]) if rows else 20
        return write_report(con, view_tables(con), summary, os.path.join(folder, "report.html"), top_n=top_n)
    finally:
        con.close()


def calibrate_bundle(folder: str, verdicts: Sequence[str], options: FitOptions, note: str = "") -> tuple[Calibration, list[str]]:
    """Check, fit and write (see the module doc); returns the calibration and the paths written."""
    import duckdb

    folder = os.path.abspath(folder)
    db = _database(folder)
    con: Any = duckdb.connect(db, read_only=True)
    try:
        cal = plan_calibration(folder, con, verdicts, options, note)
    finally:
        con.close()
    con = duckdb.connect(db)
    try:
        written = write_calibration(cal, con)
    finally:
        con.close()
    written.append(refresh_report(folder))
    return cal, written
