#!/usr/bin/env python3
"""Review benchmarks (docs/benchmarks.md): the draw from a campaign's bundle, and cutting the pack.

``draw``: a synthetic ``detections.parquet`` of ``--detections`` rows (370 species, 50 locations,
scores uniform 0..1, the columns the draw reads plus provenance), then, in a fresh child process
(peak RSS its own), the draw of ``--per-species`` per species (``--strata score``) and the read of
the drawn rows. Target: 100M detections <= 60 s, <= 2 GiB.

``cut``: ``--recordings`` WAV recordings (16-bit mono, ``--sample-rate``, ``--minutes`` each; quiet
noise with tones), a bundle folder whose ``detections.parquet`` holds 370 x ``--per-species``
detections of 3 s on them, then ``build_pack`` in a fresh child process: wall, peak RSS, bytes read
(``/proc/self/io`` ``rchar``: every byte read, page cache included) against the sources' size, and the
pack's size on disk. Target: ~18,500 clips and spectrograms <= 10 min on 2 cores.

Usage: .venv/bin/python scripts/bench/bench_review.py draw [--detections 100000000] [--folder DIR]
       .venv/bin/python scripts/bench/bench_review.py cut [--per-species 50] [--folder DIR] [--jobs 2]
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
SPECIES = 370
BATCH = 5_000_000

DRAW_CHILD = """
import json, resource, sys, time
t0 = time.monotonic()
from badc_mpi.results.review.select import Selection, draw
from badc_mpi.results.review.pack import _rows
picks = draw(sys.argv[1], Selection(all_species=True, per_species=int(sys.argv[2]), strata="score", seed=1))
t1 = time.monotonic()
rows = _rows(sys.argv[1], picks)
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"drawn": len(picks), "species": len({p.species_code for p in picks}), "draw_s": round(t1 - t0, 2),
                  "rows_s": round(wall - (t1 - t0), 2), "wall_s": round(wall, 2),
                  "cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "peak_rss_mib": round(ru.ru_maxrss / 1024)}))
"""

CUT_CHILD = """
import json, resource, sys, time
t0 = time.monotonic()
from badc_mpi.results.review.pack import ReviewOptions, build_pack
from badc_mpi.results.review.select import Selection
r = build_pack(sys.argv[1], ReviewOptions(Selection(all_species=True, per_species=int(sys.argv[2]), strata="none", seed=1),
                                          force=True, jobs=int(sys.argv[3])))
wall = time.monotonic() - t0
ru, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(json.dumps({"clips": r.written, "missing": len(r.missing), "wall_s": round(wall, 2), "stages_s": r.seconds,
                  "cpu_s": round(ru.ru_utime + ru.ru_stime + kids.ru_utime + kids.ru_stime, 2),
                  "peak_rss_mib": round(max(ru.ru_maxrss, kids.ru_maxrss) / 1024), "rchar_self": int(io["rchar"])}))
