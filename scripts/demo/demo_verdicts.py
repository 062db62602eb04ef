#!/usr/bin/env python3
"""Synthetic verdicts for `make demo`'s calibration step: no listener judged the tiny random-weight
model's detections, so this script plays one, and the report's Calibration section says so.

    .venv/bin/python scripts/demo/demo_verdicts.py BUNDLE --species ROPT,RUGR --out FILE [--per-species 50] [--seed 1]

For each species, up to ``--per-species`` of its detections in the bundle (drawn with the seed;
those of a ``review.csv`` given with ``--review`` instead, when the review pack is there), each
``correct`` with probability ``1 / (1 + exp(-(score - m) / s))`` (``m``: the species' median
score, ``s``: a quarter of its score spread), else ``wrong``; one in ten ``unsure``. Writes the
verdicts CSV (``detection_id,species_code,verdict``) that ``badc-mpi calibrate --verdicts`` reads.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import duckdb
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from badc_mpi.storage.atomic import atomic_write_text  # noqa: E402

QUERY = """
SELECT detection_id::VARCHAR AS id, coalesce(label_code, label) AS code, confidence::DOUBLE AS score
FROM detections WHERE coalesce(label_code, label) IN (SELECT unnest(?::VARCHAR[]))
ORDER BY code, hash(detection_id + ?)
"""


def review_ids(path: str | None) -> set[str] | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["detection_id"] for row in csv.DictReader(fh)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--species", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-species", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--review", help="a review pack's review.csv: judge its detections")
    args = ap.parse_args()
    species = [s.strip() for s in args.species.split(",") if s.strip()]
    con = duckdb.connect(os.path.join(args.bundle, "bundle.duckdb"), read_only=True)
    try:
        rows = con.execute(QUERY, [species, args.seed]).fetchall()
    finally:
        con.close()
    wanted = review_ids(args.review)
    rng = np.random.default_rng(args.seed)
    out = ["detection_id,species_code,verdict"]
    for code in species:
        mine = [r for r in rows if r[1] == code and (wanted is None or r[0] in wanted)][: args.per_species]
        if not mine:
            continue
        scores = np.array([r[2] for r in mine])
        m, s = float(np.median(scores)), max(float(np.ptp(scores)) / 4, 1e-3)
        p = 1.0 / (1.0 + np.exp(-(scores - m) / s))
        for (det_id, _, _), pc, u in zip(mine, p, rng.random(len(mine))):
            verdict = "unsure" if u < 0.1 else ("correct" if rng.random() < pc else "wrong")
            out.append(f"{det_id},{code},{verdict}")
    atomic_write_text(args.out, "\n".join(out) + "\n")
    print(f"demo: {len(out) - 1} synthetic verdicts (no listener: the tiny model's detections) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
