"""The bundle: a golden run set (known detections) -> exact schema, view contents, quicklooks,
summary and report; the report rendered by a real headless Chromium (skipped only without one, outside CI)."""

from __future__ import annotations

import csv
import html.parser
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from badc_mpi.results import open_bundle
from badc_mpi.results.bundle.build import build_bundle
from badc_mpi.storage.atomic import jsonl_bytes
from badc_mpi.storage.detections import RawDetection, canonical_records
from badc_mpi.storage.ledger import LedgerWriter, entry_record, header_record

from ci_rules import require_or_skip
from helpers import make_chunk

R1, R2 = "20260101T000000Z-aaaa0001", "20260102T000000Z-aaaa0002"
MODEL = "tiny:main=[hgnet.1:0123456789ab]"
HEADER = "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes,site,recording_start_utc"
ROWS = [
    ("recA", "a0", 0, 60000, "s1", "2026-06-01T05:00:00Z"),
    ("recA", "a1", 60000, 120000, "s1", "2026-06-01T05:00:00Z"),
    ("recB", "b0", 0, 60000, "s2", "2026-06-01T05:30:00Z"),
    ("recB", "b1", 60000, 120000, "s2", "2026-06-01T05:30:00Z"),
    ("recC", "c0", 0, 60000, "s3", ""),
]
#: (chunk, run, [(code, name, confidence, start_s, end_s)])
DETECTIONS = {
    "a0": (
        R1,
        [
            ("AMRO", "American Robin", 0.9, 0.0, 3.0),
            ("AMRO", "American Robin", 0.5, 3.0, 6.0),
            ("YRWA", "Yellow-rumped Warbler", 0.7, 10.0, 13.0),
        ],
    ),
    "a1": (R2, [("YRWA", "Yellow-rumped Warbler", 0.6, 1.5, 4.5)]),  # r1 found AMRO here; r2's result wins
    "b0": (R1, []),  # analysed, nothing found
}


def _chunk(manifest: Path, row: tuple, with_utc: bool):
    rec, cid, start, end, site, utc = row
    extra = (("site", site), ("recording_start_utc", utc)) if with_utc else (("site", site),)
    return make_chunk(
        recording_id=rec, chunk_id=cid, source_path=f"{cid}.wav", input_path=str(manifest.parent / f"{cid}.wav"),
        start_ms=start, end_ms=end, extra=extra, manifest=str(manifest),
    )  # fmt: skip


def _event(run: str, event: str, chunk, worker: str, at: str, runtime_s: float, util: float | None, **extra) -> dict:
    return {
        "schema": "badc-mpi.telemetry/1", "run_id": run, "event": event, "recording_id": chunk.recording_id,
        "chunk_id": chunk.chunk_id, "attempt": 1, "worker": worker, "host": "h", "rank": 0, "gpu_index": 0,
        "gpu_name": "Fake GPU", "started_at": at, "finished_at": at, "runtime_s": runtime_s,
        "gpu_util_pct_mean": util, "gpu_util_pct_max": util, "vram_used_mib": 1000.0, "model_version": MODEL,
        "hawkears_version": "2.3.0", "command": ["x"], "outputs": {}, "meta": {"site": "s"}, **extra,
    }  # fmt: skip


def _compact(events: list[dict]) -> list[dict]:
    """The same events as telemetry schema 2 writes them: a ``run`` header, a ``worker`` event per
    worker with its constant facts, per-chunk lines without them (no start time, no nulls)."""
    first = events[0]
    out = [{"schema": "badc-mpi.telemetry/2", "event": "run", "run_id": first["run_id"], "at": first["finished_at"]}]
    facts = ("host", "gpu_index", "gpu_name", "model_version", "hawkears_version", "command")
    ranks: dict[str, int] = {}
    for e in events:
        if e["worker"] not in ranks:
            ranks[e["worker"]] = len(ranks)
            out.append({"event": "worker", "at": e["finished_at"], "rank": ranks[e["worker"]], "worker": e["worker"],
                        "pid": 1, "runner": "hawkears", **{k: e[k] for k in facts}})  # fmt: skip
        line = {k: v for k, v in e.items() if k not in (*facts, "schema", "run_id", "started_at", "outputs", "meta")}
        out.append({**{k: v for k, v in line.items() if v is not None}, "rank": ranks[e["worker"]]})
    return out


