"""`badc-mpi calibrate BUNDLE --verdicts FILE...` through the CLI on a small campaign's bundle:
thresholds.csv, the tables and views in bundle.duckdb, the report's Calibration section, the
verdicts kept and reused (a later round, a rebuilt bundle), bad input (one line per file and row,
exit 2, nothing written), and exports held to the thresholds."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from test_export import make_campaign

from badc_mpi.cli import main
from badc_mpi.results.calibrate.fit import p_correct

#: RUGR: 60 detections with scores spread over 0.05..0.97 (enough to calibrate); OVEN: 4 (too few);
#: AMRO: no verdicts (exports fall back to --min-confidence)
RUGR_SCORES = np.round(np.linspace(0.05, 0.97, 60), 3)


def _chunks() -> dict:
    a0 = [("RUGR", "Ruffed Grouse", float(s), 1.5 * i, 1.5 * i + 1.0) for i, s in enumerate(RUGR_SCORES[:30])]
    a1 = [("RUGR", "Ruffed Grouse", float(s), 1.5 * i, 1.5 * i + 1.0) for i, s in enumerate(RUGR_SCORES[30:])]
    b0 = [("OVEN", "Ovenbird", 0.3 + 0.1 * i, 2.0 * i, 2.0 * i + 1.0) for i in range(4)]
    b0 += [("AMRO", "American Robin", 0.2 + 0.2 * i, 20.0 + 2 * i, 21.0 + 2 * i) for i in range(4)]
    return {
        "a0": ("r1", 0, 60000, "success", a0),
        "a1": ("r1", 60000, 120000, "success", a1),
        "b0": ("r2", 0, 60000, "success", b0),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("campaign")
    manifest = make_campaign(root, _chunks())
    assert main(["bundle", str(manifest), "--telemetry-dir", str(root / "tel"), "--dest", str(root / "b")]) == 0
    return root


@pytest.fixture
def campaign(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "c"
    shutil.copytree(built, root, symlinks=True)
    return root


def _detections(bundle: Path) -> list[tuple[str, str, float]]:
    con = duckdb.connect(str(bundle / "bundle.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT detection_id::VARCHAR, label_code, confidence::DOUBLE FROM detections ORDER BY 3").fetchall()
    finally:
        con.close()
    return [(r[0], r[1], r[2]) for r in rows]


def _verdicts(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["detection_id", "species_code", "verdict"])
        w.writerows(rows)
    return path


def _synthetic_verdicts(bundle: Path, path: Path) -> Path:
    rng = np.random.default_rng(3)
    rows = []
    for det_id, code, score in _detections(bundle):
        if code == "RUGR":
            rows.append((det_id, code, "correct" if rng.random() < p_correct([score], -0.5, 2.5)[0] else "wrong"))
        elif code == "OVEN":
            rows.append((det_id, code, "correct"))
    rows.append((rows[0][0], "RUGR", rows[0][2]))  # an agreeing duplicate counts once
    return _verdicts(path, rows)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_calibrate_writes_thresholds_tables_views_and_the_report_section(campaign, capsys):
    bundle = campaign / "b"
    vfile = _synthetic_verdicts(bundle, campaign / "verdicts.csv")
    args = ["calibrate", str(bundle), "--verdicts", str(vfile), "--bootstrap", "300", "--note", "synthetic verdicts (test)"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "64 verdicts" in out and "OVEN         no threshold: too few verdicts" in out
    thr = {r["species_code"]: r for r in _rows(bundle / "thresholds.csv")}
    assert list(thr) == ["OVEN", "RUGR"] and thr["OVEN"]["threshold"] == "" and "too few" in thr["OVEN"]["reason"]
    rugr = thr["RUGR"]
    assert float(rugr["threshold_low"]) < float(rugr["threshold"]) < float(rugr["threshold_high"])
    assert (rugr["reviewed"], rugr["target_precision"]) == ("60", "0.9")
    kept = sorted((bundle / "verdicts").iterdir())
    assert [p.name[:9] for p in kept] == ["verdicts-"] and kept[0].read_bytes() == vfile.read_bytes()
    con = duckdb.connect(str(bundle / "bundle.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT detection_id) FROM verdicts").fetchone() == (64, 64)
        t = float(rugr["threshold"])
        above, n = con.execute(
            "SELECT count(*) FILTER (WHERE above_threshold), count(*) FROM calibrated_detections WHERE species_code = 'RUGR'"
        ).fetchone()
        assert n == 60 and above == int((RUGR_SCORES.astype(np.float32) >= np.float32(t)).sum())
        assert con.execute("SELECT count(*) FROM calibrated_detections WHERE above_threshold IS NULL").fetchone()[0] == 4  # AMRO
        summary = con.execute(
            "SELECT species_code, location, local_date::VARCHAR, detections, detections_above_threshold, "
            "expected_true_detections FROM calibrated_summary WHERE species_code = 'RUGR'"
        ).fetchall()
    finally:
        con.close()
    assert [r[:5] for r in summary] == [("RUGR", "NWT-01", "2024-03-09", 60, above)]
    assert summary[0][5] == pytest.approx(sum(p_correct(RUGR_SCORES, float(rugr["intercept"]), float(rugr["slope"]))), rel=1e-4)
    page = (bundle / "report.html").read_text()
    assert "<h2 id='calibration'>Calibration</h2>" in page and 'id="chart-calibration"' in page
    assert "NOT REAL VERDICTS: synthetic verdicts (test)" in page and "too few verdicts" in page


def test_bad_verdicts_are_one_line_each_exit_2_and_nothing_is_written(campaign, capsys):
    bundle = campaign / "b"
    dets = _detections(bundle)
    rugr = [d for d in dets if d[1] == "RUGR"]
    one = _verdicts(
        campaign / "one.csv", [(rugr[0][0], "RUGR", "correct"), ("123", "RUGR", "wrong"), (rugr[1][0], "RUGR", "yes")]
    )
    two = _verdicts(campaign / "two.csv", [(rugr[0][0], "RUGR", "wrong"), (rugr[2][0], "OVEN", "wrong")])
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert main(["calibrate", str(bundle), "--verdicts", str(one), str(two)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:4] == [
        f"  {one}, row 4: verdict 'yes' is not one of correct, wrong, unsure",
        f"  {one}, row 3: detection_id '123' is not in the bundle",
        f"  {two}, row 2: detection_id '{rugr[0][0]}' is 'wrong' here but 'correct' in {one}, row 2",
        f"  {two}, row 3: detection_id '{rugr[2][0]}' is a RUGR detection in the bundle, not OVEN",
    ]
    assert err[4].startswith("badc-mpi: error: 4 problem(s) in the verdicts; nothing was written. Fix:")
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
    assert main(["calibrate", str(bundle), "--verdicts", str(one), "--target-precision", "1.2"]) == 2
    assert "--target-precision 1.2 is outside [0.5, 1)" in capsys.readouterr().err


def test_a_later_round_adds_to_the_kept_verdicts_and_a_rebuilt_bundle_keeps_the_calibration(campaign, capsys):
    bundle = campaign / "b"
    rugr = [d for d in _detections(bundle) if d[1] == "RUGR"]
    first = _verdicts(campaign / "round1.csv", [(d[0], "RUGR", "correct" if d[2] > 0.5 else "wrong") for d in rugr[::2]])
    assert main(["calibrate", str(bundle), "--verdicts", str(first), "--bootstrap", "50", "--min-verdicts", "40"]) == 0
    assert "too few verdicts: 30" in _rows(bundle / "thresholds.csv")[0]["reason"]
    second = _verdicts(campaign / "round2.csv", [(d[0], "RUGR", "correct" if d[2] > 0.5 else "wrong") for d in rugr[1::2]])
    assert main(["calibrate", str(bundle), "--verdicts", str(second), "--bootstrap", "50", "--min-verdicts", "40"]) == 0
    row = _rows(bundle / "thresholds.csv")[0]
    assert (row["reviewed"], row["reason"]) == ("60", "") and 0.5 < float(row["threshold"]) < 0.6
    assert len(list((bundle / "verdicts").iterdir())) == 2
    disagree = _verdicts(campaign / "fix.csv", [(rugr[0][0], "RUGR", "correct")])  # round 1 said wrong
    assert main(["calibrate", str(bundle), "--verdicts", str(disagree)]) == 2
    assert "verdicts/round1-" in capsys.readouterr().err
    (ledger,) = (campaign / "tel").glob("*.ledger.jsonl")  # its runs (the copied manifest names none)
    rebuild = ["bundle", str(ledger), "--dest", str(bundle), "--force", "--export", "tables"]
    assert main([*rebuild, "--thresholds", str(bundle / "thresholds.csv")]) == 0  # bundle --export takes them too
    listing = json.loads((bundle / "exports" / "export.json").read_text())
    assert listing["thresholds"]["species"] == {"RUGR": pytest.approx(float(row["threshold"]))}
    kept_rugr = [r for r in _rows(bundle / "exports" / "tables" / "all.csv") if r["class_code"] == "RUGR"]
    assert kept_rugr and min(float(r["score"]) for r in kept_rugr) >= float(row["threshold"]) - 1e-6
    con = duckdb.connect(str(bundle / "bundle.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 60
        assert con.execute("SELECT threshold FROM thresholds").fetchone()[0] == pytest.approx(float(row["threshold"]))
    finally:
        con.close()
    assert "<h2 id='calibration'>Calibration</h2>" in (bundle / "report.html").read_text()


def test_exports_hold_each_species_to_its_threshold_and_list_the_others(campaign, capsys):
    bundle = campaign / "b"
    thresholds = campaign / "thresholds.csv"
    thresholds.write_text("species_code,threshold,reason\nRUGR,0.7,\nOVEN,,too few verdicts\n")
    out = campaign / "exp"
    args = ["export", str(bundle), "--format", "wildtrax,tables,histories", "--focus-species", "RUGR,AMRO",
            "--thresholds", str(thresholds), "--min-confidence", "0.5", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "thresholds: 2 species without a threshold" in capsys.readouterr().err
    tags = _rows(out / "wildtrax_tags.csv")
    scores = {c: sorted(float(t["species_individual_comments"].rsplit(" ", 1)[-1]) for t in tags if t["species_code"] == c)
              for c in ("RUGR", "OVEN", "AMRO")}  # fmt: skip
    assert scores["RUGR"] and min(scores["RUGR"]) >= 0.7 and len(scores["RUGR"]) == int((RUGR_SCORES >= 0.7).sum())
    assert scores["OVEN"] == [0.5, 0.6] and scores["AMRO"] == [0.6, 0.8]  # --min-confidence 0.5
    table = _rows(out / "tables" / "all.csv")
    assert min(float(r["score"]) for r in table if r["class_code"] == "RUGR") >= 0.7
    long = _rows(out / "histories" / "detection_history_long.csv")
    assert sum(int(r["detections"]) for r in long if r["species"] == "RUGR") == len(scores["RUGR"])
    doc = json.loads((out / "export.json").read_text())
    assert doc["options"]["thresholds"] == str(thresholds)
    assert doc["thresholds"]["species"] == {"RUGR": 0.7} and doc["thresholds"]["fallback_species"] == ["AMRO", "OVEN"]
    assert doc["thresholds"]["fallback_min_confidence"] == 0.5
    bad = campaign / "bad.csv"
    bad.write_text("species_code,threshold\nRUGR,high\n")
    assert main([*args[:-4], "--thresholds", str(bad), "--output", str(campaign / "exp2")]) == 2
    assert f"{bad}, row 2: threshold 'high' for RUGR is not in 0..1" in capsys.readouterr().err
    assert not (campaign / "exp2").exists()
