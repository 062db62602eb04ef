#!/usr/bin/env python3
"""Benchmark: load and validate a large chunk manifest; prints one JSON object.

Generates ``--rows`` chunks (60 per recording, ids ``rec00001`` / ``rec00001_chunk_0_60000``,
relative ``source_path`` ``../chunks/rec00001/rec00001_chunk_0_60000.wav``, a SHA-256 per row) in a
temporary folder, then times :func:`badc_mpi.inputs.manifest.load_manifest` in a fresh child process so
that the peak RSS (``resource.getrusage``) is the loader's alone. ``--check-sources`` also creates
every chunk file (empty) and checks that they exist, as a real run does.

    python scripts/bench/bench_manifest.py [--rows 1000000] [--check-sources] [--repeat 3] [--folder DIR]

``--folder DIR`` keeps the generated files in DIR and reuses them on the next run (creating a
million chunk files takes from 30 s to several minutes). Exit status 1 when the best wall time
is over 5 s or the peak RSS over 1 GiB (the targets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CHUNKS_PER_RECORDING = 60
CHUNK_MS = 60_000
HEADER = "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes\n"


def write_manifest(folder: str, rows: int, create_files: bool) -> str:
    """Write ``folder/manifests/bench.csv`` (and the chunk files when asked); return its path.

    Reuses what an earlier call wrote to ``folder`` with the same arguments (or with files).
    """
    path = os.path.join(folder, "manifests", "bench.csv")
    stamp = os.path.join(folder, "bench.json")
    if os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as handle:
            done = json.load(handle)
        if done["rows"] == rows and (done["files"] or not create_files):
            return path
        raise SystemExit(f"{folder} holds a different benchmark; remove it or pick another folder")
    os.makedirs(os.path.join(folder, "manifests"))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(HEADER)
        batch = []
        for index in range(rows):
            recording = f"rec{index // CHUNKS_PER_RECORDING + 1:05d}"
            start_ms = (index % CHUNKS_PER_RECORDING) * CHUNK_MS
            chunk = f"{recording}_chunk_{start_ms}_{start_ms + CHUNK_MS}"
            source = f"../chunks/{recording}/{chunk}.wav"
            if create_files:
                if start_ms == 0:
                    os.makedirs(os.path.join(folder, "chunks", recording))
                open(os.path.join(folder, "chunks", recording, chunk + ".wav"), "wb").close()
            digest = hashlib.sha256(chunk.encode()).hexdigest()
            batch.append(f"{recording},{chunk},{source},{start_ms},{start_ms + CHUNK_MS},0,{digest},\n")
            if len(batch) == 10_000:
                handle.write("".join(batch))
                batch.clear()
        handle.write("".join(batch))
    with open(stamp, "w", encoding="utf-8") as handle:
        json.dump({"rows": rows, "files": create_files}, handle)
    return path


def measure(path: str, check_sources: bool) -> dict[str, object]:
    """Run in the child: time one load_manifest and report wall seconds and peak RSS."""
    from badc_mpi.inputs.manifest import load_manifest

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    manifest = load_manifest(path, check_sources=check_sources)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "rows": len(manifest),
        "wall_s": round(wall_s, 3),
        "cpu_s": round(cpu_s, 3),
        "peak_rss_mib": round(after.ru_maxrss / 1024, 1),
        "rss_after_imports_mib": round(before.ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--check-sources", action="store_true", help="create every chunk file and check that it exists")
    parser.add_argument("--repeat", type=int, default=3, help="child runs (each a fresh process)")
    parser.add_argument("--folder", help="keep the generated data here and reuse it")
    parser.add_argument("--measure", metavar="CSV", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.check_sources)))
        return 0
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as temporary:
        folder = args.folder or temporary
        started = time.perf_counter()
        path = write_manifest(folder, args.rows, args.check_sources)
        generate_s = time.perf_counter() - started
        runs = []
        for _ in range(args.repeat):
            command = [sys.executable, os.path.abspath(__file__), "--measure", path]
            if args.check_sources:
                command.append("--check-sources")
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            runs.append(json.loads(out.stdout))
        import pyarrow

        result = {
            "rows": args.rows,
            "check_sources": args.check_sources,
            "file_mib": round(os.path.getsize(path) / 2**20, 1),
            "generate_s": round(generate_s, 1),
            "wall_s": [run["wall_s"] for run in runs],
            "wall_s_best": min(run["wall_s"] for run in runs),
            "wall_s_median": statistics.median(run["wall_s"] for run in runs),
            "cpu_s": [run["cpu_s"] for run in runs],
            "peak_rss_mib_max": max(run["peak_rss_mib"] for run in runs),
            "rss_after_imports_mib": runs[0]["rss_after_imports_mib"],
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "pyarrow": pyarrow.__version__,
        }
    print(json.dumps(result))
    limits_ok = result["wall_s_best"] <= 5.0 and result["peak_rss_mib_max"] <= 1024
    return 0 if limits_ok else 1


if __name__ == "__main__":
    sys.exit(main())
