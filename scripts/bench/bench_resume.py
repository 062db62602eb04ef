#!/usr/bin/env python3
"""Resume benchmark: resume state for a 1,000,000-chunk ledger. Target: <= 5 s on the 2-core dev machine.

Writes a 1M-row manifest and a ledger of 1M final records (as rank 0 writes them), then times
what ``run --resume`` does before dispatching: read the ledger, and decide skip / run for every
chunk of the (already loaded) manifest, including the check that each skipped chunk's detections
file still exists (90 % of chunks succeeded with outputs; 10 % are recorded as failed).

``--layout store``: the run wrote the detection store instead (the default layout): its segments
(256 MiB each, one short record per success) and ledger successes naming their records, so the
time includes verifying every record's bounds and the CRC-32 of those in each run's last 32 MiB
(``storage/store_check.py``). Target at 10,000,000 chunks: <= 60 s.

Usage: .venv/bin/python scripts/bench/bench_resume.py [--chunks 1000000] [--no-verify-outputs] [--layout store]
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
from badc_mpi.inputs.chunk_table import ChunkSet  # noqa: E402
from badc_mpi.inputs.manifest import load_manifest  # noqa: E402
from badc_mpi.storage import ledger as ledger_mod  # noqa: E402
from badc_mpi.storage.store import SEGMENT_BYTES, STORE, line_crc32, segment_path  # noqa: E402


class Segments:
    """Store segments written as StoreWriter lays them out (header line, then one line a chunk),
    without its per-line bookkeeping: the benchmark is the resume, not the writing."""

    def __init__(self, out: Path, run_id: str) -> None:
        self.out, self.run_id, self.seq, self.size, self.fh = out, run_id, 0, 0, None

    def add(self, line: bytes) -> tuple[int, int, int, int]:
        if self.fh is None or self.size >= SEGMENT_BYTES:
            self.close()
            self.seq += 1
            path = segment_path(self.out, self.run_id, self.seq)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.fh = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
            head = json.dumps({"store": "badc-mpi.store/1", "run_id": self.run_id, "segment": self.seq}).encode() + b"\n"
            self.fh.write(head)
            self.size = len(head)
        ref = (self.seq, self.size, len(line), line_crc32(line))
        self.fh.write(line + b"\n")
        self.size += len(line) + 1
        return ref

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--no-verify-outputs", action="store_true")
    ap.add_argument("--layout", choices=("per-chunk", STORE), default="per-chunk")
    args = ap.parse_args()
    store = args.layout == STORE
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
        header = ledger_mod.header_record(
            "bench", [str(manifest)], str(out.resolve()), "2026-01-01T00:00:00Z", layout=args.layout
        )
        writer = ledger_mod.LedgerWriter(tel / "m_20260101T000000Z.ledger.jsonl", header)
        segments = Segments(out.resolve(), "bench") if store else None

        class C:  # the fields entry_record reads
            __slots__ = ("recording_id", "chunk_id", "sha256", "input_path")

        c = C()
        c.input_path = os.path.normpath(str(root / "a.wav"))  # what the manifest's a.wav resolves to
        for i, (rec, chunk) in enumerate(keys):
            c.recording_id, c.chunk_id, c.sha256 = rec, chunk, None
            with_outputs = i % 10 != 0  # 90 % succeeded (with outputs to verify), 10 % failed
            ref = None
            if with_outputs and segments is not None:
                line = (
                    f'{{"recording_id":"{rec}","chunk_id":"{chunk}","run_id":"bench","v":"v1","n":0,'
                    '"label":[],"label_code":null,"label_name":null,"confidence":[],"start_s":[],"end_s":[]}'
                )
                ref = ledger_mod.StoreRef(*segments.add(line.encode()))
            elif with_outputs:
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
                    ref=ref,
                )
            )
            if i % 100_000 == 0:
                writer.flush()
        writer.close()
        if segments is not None:
            segments.close()
        chunks = ChunkSet([load_manifest(manifest, check_sources=False).chunks])  # as planning hands it over
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
            "layout": args.layout,
            "store_mib": round(sum(f.stat().st_size for f in (out / "detections").glob("*")) / 2**20) if store else None,
            "peak_rss_mib": round(peak_mib),
        }
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
