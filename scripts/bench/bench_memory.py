#!/usr/bin/env python3
"""Rank-0 memory per chunk (issue 10): peak RSS of each phase, in bytes per chunk. Target: <= 250.

Writes a manifest of ``--rows`` chunks (1,000 per recording, one audio file per recording,
relative ``source_path`` ``../audio/rec00001.wav``, start/end/overlap, a sha256 per row) and a ledger
of an earlier run that finished 90 % of them, then measures each phase in a fresh child process:

- ``load``: :func:`load_manifest` (sources checked);
- ``plan``: load, the run's queue (longest first) and the scheduler's arrays;
- ``resume``: load, read the ledger, decide skip / run for every chunk (outputs not verified:
  the ledger records none, so no million files are needed);
- ``dry_run``: ``mpiexec -n 1 badc-mpi run --dry-run`` (stub runner, telemetry, ledger and
  summaries on): rank 0 planning, dispatching and recording every chunk.

Per chunk = (peak RSS - RSS after imports) / rows. Prints one JSON object; exit 1 when a phase is
over ``--limit`` bytes per chunk.

Usage: .venv/bin/python scripts/bench/bench_memory.py [--rows 1000000] [--phases load plan resume dry_run] [--folder DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
PER_RECORDING = 1000
CHUNK_MS = 60_000
PHASES = ("load", "plan", "resume", "dry_run")


def write_inputs(folder: Path, rows: int) -> tuple[Path, Path]:
    """The manifest and an earlier run's ledger (90 % success, 10 % failed); reused when present."""
    manifest, ledger = folder / "manifests" / "bench.csv", folder / "tel" / "old_20260101T000000Z.ledger.jsonl"
    stamp = folder / f"rows-{rows}"
    if stamp.exists():
        return manifest, ledger
    for sub in ("manifests", "audio", "tel"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    out = os.path.abspath(folder / "out")
    audio = os.path.abspath(folder / "audio")  #: as ledger lines name their source
    with open(manifest, "w") as m, open(ledger, "w") as led:
        m.write("recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes\n")
        header = {"ledger": "badc-mpi.ledger/1", "run_id": "old", "manifests": [str(manifest)], "output_dir": out}
        led.write(json.dumps({**header, "created_at": "2026-01-01T00:00:00Z", "fingerprint": None}) + "\n")
        lines, records = [], []
        for i in range(rows):
            rec = f"rec{i // PER_RECORDING:05d}"
            if i % PER_RECORDING == 0:
                (folder / "audio" / f"{rec}.wav").write_bytes(b"RIFF")
            start = (i % PER_RECORDING) * CHUNK_MS
            chunk = f"{rec}_chunk_{start}_{start + CHUNK_MS}"
            sha = hashlib.sha256(chunk.encode()).hexdigest()
            lines.append(f"{rec},{chunk},../audio/{rec}.wav,{start},{start + CHUNK_MS},0,{sha},\n")
            ok = i % 10 != 0
            records.append(
                f'{{"r":"{rec}","c":"{chunk}","h":"{sha}","s":"{"success" if ok else "failed"}","a":1,'
                f'"f":{"null" if ok else chr(34) + "exit" + chr(34)},"e":"{"" if ok else "exit status 3"}",'
                f'"t":"2026-01-01T00:00:01.000Z","o":false,"run":"old","p":"{audio}/{rec}.wav"}}\n'
            )
            if len(lines) == 100_000:
                m.write("".join(lines))
                led.write("".join(records))
                lines, records = [], []
        m.write("".join(lines))
        led.write("".join(records))
    stamp.touch()
    return manifest, ledger


def child(phase: str, manifest: str, ledger_dir: str) -> dict[str, float]:
    """Run in a fresh process: one phase; RSS figures in bytes."""

    from badc_mpi.coordinator.planning import order_positions
    from badc_mpi.coordinator.resume import decide, load_state
    from badc_mpi.coordinator.scheduler import Scheduler
    from badc_mpi.inputs.chunk_table import ChunkSet
    from badc_mpi.inputs.manifest import load_manifest

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    loaded = load_manifest(manifest, check_sources=True)
    load_s = time.perf_counter() - t0
    catalog = ChunkSet([loaded.chunks])
    kept: object = None
    if phase == "plan":
        queue = ChunkSet(catalog.tables, order_positions(catalog, None, "longest-first"))
        kept = Scheduler(queue, max_retries=2)
        kept.take(64, "gpu0@bench", 0.0)  # type: ignore[attr-defined]
    elif phase == "resume":
        state = load_state(
            summaries=[], telemetry_dir=ledger_dir, output_dir=os.path.join(os.path.dirname(ledger_dir), "out"), discover=True
        )
        decision = decide(catalog, state, output_dir="", skip_failed=False, verify_outputs=False)
        kept = Scheduler(catalog.subset(catalog.global_rows(decision.to_run)), max_retries=2)
        assert decision.skipped == len(catalog) * 9 // 10, decision.skipped
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del kept
    return {"base_bytes": base, "peak_bytes": peak, "load_s": load_s, "seconds": time.perf_counter() - t0}


WRAPPER = """
import json, os, resource, sys
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import badc_mpi.coordinator.run, badc_mpi.inputs.manifest, badc_mpi.coordinator.resume  # what rank 0 imports
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from badc_mpi.__main__ import _main
code = _main()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with open(os.environ["BENCH_OUT"], "w") as fh:
    json.dump({"base_bytes": base, "peak_bytes": peak, "code": code}, fh)
sys.exit(0)
"""


def dry_run(folder: Path, manifest: Path) -> dict[str, float]:
    wrapper, result = folder / "wrapper.py", folder / "dry_run.json"
    wrapper.write_text(WRAPPER)
    tel = folder / f"tel-dry-{time.monotonic_ns()}"
    cmd = [str(Path(PY).parent / "mpiexec"), "-n", "1", PY, str(wrapper), "-q", "run", str(manifest), "--dry-run"]
    cmd += [
        "--no-chunk-check",
        "--telemetry-dir",
        str(tel),
        "--output-dir",
        str(folder / "out-dry"),
        "--progress-interval-s",
        "3600",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_OUT": str(result)}, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"dry run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    got = json.loads(result.read_text())
    summary = next(tel.glob("*.summary.json"))
    return {**got, "seconds": seconds, "summary_bytes": summary.stat().st_size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    ap.add_argument("--folder", help="keep the generated inputs here and reuse them")
    ap.add_argument("--limit", type=float, default=250.0, help="bytes per chunk allowed (exit 1 above)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    tmp = None if args.folder else tempfile.TemporaryDirectory()
    folder = Path(args.folder or tmp.name)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    manifest, ledger = write_inputs(folder, args.rows)
    result: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "rows": args.rows,
        "generate_s": round(time.perf_counter() - t0, 1),
        "manifest_mib": round(manifest.stat().st_size / 2**20, 1),
    }
    worst = 0.0
    for phase in args.phases:
        if phase == "dry_run":
            got = dry_run(folder, manifest)
        else:
            cmd = [PY, __file__, "--child", phase, str(manifest), str(ledger.parent)]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout)
        per_chunk = (got["peak_bytes"] - got["base_bytes"]) / args.rows
        worst = max(worst, per_chunk)
        result[phase] = {
            "bytes_per_chunk": round(per_chunk),
            "peak_rss_mib": round(got["peak_bytes"] / 2**20),
            "rss_after_imports_mib": round(got["base_bytes"] / 2**20),
            "seconds": round(got["seconds"], 1),
            **({"load_s": round(got["load_s"], 2)} if "load_s" in got else {}),
            **({"summary_bytes": got["summary_bytes"]} if "summary_bytes" in got else {}),
        }
        print(f"{phase}: {per_chunk:,.0f} B/chunk", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0 if worst <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