def make_golden(root: Path, *, with_utc: bool = True) -> Path:
    """Two runs over one manifest: known detections, one failed chunk, one chunk never run."""
    manifest = root / "manifests" / "golden.csv"
    manifest.parent.mkdir(parents=True)
    header = HEADER if with_utc else HEADER.rsplit(",", 1)[0]
    lines = [header] + [
        ",".join(map(str, r if with_utc else r[:-1]))
        for r in ((*r[:2], f"{r[1]}.wav", r[2], r[3], 0, "", "", *r[4:]) for r in ROWS)
    ]
    manifest.write_text("\n".join(lines) + "\n")
    chunks = {r[1]: _chunk(manifest, r, with_utc) for r in ROWS}
    out, tel = root / "out", root / "tel"
    for cid, (run, dets) in DETECTIONS.items():
        raw = [RawDetection(code, code, name, s, e, conf, cid) for code, name, conf, s, e in dets]
        records = canonical_records(raw, chunks[cid], run_id=run, hawkears_version="2.3.0", model_version=MODEL)
        path = out / chunks[cid].recording_id / f"{cid}.detections.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jsonl_bytes(records))
    plan = {
        R1: [("a0", "success", None, "gpu0@h", 2.0, 50.0), ("a1", "success", None, "gpu0@h", 2.0, 70.0),
             ("b0", "success", None, "gpu1@h", 1.0, 30.0), ("b1", "retry", "exit", "gpu1@h", 0.5, None),
             ("b1", "failure", "exit", "gpu1@h", 0.5, None)],
        R2: [("a1", "success", None, "gpu0@h", 3.0, 90.0), ("b1", "failure", "timeout", "gpu0@h", 9.0, 10.0)],
    }  # fmt: skip
    for day, run in ((1, R1), (2, R2)):
        base = tel / f"golden_2026010{day}T000000Z"
        created = f"2026-01-0{day}T00:00:00.000Z"
        ledger = LedgerWriter(str(base) + ".ledger.jsonl", header_record(run, [str(manifest)], str(out), created))
        events = []
        for n, (cid, event, fclass, worker, runtime_s, util) in enumerate(plan[run]):
            at = f"2026-01-0{day}T00:0{n}:00.000Z"
            events.append(_event(run, event, chunks[cid], worker, at, runtime_s, util, failure_class=fclass))
            if event != "retry":
                status = "success" if event == "success" else "failed"
                attempts = 2 if cid == "b1" and run == R1 else 1
                ledger.append(
                    entry_record(chunks[cid], status, run_id=run, attempts=attempts, failure_class=fclass,
                                 reason="boom" if fclass else "", finished_at=at, has_outputs=status == "success")
                )  # fmt: skip
        ledger.close()
        if run == R2:  # R1's telemetry is as schema 1 wrote it (every fact in every line), R2's is compact
            events = _compact(events)
        Path(str(base) + ".jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        runner = {"runner": "hawkears", "model_version": MODEL, "hawkears_version": "2.3.0", "tiny_model": True}
        if run == R2:  # the versions of R2 come from its telemetry's worker events
            runner = {"runner": "hawkears", "tiny_model": True}
        summary = {
            "schema": "badc-mpi.summary/1", "badc_mpi_version": "0.1.0", "created_at": created, "host": "h",
            "state": "finished", "runner": runner, "options": {"max_retries": 1}, "run_id": run, "chunks": {},
        }  # fmt: skip
        Path(str(base) + ".summary.json").write_text(json.dumps(summary))
    return manifest


DETECTION_COLUMNS = [
    ("detection_id", "int64"),
    ("run_id", "dictionary<values=string, indices=int32, ordered=0>"),
    ("recording_id", "dictionary<values=string, indices=int32, ordered=0>"),
    ("chunk_id", "dictionary<values=string, indices=int32, ordered=0>"),
    ("label", "dictionary<values=string, indices=int32, ordered=0>"),
    ("label_code", "dictionary<values=string, indices=int32, ordered=0>"),
    ("label_name", "dictionary<values=string, indices=int32, ordered=0>"),
    ("confidence", "float"),
    ("start_ms", "int64"),
    ("end_ms", "int64"),
    ("detection_start_utc", "timestamp[ms, tz=UTC]"),
    ("detection_end_utc", "timestamp[ms, tz=UTC]"),
    ("detection_start_local", "string"),
    ("chunk_offset_start_ms", "int64"),
    ("chunk_offset_end_ms", "int64"),
    ("chunk_start_ms", "int64"),
    ("chunk_end_ms", "int64"),
    ("source_path", "dictionary<values=string, indices=int32, ordered=0>"),
    ("chunk_sha256", "dictionary<values=string, indices=int32, ordered=0>"),
    ("hawkears_version", "dictionary<values=string, indices=int32, ordered=0>"),
    ("model_version", "dictionary<values=string, indices=int32, ordered=0>"),
    ("fingerprint", "dictionary<values=string, indices=int32, ordered=0>"),
    ("merged_count", "int32"),
    ("site", "dictionary<values=string, indices=int32, ordered=0>"),
    ("recording_start_utc", "dictionary<values=string, indices=int32, ordered=0>"),
]


@pytest.fixture()
def golden(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = make_golden(tmp_path)
    result = build_bundle([str(manifest)], telemetry_dir=str(tmp_path / "tel"), bucket_minutes=1, top_n=5)
    return tmp_path, result


def test_golden_bundle_schema_and_detections(golden):
    root, result = golden
    assert result.folder == str(root / "artifacts" / "aggregate" / "golden")  # outside a dataset: ./artifacts/aggregate/<stem>
    det = pq.read_table(Path(result.folder) / "detections.parquet")
    assert [(f.name, str(f.type)) for f in det.schema] == DETECTION_COLUMNS
    rows = sorted(
        (r["chunk_id"], r["label_code"], r["run_id"], r["start_ms"], r["end_ms"], r["chunk_offset_start_ms"])
        for r in det.to_pylist()
    )
    assert rows == [
        ("a0", "AMRO", R1, 0, 3000, 0),
        ("a0", "AMRO", R1, 3000, 6000, 3000),
        ("a0", "YRWA", R1, 10000, 13000, 10000),
        ("a1", "YRWA", R2, 61500, 64500, 1500),  # recording time = chunk start + chunk time
    ]
    # absolute time: recording_start_utc 05:00Z + start_ms; no recording_start_local column: local is null
    utc = sorted((r["start_ms"], r["detection_start_utc"].isoformat(), r["detection_start_local"]) for r in det.to_pylist())
    assert utc[-1] == (61500, "2026-06-01T05:01:01.500000+00:00", None)
    assert json.loads((Path(result.folder) / "aggregate.json").read_text())["overlap_merge"] == {
        "mode": "auto", "chunks_overlap": False, "applied": False, "detections_before": 4, "detections_after": 4, "merged_groups": 0,
    }  # fmt: skip
    chunks = {r["chunk_id"]: r for r in pq.read_table(Path(result.folder) / "chunks.parquet").to_pylist()}
    states = {
        k: (v["status"], v["detections"], v["run_id"], v["attempts"], v["failure_class"], v["worker"]) for k, v in chunks.items()
    }
    assert states == {
        "a0": ("analysed", 3, R1, 1, None, "gpu0@h"),
        "a1": ("analysed", 1, R2, 1, None, "gpu0@h"),
        "b0": ("analysed", 0, R1, 1, None, "gpu1@h"),
        "b1": ("failed", None, R2, 1, "timeout", "gpu0@h"),
        "c0": ("not_analysed", None, None, None, None, None),
    }
    assert chunks["b1"]["runs_tried"] == 2 and chunks["b1"]["error"] == "boom" and chunks["a1"]["runtime_s"] == 3.0
    runs = pq.read_table(Path(result.folder) / "runs.parquet").to_pylist()
    assert [
        (r["run_id"], r["model_version"], r["tiny_model"], r["chunks_won"], r["ledger_success"], r["ledger_failed"]) for r in runs
    ] == [
        (R1, MODEL, True, 2, 3, 1),
        (R2, MODEL, True, 2, 1, 1),
    ]
    assert json.loads(runs[0]["options"])["options"] == {"max_retries": 1}
    attempts = pq.read_table(Path(result.folder) / "attempts.parquet").to_pylist()
    # R2's compact lines get their worker's facts from its worker event, and a start from finished - runtime
    assert [
        (a["run_id"], a["host"], a["gpu_name"], a["model_version"], a["started_at"]) for a in attempts if a["run_id"] == R2
    ] == [
        (R2, "h", "Fake GPU", MODEL, "2026-01-01T23:59:57.000Z"),
        (R2, "h", "Fake GPU", MODEL, "2026-01-02T00:00:51.000Z"),
    ]
    assert {(a["host"], a["model_version"]) for a in attempts} == {("h", MODEL)}


def test_golden_bundle_views(golden):
    root, result = golden
    with open_bundle(result.folder) as b:
        labels = b.table("label_summary").to_pylist()
        assert [(r["label"], r["label_name"], r["detections"], r["recordings"]) for r in labels] == [
            ("AMRO", "American Robin", 2, 1),
            ("YRWA", "Yellow-rumped Warbler", 2, 1),
        ]
        assert labels[0]["mean_confidence"] == pytest.approx(0.7, rel=1e-6) and labels[0]["max_confidence"] == pytest.approx(
            0.9, rel=1e-6
        )
        assert labels[1]["mean_confidence"] == pytest.approx(0.65, rel=1e-6)
        recs = [
            (r["recording_id"], r["chunks"], r["analysed"], r["failed"], r["not_analysed"], r["detections"], r["labels"])
            for r in b.table("recording_summary").to_pylist()
        ]
        assert recs == [("recA", 2, 2, 0, 0, 4, 2), ("recB", 2, 1, 1, 0, 0, 0), ("recC", 1, 0, 0, 1, 0, 0)]
        # absolute time: recording_start_utc (05:00) + start_ms, 1-minute buckets
        timeline = [
            (r["label"], r["time_basis"], str(r["bucket_start_utc"])[:16], r["detections"])
            for r in b.table("timeline").to_pylist()
        ]
        assert timeline == [
            ("AMRO", "utc", "2026-06-01 05:00", 2),
            ("YRWA", "utc", "2026-06-01 05:00", 1),
            ("YRWA", "utc", "2026-06-01 05:01", 1),
        ]
        runs = b.table("run_summary").to_pylist()
        assert [(r["run_id"], r["detections_counted"], r["attempts"], r["workers"]) for r in runs] == [
            (R1, 3, 5, 2),
            (R2, 1, 2, 1),
        ]
        workers = {(r["run_id"], r["worker"]): r for r in b.table("worker_throughput").to_pylist()}
        w = workers[(R1, "gpu1@h")]
        assert (w["attempts"], w["chunks_ok"], w["chunks_failed"], w["retries"], w["busy_s"]) == (3, 1, 1, 1, 2.0)
        assert workers[(R1, "gpu0@h")]["gpu_util_pct_mean"] == pytest.approx(60.0)
        assert isinstance(b.relation("chunks").aggregate("count(*)").fetchall()[0][0], int)
        assert isinstance(b.table("detections"), pa.Table)
    for view in ("label_summary", "recording_summary", "timeline", "run_summary", "worker_throughput"):
        with open(Path(result.folder) / "quicklook" / f"{view}.csv", newline="") as fh:
            assert (
                len(list(csv.DictReader(fh)))
                == {"label_summary": 2, "recording_summary": 3, "timeline": 3, "run_summary": 2, "worker_throughput": 3}[view]
            )
    summary = json.loads((Path(result.folder) / "summary.json").read_text())
    assert summary["counts"] == {
        "runs": 2,
        "chunks": 5,
        "analysed": 3,
        "failed": 1,
        "not_analysed": 1,
        "stale": 0,
        "detections": 4,
        "mixed": 0,
        "orphan_outputs": 0,
        "problems": 0,
    }
    assert summary["tiny_model"] is True and summary["model_versions"] == [MODEL]
    page = (Path(result.folder) / "report.html").read_text()
    assert 'id="tiny-banner"' in page and page.count("data:image/png;base64,") == 5 and "b1" in page


def test_relative_timeline_without_recording_start(tmp_path):
    manifest = make_golden(tmp_path, with_utc=False)
    result = build_bundle([str(manifest)], telemetry_dir=str(tmp_path / "tel"), bucket_minutes=1, dest=str(tmp_path / "b"))
    with open_bundle(tmp_path / "b") as b:
        timeline = [(r["label"], r["time_basis"], r["bucket_start_ms"], r["detections"]) for r in b.table("timeline").to_pylist()]
    assert timeline == [("AMRO", "recording", 0, 2), ("YRWA", "recording", 0, 1), ("YRWA", "recording", 60000, 1)]
    assert result.summary["counts"]["detections"] == 4


def test_bundle_is_reused_when_nothing_changed_and_rebuilt_when_a_ledger_grows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = make_golden(tmp_path)
    first = build_bundle([str(manifest)], telemetry_dir=str(tmp_path / "tel"))
    again = build_bundle([str(manifest)], telemetry_dir=str(tmp_path / "tel"))
    assert not first.aggregate.reused and again.aggregate.reused
    ledger = sorted((tmp_path / "tel").glob("*.ledger.jsonl"))[-1]
    with open(ledger, "a") as fh:  # a third outcome for c0: a failure
        fh.write(
            json.dumps(
                {
                    "r": "recC",
                    "c": "c0",
                    "h": None,
                    "s": "failed",
                    "a": 1,
                    "f": "input",
                    "e": "bad",
                    "t": "x",
                    "o": False,
                    "run": R2,
                }
            )
            + "\n"
        )
    third = build_bundle([str(manifest)], telemetry_dir=str(tmp_path / "tel"))
    assert not third.aggregate.reused and third.summary["counts"]["failed"] == 2


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.title, self.images, self._in_title = "", [], False

    def handle_starttag(self, tag, attrs):
        self._in_title = tag == "title"
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag):
        self._in_title = False


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = (
    "<script>window.addEventListener('load',()=>{for(const i of document.images)"
    "{i.setAttribute('data-natural-width',i.naturalWidth);i.setAttribute('data-complete',i.complete)}"
    "document.body.setAttribute('data-probed','1')});</script>"
)


def test_report_renders_in_headless_chromium(golden, tmp_path):
    require_or_skip(CHROMIUM is not None, "no chromium on PATH: `make browser` installs Debian's chromium (as root)")
    _, result = golden
    report = Path(result.report)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"]
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a rendered page, not a blank one
    probed = tmp_path / "probed.html"  # a copy with a probe: the report itself holds no script
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], capture_output=True, timeout=120, text=True
    )
    assert dom.returncode == 0 and 'data-probed="1"' in dom.stdout, dom.stderr[-2000:]
    parsed = _Dom()
    parsed.feed(dom.stdout)
    assert parsed.title == "badc-mpi results: golden"
    charts = {img["id"]: img for img in parsed.images}
    assert set(charts) == {"chart-top-species", "chart-heatmap", "chart-confidence", "chart-sites", "chart-workers"}
    for name, img in charts.items():
        assert img["src"].startswith("data:image/png;base64,"), name
        assert int(img["data-natural-width"]) > 0 and img["data-complete"] == "true", name
    assert "TINY TEST MODEL" in dom.stdout and 'id="failure-table"' in dom.stdout


