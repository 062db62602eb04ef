"""The manifest contract: every validation rule, line numbers, paths, round trips."""

from __future__ import annotations

import csv
import hashlib
import os
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from badc_mpi.errors import ExitCode, ManifestError
from badc_mpi.inputs.manifest import MAX_LISTED, id_problems, load_manifest, load_manifests
from badc_mpi.inputs.manifest_csv import REQUIRED_COLUMNS
from badc_mpi.records import STANDARD_COLUMNS, Chunk, validate_id

HEADER = "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes\n"
SHA = hashlib.sha256(b"x").hexdigest()


def write(folder, text: str | bytes, name: str = "manifest.csv") -> str:
    path = os.path.join(str(folder), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def row(
    rec: str = "r1",
    chunk: str = "c1",
    source: str = "a.wav",
    start: str = "0",
    end: str = "60000",
    overlap: str = "0",
    sha: str = "",
    notes: str = "",
) -> str:
    return f"{rec},{chunk},{source},{start},{end},{overlap},{sha},{notes}\n"


def load_error(path: str, **kwargs) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, check_sources=False, **kwargs)
    error = info.value
    text = str(error)
    assert "\n" not in text, text
    assert text.startswith(path), text
    assert "Fix: " in text, text
    assert error.exit_code == ExitCode.USAGE
    return error


def assert_where(error: ManifestError, line: int | None, column: str | None) -> None:
    assert error.line == line, str(error)
    assert error.column == column, str(error)
    if line is not None:
        assert f", line {line}" in str(error)
    if column is not None:
        assert f"column {column!r}" in str(error)


# ----------------------------------------------------------------------------- good input


def test_fields_parsed(tmp_path):
    path = write(
        tmp_path,
        HEADER.rstrip("\n")
        + ",site\n"
        + row(sha=SHA.upper(), notes="first").rstrip("\n")
        + ",S1\n"
        + row(chunk="c2", start="60000", end="90000", sha="TODO_HASH").rstrip("\n")
        + ",\n"
        + row(chunk="c3", start="", end="", overlap="", sha="DRY_RUN").rstrip("\n")
        + ",S3\n",
    )
    manifest = load_manifest(path, check_sources=False)
    first, second, third = manifest.chunks
    assert len(manifest) == 3 and list(manifest) == list(manifest.chunks)
    assert manifest.path == path and manifest.missing == []
    assert manifest.columns == (*STANDARD_COLUMNS, "site") and manifest.extra_columns == ("site",)
    assert first == Chunk("r1", "c1", "a.wav", str(tmp_path / "a.wav"), 0, 60000, 0, SHA, "first", (("site", "S1"),), path, 2)
    assert first.key == "r1/c1" and first.duration_s == 60.0 and first.metadata() == {"site": "S1"}
    assert (second.sha256, second.duration_s, second.line, second.extra) == (None, 30.0, 3, (("site", ""),))
    assert (third.start_ms, third.end_ms, third.overlap_ms, third.sha256, third.duration_s) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert first.to_row() == {
        "recording_id": "r1",
        "chunk_id": "c1",
        "source_path": "a.wav",
        "start_ms": "0",
        "end_ms": "60000",
        "overlap_ms": "0",
        "sha256": SHA,
        "notes": "first",
        "site": "S1",
    }
    with pytest.raises(AttributeError):
        first.chunk_id = "x"  # type: ignore[misc]


def test_only_required_columns(tmp_path):
    path = write(tmp_path, "source_path,chunk_id,recording_id\nx.wav,c,r\n")
    (chunk,) = load_manifest(path, check_sources=False).chunks
    assert (chunk.recording_id, chunk.chunk_id, chunk.source_path) == ("r", "c", "x.wav")
    assert (chunk.start_ms, chunk.sha256, chunk.notes, chunk.extra) == (None, None, "", ())


