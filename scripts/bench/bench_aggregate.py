#!/usr/bin/env python3
"""Aggregate + bundle benchmark: 10,000,000 synthetic detections to Parquet and DuckDB.

Target: <= 30 s and <= 2 GiB peak RSS on the 2-core dev machine (docs/benchmarks.md).

Writes one finished run as badc-mpi leaves it (manifest, ledger, telemetry, summary, and the
detections: by default in the detection store, written by the real ``StoreWriter`` (``--layout
store``); with ``--layout per-chunk`` one ``<chunk>.detections.jsonl`` per chunk of canonical
records of ~420 bytes; ``--per-chunk`` detections per chunk, a ``site`` column), then, in a fresh child process (so the peak RSS is the
bundle's alone), times ``build_bundle``: aggregate (JSONL -> Parquet), DuckDB tables and views,
quicklook CSVs, report.html. Prints one JSON line.

Usage: .venv/bin/python scripts/bench/bench_aggregate.py [--detections 10000000] [--per-chunk 50] [--layout store]
       [--folder DIR (keep and reuse the generated run)] [--repeat N]
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

#: 60 of HawkEars' classes (its ``data/classes.csv``: real four-letter codes, as WildTrax's, and
#: names), the demo's five focus species first: exports check species against the taxonomy
LABELS = [
    ("ROPT", "Rock Ptarmigan"),
    ("RUGR", "Ruffed Grouse"),
    ("STGR", "Sharp-tailed Grouse"),
    ("SPGR", "Spruce Grouse"),
    ("WIPT", "Willow Ptarmigan"),
    ("ACFL", "Acadian Flycatcher"),
    ("ALFL", "Alder Flycatcher"),
    ("AMAV", "American Avocet"),
    ("AMBI", "American Bittern"),
    ("AMCO", "American Coot"),
    ("AMCR", "American Crow"),
    ("AMDI", "American Dipper"),
    ("AMGP", "American Golden-Plover"),
    ("AGOL", "American Goldfinch"),
    ("AGOS", "American Goshawk"),
    ("AMKE", "American Kestrel"),
    ("AMPI", "American Pipit"),
    ("AMRE", "American Redstart"),
    ("AMRO", "American Robin"),
    ("ATTW", "American Three-toed Woodpecker"),
    ("ATSP", "American Tree Sparrow"),
    ("AMWI", "American Wigeon"),
    ("AMWO", "American Woodcock"),
    ("ANMU", "Ancient Murrelet"),
    ("ANHU", "Anna's Hummingbird"),
    ("ARTE", "Arctic Tern"),
    ("ATPU", "Atlantic Puffin"),
    ("BASA", "Baird's Sandpiper"),
    ("BAIS", "Baird's Sparrow"),
    ("BAEA", "Bald Eagle"),
    ("BAOR", "Baltimore Oriole"),
    ("BTPI", "Band-tailed Pigeon"),
    ("BANS", "Bank Swallow"),
    ("BANO", "Barn Owl"),
    ("BARS", "Barn Swallow"),
    ("BADO", "Barred Owl"),
    ("BAGO", "Barrow's Goldeneye"),
    ("BBWA", "Bay-breasted Warbler"),
    ("BEVI", "Bell's Vireo"),
    ("BEKI", "Belted Kingfisher"),
    ("BEWR", "Bewick's Wren"),
    ("BITH", "Bicknell's Thrush"),
    ("BLGU", "Black Guillemot"),
    ("BLOY", "Black Oystercatcher"),
    ("BLRA", "Black Rail"),
    ("BLSW", "Black Swift"),
    ("BLTE", "Black Tern"),
    ("BLTU", "Black Turnstone"),
    ("BAWW", "Black-and-white Warbler"),
    ("BBWO", "Black-backed Woodpecker"),
    ("BBPL", "Black-bellied Plover"),
    ("BBCU", "Black-billed Cuckoo"),
    ("BBMA", "Black-billed Magpie"),
    ("BCCH", "Black-capped Chickadee"),
    ("BCNH", "Black-crowned Night Heron"),
    ("BFAL", "Black-footed Albatross"),
    ("BHGR", "Black-headed Grosbeak"),
    ("BLKI", "Black-legged Kittiwake"),
    ("BTBW", "Black-throated Blue Warbler"),
    ("BTYW", "Black-throated Gray Warbler"),
]
RUN = "20260101T000000Z-bench001"
STAMP = ".bench-complete"

CHILD = """
import json, resource, sys, time
t0 = time.monotonic()
from badc_mpi.results.bundle.build import build_bundle
r = build_bundle([sys.argv[1]], dest=sys.argv[2], reuse=False)
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                  "peak_rss_mib": round(ru.ru_maxrss / 1024), "stages_s": {k: round(v, 2) for k, v in r.seconds.items()},
                  "detections": r.summary["counts"]["detections"], "chunks": r.summary["counts"]["chunks"]}))
