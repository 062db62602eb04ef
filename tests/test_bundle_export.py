"""``badc-mpi bundle --export``: the same files as ``badc-mpi export`` (one mechanism) in
``<bundle>/exports/``, detection histories with unsurveyed days, the report's Sites panel on the
bundle's focus species and threshold (so it agrees with the histories), and a missing field as a
one-line error before anything of the export is written."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
from test_export import RECORDINGS, _csv_rows, _golden, make_campaign

from badc_mpi.cli import main
from badc_mpi.results.bundle.report import site_grid

EXPORT_ARGS = ["--focus-species", "RUGR,OVEN", "--min-confidence", "0.5"]


def _bundle(tmp_path: Path, *args: str) -> int:
    manifest = make_campaign(tmp_path)
    return main(["bundle", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "b"), *args])


def test_bundle_export_writes_what_export_writes(tmp_path, capsys):
    assert _bundle(tmp_path, "--export", "wildtrax,raven,tables,histories", *EXPORT_ARGS) == 0
    out = capsys.readouterr()
    exp = tmp_path / "b" / "exports"
    assert f"exports  {exp}" in out.out and "FROG-WOOD (1)" in out.err  # the export's notes, said once
    _golden("wildtrax_tags.csv", exp / "wildtrax_tags.csv")  # the golden files of `export --min-confidence 0.5`
    _golden("wildtrax_tasks.csv", exp / "wildtrax_tasks.csv")
    _golden("raven_r1.txt", exp / "raven" / "r1.HawkEars.selections.txt")
    assert main(["export", str(tmp_path / "b"), "--format", "all", *EXPORT_ARGS, "--output", str(tmp_path / "x")]) == 0
    names = sorted(p.relative_to(exp) for p in exp.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "x") for p in (tmp_path / "x").rglob("*") if p.is_file())
    for name in names:
        if name.name != "export.json":
            assert (exp / name).read_bytes() == (tmp_path / "x" / name).read_bytes(), name
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["focus_species"] == ["RUGR", "OVEN"] and summary["min_confidence"] == 0.5
    assert summary["exports"]["folder"] == "exports" and summary["exports"]["files"] == len(names) - 1
    assert json.loads((exp / "export.json").read_text())["options"]["focus_species"] == ["RUGR", "OVEN"]


def test_bundle_histories_keep_unsurveyed_days_and_the_sites_panel_agrees(tmp_path):
    assert _bundle(tmp_path, "--export", "histories", *EXPORT_ARGS) == 0
    hist = tmp_path / "b" / "exports" / "histories"
    assert (hist / "RUGR.csv").read_text() == "location,2024-03-09,2024-03-10,2024-03-11\nNWT-01,1,NA,0\nNWT-02,0,NA,NA\n"
    assert (hist / "OVEN.csv").read_text().splitlines()[1] == "NWT-01,0,NA,1"  # OVEN 0.4 on the 9th is below 0.5
    long = _csv_rows(hist / "detection_history_long.csv")
    con = duckdb.connect(str(tmp_path / "b" / "bundle.duckdb"), read_only=True)
    try:
        locations, days, grid = site_grid(con, ["RUGR", "OVEN"], 0.5)
    finally:
        con.close()
    assert np.array_equal(grid, np.array([[2, np.nan, 1], [0, np.nan, np.nan]]), equal_nan=True)
    for i, loc in enumerate(locations):  # the panel is the histories, summed over the focus species
        for j, day in enumerate(days):
            rows = [r for r in long if r["location"] == loc and r["date"] == day]
            if rows[0]["detected"] == "NA":
                assert np.isnan(grid[i, j])
            else:
                assert grid[i, j] == sum(int(r["detections"]) for r in rows)
    page = (tmp_path / "b" / "report.html").read_text()
    assert 'id="chart-sites"' in page


def test_bundle_without_export_writes_no_exports_and_the_panel_takes_the_default_species(tmp_path):
    assert _bundle(tmp_path) == 0
    assert not (tmp_path / "b" / "exports").exists()
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["focus_species"] == ["ROPT", "RUGR", "STGR", "SPGR", "WIPT"] and summary["exports"] is None


def test_bundle_export_missing_field_is_one_line_and_writes_no_export(tmp_path, capsys):
    dawn = {**RECORDINGS, "r1": ("dawn.wav", *RECORDINGS["r1"][1:])}  # r1: no location in its name
    manifest = make_campaign(tmp_path, meta=("study_area",), recordings=dawn)
    code = main(["bundle", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "b"),
                 "--export", "wildtrax"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "have no location (r1)" in err[0]
    assert not (tmp_path / "b" / "exports").exists() and not (tmp_path / "b" / "summary.json").exists()


def test_bundle_bad_export_option_exits_2_before_aggregating(tmp_path, capsys):
    assert _bundle(tmp_path, "--export", "shapefile") == 2
    assert _bundle(tmp_path / "t", "--export", "wildtrax", "--task-duration", "4000") == 2
    assert "unknown format shapefile" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "t" / "b").exists()