def test_round_trip_1000_rows(tmp_path):
    rng = random.Random(7)
    columns = [*STANDARD_COLUMNS[:6], "site", "sha256", "notes", "comment, with comma"]
    rows = []
    for index in range(1000):
        start = rng.randrange(0, 10**7)
        rows.append(
            {
                "recording_id": f"rec{index // 7:05d}",
                "chunk_id": f"chunk é {index}",
                "source_path": f"audio/rec{index // 7:05d}/{index}.wav" if index % 3 else f"/abs/{index}.flac",
                "start_ms": str(start),
                "end_ms": str(start + rng.randrange(1, 60001)),
                "overlap_ms": rng.choice(["", "0", "1500"]),
                "site": rng.choice(["S1", "S2", ""]),
                "sha256": rng.choice(["", hashlib.sha256(str(index).encode()).hexdigest()]),
                "notes": rng.choice(["", "plain", 'has "quotes", commas', "two\nlines"]),
                "comment, with comma": str(rng.random()),
            }
        )
    path = os.path.join(tmp_path, "round.csv")
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    manifest = load_manifest(path, check_sources=False)
    assert manifest.extra_columns == ("site", "comment, with comma")
    line = 2
    for expected, chunk in zip(rows, manifest.chunks, strict=True):
        assert chunk.to_row() == {name: expected[name] for name in (*STANDARD_COLUMNS, *manifest.extra_columns)}
        assert chunk.line == line
        line += 1 + expected["notes"].count("\n")
        assert chunk.input_path == os.path.normpath(os.path.join(tmp_path, expected["source_path"]))
        assert chunk.start_ms == int(expected["start_ms"]) and chunk.manifest == path
        assert chunk.overlap_ms == (int(expected["overlap_ms"]) if expected["overlap_ms"] else None)
        assert chunk.sha256 == (expected["sha256"] or None)


def test_bom_crlf_quotes_and_trailing_blank_lines(tmp_path):
    text = "\ufeff" + HEADER + row(notes='"a, b"') + row(chunk="c2", notes='"say ""hi"""') + "\n\n"
    path = write(tmp_path, text.replace("\n", "\r\n"))
    first, second = load_manifest(path, check_sources=False).chunks
    assert first.recording_id == "r1" and first.notes == "a, b" and second.notes == 'say "hi"'
    assert (first.line, second.line) == (2, 3)


def test_lone_cr_line_endings(tmp_path):
    path = write(tmp_path, (HEADER + row() + row(chunk="c2", end="x")).replace("\n", "\r"))
    assert_where(load_error(path), 3, "end_ms")


def test_line_numbers_after_multiline_values_and_blank_lines(tmp_path):
    text = HEADER + row(notes='"one\ntwo\r\nthree"') + "\n" + row(chunk="c2") + row(chunk="-bad")
    error = load_error(write(tmp_path, text))
    assert_where(error, 7, "chunk_id")  # header, 3 lines of row 1, a blank line, row 2, row 3
    text = HEADER + row(notes='"one\ntwo"') + row(chunk="c2") + row(chunk="c3", start="x")
    assert_where(load_error(write(tmp_path, text)), 5, "start_ms")


def test_relative_paths_resolve_against_manifest_folder_not_cwd(tmp_path, monkeypatch):
    path = write(
        tmp_path / "data" / "manifests",
        HEADER
        + row(source="../audio/a.wav")
        + row(chunk="c2", source="./x/../b.wav")
        + row(chunk="c3", source="/abs/./c.wav")
        + row(chunk="c4", source="sub/.")
        + row(chunk="c5", source="d.wav")
        + row(chunk="c6", source="/e.wav"),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    inputs = [c.input_path for c in load_manifest(path, check_sources=False)]
    folder = str(tmp_path / "data" / "manifests")
    assert inputs == [
        str(tmp_path / "data" / "audio" / "a.wav"),
        f"{folder}/b.wav",
        "/abs/c.wav",
        f"{folder}/sub",
        f"{folder}/d.wav",
        "/e.wav",
    ]
    relative = os.path.relpath(path, elsewhere)  # a relative manifest path is fine too
    assert load_manifest(relative, check_sources=False).path == path


def test_symlinks_are_not_resolved(tmp_path):
    key = tmp_path / ".git" / "annex" / "objects" / "MD5E-s4--abc.wav"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"RIFF")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "r1.wav").symlink_to(key)
    (tmp_path / "linked").symlink_to(tmp_path / "audio")
    path = write(tmp_path, HEADER + row(source="audio/r1.wav") + row(chunk="c2", source="linked/r1.wav"))
    first, second = load_manifest(path).chunks
    assert first.input_path == str(tmp_path / "audio" / "r1.wav")
    assert second.input_path == str(tmp_path / "linked" / "r1.wav")


