"""``badc-mpi calibrate``'s arguments (the command itself is in :mod:`badc_mpi.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

from badc_mpi.results.calibrate.fit import FitOptions

CALIBRATE_EPILOG = """\
verdicts files: CSV with the columns detection_id, species_code, verdict (correct, wrong or unsure;
empty: not reviewed); others are ignored, so the review pack's filled review.csv works too. Every
file used is kept in <bundle>/verdicts/ (the same file twice: one copy), and every later
calibrate reads them all again with the new files (a later review round adds to the earlier ones).

per species: a logistic model of P(correct | score) on logit(score) (scikit-learn); the threshold is
the lowest score whose fitted P(correct) reaches --target-precision, so every detection kept has
an estimated P(correct) of at least the target; a seeded bootstrap gives its interval. No
threshold, with the reason: fewer than --min-verdicts correct + wrong verdicts, all correct, none
correct, or P(correct) not rising with the score (unsure verdicts are counted, not fitted).

writes <bundle>/thresholds.csv (export --thresholds FILE reads it), calibration.json, the tables
verdicts and thresholds and the views calibrated_detections and calibrated_summary in
bundle.duckdb, and report.html's Calibration section. Details: docs/results.md.
exit codes:
  0   calibrated (species without a threshold are listed with their reason)
  2   a verdict naming a detection the bundle lacks, an unknown verdict word, disagreeing duplicate
      verdicts, a bad option: one line each (file and row), nothing written"""


def add_calibrate_parser(sub: Any) -> None:
    text = "per-species thresholds from listeners' verdicts (logistic calibration of HawkEars' scores)"
    p = sub.add_parser(
        "calibrate",
        help=text,
        description=text + ".",
        epilog=CALIBRATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="a bundle folder (badc-mpi bundle)")
    p.add_argument(
        "--verdicts", nargs="*", default=[], metavar="FILE", help="verdicts CSV file(s) (none: the ones kept in the bundle)"
    )
    d = FitOptions()
    p.add_argument("--target-precision", type=float, default=d.target_precision, metavar="P", help="default %(default)s")
    p.add_argument(
        "--min-verdicts",
        type=int,
        default=d.min_verdicts,
        metavar="N",
        help="correct + wrong verdicts a species needs (default %(default)s)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=d.bootstrap,
        metavar="N",
        help="resamples for the interval (default %(default)s; 0: none)",
    )
    p.add_argument(
        "--interval", type=float, default=d.interval, metavar="C", help="the interval's coverage (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="the bootstrap's seed (default %(default)s)")
    p.add_argument(
        "--note",
        default="",
        metavar="TEXT",
        help="said in a banner of the report's Calibration section (e.g. synthetic verdicts)",
    )
    p.add_argument(
        "--record-datalad",
        action="store_true",
        help="inside a DataLad dataset, `datalad save` the bundle folder afterwards (make calibrate does, unless RECORD_DATALAD=0)",
    )


def fit_options(args: argparse.Namespace) -> FitOptions:
    return FitOptions(args.target_precision, args.min_verdicts, args.bootstrap, args.interval, args.seed)
