"""Atomic, fsynced per-chunk output writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from badc_mpi.storage import atomic, outputs
from badc_mpi.storage.atomic import (
    atomic_copy,
    atomic_write_bytes,
    atomic_write_jsonl,
    atomic_write_text,
    fsync_dir,
    is_temp_name,
    temp_path_for,
)
from badc_mpi.storage.detections import CANONICAL_KEYS, OutputFormatError
from badc_mpi.storage.outputs import (
    chunk_output_paths,
    finalize_chunk_outputs,
    is_chunk_complete,
    remove_stale_outputs,
)

from helpers import make_chunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORES = (
    "recording,name,start_time,end_time,score\n"
    'rec1_chunk_0_60000,"Warbler, Yellow-rumped",3.000,6.000,0.812\n'
    "rec1_chunk_0_60000,Mésangeai du Canada,9.000,12.000,0.9\n"
)


def FakeChunk(**fields):  # noqa: N802 - reads like the record it builds
    return make_chunk(**{"extra": (("station", "S1"),), **fields})


def fin(out, raw, fmt="scores2", chunk=None, **kw):
    """finalize_chunk_outputs with test defaults."""
    kw.setdefault("run_id", "r")
    kw.setdefault("hawkears_version", None)
    kw.setdefault("model_version", None)
    return finalize_chunk_outputs(out, chunk or FakeChunk(), raw, fmt, **kw)


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_atomic_writes_leave_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "f.bin"
    assert atomic_write_bytes(target, b"\x00\x01") == str(target)
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_text(target, "é\r\n")
    assert target.read_bytes() == "é\r\n".encode()
    src = tmp_path / "src.txt"
    src.write_bytes(b"copy me" * 1000)
    atomic_copy(src, tmp_path / "a" / "copy.txt")
    assert (tmp_path / "a" / "copy.txt").read_bytes() == src.read_bytes()
    atomic_write_jsonl(tmp_path / "a" / "r.jsonl", [{"z": 1, "a": "é"}, {"b": None}])
    assert (tmp_path / "a" / "r.jsonl").read_text(encoding="utf-8") == '{"z":1,"a":"é"}\n{"b":null}\n'
    atomic_write_jsonl(tmp_path / "a" / "empty.jsonl", [])
    assert (tmp_path / "a" / "empty.jsonl").read_bytes() == b""
    assert not [n for n in listing(tmp_path / "a") + listing(tmp_path / "a" / "b") if is_temp_name(n)]
    fsync_dir(tmp_path)


def test_temp_names_never_final(tmp_path):
    tmp = os.path.basename(temp_path_for(tmp_path / "c.detections.jsonl"))
    assert tmp.startswith(".c.detections.jsonl.tmp-") and is_temp_name(tmp)
    for final in chunk_output_paths(tmp_path, "r", "c").finals:
        assert not is_temp_name(os.path.basename(final))


def test_failure_before_rename_leaves_no_final_and_no_temp(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(tmp_path / "out.csv", b"data")
    assert listing(tmp_path) == []


def test_failure_keeps_old_final_intact(tmp_path, monkeypatch):
    target = tmp_path / "out.csv"
    atomic_write_bytes(target, b"old")

    def writer_dies(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic._atomic_write(target, writer_dies)
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.csv"]


def test_killed_between_write_and_rename_then_remove_stale(tmp_path):
    """A process SIGKILLed after the temp fsync but before rename: no final file, a temp left."""
    out_dir = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import os, signal
        from badc_mpi.storage import atomic
        from badc_mpi.storage.atomic import atomic_write_bytes
        from badc_mpi.storage.outputs import chunk_output_paths
        def die(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)
        atomic.os.replace = die
        atomic_write_bytes(chunk_output_paths({str(out_dir)!r}, "rec1", "c1").detections_jsonl, b"x\\n")
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    names = listing(out_dir / "rec1")
    assert len(names) == 1 and names[0].startswith(".c1.detections.jsonl.tmp-")
    assert not is_chunk_complete(out_dir, "rec1", "c1")
    # other chunks' temp files and final files survive
    (out_dir / "rec1" / ".c10.detections.jsonl.tmp-1-ab").write_text("")
    (out_dir / "rec1" / "c1.scores.csv").write_text("keep")
    removed = remove_stale_outputs(out_dir, "rec1", "c1")
    assert [os.path.basename(p) for p in removed] == names
    assert listing(out_dir / "rec1") == [".c10.detections.jsonl.tmp-1-ab", "c1.scores.csv"]
    assert remove_stale_outputs(out_dir, "nope", "c1") == []


def test_chunk_output_paths(tmp_path):
    paths = chunk_output_paths(tmp_path, "rec 1", "c1")
    assert paths.scores_csv == str(tmp_path / "rec 1" / "c1.scores.csv")
    assert paths.labels_csv == str(tmp_path / "rec 1" / "c1.labels.csv")
    assert paths.detections_jsonl == str(tmp_path / "rec 1" / "c1.detections.jsonl")
    assert paths.raw_csv("scores2") == paths.scores_csv and paths.raw_csv("labels1") == paths.labels_csv
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError):
            chunk_output_paths(tmp_path, bad, "c")
        with pytest.raises(ValueError):
            chunk_output_paths(tmp_path, "r", bad)


def test_finalize_scores2(tmp_path):
    raw = tmp_path / "scratch" / "scores.csv"
    raw.parent.mkdir()
    raw.write_text(SCORES, encoding="utf-8")
    out = tmp_path / "out"
    res = finalize_chunk_outputs(
        out,
        FakeChunk(),
        raw,
        "scores2",
        run_id="run1",
        hawkears_version="2.3.0",
        model_version="m",
        class_map={"Warbler, Yellow-rumped": "YRWA"},
    )
    assert res.detections == 2 and res.raw_format == "scores2"
    assert res.as_dict() == {"raw_csv": res.raw_csv, "detections_jsonl": res.detections_jsonl}
    assert res.raw_csv == str(out / "rec1" / "rec1_chunk_0_60000.scores.csv")
    assert open(res.raw_csv, "rb").read() == raw.read_bytes()
    lines = open(res.detections_jsonl, encoding="utf-8").read().splitlines()
    recs = [json.loads(line) for line in lines]
    assert list(recs[0]) == list(CANONICAL_KEYS) + ["station"]
    assert (recs[0]["label"], recs[0]["label_code"], recs[0]["start_ms"]) == (
        "Warbler, Yellow-rumped",
        "YRWA",
        3000,
    )
    assert recs[1]["label"] == "Mésangeai du Canada" and "Mésangeai" in lines[1]
    assert listing(out / "rec1") == [
        "rec1_chunk_0_60000.detections.jsonl",
        "rec1_chunk_0_60000.scores.csv",
    ]
    assert is_chunk_complete(out, "rec1", "rec1_chunk_0_60000")


def test_finalize_header_only_gives_empty_detections(tmp_path):
    raw = tmp_path / "scores.csv"
    raw.write_text("recording,name,start_time,end_time,score\n")
    res = fin(tmp_path / "o", raw, "scores2")
    assert res.detections == 0
    assert open(res.detections_jsonl, "rb").read() == b""


def test_finalize_labels1(tmp_path):
    raw = tmp_path / "HawkEars_labels.csv"
    raw.write_text(
        "filename,start_time,end_time,class_name,class_code,score\nrec1_chunk_0_60000.wav,0,3,Ruffed Grouse,RUGR,0.9\n"
    )
    out = tmp_path / "o"
    res = fin(out, raw, "labels1", hawkears_version="1.0")
    assert res.raw_csv.endswith("rec1_chunk_0_60000.labels.csv") and res.detections == 1
    assert listing(out / "rec1") == [
        "rec1_chunk_0_60000.detections.jsonl",
        "rec1_chunk_0_60000.labels.csv",
    ]


def test_finalize_invalid_writes_nothing_and_keeps_previous(tmp_path):
    out = tmp_path / "o"
    good = tmp_path / "good.csv"
    good.write_text(SCORES, encoding="utf-8")
    first = fin(out, good, "scores2")
    before = {n: (out / "rec1" / n).read_bytes() for n in listing(out / "rec1")}
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"")
    with pytest.raises(OutputFormatError, match="0 bytes"):
        fin(out, bad, "scores2")
    assert {n: (out / "rec1" / n).read_bytes() for n in listing(out / "rec1")} == before
    with pytest.raises(OutputFormatError):
        fin(tmp_path / "o2", bad, "scores2")
    assert not (tmp_path / "o2").exists()
    assert first.detections == 2


def test_finalize_detections_written_last(tmp_path, monkeypatch):
    """If the raw copy fails, the old detections file is already gone: chunk reads incomplete."""
    out = tmp_path / "o"
    raw = tmp_path / "scores.csv"
    raw.write_text(SCORES, encoding="utf-8")
    fin(out, raw, "scores2")
    order: list[str] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        order.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", recording_replace)
    fin(out, raw, "scores2")
    assert order == ["rec1_chunk_0_60000.scores.csv", "rec1_chunk_0_60000.detections.jsonl"]

    def fail_copy(src, dst, **kw):
        raise OSError("no space")

    monkeypatch.setattr(outputs, "atomic_copy", fail_copy)
    with pytest.raises(OSError):
        fin(out, raw, "scores2")
    assert not is_chunk_complete(out, "rec1", "rec1_chunk_0_60000")
