"""``detection_id``: stable across a rebuild, distinct, independent of layout, recomputed after a merge."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from test_export import OVERLAP, make_campaign

from badc_mpi.results.aggregate.dataset import aggregate
from badc_mpi.results.aggregate.detection_id import detection_ids


def _ids(folder) -> dict[tuple, int]:
    rows = pq.read_table(folder / "detections.parquet").to_pylist()
    return {(r["recording_id"], r["chunk_id"], r["label_code"], r["start_ms"], r["end_ms"]): r["detection_id"] for r in rows}


def test_a_rebuilt_aggregate_gives_each_detection_the_same_distinct_id(tmp_path):
    manifest = make_campaign(tmp_path)
    aggregate([str(manifest)], str(tmp_path / "a"), telemetry_dir=str(tmp_path / "tel"))
    aggregate([str(manifest)], str(tmp_path / "b"), telemetry_dir=str(tmp_path / "tel"))
    first, second = _ids(tmp_path / "a"), _ids(tmp_path / "b")
    assert first == second and len(first) >= 4
    ids = list(first.values())
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and i >= 0 for i in ids)
    con = duckdb.connect()
    typ = con.execute("SELECT typeof(detection_id) FROM read_parquet(?) LIMIT 1", [str(tmp_path / "a" / "detections.parquet")])
    assert typ.fetchall() == [("BIGINT",)]


def test_the_id_hangs_on_identity_not_on_layout_or_run():
    base = {
        "recording_id": ["r1", "r1", None],
        "chunk_id": ["c0", "c0", "c1"],
        "label_code": ["AMRO", "AMRO", None],
        "label": ["AMRO", "AMRO", "Noise"],
        "start_ms": [1000, 1000, 5],
        "end_ms": [4000, 4001, 8],
        "fingerprint": ["abc", "abc", "abc"],
    }
    plain = pa.table(base)
    dicts = pa.table({k: (pa.array(v).dictionary_encode() if isinstance(v[0] or v[-1], str) else v) for k, v in base.items()})
    other_run = plain.append_column("run_id", pa.array(["x", "y", "z"]))
    ids = detection_ids(plain).to_pylist()
    assert ids == detection_ids(dicts).to_pylist() == detection_ids(other_run).to_pylist()
    assert ids[0] != ids[1]  # end_ms differs
    assert detection_ids(plain.slice(1)).to_pylist() == ids[1:]  # row order and batch do not matter
    # pinned: a change of the hash would orphan every verdict already given
    assert ids[0] == detection_ids(pa.table({k: v[:1] for k, v in base.items()})).to_pylist()[0] == GOLDEN_ID


GOLDEN_ID = 8759629486964689467


def test_a_merged_detection_gets_the_id_of_its_merged_span(tmp_path):
    manifest = make_campaign(tmp_path, OVERLAP)
    aggregate([str(manifest)], str(tmp_path / "m"), telemetry_dir=str(tmp_path / "tel"), merge_overlaps="auto")
    table = pq.read_table(tmp_path / "m" / "detections.parquet")
    assert table.column("detection_id").to_pylist() == detection_ids(table).to_pylist()
    assert 2 in table.column("merged_count").to_pylist()
