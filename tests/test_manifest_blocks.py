"""A manifest read block by block: the same chunks, lines and errors as one read, and a memory bound.

The small-block tests shrink ``manifest_csv.BLOCK_BYTES`` so that a few hundred bytes make a block:
every row check, the duplicate check and the physical line numbers then cross block boundaries.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from badc_mpi.errors import ManifestError
from badc_mpi.inputs import manifest_csv
from badc_mpi.inputs.manifest import load_manifest
from badc_mpi.records import STANDARD_COLUMNS

HEADER = "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes\n"


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(manifest_csv, "BLOCK_BYTES", 512)


def write(folder, text: str, name: str = "manifest.csv") -> str:
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return path


def rows(count: int, first: int = 0, **fields: str) -> str:
    out = []
    for i in range(first, first + count):
        values = {"rec": f"r{i // 50}", "chunk": f"c{i}", "start": "0", "end": "60000", "notes": ""}
        values.update({k: v for k, v in fields.items() if k in values})
        out.append(f"{values['rec']},{values['chunk']},a.wav,{values['start']},{values['end']},0,,{values['notes']}\n")
    return "".join(out)


def load_error(path: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, check_sources=False)
    return info.value


def test_round_trip_across_many_blocks(tmp_path, small_blocks):
    rng = random.Random(3)
    columns = [*STANDARD_COLUMNS, "site"]
    expected = []
    for index in range(600):
        start = rng.randrange(0, 10**10)  # some need int64
        expected.append(
            {
                "recording_id": f"rec{index // 7:04d}",
                "chunk_id": f"chunk é {index}",
                "source_path": f"audio/{index % 5}/{index}.wav" if index % 3 else f"/abs/{index}.flac",
                "start_ms": str(start),
                "end_ms": str(start + rng.randrange(1, 60001)),
                "overlap_ms": rng.choice(["", "0", "1500"]),
                "sha256": rng.choice(["", hashlib.sha256(str(index).encode()).hexdigest()]),
                "notes": rng.choice(["", "plain", 'has "quotes", commas', "two\nlines", "three\r\nlines\rhere"]),
                "site": f"S{index % 200}",  # more than 127 distinct values: the codes widen
            }
        )
    path = os.path.join(tmp_path, "round.csv")
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(expected)
    manifest = load_manifest(path, check_sources=False)
    assert len(manifest) == 600 and manifest.chunks.recording.codes.dtype.itemsize == 1
    line = 2
    for want, chunk in zip(expected, manifest.chunks, strict=True):
        assert chunk.to_row() == want
        assert chunk.line == line
        notes = want["notes"]
        line += 1 + notes.count("\n") + notes.count("\r") - notes.count("\r\n")


def test_blank_lines_between_blocks_keep_line_numbers(tmp_path, small_blocks):
    text = HEADER + rows(30) + "\n\n" + rows(30, first=30) + "\r\n" + rows(5, first=60) + rows(1, first=65, chunk="-bad")
    error = load_error(write(tmp_path, text))
    assert (error.line, error.column) == (1 + 66 + 3, "chunk_id")
    good = load_manifest(write(tmp_path, HEADER + rows(30) + "\n\n" + rows(40, first=30)), check_sources=False)
    assert [c.line for c in good.chunks][28:32] == [30, 31, 34, 35]


def test_first_bad_row_and_count_across_blocks(tmp_path, small_blocks):
    text = HEADER + rows(40) + rows(1, first=40, start="x") + rows(40, first=41) + rows(2, first=81, end="-")
    error = load_error(write(tmp_path, text))
    assert (error.line, error.column) == (42, "start_ms")
    assert "start_ms 'x' is not a non-negative whole number (3 rows have problems; this is the first)" in str(error)


def test_a_parse_error_after_a_bad_row_wins(tmp_path, small_blocks):
    """As with one read: the file must parse before its rows are judged."""
    text = HEADER + rows(1, start="x") + rows(60, first=1) + "r9,c9,a.wav,0\n"
    error = load_error(write(tmp_path, text))
    assert error.line == 63 and "the row has 4 field(s) but the header has 8 columns" in str(error)


def test_duplicate_in_a_later_block_names_both_lines(tmp_path, small_blocks):
    text = HEADER + rows(70) + rows(1, chunk="c3", rec="r0")
    error = load_error(write(tmp_path, text))
    assert (error.line, error.column) == (72, "chunk_id")
    assert "chunk 'r0/c3' is repeated: lines 5 and 72" in str(error)


def test_unclosed_quote_in_a_later_block(tmp_path, small_blocks):
    error = load_error(write(tmp_path, HEADER + rows(40) + 'r9,c9,a.wav,0,1,0,,"open\n' + rows(3, first=50)))
    assert error.line == 42 and "malformed CSV" in str(error)


def test_key_hashes_collide_only_on_equal_keys(tmp_path, monkeypatch):
    """A hash collision is confirmed on the strings: two different keys with one hash are fine."""
    from badc_mpi.inputs.chunk_table import ChunkTable

    monkeypatch.setattr(ChunkTable, "key_hashes", lambda self, rows=slice(None): __import__("numpy").zeros(len(self), "u8"))
    assert len(load_manifest(write(tmp_path, HEADER + rows(20)), check_sources=False)) == 20
    error = load_error(write(tmp_path, HEADER + rows(20) + rows(1, chunk="c7", rec="r0")))
    assert "chunk 'r0/c7' is repeated: lines 9 and 22" in str(error)


_MEASURE = """
import json, resource, sys
from badc_mpi.inputs.manifest import load_manifest
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
manifest = load_manifest(sys.argv[1], check_sources=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": len(manifest), "grew": peak - base, "kept": manifest.chunks.nbytes}))
"""


def test_rank0_never_holds_the_whole_manifest(tmp_path):
    """Loading a 160 MB manifest whose long notes repeat must not take memory in proportion to the
    file: read at once, its bytes and string columns took over three times its size; read block by
    block (measured: a quarter of it), what is kept is a code per row and what is transient is the
    blocks pyarrow reads ahead. Memory, not time."""
    notes = "n" * 4000
    path = os.path.join(tmp_path, "long.csv")
    with open(path, "w") as handle:
        handle.write(HEADER)
        for start in range(0, 40_000, 4_000):
            handle.write("".join(f"r{i // 1000},c{i},a.wav,0,60000,0,,{notes}\n" for i in range(start, start + 4_000)))
    size = os.path.getsize(path)
    done = subprocess.run([sys.executable, "-c", _MEASURE, path], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    assert got["rows"] == 40_000 and got["kept"] < 4_000_000
    assert got["grew"] < 0.5 * size, f"peak RSS grew {got['grew'] / 2**20:.0f} MiB loading a {size / 2**20:.0f} MiB manifest"