# ------------------------------------------------------------------------------ file shape


@pytest.mark.parametrize(
    "text, line, column, words",
    [
        ("", 1, None, "empty"),
        ("\ufeff", 1, None, "empty"),
        (HEADER, 2, None, "no chunk rows"),
        ("\n" + HEADER + row(), 1, None, "first line is empty"),
        (HEADER.replace(",", ";") + row().replace(",", ";"), 1, None, "use commas"),
        (HEADER.replace(",", "\t") + row().replace(",", "\t"), 1, None, "use commas"),
        ("recording_id,chunk_id,notes\nr,c,n\n", 1, "source_path", "found: recording_id, chunk_id, notes"),
        ("recording_id, chunk_id, source_path\nr,c,s\n", 1, "chunk_id", "found: recording_id,  chunk_id"),
        (
            "recording_id,chunk_id,source_path,notes,notes\nr,c,s,a,b\n",
            1,
            "notes",
            "header column 'notes' appears twice",
        ),
        ("recording_id,chunk_id,source_path,\nr,c,s,\n", 1, None, "header field 4 is empty"),
        (HEADER + row() + "r1,c2,a.wav,0,1,0,,,extra\n", 3, None, "9 field(s) but the header has 8"),
        (HEADER + row() + row(chunk="c2") + "r1,c3,a.wav\n", 4, None, "3 field(s)"),
        (HEADER + row() + "r1;c2;a.wav;0;1;0;;\n", 3, None, "use commas"),
        (
            HEADER + row() + row(chunk="c2", notes='"never closed') + row(chunk="c3"),
            3,
            None,
            "malformed CSV (unexpected end of data)",
        ),
    ],
)
def test_file_shape_errors(tmp_path, text, line, column, words):
    error = load_error(write(tmp_path, text))
    assert_where(error, line, column)
    assert words in str(error)


def test_non_utf8_is_refused_naming_line_and_column(tmp_path):
    data = (HEADER + row() + row(chunk="c2")).encode() + b"r1,c3,a.wav,0,1,0,,caf\xe9\n"
    error = load_error(write(tmp_path, data))
    assert_where(error, 4, "notes")
    assert "not UTF-8" in str(error) and "0xe9" in str(error)
    error = load_error(write(tmp_path, b"recording_id,chunk_id,source_path,n\xe9\nr,c,s,x\n"))
    assert_where(error, 1, None)
    assert "UTF-8" in str(error)


def test_unreadable_manifest(tmp_path):
    error = load_error(str(tmp_path / "nope.csv"))
    assert "cannot read" in str(error)


# ------------------------------------------------------------------------------ row values

BAD_IDS = ["", ".", "..", "a/b", "a\\b", "a\x00b", "a\tb", "a\x7fb", "a\x85b", "-x", " a", "a ", "x" * 201, "é" * 101]


@pytest.mark.parametrize("column", ["recording_id", "chunk_id"])
@pytest.mark.parametrize("value", BAD_IDS)
def test_bad_ids(tmp_path, column, value):
    quoted = '"' + value + '"'
    bad = row(rec=quoted) if column == "recording_id" else row(chunk=quoted)
    error = load_error(write(tmp_path, HEADER + row(chunk="ok") + bad))
    assert_where(error, 3, column)
    assert validate_id(value, column) in str(error)


