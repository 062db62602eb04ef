#!/usr/bin/env python3
"""What `badc-mpi chunk` costs at campaign scale (docs/benchmarks.md).

Two measurements, each in its own process (peak RSS is that process's ``ru_maxrss``):

- ``scan``: N tiny WAV recordings (8-bit, 8 Hz, 125 s: 1 KB each, written from one template) in
  100 station folders, then the command's phases timed one by one: walk, names (WildTrax), headers
  (``soundfile``), chunk-status files (one atomic, fsynced write each), manifest.
- ``manifest``: a manifest of M virtual chunks from synthetic plans (no files: 60 chunks per
  recording), streamed through Arrow's CSV writer into one atomic file; then loaded back with
  ``load_manifest`` (columns) with ``--load``.

    .venv/bin/python scripts/bench/bench_chunk.py                      # 100,000 recordings, 10,000,000 chunks
    .venv/bin/python scripts/bench/bench_chunk.py --recordings 10000 --chunks 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def tiny_wav(seconds: int = 125, rate: int = 8) -> bytes:
    """A valid 8-bit mono WAV of ``seconds`` at ``rate`` Hz (header + silence)."""
    data = b"\x80" * (seconds * rate)
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate, 1, 8)
    body = b"WAVE" + fmt + struct.pack("<4sI", b"data", len(data)) + data
    return struct.pack("<4sI", b"RIFF", len(body)) + body


def bench_scan(count: int, folder: str) -> dict:
    from badc_mpi.chunker.plan import name_recordings, plan_recording
    from badc_mpi.chunker.write import write_manifest, write_status_files
    from badc_mpi.inputs.naming import make_layout
    from badc_mpi.inputs.recordings import find_recordings, probe

    audio = os.path.join(folder, "audio")
    blob = tiny_wav()
    started = time.perf_counter()
    for i in range(count):
        station = f"ST-{i % 100:03d}"
        path = os.path.join(
            audio,
            station,
            f"{station}_2024{1 + i // 100 % 12:02d}{1 + i // 1200 % 28:02d}_{i % 86400 // 3600:02d}{i // 86400:02d}00.wav",
        )
        if i < 100:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(blob)
    figures: dict = {"recordings": count, "generate_s": round(time.perf_counter() - started, 2)}
    base = peak_mib()

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        out = fn()
        figures[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        return out

    found = timed("walk", lambda: find_recordings(audio))
    naming = timed("names", lambda: name_recordings(found, make_layout("wildtrax"), None, None))
    assert not naming.problems, naming.problems[:3]
    headers = timed("headers", lambda: [probe(n.found) for n in naming.named])
    plans = [plan_recording(n, h, 60000, 0) for n, h in zip(naming.named, headers, strict=True)]
    assert all(p.ok for p in plans), [p.error for p in plans if not p.ok][:3]
    manifest = os.path.join(folder, "manifests", "audio.csv")
    timed(
        "status_files",
        lambda: write_status_files(plans, os.path.join(folder, "chunks"), manifest_path=manifest, chunk_s=60, overlap_s=0),
    )
    figures["chunks"] = timed("manifest", lambda: write_manifest(manifest, plans, 0))
    figures["headers_per_s"] = round(count / max(figures["headers_s"], 1e-9))
    figures["status_files_per_s"] = round(count / max(figures["status_files_s"], 1e-9))
    figures["peak_rss_mib"], figures["rss_before_mib"] = peak_mib(), base
    return figures


def bench_manifest(chunks: int, folder: str, load: bool = False) -> dict:
    from datetime import datetime

    from badc_mpi.chunker.bounds import chunk_bounds
    from badc_mpi.chunker.plan import Named, RecordingPlan
    from badc_mpi.chunker.write import write_manifest
    from badc_mpi.inputs.clock import resolve_when
    from badc_mpi.inputs.naming import NameFacts
    from badc_mpi.inputs.recordings import Found, Header
    from badc_mpi.inputs.sites import Site

    per = 60
    recordings = -(-chunks // per)
    site = Site("NWT-01", 61.5, -117.25, "CA-NT", "America/Yellowknife", "Dehcho")
    zone = site.zone
    starts, ends = chunk_bounds(per * 60000, 60000)
    header = Header(per * 60 * 48000, 48000, 1, "FLAC", "PCM_16")
    base = peak_mib()

    def plans():  # noqa: ANN202 - generated lazily, as the command's list would be held
        for i in range(recordings):
            rel = f"Study/ST-{i % 1000:04d}/ST-{i % 1000:04d}_20240601_{i // 1000 % 24:02d}0000.flac"
            facts = NameFacts(f"ST-{i % 1000:04d}", "Study", datetime(2024, 6, 1, i // 1000 % 24), "civil")
            named = Named(
                Found("/data/audio/" + rel, rel),
                rel.rsplit(".", 1)[0].replace("/", "~"),
                facts,
                site,
                resolve_when(facts.start, "civil", zone),
                "Study",
            )
            yield RecordingPlan(named, header, starts, ends)

    path = os.path.join(folder, "manifests", "big.csv")
    t0 = time.perf_counter()
    rows = write_manifest(path, plans(), 0)
    write_s = time.perf_counter() - t0
    figures = {
        "chunks": rows,
        "recordings": recordings,
        "write_s": round(write_s, 2),
        "chunks_per_s": round(rows / write_s),
        "bytes": os.path.getsize(path),
        "peak_rss_mib": peak_mib(),
        "rss_before_mib": base,
    }
    if not load:
        return figures
    from badc_mpi.inputs.manifest import load_manifest

    t0 = time.perf_counter()
    loaded = load_manifest(path, check_sources=False)
    figures["load_s"] = round(time.perf_counter() - t0, 2)
    assert len(loaded.chunks) == rows
    figures["peak_rss_after_load_mib"] = peak_mib()
    return figures


def child(kind: str, size: int, load: bool = False) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--child", kind, "--size", str(size)] + (["--load"] if load else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench_chunk {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=10_000_000)
    parser.add_argument("--load", action="store_true", help="also load the big manifest back (load_manifest)")
    parser.add_argument("--child", choices=("scan", "manifest"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder = tempfile.mkdtemp(prefix=f"badc-bench-chunk-{args.child}-")
        try:
            if args.child == "scan":
                print(json.dumps(bench_scan(args.size, folder)))
            else:
                print(json.dumps(bench_manifest(args.size, folder, args.load)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return 0
    result = {}
    for kind, size in (("scan", args.recordings), ("manifest", args.chunks)):
        if size > 0:
            result[kind] = child(kind, size, args.load)
            print(f"{kind}: {json.dumps(result[kind])}", file=sys.stderr, flush=True)  # kept if the next one fails
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
