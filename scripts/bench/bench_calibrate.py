#!/usr/bin/env python3
"""Calibration benchmark: 370 species from 18,500 verdicts (issue 22: <= 30 s).

Builds a synthetic ``bundle.duckdb`` (``--detections`` detections over 370 species, 2,000
recordings with a location and a local start; the ``detections`` and ``chunks`` tables as a
bundle has them, with ``detection_id``), draws 50 detections per species and writes a verdicts
file (correct with a known logistic P(correct | score)), then times the calibration as
``badc-mpi calibrate`` runs it, step by step: read and check the verdicts against the bundle,
fit every species (scikit-learn, plus ``--bootstrap`` resamples each), write thresholds.csv and
the tables and views (one transaction), and the report's Calibration section. Prints one JSON
line with the seconds per step, the species with a threshold, and the peak RSS.

Usage: .venv/bin/python scripts/bench/bench_calibrate.py [--species 370] [--per-species 50] [--detections 2000000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402

from badc_mpi.results.calibrate.fit import FitOptions, p_correct  # noqa: E402
from badc_mpi.results.calibrate.report import calibration_section  # noqa: E402
from badc_mpi.results.calibrate.run import plan_calibration, write_calibration  # noqa: E402

RECORDINGS = 2000


def make_bundle(folder: Path, species: int, detections: int, seed: int) -> Path:
    db = folder / "bundle.duckdb"
    con = duckdb.connect(str(db))
    con.execute("SELECT setseed(?)", [seed / 1000])
    con.execute(
        "CREATE TABLE detections AS SELECT i::BIGINT * 7919 AS detection_id, "
        "'r' || (i % ?)::VARCHAR AS recording_id, 'c0' AS chunk_id, 'S' || lpad((i % ?)::VARCHAR, 3, '0') AS label, "
        "'S' || lpad((i % ?)::VARCHAR, 3, '0') AS label_code, random()::FLOAT AS confidence, "
        "((i // ?) % 3600) * 1000 AS start_ms, ((i // ?) % 3600) * 1000 + 3000 AS end_ms FROM range(?) t(i)",
        [RECORDINGS, species, species, RECORDINGS, RECORDINGS, detections],
    )
    con.execute(
        "CREATE TABLE chunks AS SELECT 'r' || i::VARCHAR AS recording_id, 'c0' AS chunk_id, 'analysed' AS status, "
        "0 AS start_ms, 3600000 AS end_ms, 'L' || (i % 50)::VARCHAR || '_20240601_050000.wav' AS source_path, "
        "'L' || (i % 50)::VARCHAR AS location, '2024-06-' || lpad((1 + i % 28)::VARCHAR, 2, '0') || 'T05:00:00-06:00' "
        "AS recording_start_local FROM range(?) t(i)",
        [RECORDINGS],
    )
    con.close()
    return db


def write_verdicts(db: Path, path: Path, per_species: int, seed: int) -> int:
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT detection_id::VARCHAR, label_code, confidence::DOUBLE FROM detections "
        "QUALIFY row_number() OVER (PARTITION BY label_code ORDER BY hash(detection_id)) <= ?",
        [per_species],
    ).fetchall()
    con.close()
    rng = np.random.default_rng(seed)
    scores = np.array([r[2] for r in rows])
    correct = rng.random(len(rows)) < p_correct(scores, -0.5, 2.0)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["detection_id", "species_code", "verdict"])
        w.writerows((r[0], r[1], "correct" if c else "wrong") for r, c in zip(rows, correct))
    return len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--species", type=int, default=370)
    ap.add_argument("--per-species", type=int, default=50)
    ap.add_argument("--detections", type=int, default=2_000_000)
    ap.add_argument("--bootstrap", type=int, default=FitOptions().bootstrap)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="badc-mpi-bench-calibrate-") as tmp:
        folder = Path(tmp)
        t0 = time.monotonic()
        db = make_bundle(folder, args.species, args.detections, args.seed)
        n = write_verdicts(db, folder / "verdicts.csv", args.per_species, args.seed)
        made_s = time.monotonic() - t0
        options = FitOptions(bootstrap=args.bootstrap, seed=args.seed)
        seconds: dict[str, float] = {}
        cpu0 = time.process_time()
        t = time.monotonic()
        con = duckdb.connect(str(db), read_only=True)
        cal = plan_calibration(str(folder), con, [str(folder / "verdicts.csv")], options)
        con.close()
        seconds["check_and_fit"] = time.monotonic() - t
        t = time.monotonic()
        con = duckdb.connect(str(db))
        write_calibration(cal, con)
        con.close()
        seconds["write"] = time.monotonic() - t
        t = time.monotonic()
        con = duckdb.connect(str(db), read_only=True)
        section = calibration_section(con, {"tiny_model": False})
        con.close()
        seconds["report_section"] = time.monotonic() - t
        total = sum(seconds.values())
        cpu_s = time.process_time() - cpu0
        print(
            json.dumps(
                {
                    "bench": "calibrate",
                    "species": len(cal.fits),
                    "with_threshold": cal.with_threshold,
                    "verdicts": n,
                    "detections": args.detections,
                    "bootstrap": args.bootstrap,
                    "seconds": {k: round(v, 2) for k, v in seconds.items()},
                    "total_s": round(total, 2),
                    "cpu_s": round(cpu_s, 2),
                    "target_s": 30,
                    "ok": total <= 30,
                    "setup_s": round(made_s, 2),
                    "section_kib": len(section) // 1024,
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