def test_valid_ids_accepted():
    for value in ["rec00001", "rec00001_chunk_0_60000", "a b", "é" * 100, "x" * 200, ".hidden", "a-b", "a.b", "💡"]:
        assert validate_id(value, "chunk_id") is None, value
    assert "path separator" in validate_id("a/b", "chunk_id")
    assert "200" in validate_id("x" * 201, "recording_id")


@pytest.mark.parametrize(
    "column, fields, words",
    [
        ("start_ms", {"start": "-1"}, "not a non-negative whole number"),
        ("start_ms", {"start": "1.5"}, "'1.5'"),
        ("end_ms", {"end": "1e3"}, "'1e3'"),
        ("overlap_ms", {"overlap": " 5"}, "' 5'"),
        ("overlap_ms", {"overlap": "abc"}, "'abc'"),
        ("start_ms", {"start": "9" * 19}, "not a non-negative"),
        ("end_ms", {"start": "5", "end": "5"}, "end_ms 5 is not after start_ms 5"),
        ("end_ms", {"start": "60000", "end": "0"}, "is not after"),
        ("sha256", {"sha": "xyz"}, "64 hexadecimal digits"),
        ("sha256", {"sha": SHA[:-1]}, "64 hexadecimal"),
        ("sha256", {"sha": SHA[:-1] + "g"}, "64 hexadecimal"),
        ("sha256", {"sha": "todo_hash"}, "64 hexadecimal"),
        ("source_path", {"source": ""}, "source_path '' is empty"),
        ("source_path", {"source": '"a\nb.wav"'}, "line break"),
    ],
)
def test_bad_values(tmp_path, column, fields, words):
    error = load_error(write(tmp_path, HEADER + row(chunk="ok") + row(**fields)))
    assert_where(error, 3, column)
    assert words in str(error)


def test_first_bad_row_is_reported_with_a_count(tmp_path):
    text = HEADER + row() + row(chunk="c2", sha="nope") + row(chunk="c/3") + row(chunk="c4", end="x")
    error = load_error(write(tmp_path, text))
    assert_where(error, 3, "sha256")
    assert "(3 rows have problems; this is the first)" in str(error)


def test_repeated_recording_ids_checked_by_distinct_value(tmp_path):
    rows = "".join(row(rec="r/1" if i == 40 else "r1", chunk=f"c{i}") for i in range(60))
    assert_where(load_error(write(tmp_path, HEADER + rows)), 42, "recording_id")


def test_same_chunk_id_in_two_recordings_is_fine(tmp_path):
    chunks = load_manifest(write(tmp_path, HEADER + row() + row(rec="r2")), check_sources=False)
    assert [c.key for c in chunks] == ["r1/c1", "r2/c1"]


def test_duplicate_chunk_names_both_lines(tmp_path):
    text = HEADER + row() + row(chunk="c2") + row(rec="r2") + row(chunk="c2")
    error = load_error(write(tmp_path, text))
    assert_where(error, 5, "chunk_id")
    assert "'r1/c2' is repeated: lines 3 and 5" in str(error)


# ----------------------------------------------------------------------------- sources


