"""The ``review`` command's options (parser) and its thin shell (the CLI calls :func:`run_review`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from badc_mpi.results.review.select import STRATA, Selection

REVIEW_EPILOG = """\
Writes <bundle>/review/<round>/: clips/<species>/<detection_id>.flac (padded by --pad-s),
images/<species>/<detection_id>.png (spectrogram, the detection's span marked), review.csv,
raven/<species>.review.selections.txt (a Verdict column), review.html (open it in a browser from
the file system: listen, judge with the buttons or c/w/u, then "Export verdicts.csv") and
review.json (last). A later round (--round 2 --near-threshold) draws only detections no earlier
round drew, weighted to scores near each species' threshold (thresholds.csv of the bundle, else
the bundle's minimum confidence). A source recording that is not here is listed with its fix
(datalad get PATH); the rest of the pack is written. docs/results.md, "Review".
exit codes:
  0   pack written (missing clips listed)
  2   bad option or input, or a pack of that round already there (nothing written)"""


def _codes(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def add_review_command(sub: Any) -> None:
    p = sub.add_parser(
        "review",
        help="a review pack of a bundle's detections: clips, spectrograms, review.csv, review.html",
        description="Draw detections per species (seeded, stratified) from a bundle and cut each one's clip "
        "and spectrogram from its source recording, for a person to listen and judge.",
        epilog=REVIEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle folder (badc-mpi bundle)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--species", type=_codes, metavar="CODES", help="species codes, comma-separated")
    which.add_argument("--all-species", action="store_true", help="every species (label) of the bundle")
    p.add_argument("--per-species", type=int, default=50, metavar="N", help="detections per species (default 50)")
    p.add_argument("--strata", default="score", choices=STRATA, help="draw evenly across score bands of 0.1 "
                   "(default), locations, local hours, or none")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0): same seed, same detections")
    p.add_argument("--round", type=int, default=1, metavar="N", help="the round (default 1): review/<N>/")
    p.add_argument("--near-threshold", action="store_true", help="weight the draw to scores near each species' threshold")
    p.add_argument("--thresholds", metavar="FILE", help="thresholds.csv (species_code,threshold); default: the bundle's")
    p.add_argument("--pad-s", type=float, default=1.5, metavar="S", help="seconds of audio either side (default 1.5)")
    p.add_argument("--force", action="store_true", help="replace the pack of this round")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="processes cutting clips (default: this machine's cores; used from 200 clips)")  # fmt: skip


def run_review(args: argparse.Namespace) -> int:
    from badc_mpi.results.review.pack import ReviewOptions, build_pack

    selection = Selection(
        species=args.species or (),
        all_species=args.all_species,
        per_species=args.per_species,
        strata=args.strata,
        seed=args.seed,
        near_threshold=args.near_threshold,
    )
    opts = ReviewOptions(
        selection, round=args.round, pad_s=args.pad_s, thresholds=args.thresholds, force=args.force, jobs=args.jobs
    )
    result = build_pack(args.bundle, opts)
    for m in result.missing:
        print(f"badc-mpi: clip {m['detection_id']} missing: {m['reason']}: {m['path']}; fix: {m['fix']}")
    print(f"review: {result.drawn} detection(s) drawn, {result.written} clip(s) written, {len(result.missing)} missing")
    print(f"  pack     {result.folder}")
    print(f"  listen   {os.path.join(result.folder, 'review.html')}")
    print(f"  then     badc-mpi calibrate {args.bundle} --verdicts <the exported verdicts.csv>")
    return 0
