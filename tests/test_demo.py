"""`make demo`'s recording tree (scripts/demo/make_demo.py) chunks as the demo chunks it: ids from the
path, place and time from the lab's Study/Station folders and WildTrax file names, zones and
regions from its site table. Fast: no DataLad, no HawkEars, no inference."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from badc_mpi.cli import main
from badc_mpi.inputs.chunk_status import check_chunk_status
from badc_mpi.inputs.manifest import load_manifest

from helpers import REPO  # noqa: F401  (puts scripts/' folders on sys.path)

# isort: split
import make_demo

#: recording_id -> location, study_area, recording_start_utc, recording_start_local, date, region, chunks
EXPECTED = {
    "CallingLake~CL-03~A~Data~CL-03_20240601_043000": (
        "CL-03",
        "CallingLake",
        "2024-06-01T10:30:00Z",
        "2024-06-01T04:30:00-06:00",
        "2024-06-01",
        "CA-AB",
        [(0, 6000)],  # HawkEars' recording (5.9 s) when it is there; its synthetic stand-in here
    ),
    "Kakisa~KAK-01~KAK-01_20240601_050000": (
        "KAK-01",
        "Kakisa",
        "2024-06-01T11:00:00Z",
        "2024-06-01T05:00:00-06:00",
        "2024-06-01",
        "CA-NT",
        [(0, 30000), (30000, 60000), (60000, 75000)],
    ),
    "Kakisa~KAK-01~KAK-01_20240602_050000": (
        "KAK-01",
        "Kakisa",
        "2024-06-02T11:00:00Z",
        "2024-06-02T05:00:00-06:00",
        "2024-06-02",
        "CA-NT",
        [(0, 30000), (30000, 62000)],  # the 2-s tail joins the chunk before
    ),
    "Kakisa~KAK-02~KAK-02_20240601_053000": (
        "KAK-02",
        "Kakisa",
        "2024-06-01T11:30:00Z",
        "2024-06-01T05:30:00-06:00",
        "2024-06-01",
        "CA-NT",
        [(0, 30000), (30000, 45000)],
    ),
}
PLACE_TIME = ("location", "study_area", "recording_start_utc", "recording_start_local", "date", "region")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "demo"
    (root / ".datalad").mkdir(parents=True)  # a dataset to the chunker: status files under its artifacts/
    make_demo.write_tree(root, bundled=False)
    return root


def test_demo_tree_chunks_into_its_places_and_times(demo: Path) -> None:
    assert main(make_demo.chunk_argv(demo)) == 0
    manifest = demo / make_demo.MANIFEST
    rows = read_rows(manifest)
    got: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        got.setdefault(row["recording_id"], []).append(row)
    assert sorted(got) == sorted(EXPECTED)
    for rec, (*facts, chunks) in EXPECTED.items():
        assert [(int(r["start_ms"]), int(r["end_ms"])) for r in got[rec]] == chunks, rec
        for row in got[rec]:
            assert tuple(row[c] for c in PLACE_TIME) == tuple(facts), rec
            assert row["chunk_kind"] == "slice" and row["chunk_id"] == f"{rec}_chunk_{row['start_ms']}_{row['end_ms']}"
            assert (manifest.parent / row["source_path"]).is_file()
    suffixes = sorted(Path(r["source_path"]).suffix for r in rows)
    assert suffixes.count(".flac") == 2 and set(suffixes) == {".flac", ".wav"}  # one FLAC recording, two chunks
    # no audio written beside the status files, and the guard `make infer` runs accepts them
    chunks_dir = demo / "artifacts" / "chunks"
    assert sorted(p.name for p in chunks_dir.rglob("*") if p.is_file()) == [".chunk_status.json"] * len(EXPECTED)
    for rec in EXPECTED:
        status = json.loads((chunks_dir / rec / ".chunk_status.json").read_text())
        assert status["status"] == "completed" and status["virtual_chunks"] is True
    assert check_chunk_status(load_manifest(str(manifest))).ok


def test_demo_tree_reads_the_same_under_the_wildtrax_layout(demo: Path) -> None:
    """The file names follow WildTrax: location from the name, the study area from sites.csv."""
    lab, wildtrax = demo / "lab.csv", demo / "wildtrax.csv"
    argv = make_demo.chunk_argv(demo)
    at = argv.index("--out") + 1
    assert main([*argv[:at], str(lab), *argv[at + 1 :]]) == 0
    wt = [*argv[:at], str(wildtrax), *argv[at + 1 :], "--chunks-dir", str(demo / "wt-chunks")]
    wt[wt.index("--layout") + 1] = "wildtrax"
    assert main(wt) == 0
    columns = ("recording_id", "chunk_id", "start_ms", "end_ms", *PLACE_TIME)
    assert [[r[c] for c in columns] for r in read_rows(wildtrax)] == [[r[c] for c in columns] for r in read_rows(lab)]
