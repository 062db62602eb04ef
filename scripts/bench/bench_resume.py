#!/usr/bin/env python3
"""Resume benchmark: resume state for a 1,000,000-chunk ledger. Target: <= 5 s on the 2-core dev machine.

Writes a 1M-row manifest and a ledger of 1M final records (as rank 0 writes them), then times
what ``run --resume`` does before dispatching: read the ledger, and decide skip / run for every
chunk of the (already loaded) manifest, including the check that each skipped chunk's detections
file still exists (90 % of chunks succeeded with outputs; 10 % are recorded as failed).

Usage: .venv/bin/python scripts/bench/bench_resume.py [--chunks 1000000] [--no-verify-outputs]
"""

from __future__ import annotations

import argparse
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

from badc_mpi.coordinator.resume import decide, load_state  # noqa: E402
from badc_mpi.inputs.manifest import load_manifest  # noqa: E402
from badc_mpi.storage import ledger as ledger_mod  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--no-verify-outputs", action="store_true")
    args = ap.parse_args()
    n = args.chunks
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a.wav").write_bytes(b"RIFF")
        lines = ["recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes"]
        keys = []
        for i in range(n):
            rec = f"rec{i // 1000:05d}"
            chunk = f"{rec}_chunk_{(i % 1000) * 60000}_{(i % 1000) * 60000 + 60000}"
            keys.append((rec, chunk))
            lines.append(f"{rec},{chunk},a.wav,{(i % 1000) * 60000},{(i % 1000) * 60000 + 60000},0,,")
        manifest = root / "m.csv"
        manifest.write_text("\n".join(lines) + "\n")
        out = root / "out"
        tel = root / "tel"
        tel.mkdir()
        header = ledger_mod.header_record("bench", [str(manifest)], str(out), "2026-01-01T00:00:00Z")
        writer = ledger_mod.LedgerWriter(tel / "m_20260101T000000Z.ledger.jsonl", header)

        class C:  # the fields entry_record reads
            __slots__ = ("recording_id", "chunk_id", "sha256")

        c = C()
        for i, (rec, chunk) in enumerate(keys):
            c.recording_id, c.chunk_id, c.sha256 = rec, chunk, None
            with_outputs = i % 10 != 0  # 90 % succeeded (with outputs to verify), 10 % failed
            if with_outputs:
                d = out / rec
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{chunk}.detections.jsonl").write_bytes(b"")
            status = "success" if with_outputs else "failed"
            writer.append(
                ledger_mod.entry_record(
                    c,
                    status,
                    run_id="bench",
                    attempts=1,
                    failure_class=None if with_outputs else "exit",
                    reason="" if with_outputs else "exit status 3",
                    finished_at="2026-01-01T00:00:01.000Z",
                    has_outputs=with_outputs,
                )
            )
        writer.close()
        chunks = load_manifest(manifest, check_sources=False).chunks
        t0 = time.perf_counter()
        state = load_state(summaries=[], telemetry_dir=str(tel), output_dir=str(out), discover=True)
        t_read = time.perf_counter() - t0
        decision = decide(chunks, state, output_dir=str(out), skip_failed=False, verify_outputs=not args.no_verify_outputs)
        total = time.perf_counter() - t0
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "chunks": n,
            "ledger_mib": round((tel / "m_20260101T000000Z.ledger.jsonl").stat().st_size / 2**20, 1),
            "read_ledger_s": round(t_read, 2),
            "resume_state_s": round(total, 2),
            "skipped": decision.skipped,
            "to_run": len(decision.to_run),
            "verify_outputs": not args.no_verify_outputs,
            "peak_rss_mib": round(peak_mib),
        }
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
