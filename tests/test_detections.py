"""HawkEars output parsers and canonical detection records."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from badc_mpi.errors import BadcError
from badc_mpi.storage.detections import (
    CANONICAL_KEYS,
    OutputFormatError,
    RawDetection,
    canonical_records,
    load_class_map,
    parse_labels_csv,
    parse_raw,
    parse_scores_csv,
)

from helpers import make_chunk

HEADER2 = "recording,name,start_time,end_time,score\n"
HEADER1 = "filename,start_time,end_time,class_name,class_code,score\n"


def FakeChunk(**fields):  # noqa: N802 - reads like the record it builds
    defaults = dict(
        chunk_id="rec1_chunk_60000_120000",
        source_path="audio/rec1_chunk_60000_120000.wav",
        input_path="/data/audio/rec1_chunk_60000_120000.wav",
        start_ms=60000,
        end_ms=120000,
        overlap_ms=0,
        sha256="ab" * 32,
        manifest="/data/manifest.csv",
    )
    return make_chunk(**{**defaults, **fields})


def write(tmp_path, text: str | bytes, name: str = "scores.csv"):
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


# -- 2.x scores.csv ----------------------------------------------------------------------------


def test_scores_basic_quoted_comma_and_quotes(tmp_path):
    text = (
        HEADER2
        + "rec1_chunk_60000_120000,American Robin,0.000,3.000,0.912\n"
        + 'rec1_chunk_60000_120000,"Warbler, Yellow-rumped",3.000,6.000,0.80\n'
        + 'rec1_chunk_60000_120000,"Sparrow ""White-throated""",6.000,9.000,0.755\n'
    )
    dets = parse_scores_csv(write(tmp_path, text))
    assert [d.label for d in dets] == ["American Robin", "Warbler, Yellow-rumped", 'Sparrow "White-throated"']
    first = dets[0]
    assert first == RawDetection(
        label="American Robin",
        label_code=None,
        label_name="American Robin",
        start_s=0.0,
        end_s=3.0,
        confidence=0.912,
        recording="rec1_chunk_60000_120000",
    )
    with pytest.raises(AttributeError):
        first.label = "x"  # frozen


def test_scores_class_map_sets_code(tmp_path):
    path = write(tmp_path, HEADER2 + 'r,"Warbler, Yellow-rumped",0,3,0.9\nr,Unknown Bird,0,3,0.9\n')
    dets = parse_scores_csv(path, class_map={"Warbler, Yellow-rumped": "YRWA"})
    assert [(d.label, d.label_code, d.label_name) for d in dets] == [
        ("Warbler, Yellow-rumped", "YRWA", "Warbler, Yellow-rumped"),
        ("Unknown Bird", None, "Unknown Bird"),
    ]


def test_scores_header_only_is_empty(tmp_path):
    assert parse_scores_csv(write(tmp_path, HEADER2)) == []
    assert parse_scores_csv(write(tmp_path, HEADER2.rstrip("\n"))) == []


def test_scores_bom_and_crlf(tmp_path):
    text = (HEADER2 + 'r,"A, B",1.500,4.500,0.7\n').replace("\n", "\r\n")
    dets = parse_scores_csv(write(tmp_path, b"\xef\xbb\xbf" + text.encode("utf-8")))
    assert [(d.label, d.start_s, d.end_s) for d in dets] == [("A, B", 1.5, 4.5)]


def test_scores_non_ascii_and_blank_lines(tmp_path):
    dets = parse_scores_csv(write(tmp_path, HEADER2 + "\nr,Mésangeai du Canada,0,3,0.9\n\n"))
    assert dets[0].label == "Mésangeai du Canada"


def test_scores_columns_by_name(tmp_path):
    dets = parse_scores_csv(write(tmp_path, "name,recording,score,start_time,end_time\nX,r,0.9,0,3\n"))
    assert (dets[0].label, dets[0].recording, dets[0].confidence) == ("X", "r", 0.9)


