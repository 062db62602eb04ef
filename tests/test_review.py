"""``badc-mpi review``: seeded draws (golden), clips equal to the recording's samples, missing
sources listed with their fix, later rounds draw new detections near the threshold, bad input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from test_export import CHUNKS, RECORDINGS, make_campaign

from badc_mpi.cli import main
from badc_mpi.results.aggregate.dataset import aggregate
from badc_mpi.results.review import pack as pack_module
from badc_mpi.results.review.errors import ReviewError
from badc_mpi.results.review.pack import earlier_ids
from badc_mpi.results.review.select import Candidate, Selection, allocate, draw, uniform

from ci_rules import check_golden

GOLDEN = Path(__file__).parent / "golden"
SR = 8000
#: r1 and r3 are on disk (r1 16-bit WAV, r3 24-bit FLAC); r2's annexed content is absent (a
#: dangling symlink); r4 has no detections
HERE = {"r1": "PCM_16", "r3": "PCM_24"}
MORE = {
    **CHUNKS,
    "c0": ("r3", 0, 60000, "success", [("OVEN", "Ovenbird", 0.55, 0.5, 3.5), ("RUGR", "Ruffed Grouse", 0.3, 58.0, 60.0)]),
}


def recording_samples(rid: str) -> np.ndarray:
    rng = np.random.default_rng(int(rid[1:]))
    bits = 16 if HERE[rid] == "PCM_16" else 24
    return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(120 * SR, 1)).astype(np.int32)


def make_review_bundle(tmp_path: Path) -> Path:
    """An aggregate of test_export's campaign (plus r3) whose recordings r1 (a WAV) and r3 (an
    annexed FLAC, fetched) are on disk; r2 is annexed and not fetched."""
    manifest = make_campaign(tmp_path, MORE)
    audio = manifest.parent / "audio"
    audio.mkdir(exist_ok=True)
    annex = tmp_path / ".git" / "annex" / "objects" / "Qx"
    annex.mkdir(parents=True)
    for rid, subtype in HERE.items():
        data = recording_samples(rid)
        fmt = "WAV" if subtype == "PCM_16" else "FLAC"
        # r3 is annexed and fetched: a symlink into the annex, read through it
        target = audio / RECORDINGS[rid][0] if rid == "r1" else annex / "SHA256E-s1--r3.flac"
        sf.write(target, data.astype(np.int16) if subtype == "PCM_16" else data << 8, SR, format=fmt, subtype=subtype)
        if rid != "r1":
            os.symlink(os.path.relpath(target, audio), audio / RECORDINGS[rid][0])
    os.symlink("../../.git/annex/objects/XX/missing.wav", audio / RECORDINGS["r2"][0])
    folder = tmp_path / "bundle"
    aggregate([str(manifest)], str(folder), telemetry_dir=str(tmp_path / "tel"))
    return folder


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return make_review_bundle(tmp_path)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_clips_hold_the_recordings_samples_and_missing_sources_name_their_fix(bundle, capsys, monkeypatch):
    monkeypatch.setattr(pack_module, "POOL_FROM", 1)  # cut by two spawned processes, as a campaign's pack is
    args = ["--all-species", "--per-species", "3", "--seed", "7", "--pad-s", "1.5", "--jobs", "2"]
    assert main(["review", str(bundle), *args]) == 0
    out = capsys.readouterr().out
    pack = bundle / "review" / "1"
    rows = _rows(pack / "review.csv")
    assert {r["species_code"] for r in rows} == {"AMRO", "FROG-WOOD", "OVEN", "RUGR"}
    missing = [r for r in rows if r["problem"]]
    assert missing and all(r["recording_id"] == "r2" and "datalad get" in r["problem"] and not r["clip"] for r in missing)
    assert "datalad get" in out and "missing" in out
    cut = [r for r in rows if not r["problem"]]
    assert len(cut) == len(rows) - len(missing) >= 5 and {r["recording_id"] for r in cut} == {"r1", "r3"}
    for r in cut:
        clip, sr = sf.read(pack / r["clip"], dtype="int32", always_2d=True)
        assert sr == SR
        rid = r["recording_id"]
        whole = recording_samples(rid)
        first = max(0, round((float(r["start_s"]) - 1.5) * SR))
        last = min(len(whole), round((float(r["end_s"]) + 1.5) * SR))
        shift = 16 if HERE[rid] == "PCM_16" else 8
        assert np.array_equal(clip >> shift, whole[first:last]), r["detection_id"]
        assert (pack / r["image"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert r["verdict"] == "" and r["local_time"].startswith("2024-03-") and r["location"].startswith("NWT-")
    raven = (pack / "raven" / "AMRO.review.selections.txt").read_text().splitlines()
    assert raven[0].split("\t")[-1] == "Verdict" and len(raven) == 1 + sum(1 for r in cut if r["species_code"] == "AMRO")
    doc = json.loads((pack / "review.json").read_text())
    assert doc["detections"] == len(rows) and len(doc["missing"]) == len(missing)
    assert "review.html" in os.listdir(pack)


def test_a_seeded_draw_is_pinned_and_the_seed_matters(bundle):
    parquet = str(bundle / "detections.parquet")
    picks = draw(parquet, Selection(all_species=True, per_species=2, strata="score", seed=3))
    picks += draw(parquet, Selection(all_species=True, per_species=2, strata="none", seed=3))
    text = "".join(f"{p.species_code},{p.stratum},{p.detection_id},{p.key:.12f}\n" for p in picks)
    check_golden(GOLDEN / "review_draw_seed3.csv", text, "the draw of tests/test_review.py")
    assert draw(parquet, Selection(all_species=True, per_species=2, strata="score", seed=3)) == picks[: len(picks) // 2]
    others = [draw(parquet, Selection(all_species=True, per_species=1, strata="none", seed=s)) for s in range(6)]
    assert len({tuple(p.detection_id for p in o) for o in others}) > 1


def test_strata_take_turns_within_a_species():
    cands = [Candidate(i, "AMRO", s, k) for i, (s, k) in enumerate([("1", 0.5), ("1", 0.1), ("1", 0.2), ("9", 0.9), ("5", 0.3)])]
    picked = allocate(cands, 4)
    assert [(c.stratum, c.key) for c in picked] == [("1", 0.1), ("5", 0.3), ("9", 0.9), ("1", 0.2)]
    assert len(allocate(cands, 50)) == 5


def test_near_threshold_draws_new_detections_around_the_threshold(tmp_path):
    n = 20000
    rng = np.random.default_rng(1)
    table = pa.table({
        "detection_id": pa.array(rng.permutation(n).astype(np.int64) * 7919 + 11),
        "label": pa.array(["AMRO"] * n), "label_code": pa.array(["AMRO"] * n),
        "confidence": pa.array(rng.uniform(0, 1, n).astype(np.float32)),
    })  # fmt: skip
    path = str(tmp_path / "d.parquet")
    pq.write_table(table, path)
    first = draw(path, Selection(species=("AMRO",), per_species=200, strata="none", seed=1))
    near = draw(path, Selection(species=("AMRO",), per_species=200, strata="none", seed=1, near_threshold=True,
                                thresholds=(("AMRO", 0.7),)), exclude=[c.detection_id for c in first])  # fmt: skip
    score = dict(zip(table.column("detection_id").to_pylist(), table.column("confidence").to_pylist()))
    spread_first = np.mean([abs(score[c.detection_id] - 0.7) for c in first])
    spread_near = np.mean([abs(score[c.detection_id] - 0.7) for c in near])
    assert spread_near < 0.12 < 0.2 < spread_first
    assert not {c.detection_id for c in first} & {c.detection_id for c in near}


def test_round_two_never_draws_round_ones_detections(bundle, capsys):
    (bundle / "thresholds.csv").write_text("species_code,threshold\nAMRO,0.6\nRUGR,0.7\n")
    assert main(["review", str(bundle), "--all-species", "--per-species", "2", "--seed", "1"]) == 0
    assert (
        main(["review", str(bundle), "--all-species", "--per-species", "2", "--seed", "1", "--round", "2", "--near-threshold"])
        == 0
    )
    one, two = (_rows(bundle / "review" / r / "review.csv") for r in ("1", "2"))
    assert one and two and not {r["detection_id"] for r in one} & {r["detection_id"] for r in two}
    doc = json.loads((bundle / "review" / "2" / "review.json").read_text())
    assert doc["selection"]["thresholds"] == [["AMRO", 0.6], ["RUGR", 0.7]] and doc["excluded_earlier"] == len(one)
    assert earlier_ids(str(bundle), 3) == {int(r["detection_id"]) for r in one + two}
    assert earlier_ids(str(bundle), 1) == {int(r["detection_id"]) for r in two}
    (bundle / "verdicts").mkdir()  # and the verdict files calibrate keeps in the bundle (its verdicts table's source)
    (bundle / "verdicts" / "v-0123456789ab.csv").write_text("detection_id,species_code,verdict\n42,AMRO,wrong\n")
    assert 42 in earlier_ids(str(bundle), 1)
    # read as calibrate reads them: a spreadsheet's byte-order mark and header case do not hide a verdict
    (bundle / "verdicts" / "excel-0123456789ab.csv").write_bytes(
        "\ufeffDetection_ID,Species_Code,Verdict\r\n43,AMRO,correct\r\n".encode()
    )
    assert {42, 43} <= earlier_ids(str(bundle), 1)
    (bundle / "verdicts" / "latin1-0123456789ab.csv").write_bytes(
        "detection_id,species_code,verdict,note\n44,AMRO,wrong,caf\xe9\n".encode("latin-1")
    )
    with pytest.raises(ReviewError, match="latin1-0123456789ab.csv: not UTF-8"):
        earlier_ids(str(bundle), 1)


def test_bad_input_is_one_line_exit_2_and_nothing_written(bundle, capsys):
    assert main(["review", str(bundle), "--species", "AMRO", "--per-species", "1"]) == 0
    before = (bundle / "review" / "1" / "review.csv").read_text()
    assert main(["review", str(bundle), "--species", "OVEN", "--per-species", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (bundle / "review" / "1" / "review.csv").read_text() == before
    bad = bundle.parent / "t.csv"
    bad.write_text("species_code,threshold\nAMRO,high\n")
    assert main(["review", str(bundle), "--species", "AMRO", "--round", "3", "--near-threshold", "--thresholds", str(bad)]) == 2
    assert "row 2" in capsys.readouterr().err and not (bundle / "review" / "3").exists()
    for text, said in (("AMRO,1.5\n", "not in 0..1"), ("AMRO,0.5\nAMRO,0.6\n", "named twice")):  # the exports' checks
        bad.write_text("species_code,threshold\n" + text)
        assert (
            main(["review", str(bundle), "--species", "AMRO", "--round", "3", "--near-threshold", "--thresholds", str(bad)]) == 2
        )
        assert said in capsys.readouterr().err and not (bundle / "review" / "3").exists()
    assert main(["review", str(bundle.parent), "--all-species"]) == 2


def test_the_sql_key_is_the_documented_uniform(bundle):
    import duckdb

    parquet = str(bundle / "detections.parquet")
    picks = draw(parquet, Selection(all_species=True, per_species=9, strata="none", seed=11))
    ids = duckdb.connect().execute("SELECT detection_id FROM read_parquet(?)", [parquet]).fetchall()
    assert {p.detection_id for p in picks} == {i for (i,) in ids}
    assert all(abs(p.key - uniform(p.detection_id, 11)) < 1e-12 for p in picks)


def test_a_filled_raven_table_reads_back_as_verdicts(tmp_path):
    from badc_mpi.results.review.errors import ReviewError
    from badc_mpi.results.review.raven import read_verdicts, selection_table

    rows = [
        {"detection_id": str(10 + i), "species_code": "RUGR", "score": 0.5 + i / 10, "clip": f"clips/RUGR/{10 + i}.flac",
         "offset_s": 1.5, "length_s": 3.0, "clip_s": 6.0, "problem": ""}
        for i in range(3)
    ]  # fmt: skip
    text = selection_table(rows)
    lines = [line.split("\t") for line in text.splitlines()]
    assert [line[3] for line in lines[1:]] == ["1.500", "7.500", "13.500"]  # clips laid end to end
    filled = "\n".join("\t".join(line[:-1] + [v]) for line, v in zip(lines, ["Verdict", "Correct", "", "wrong"])) + "\n"
    path = tmp_path / "RUGR.review.selections.txt"
    path.write_text(filled)
    assert read_verdicts(str(path)) == [
        {"detection_id": "10", "species_code": "RUGR", "verdict": "correct"},
        {"detection_id": "12", "species_code": "RUGR", "verdict": "wrong"},
    ]
    path.write_text(filled.replace("wrong", "maybe"))
    with pytest.raises(ReviewError, match="row 4"):
        read_verdicts(str(path))
