#!/usr/bin/env python3
"""Dispatch benchmark: the stub runner with zero work, end to end, telemetry on.

1. chunks/s for N chunks (default 100,000) at 1, 2 and 3 ranks under the venv's mpiexec
   (wall time of the whole ``mpiexec ... run`` including start-up, manifest load, telemetry,
   summary). Target: >= 20,000 chunks/s at 3 ranks on the 2-core dev machine.
2. The same at 3 ranks when every chunk carries ``--detections`` synthetic detections (default 20)
   through rank 0's detection store (``--stub-detections``): chunks/s, files created per 100,000
   chunks, store and telemetry bytes per chunk. Target: >= 10,000 chunks/s.
3. The CPU fraction of ranks that only wait (stub chunks that sleep, so every rank waits in its
   polling loop). Target: <= 5 % of a core.

Usage: .venv/bin/python scripts/bench/bench_dispatch.py [--chunks 100000] [--ranks 1 2 3] [--detections 20] [--json]
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
PY = sys.executable
MPIEXEC = str(Path(PY).parent / "mpiexec")

RUSAGE_WRAPPER = """
import json, os, resource, sys, time
t0 = time.monotonic()
from badc_mpi.__main__ import _main
code = _main()
ru = resource.getrusage(resource.RUSAGE_SELF)
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
with open(os.path.join(os.environ["BENCH_OUT"], f"rank{rank}.json"), "w") as fh:
    json.dump({"rank": rank, "cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": time.monotonic() - t0}, fh)