def test_empty_file_raises(tmp_path):
    path = write(tmp_path, b"")
    with pytest.raises(OutputFormatError) as info:
        parse_scores_csv(path)
    assert isinstance(info.value, BadcError)
    assert str(path) in str(info.value) and "0 bytes" in str(info.value)
    assert "Fix:" in str(info.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(OutputFormatError, match="cannot read"):
        parse_scores_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("recording,label,start,end,score\nr,A,0,3,0.9\n", 1, "missing column"),
        ("r,A,0,3,0.9\n", 1, "unexpected header"),
        (HEADER2 + "r,A,zero,3,0.9\n", 2, "start_time"),
        (HEADER2 + "r,A,0,3,0.9\nr,A,0,3,high\n", 3, "'score'"),
        (HEADER2 + "r,A,0,3,nan\n", 2, "finite"),
        (HEADER2 + "r,A,0,3\n", 2, "4 fields"),
        (HEADER2 + "r,,0,3,0.9\n", 2, "'name' is empty"),
        (HEADER2 + "r,A,5,3,0.9\n", 2, "time span"),
        (HEADER2 + "r,A,0,3,1.5\n", 2, "outside [0, 1]"),
        ("\n\n", None, "no header"),
    ],
)
def test_scores_invalid(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(OutputFormatError) as info:
        parse_scores_csv(path)
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    if line is not None:
        assert f"line {line}" in str(info.value)


def test_not_utf8_raises(tmp_path):
    with pytest.raises(OutputFormatError, match="UTF-8"):
        parse_scores_csv(write(tmp_path, HEADER2.encode() + b"r,\xff\xfe,0,3,0.9\n"))


def test_unterminated_quote_raises(tmp_path):
    with pytest.raises(OutputFormatError):
        parse_scores_csv(write(tmp_path, HEADER2 + 'r,"A,0,3,0.9\n'))


# -- 1.x HawkEars_labels.csv -------------------------------------------------------------------


def test_labels1(tmp_path):
    text = HEADER1 + 'site/rec1.WAV,0.0,3.0,"Warbler, Yellow-rumped",YRWA,0.85\n' + "rec2.flac,3,6,Ruffed Grouse,,0.9\n"
    dets = parse_labels_csv(write(tmp_path, text, "HawkEars_labels.csv"))
    assert dets[0] == RawDetection("YRWA", "YRWA", "Warbler, Yellow-rumped", 0.0, 3.0, 0.85, "rec1")
    assert (dets[1].label, dets[1].label_code, dets[1].label_name, dets[1].recording) == (
        "Ruffed Grouse",
        None,
        "Ruffed Grouse",
        "rec2",
    )


def test_labels1_header_only_and_wrong_header(tmp_path):
    assert parse_labels_csv(write(tmp_path, HEADER1)) == []
    with pytest.raises(OutputFormatError, match="class_code"):
        parse_labels_csv(write(tmp_path, HEADER2 + "r,A,0,3,0.9\n"))


def test_parse_raw_dispatch(tmp_path):
    assert parse_raw(write(tmp_path, HEADER2 + "r,A,0,3,0.9\n"), "scores2")[0].label == "A"
    assert parse_raw(write(tmp_path, HEADER1 + "r.wav,0,3,Aa,AAAA,0.9\n"), "labels1")[0].label == "AAAA"
    with pytest.raises(ValueError, match="scores2"):
        parse_raw(write(tmp_path, HEADER2), "csv")


def test_load_class_map(tmp_path):
    path = write(
        tmp_path,
        'Name,Code,AltName,AltCode\nAmerican Robin,AMRO,Merle d\'Amérique,MEAM\n"Warbler, Yellow-rumped",YRWA,,\n',
        "classes.csv",
    )
    cmap = load_class_map(path)
    assert cmap["American Robin"] == "AMRO"
    assert cmap["Merle d'Amérique"] == "AMRO"
    assert cmap["MEAM"] == "AMRO"
    assert cmap["AMRO"] == "AMRO"
    assert cmap["Warbler, Yellow-rumped"] == "YRWA"


# -- canonical records -------------------------------------------------------------------------


def _dets():
    return [
        RawDetection("AMRO", "AMRO", "American Robin", 1.5, 4.5, 0.9, "rec1_chunk_60000_120000"),
        RawDetection("X", None, "X", 0.0015, 3.0004, 0.75, "rec1_chunk_60000_120000"),
    ]


def test_canonical_keys_and_ms():
    recs = canonical_records(_dets(), FakeChunk(), run_id="run-1", hawkears_version="2.3.0", model_version="m1")
    assert len(recs) == 2
    assert tuple(recs[0]) == CANONICAL_KEYS
    r = recs[0]
    assert (r["recording_id"], r["chunk_id"], r["label"], r["label_code"], r["label_name"]) == (
        "rec1",
        "rec1_chunk_60000_120000",
        "AMRO",
        "AMRO",
        "American Robin",
    )
    assert (r["start_s"], r["end_s"], r["start_ms"], r["end_ms"]) == (1.5, 4.5, 61500, 64500)
    assert (r["chunk_start_ms"], r["chunk_end_ms"]) == (60000, 120000)
    assert (r["source_path"], r["chunk_sha256"]) == ("audio/rec1_chunk_60000_120000.wav", "ab" * 32)
    assert (r["hawkears_version"], r["model_version"], r["run_id"]) == ("2.3.0", "m1", "run-1")
    assert (recs[1]["start_ms"], recs[1]["end_ms"]) == (60002, 63000)
    json.dumps(recs, allow_nan=False)


def test_canonical_without_start_ms():
    chunk = FakeChunk(start_ms=None, end_ms=None, sha256=None)
    r = canonical_records(_dets(), chunk, run_id="r", hawkears_version=None, model_version=None)[0]
    assert (r["start_ms"], r["end_ms"], r["chunk_start_ms"], r["chunk_end_ms"], r["chunk_sha256"]) == (
        1500,
        4500,
        None,
        None,
        None,
    )


def test_canonical_extras_and_clash():
    chunk = FakeChunk(extra=(("station", "S01"), ("label", "oops"), ("meta_label", "x"), ("site", "A")))
    r = canonical_records(_dets(), chunk, run_id="r", hawkears_version=None, model_version=None)[0]
    assert list(r)[: len(CANONICAL_KEYS)] == list(CANONICAL_KEYS)
    assert list(r)[len(CANONICAL_KEYS) :] == ["station", "meta_label", "meta_meta_label", "site"]
    assert r["label"] == "AMRO" and r["meta_label"] == "oops" and r["meta_meta_label"] == "x"
    assert r["station"] == "S01"


def test_canonical_empty():
    assert canonical_records([], FakeChunk(), run_id="r", hawkears_version=None, model_version=None) == []


names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff"), min_size=1).filter(
    lambda s: s.strip() == s and s
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(names, st.integers(0, 10**6), st.integers(0, 3000), st.integers(0, 1000)), max_size=8))
def test_scores_roundtrip_property(tmp_path_factory, rows):
    """Anything the csv module writes in the 2.x format parses back exactly."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["recording", "name", "start_time", "end_time", "score"])
    expected = []
    for name, start_ms, span_ms, score_k in rows:
        start, end, score = start_ms / 1000, (start_ms + span_ms) / 1000, score_k / 1000
        writer.writerow(["rec", name, f"{start:.3f}", f"{end:.3f}", f"{score:.3f}"])
        expected.append((name, start, end, score))
    path = tmp_path_factory.mktemp("prop") / "scores.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    got = [(d.label, d.start_s, d.end_s, d.confidence) for d in parse_scores_csv(path)]
    assert got == expected


def test_class_codes_and_common_names_from_classes_csv(tmp_path):
    from badc_mpi.storage.detections import load_class_labels, parse_scores_csv

    write(
        tmp_path,
        "Name,Code,AltName,AltCode\nAmerican Robin,AMRO,Turdus migratorius,amerob\n"
        '"Warbler, Yellow-rumped",YRWA,Setophaga coronata,yerwar\n',
        "classes.csv",
    )
    scores = write(tmp_path, HEADER2 + "r,AMRO,0.000,3.000,0.900\nr,yerwar,3.000,6.000,0.800\nr,UNKN,0,3,0.5\n")
    class_map, class_names = load_class_labels(tmp_path)
    got = parse_scores_csv(scores, class_map=class_map, class_names=class_names)
    assert [(d.label, d.label_code, d.label_name) for d in got] == [
        ("AMRO", "AMRO", "American Robin"),
        ("yerwar", "YRWA", "Warbler, Yellow-rumped"),
        ("UNKN", None, "UNKN"),
    ]


def test_class_labels_from_a_data_folder_prefer_the_taxonomy(tmp_path):
    from badc_mpi.storage.detections import load_class_labels

    assert load_class_labels(tmp_path) is None
    (tmp_path / "taxonomy.csv").write_text(
        "model_code,name,code,alt_name,alt_code\nBANO,American Barn Owl,ABOW,Tyto furcata,brnowl\n"
    )
    (tmp_path / "classes.csv").write_text("Name,Code,AltName,AltCode\nAcadian Flycatcher,ACFL,Empidonax virescens,acafly\n")
    class_map, names = load_class_labels(tmp_path)
    assert class_map["ABOW"] == class_map["brnowl"] == class_map["American Barn Owl"] == "ABOW"
    assert names == {"ABOW": "American Barn Owl", "ACFL": "Acadian Flycatcher"}
    assert class_map["Empidonax virescens"] == "ACFL"