def test_missing_sources_reported_together(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "ok.wav").write_bytes(b"")
    rows = row(source="audio/ok.wav") + "".join(row(chunk=f"g{i}", source=f"audio/gone{i}.wav") for i in range(MAX_LISTED + 5))
    path = write(tmp_path, HEADER + rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    text = str(info.value)
    assert_where(info.value, 3, "source_path")
    assert f"25 of 26 source files are missing or unusable: line 3: input file not found: {tmp_path}/audio/gone0.wav;" in text
    assert f"line {2 + MAX_LISTED}: " in text and f"line {3 + MAX_LISTED}: " not in text
    assert "and 5 more" in text and "datalad get" not in text and str(tmp_path) in text
    manifest = load_manifest(path, allow_missing=True)
    assert len(manifest.chunks) == 26 and len(manifest.missing) == 25
    assert manifest.missing[0] == manifest.chunks[1]
    assert load_manifest(path, check_sources=False).missing == []


def test_broken_annex_symlink_says_datalad_get(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "r1.wav").symlink_to(tmp_path / ".git/annex/objects/MD5E-s1--x.wav")
    (tmp_path / "audio" / "r2.wav").write_bytes(b"")
    path = write(tmp_path, HEADER + row(source="audio/r1.wav") + row(chunk="c2", source="audio/r2.wav"))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    text = str(info.value)
    assert "1 of 2 source files are missing or unusable" in text
    assert "symlink to absent (annexed) content" in text and "run `datalad get`" in text
    assert "correct source_path" not in text


def test_source_in_root_and_unlistable_folder(tmp_path):
    path = write(tmp_path, HEADER + row(source="/") + row(chunk="c2", source="/no/such/dir/x.wav"))
    manifest = load_manifest(path, allow_missing=True)
    assert [c.chunk_id for c in manifest.missing] == ["c1", "c2"]  # "/" is a folder, not audio


def test_a_folder_or_a_symlink_to_one_is_not_a_source(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "dir.wav").mkdir()  # a folder with an audio file's name
    (tmp_path / "audio" / "real.wav").write_bytes(b"RIFF")
    (tmp_path / "audio" / "link.wav").symlink_to(tmp_path / "audio" / "real.wav")  # git-annex style: fine
    (tmp_path / "audio" / "dirlink.wav").symlink_to(tmp_path / "audio" / "dir.wav")
    rows = row(chunk="c1", source="audio/dir.wav") + row(chunk="c2", source="audio/link.wav")
    path = write(tmp_path, HEADER + rows + row(chunk="c3", source="audio/dirlink.wav"))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    text = str(info.value)
    assert "2 of 3 source files are missing or unusable" in text and text.count("input is not a file") == 2
    assert [c.chunk_id for c in load_manifest(path, allow_missing=True).missing] == ["c1", "c3"]


# ---------------------------------------------------------------------- several manifests


def test_load_manifests_one_queue(tmp_path):
    first = write(tmp_path, HEADER + row() + row(chunk="c2"), "one.csv")
    second = write(tmp_path, HEADER + row(rec="r2") + row(chunk="c2"), "two.csv")
    third = write(tmp_path, HEADER + row(rec="r3"), "three.csv")
    assert [len(m) for m in load_manifests([first, third], check_sources=False)] == [2, 1]
    assert [m.path for m in load_manifests(first, check_sources=False)] == [first]
    with pytest.raises(ManifestError) as info:
        load_manifests([first, third, second], check_sources=False)
    assert_where(info.value, 3, "chunk_id")
    assert info.value.path == second
    assert f"chunk 'r1/c2' is also in {first}, line 3" in str(info.value)
    with pytest.raises(ManifestError, match="given twice"):
        load_manifests([first, first], check_sources=False)


# -------------------------------------------------------------------------------- hypothesis

ids = st.text(min_size=1, max_size=40).filter(lambda value: validate_id(value, "x") is None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=ids, chunk=ids)
def test_valid_ids_round_trip(tmp_path, rec, chunk):
    path = os.path.join(tmp_path, "h.csv")
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REQUIRED_COLUMNS)
        writer.writerow([rec, chunk, "a.wav"])
    (loaded,) = load_manifest(path, check_sources=False).chunks
    assert (loaded.recording_id, loaded.chunk_id, loaded.line) == (rec, chunk, 2)


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=30) | st.sampled_from(BAD_IDS))
def test_vectorised_and_scalar_id_checks_agree(value):
    assert id_problems(pa.array([value])).to_pylist() == [validate_id(value, "x") is not None]


@settings(max_examples=100, deadline=None)
@given(head=st.text(max_size=10), tail=st.text(max_size=10))
def test_any_id_with_a_slash_is_rejected(head, tail):
    assert "path separator" in validate_id(f"{head}/{tail}", "chunk_id")