"""


def species_codes() -> list[str]:
    return [f"S{i // 26 // 26 % 26 + 65:c}{i // 26 % 26 + 65:c}{i % 26 + 65:c}" for i in range(SPECIES)]


def make_detections(path: Path, n: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    codes = pa.array(species_codes())
    locations = pa.array([f"ST-{i:03d}" for i in range(50)])
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        sp = pa.DictionaryArray.from_arrays(pa.array(rng.zipf(1.3, m) % SPECIES, pa.int32()), codes)
        table = pa.table({
            "detection_id": pa.array(rng.integers(0, 2**63 - 1, m, dtype=np.int64)),
            "recording_id": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 1000, m, dtype=np.int32)),
                                                           pa.array([f"rec{i}" for i in range(1000)])),
            "label": sp, "label_code": sp, "label_name": sp,
            "confidence": pa.array(rng.uniform(0.1, 1.0, m).astype(np.float32)),
            "start_ms": pa.array(rng.integers(0, 3_600_000, m, dtype=np.int64)),
            "location": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 50, m, dtype=np.int32)), locations),
        })  # fmt: skip
        table = table.append_column("end_ms", pa.array(table.column("start_ms").to_numpy() + 3000))
        writer = writer or pq.ParquetWriter(str(path), table.schema, compression="zstd")
        writer.write_table(table, row_group_size=1 << 20)
    if writer:
        writer.close()


def child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_draw(args: argparse.Namespace) -> dict:
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / "detections.parquet"
    t0 = time.monotonic()
    if not parquet.exists():
        make_detections(parquet, args.detections)
    gen_s = time.monotonic() - t0
    result = child(DRAW_CHILD, str(parquet), str(args.per_species))
    return {"bench": "review-draw", "detections": args.detections, "parquet_mib": round(parquet.stat().st_size / 2**20),
            "generate_s": round(gen_s, 1), **result}  # fmt: skip


def make_recordings(folder: Path, count: int, minutes: float, sr: int) -> list[str]:
    import numpy as np
    import soundfile as sf

    names = []
    rng = np.random.default_rng(1)
    frames = int(minutes * 60 * sr)
    t = np.arange(frames) / sr
    for i in range(count):
        name = f"audio/rec{i:03d}.wav"
        path = folder / name
        names.append(name)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tone = 2000 * np.sin(2 * np.pi * (2000 + 300 * i % 4000) * t) * (np.sin(2 * np.pi * 0.2 * t) > 0.6)
        x = (rng.normal(0, 150, frames) + tone).astype(np.int16)
        sf.write(path, x, sr, subtype="PCM_16")
    return names


def bench_cut(args: argparse.Namespace) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(args.folder)
    (folder / "manifests").mkdir(parents=True, exist_ok=True)
    names = make_recordings(folder / "manifests", args.recordings, args.minutes, args.sample_rate)
    n = SPECIES * args.per_species
    rng = np.random.default_rng(2)
    rec = rng.integers(0, len(names), n)
    start = rng.integers(0, int(args.minutes * 60_000) - 3000, n)
    codes = species_codes()
    table = pa.table({
        "detection_id": pa.array(np.arange(n, dtype=np.int64) * 7919 + 1),
        "recording_id": pa.array([f"rec{i:03d}" for i in rec]), "label": pa.array([codes[i % SPECIES] for i in range(n)]),
        "label_code": pa.array([codes[i % SPECIES] for i in range(n)]), "label_name": pa.array(["x"] * n),
        "confidence": pa.array(rng.uniform(0.1, 1, n)), "start_ms": pa.array(start), "end_ms": pa.array(start + 3000),
        "chunk_start_ms": pa.array(np.zeros(n, np.int64)), "chunk_end_ms": pa.array(np.full(n, int(args.minutes * 60_000))),
        "source_path": pa.array([names[i] for i in rec]),
    })  # fmt: skip
    bundle = folder / "bundle"
    bundle.mkdir(exist_ok=True)
    pq.write_table(table, bundle / "detections.parquet")
    (bundle / "aggregate.json").write_text(json.dumps({"manifests": [str(folder / "manifests" / "bench.csv")]}))
    subprocess.run(["sync"], check=False)
    result = child(CUT_CHILD, str(bundle), str(args.per_species), str(args.jobs))
    sources = sum((folder / "manifests" / name).stat().st_size for name in names)
    du = subprocess.run(["du", "-sk", str(bundle / "review" / "1")], capture_output=True, text=True).stdout.split()[0]
    clip_bytes = 6.0 * args.sample_rate * 2  # 3 s + 2 x 1.5 s of 16-bit mono
    return {"bench": "review-cut", "recordings": len(names), "sources_mib": round(sources / 2**20),
            "pack_mib": round(int(du) / 1024), "clip_bytes_total_mib": round(n * clip_bytes / 2**20), **result}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("draw", "cut"))
    p.add_argument("--detections", type=int, default=100_000_000)
    p.add_argument("--per-species", type=int, default=50)
    p.add_argument("--folder", help="keep (and reuse) the generated data here; default: a temporary folder, removed")
    p.add_argument("--recordings", type=int, default=60)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="badc-review-bench-") as scratch:  # removed after, unless --folder
        args.folder = args.folder or scratch
        out = bench_draw(args) if args.what == "draw" else bench_cut(args)
    out.update(
        host=platform.node(), cpus=os.cpu_count(), load=os.getloadavg()[0], at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