def test_inside_a_dataset_the_bundle_goes_to_its_artifacts_and_the_cli_says_where(tmp_path, monkeypatch, capsys):
    from badc_mpi.cli import main

    manifest = make_golden(tmp_path)
    (tmp_path / ".datalad").mkdir()
    shutil.copytree(tmp_path / "tel", tmp_path / "artifacts" / "telemetry" / "infer")
    monkeypatch.chdir("/")
    by_manifest = build_bundle([str(manifest)])  # its runs in <dataset>/artifacts/telemetry/infer
    assert by_manifest.folder == str(tmp_path / "artifacts" / "aggregate" / "golden")
    assert main(["bundle", str(tmp_path), "--top-n", "3"]) == 0  # DATASET=...: every run, name "all"
    out = capsys.readouterr().out
    report = tmp_path / "artifacts" / "aggregate" / "all" / "report.html"
    assert f"report   {report}" in out and "AMRO (American Robin)" in out and report.exists()
    assert "2 run(s), 5 chunks: 3 analysed, 1 failed, 1 not analysed; 4 detections" in out
    assert main(["aggregate", str(tmp_path / "nowhere.csv")]) == 2
    err = capsys.readouterr().err
    assert "no such manifest" in err and "Fix:" in err and len(err.strip().splitlines()) == 1
