"""Resume's matching without a hash table of strings: KeyIndex, hash collisions, ledgers in blocks."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from badc_mpi.errors import StateError
from badc_mpi.inputs import chunk_table, hashing, key_index
from badc_mpi.inputs.chunk_table import ChunkSet
from badc_mpi.inputs.key_index import KeyIndex
from badc_mpi.inputs.manifest import load_manifest
from badc_mpi.storage import ledger

HEADER = "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes\n"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(folder, name: str, keys: list[tuple[str, str]]) -> str:
    path = os.path.join(str(folder), name)
    with open(path, "w") as handle:
        handle.write(HEADER + "".join(f"{r},{c},a.wav,0,1000,0,{sha(c)},\n" for r, c in keys))
    return path


@pytest.fixture
def two_tables(tmp_path):
    first = [(f"r{i % 3}", f"c{i}") for i in range(40)]
    second = [(f"s{i % 2}", f"d{i}") for i in range(25)]
    tables = [
        load_manifest(manifest(tmp_path, n, k), check_sources=False).chunks for n, k in (("a.csv", first), ("b.csv", second))
    ]
    order = np.random.default_rng(5).permutation(65)
    return ChunkSet(tables, order), [f"{r}/{c}" for r, c in first + second], order


@pytest.mark.parametrize("collide", [False, True])
def test_find_keys_and_digests_in_a_reordered_set_of_two_manifests(two_tables, monkeypatch, collide):
    chunks, keys, order = two_tables
    monkeypatch.setattr(key_index, "BLOCK_ROWS", 8)  # the index is built and measured in blocks
    if collide:  # every key one hash: only the string comparison tells them apart
        for module in (key_index, chunk_table):
            monkeypatch.setattr(module, "string_hashes", lambda values: np.full(len(values), 7, np.uint64))
    index = KeyIndex(chunks)
    assert index.run == (65 if collide else 1)
    wanted = ["s1/d3", "nope/x", "r2/c2", "r0/c1", "r0/c0", "s1/d3"]
    found, at = index.find(pa.array(wanted, pa.large_string()))
    assert found.tolist() == [True, False, True, False, True, True]
    by_key = {keys[g]: i for i, g in enumerate(order.tolist())}  # index in the set of each key
    assert at.tolist() == [by_key["s1/d3"], by_key["r2/c2"], by_key["r0/c0"], by_key["s1/d3"]]
    assert index.keys_at(at).to_pylist() == ["s1/d3", "r2/c2", "r0/c0", "s1/d3"]
    prefix, has = index.digests_at(at[:2])
    assert has.tolist() == [True, True]
    assert prefix.tolist() == [int(sha(c)[:16], 16) for c in ("d3", "c2")]


def test_longest_run_of_equal_hashes_across_blocks(monkeypatch):
    monkeypatch.setattr(key_index, "BLOCK_ROWS", 16)
    rng = np.random.default_rng(1)
    for _ in range(50):
        values = np.sort(rng.integers(0, 40, size=int(rng.integers(2, 120))).astype(np.uint64) << np.uint64(8))
        packed = values | np.arange(len(values), dtype=np.uint64)
        high = ~np.uint64(255)
        assert key_index._longest_run_blocks(packed, high) == key_index._longest_run(values)


def test_hashes_depend_only_on_the_bytes():
    values = ["", "a", "r1/c1", "é" * 40, "x" * 300]
    alone = hashing.string_hashes(pa.array(values))
    mixed = hashing.string_hashes(pa.array(["zz", *values, "q" * 999]).slice(1, len(values)).cast(pa.large_string()))
    assert alone.tolist() == mixed.tolist() and len(set(alone.tolist())) == len(values)


def write_ledger(path: str, records: list[tuple[str, str, str]]) -> None:
    head = {"ledger": ledger.LEDGER_SCHEMA, "run_id": "old", "manifests": [], "output_dir": "/o", "created_at": None}
    with open(path, "w") as handle:
        handle.write(json.dumps({**head, "fingerprint": None}) + "\n")
        for key, status, digest in records:
            r, c = key.split("/")
            handle.write(json.dumps({"r": r, "c": c, "h": digest, "s": status, "a": 1, "o": False, "run": "old"}) + "\n")


def test_latest_record_wins_across_and_within_ledger_blocks(tmp_path, monkeypatch):
    from badc_mpi.coordinator.resume import ResumeState, decide

    monkeypatch.setattr(ledger, "SCAN_BLOCK_BYTES", 300)  # about two records a block
    keys = [(f"r{i % 3}", f"c{i}") for i in range(30)]
    chunks = ChunkSet([load_manifest(manifest(tmp_path, "m.csv", keys), check_sources=False).chunks])
    records = [(f"{r}/{c}", "failed", sha(c)) for r, c in keys]  # all failed first
    records += [(f"{r}/{c}", "success", sha(c)) for r, c in keys[:20]]  # then 20 done
    records += [("r0/c0", "failed", sha("c0")), ("r1/c1", "success", sha("other"))]  # redone: failed; another sha
    records += [("gone/x", "success", None), ("gone/x", "success", None), ("gone/y", "failed", None)]
    path = str(tmp_path / "old.ledger.jsonl")
    write_ledger(path, records)
    assert len(list(ledger.iter_ledger(path))) > 10
    got = decide(chunks, ResumeState(layers=[path], sources=[path]), output_dir="/o", skip_failed=False, verify_outputs=False)
    assert got.to_run.tolist() == [0, 1, *range(20, 30)]
    assert (got.skipped, got.orphans, got.changed_hash) == (18, 2, 1)


def test_damage_in_a_block_parsed_ahead_is_named_by_line(tmp_path, monkeypatch):
    """The block after the one being matched is parsed on a second thread: damage there still
    stops the read with the ledger's path and the damaged line, after the good blocks."""
    monkeypatch.setattr(ledger, "SCAN_BLOCK_BYTES", 300)
    path = str(tmp_path / "old.ledger.jsonl")
    write_ledger(path, [(f"r/c{i}", "success", None) for i in range(30)])
    lines = open(path).read().splitlines(keepends=True)
    lines[25] = '{"r": "r", "c": "c24", "s": "success", oops\n'
    open(path, "w").write("".join(lines))
    seen = []
    with pytest.raises(StateError, match=r"old\.ledger\.jsonl, line 26: the resume ledger is corrupt \(not JSON"):
        for batch in ledger.iter_ledger(path):
            seen += batch.column("c").to_pylist()
    assert seen[:3] == ["c0", "c1", "c2"] and "c24" not in seen


def test_repeated_source_paths_hash_as_each_string_would():
    """Resume hashes each distinct source path of a block once: the same hashes, nulls included."""
    from badc_mpi.coordinator.resume import _repeated_hashes

    paths = pa.array(["/a/x.wav", None, "/a/x.wav", "/b/y.flac", "", "/a/x.wav"] * 50)
    want = hashing.string_hashes(pa.array([p or "" for p in paths.to_pylist()]))
    assert (_repeated_hashes(paths) == want).all()
    unique = pa.array([f"/r/{i}.wav" for i in range(20)])  # few repeats: hashed directly
    assert (_repeated_hashes(unique) == hashing.string_hashes(unique)).all()