"""


def place(rec_index: int) -> tuple[tuple[str, str], ...]:
    """The export benchmark's per-recording metadata: 50 locations, 5 study areas, a day each; a
    location's 29th recording on starts 2 h later than its first 28 (one location never has two
    recordings at one instant: the export refuses that, as WildTrax would merge them)."""
    day = 1 + (rec_index // 50) % 28
    hour = 5 + 2 * (rec_index // (50 * 28))
    return (
        ("location", f"ST-{rec_index % 50:03d}"),
        ("study_area", f"SA{rec_index % 5}"),
        ("recording_start_local", f"2026-06-{day:02d}T{hour:02d}:00:00-06:00"),
    )


def generate(
    root: Path, detections: int, per_chunk: int, layout: str = "store", *, meta: bool = False, overlap_ms: int = 0
) -> Path:
    """One finished run of ``detections // per_chunk`` chunks (100 per recording). ``meta``: the
    manifest also has location, study area and local start (:func:`place`); ``overlap_ms``:
    each chunk starts that much before the previous one ends, and labels follow the time in the
    recording (with 6000, detections of both chunks at each boundary share a span and a label:
    the overlap merge's work)."""
    from badc_mpi.records import Chunk
    from badc_mpi.storage.ledger import header_record
    from badc_mpi.storage.store import StoreWriter, chunk_line, versions_id

    if (root / STAMP).exists():
        return root / "manifests" / "bench.csv"
    chunks = detections // per_chunk
    manifest = root / "manifests" / "bench.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    out, tel = root / "out", root / "tel"
    tel.mkdir(parents=True, exist_ok=True)
    rows = [
        "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes,site"
        + (",location,study_area,recording_start_local" if meta else "")
    ]
    ledger = [json.dumps(header_record(RUN, [str(manifest)], str(out), "2026-01-01T00:00:00.000Z", None, layout))]
    audio = os.path.abspath(root / "audio")  #: the manifest's ../audio, as ledger lines name it
    telemetry = []
    store = StoreWriter(str(out), RUN) if layout == "store" else None
    vid = versions_id("2.3.0", "main=[hgnet.1:0123456789ab]")
    for i in range(chunks):
        rec, k = f"rec{i // 100:05d}", i % 100
        start = k * (60000 - overlap_ms)
        cid = f"{rec}_chunk_{start}_{start + 60000}"
        site = f"site{(i // 100) % 7}"
        extra = (("site", site), *place(i // 100)) if meta else (("site", site),)
        rows.append(f"{rec},{cid},../audio/{cid}.wav,{start},{start + 60000},{overlap_ms},,,{','.join(v for _, v in extra)}")
        if store is not None:
            chunk = Chunk(rec, cid, f"../audio/{cid}.wav", "", start, start + 60000, overlap_ms, None, "", extra, "", 0)
            starts = [float((j * 3) % 57) for j in range(per_chunk)]
            if overlap_ms:  # by time in the recording: what two chunks both see gets the same label
                picks = [LABELS[((i // 100) * 7 + (start + int(s) * 1000) // 3000 * 13) % len(LABELS)] for s in starts]
            else:
                picks = [LABELS[(i * 7 + j * 13) % len(LABELS)] for j in range(per_chunk)]
            line = chunk_line(
                chunk,
                RUN,
                vid,
                [c for c, _ in picks],
                [c for c, _ in picks],
                [n for _, n in picks],
                [0.5 + ((i + j) % 50) / 100 for j in range(per_chunk)],
                starts,
                [x + 3 for x in starts],
            )
            store.append(line, vid, "2.3.0", "main=[hgnet.1:0123456789ab]")
        elif k == 0:
            (out / rec).mkdir(parents=True, exist_ok=True)
        head = (
            f'{{"recording_id":"{rec}","chunk_id":"{cid}","label":"%s","label_code":"%s","label_name":"%s",'
            f'"confidence":%.3f,"start_s":%.1f,"end_s":%.1f,"start_ms":%d,"end_ms":%d,"chunk_start_ms":{start},'
            f'"chunk_end_ms":{start + 60000},"source_path":"../audio/{cid}.wav","chunk_sha256":null,'
            f'"hawkears_version":"2.3.0","model_version":"main=[hgnet.1:0123456789ab]","run_id":"{RUN}","site":"{site}"}}\n'
        )
        lines = []
        for j in range(per_chunk):
            code, name = LABELS[(i * 7 + j * 13) % len(LABELS)]
            s = (j * 3) % 57
            lines.append(
                head % (code, code, name, 0.5 + ((i + j) % 50) / 100, s, s + 3, start + s * 1000, start + s * 1000 + 3000)
            )
        if store is None:
            (out / rec / f"{cid}.detections.jsonl").write_text("".join(lines))
        at = f"2026-01-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.000Z"
        ledger.append(
            f'{{"r":"{rec}","c":"{cid}","h":null,"s":"success","a":1,"f":null,"e":"","t":"{at}","o":true,"run":"{RUN}",'
            f'"p":"{audio}/{cid}.wav"}}'
        )
        telemetry.append(
            f'{{"schema":"badc-mpi.telemetry/1","run_id":"{RUN}","event":"success","recording_id":"{rec}","chunk_id":"{cid}",'
            f'"attempt":1,"rank":{i % 8},"host":"node1","worker":"gpu{i % 4}@node1","gpu_index":{i % 4},"gpu_name":"H100",'
            f'"started_at":"{at}","finished_at":"{at}","runtime_s":1.2,"gpu_util_pct_mean":{60 + i % 30},'
            f'"gpu_util_pct_max":95,"vram_used_mib":3000,"detections":{per_chunk},"model_version":"main=[hgnet.1:0123456789ab]",'
            f'"hawkears_version":"2.3.0"}}'
        )
    if store is not None:
        store.close()
    manifest.write_text("\n".join(rows) + "\n")
    base = tel / "bench_20260101T000000Z"
    Path(f"{base}.ledger.jsonl").write_text("\n".join(ledger) + "\n")
    Path(f"{base}.jsonl").write_text("\n".join(telemetry) + "\n")
    summary = {"schema": "badc-mpi.summary/1", "state": "finished", "runner": {"runner": "hawkears"}, "options": {}, "chunks": {}}
    Path(f"{base}.summary.json").write_text(json.dumps(summary))
    (root / STAMP).write_text("")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detections", type=int, default=10_000_000)
    ap.add_argument("--per-chunk", type=int, default=50)
    ap.add_argument("--layout", choices=("store", "per-chunk"), default="store")
    ap.add_argument("--folder", help="generate here and keep it (reused when complete)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder) if args.folder else Path(tmp)
        t0 = time.monotonic()
        manifest = generate(root, args.detections, args.per_chunk, args.layout)
        gen_s = time.monotonic() - t0
        data_bytes = sum(f.stat().st_size for f in (root / "out").rglob("*.jsonl"))
        for _ in range(args.repeat):
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(manifest.parents[1] / "tel"), str(Path(tmp) / "bundle")],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result.update(
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                machine=f"{platform.node()} {os.cpu_count()} cores",
                python=platform.python_version(),
                layout=args.layout,
                jsonl_mib=round(data_bytes / 2**20),
                generate_s=round(gen_s, 1),
                target="<= 30 s, <= 2048 MiB",
                loadavg=os.getloadavg()[0],
                parquet_mib=round((Path(tmp) / "bundle" / "detections.parquet").stat().st_size / 2**20, 1),
                duckdb_mib=round((Path(tmp) / "bundle" / "bundle.duckdb").stat().st_size / 2**20, 1),
            )
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
