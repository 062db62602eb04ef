#!/usr/bin/env python3
"""Export and overlap-merge benchmark: 10,000,000 synthetic detections.

Generates one finished run as ``scripts/bench/bench_aggregate.py`` does (the real ``StoreWriter``;
200,000 chunks of 50 detections, 100 chunks per recording: 2,000 recordings of ~95 min, so
every recording is split into 4 WildTrax clips), with a manifest that has ``location``,
``study_area`` and ``recording_start_local`` (50 locations, 5 study areas, 28 days) and chunks
overlapping by 6 s (a same-label group of 5 detections at every chunk boundary). Then, each in a fresh child process (peak RSS = that step alone):

1. ``aggregate`` with ``--merge-overlaps off`` (the detections unmerged; not the figure here);
2. ``merge``: the overlap merge (:func:`badc_mpi.results.aggregate.overlap.merge_file`, mode ``on``) of
   those 10M detections, written to a scratch Parquet file;
3. ``export``: :func:`badc_mpi.results.export.write.write_exports` of every format (WildTrax, Raven,
   tables, histories of 5 focus species) at ``--min-confidence``.

Prints one JSON line per step. Target: memory bounded (well under the 2 GiB of the aggregate),
not growing with the detections.

Usage: .venv/bin/python scripts/bench/bench_export.py [--detections 10000000] [--folder DIR] [--steps aggregate,merge,export]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "bench"))

from bench_aggregate import LABELS, generate  # noqa: E402

OVERLAP_MS = 6000
FOCUS = ",".join(code for code, _ in LABELS[:5])

STEPS = {
    "aggregate": """
from badc_mpi.results.aggregate.dataset import aggregate
r = aggregate([sys.argv[1]], sys.argv[2], reuse=True, merge_overlaps="off")
out = {"detections": r.counts["detections"], "chunks": r.counts["chunks"]}
""",
    "merge": """
import pyarrow.parquet as pq
from badc_mpi.results.aggregate.dataset import AtomicParquet
from badc_mpi.results.aggregate.overlap import merge_file
path = os.path.join(sys.argv[2], "detections.parquet")
schema = pq.read_schema(path)
writer = AtomicParquet(os.path.join(sys.argv[3], "merged.parquet"), schema)
report = merge_file(path, writer, schema, mode="on", chunks_overlapping=True)
writer.commit() if report.applied else writer.abort()
out = report.as_dict()
""",
    "export": """
from badc_mpi.results.export.write import ExportOptions, write_exports
opts = ExportOptions(("wildtrax", "raven", "tables", "histories"), os.path.join(sys.argv[3], "exports"),
                     float(sys.argv[4]), tuple(sys.argv[5].split(",")))
r = write_exports(sys.argv[2], opts)
out = {"files": len(r.files), "notes": r.notes,
       "exports_mib": round(sum(os.path.getsize(p) for p in r.files) / 2**20, 1)}
""",
}
HEAD = "import json, os, resource, sys, time\nt0 = time.monotonic()\n"
TAIL = """
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": round(time.monotonic() - t0, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                  "peak_rss_mib": round(ru.ru_maxrss / 1024), **out}))
"""


def step(name: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", HEAD + STEPS[name] + TAIL, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(done.returncode)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detections", type=int, default=10_000_000)
    ap.add_argument("--per-chunk", type=int, default=50)
    ap.add_argument("--min-confidence", type=float, default=0.3)
    ap.add_argument("--folder", help="generate and aggregate here and keep it (reused when complete)")
    ap.add_argument("--steps", default="aggregate,merge,export", help="which steps (aggregate always runs: reused when done)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder) if args.folder else Path(tmp) / "run"
        t0 = time.monotonic()
        manifest = generate(root, args.detections, args.per_chunk, meta=True, overlap_ms=OVERLAP_MS)
        common = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.node()} {os.cpu_count()} cores",
            "generate_s": round(time.monotonic() - t0, 1),
        }
        agg, scratch = str(root / "aggregate"), tempfile.mkdtemp(dir=tmp)
        names = ["aggregate"] + [n for n in ("merge", "export") if n in args.steps.split(",")]
        for name in names:
            result = step(name, str(manifest.parents[1] / "tel"), agg, scratch, str(args.min_confidence), FOCUS)
            print(json.dumps({"step": name, **result, **common, "loadavg": os.getloadavg()[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