sys.exit(code)
"""


def write_manifest(root: Path, n: int, chunk_ms: int = 60000) -> Path:
    audio = root / "a.wav"
    audio.write_bytes(b"RIFF")  # the stub never reads it; it only has to exist
    lines = ["recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes"]
    per_rec = 1000
    for i in range(n):
        rec = f"rec{i // per_rec:05d}"
        start = (i % per_rec) * chunk_ms
        lines.append(f"{rec},{rec}_chunk_{start}_{start + chunk_ms},a.wav,{start},{start + chunk_ms},0,TODO_HASH,")
    path = root / "bench.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    np: int, manifest: Path, root: Path, extra: list[str], wrapper: Path | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    tel = root / f"tel-{np}-{time.monotonic_ns()}"
    entry = [PY, str(wrapper)] if wrapper else [PY, "-m", "badc_mpi"]
    cmd = [
        MPIEXEC,
        "-n",
        str(np),
        *entry,
        "-q",
        "run",
        str(manifest),
        "--dry-run",
        "--no-chunk-check",
        "--telemetry-dir",
        str(tel),
        "--output-dir",
        str(root / "out"),
        "--progress-interval-s",
        "3600",
        *extra,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_OUT": str(root)})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, proc


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _span_s(telemetry: Path) -> float:
    """Seconds from the first attempt's start to the last result (rank 0's steady rate, start-up
    and shut-down excluded), from the telemetry's timestamps."""
    import datetime as dt

    first = last = None
    with open(telemetry, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            at = rec.get("started_at") if rec.get("event") == "start" else rec.get("finished_at")
            if at and rec.get("event") in ("start", "success", "failure", "retry"):
                t = dt.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
    return max(1e-3, (last or 0) - (first or 0))


def with_detections(root: Path, manifest: Path, args: argparse.Namespace) -> dict[str, object]:
    """3 ranks, every chunk with ``args.detections`` detections through the store: rate and footprint."""
    walls, steady = [], []
    for i in range(args.repeat):
        sub = root / f"det{i}"
        sub.mkdir()
        before = time.monotonic()
        run(3, manifest, sub, ["--stub-detections", str(args.detections)])
        walls.append(time.monotonic() - before)
        out, tels = sub / "out", [p for p in sub.iterdir() if p.name.startswith("tel-")]
        files = _files(out) + [f for t in tels for f in _files(t)]
        store = [f for f in _files(out / "detections")]
        telemetry = [f for t in tels for f in t.glob("*.jsonl") if not f.name.endswith(".ledger.jsonl")]
        steady.append(args.chunks / _span_s(telemetry[0]))
    walls.sort()
    median = walls[len(walls) // 2]
    figures = {
        "ranks": 3,
        "detections_per_chunk": args.detections,
        "wall_s": [round(w, 2) for w in walls],
        "chunks_per_s_median": round(args.chunks / median),
        "steady_chunks_per_s": [round(x) for x in sorted(steady)],
        "files_created": len(files),
        "files_per_100k_chunks": round(len(files) * 100_000 / args.chunks, 1),
        "store_files": len(store),
        "store_bytes_per_chunk": round(sum(f.stat().st_size for f in store) / args.chunks),
        "telemetry_bytes_per_chunk": round(sum(f.stat().st_size for f in telemetry) / args.chunks),
    }
    print(
        f"3 ranks, {args.detections} detections/chunk: median {figures['chunks_per_s_median']:,} chunks/s "
        f"(steady, first start to last result: {', '.join(f'{x:,.0f}' for x in sorted(steady))}); "
        f"{len(files)} files for {args.chunks} chunks; store {figures['store_bytes_per_chunk']} B/chunk",
        file=sys.stderr,
    )
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="length of the idle-CPU measurement")
    ap.add_argument("--repeat", type=int, default=3, help="runs per rank count (median reported)")
    ap.add_argument("--detections", type=int, default=20, help="synthetic detections per chunk for part 2 (0: skip)")
    ap.add_argument("--skip-idle", action="store_true", help="skip the waiting-rank measurement")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "chunks": args.chunks,
        "throughput": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_manifest(root, args.chunks)
        for np in args.ranks:
            walls = sorted(run(np, manifest, root, [])[0] for _ in range(args.repeat))
            median = walls[len(walls) // 2]
            results["throughput"].append(
                {
                    "ranks": np,
                    "wall_s": [round(w, 2) for w in walls],
                    "chunks_per_s_median": round(args.chunks / median),
                    "chunks_per_s_best": round(args.chunks / walls[0]),
                }
            )
            print(
                f"{np} rank(s): {args.chunks} chunks, wall {', '.join(f'{w:.2f}' for w in walls)} s: "
                f"median {args.chunks / median:,.0f} chunks/s",
                file=sys.stderr,
            )
        if args.detections:
            results["with_detections"] = with_detections(root, manifest, args)
        if args.skip_idle:
            print(json.dumps(results, indent=1))
            return 0
        # idle: 3 ranks, 3 chunks whose stub sleeps: every rank waits in its polling loop. The
        # same run with no sleep gives each rank's start-up/shut-down CPU, subtracted out.
        wrapper = root / "rusage_wrapper.py"
        wrapper.write_text(RUSAGE_WRAPPER)
        usage = {}
        for label, sleep_s in (("baseline", 0.0), ("idle", args.idle_seconds)):
            small = root / label
            small.mkdir()
            run(3, write_manifest(small, 3), small, ["--stub-sleep-s", str(sleep_s)], wrapper=wrapper)
            usage[label] = [json.loads((small / f"rank{r}.json").read_text()) for r in range(3)]
        idle = []
        for base, busy in zip(usage["baseline"], usage["idle"]):
            cpu_s, wall_s = busy["cpu_s"] - base["cpu_s"], busy["wall_s"] - base["wall_s"]
            idle.append(
                {
                    "rank": busy["rank"],
                    "cpu_pct_of_core": round(100 * cpu_s / wall_s, 2),
                    "waiting_cpu_s": round(cpu_s, 3),
                    "waiting_wall_s": round(wall_s, 2),
                }
            )
            print(
                f"waiting rank {busy['rank']}: {100 * cpu_s / wall_s:.2f} % of a core over {wall_s:.1f} s",
                file=sys.stderr,
            )
        results["idle"] = idle
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
