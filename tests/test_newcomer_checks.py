"""Issue 21, silently wrong today: species typos, sites.csv headers, tiny-model exports and the
defaults that change the science, each through the real CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from test_chunk import tone
from test_export import _agg, make_campaign

from badc_mpi.cli import main

CLASSES = (
    "Name,Code,AltName,AltCode\n"
    "Ovenbird,OVEN,Seiurus aurocapilla,ovenbi1\n"
    "Ruffed Grouse,RUGR,Bonasa umbellus,rufgro\n"
    "American Robin,AMRO,Turdus migratorius,amerob\n"
    "Sharp-tailed Grouse,STGR,Tympanuchus phasianellus,shtgro\n"
    "Wood Frog,FROG-WOOD,Lithobates sylvaticus,woofro\n"
    "Rock Ptarmigan,ROPT,Lagopus muta,rocpta1\n"
    "Spruce Grouse,SPGR,Canachites canadensis,sprgro\n"
    "Willow Ptarmigan,WIPT,Lagopus lagopus,wilpta\n"
)


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with a small taxonomy (HAWKEARS_DATA_ROOT: where the export finds it)."""
    root = tmp_path / "hawkears-data"
    (root / "yaml").mkdir(parents=True)
    (root / "yaml" / "default.yaml").write_text("{}\n")
    (root / "data" / "ckpt").mkdir(parents=True)
    (root / "data" / "ckpt" / "m.ckpt").write_bytes(b"x")
    (root / "data" / "classes.csv").write_text(CLASSES)
    monkeypatch.setenv("HAWKEARS_DATA_ROOT", str(root))
    return root


def tiny_campaign(root: Path) -> Path:
    manifest = make_campaign(root)
    for path in (root / "out").rglob("*.detections.jsonl"):
        path.write_text(re.sub(r'"model_version": ?"m"', '"model_version":"tiny:main=[t.ckpt:0]"', path.read_text()))
    return manifest


def test_unknown_focus_species_exit_2_with_the_nearest_codes_and_nothing_written(tmp_path, data_root, capsys):
    folder = _agg(tmp_path, make_campaign(tmp_path))
    out = tmp_path / "exports"
    rc = main(["export", str(folder), "--format", "histories", "--focus-species", "RUGR,OVNE", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "'OVNE'" in err and "nearest: OVEN (Ovenbird)" in err
    assert not out.exists()


def test_common_names_are_mapped_to_codes_and_said(tmp_path, data_root, capsys):
    folder = _agg(tmp_path, make_campaign(tmp_path))
    out = tmp_path / "exports"
    rc = main(["export", str(folder), "--format", "histories", "--focus-species", "Ovenbird,rugr", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "'OVENBIRD' read as OVEN" in err
    assert sorted(p.name for p in (out / "histories").glob("*.csv") if p.stem.isupper()) == ["OVEN.csv", "RUGR.csv"]
    rows = list(csv.reader(open(out / "histories" / "OVEN.csv")))
    assert any("1" in row[1:] for row in rows[1:])  # the Ovenbird of r2 is there: no false absence


def test_default_focus_species_are_named(tmp_path, data_root, capsys):
    folder = _agg(tmp_path, make_campaign(tmp_path))
    assert main(["export", str(folder), "--format", "histories", "--output", str(tmp_path / "e")]) == 0
    assert "histories of the default focus species ROPT,RUGR,STGR,SPGR,WIPT" in capsys.readouterr().err
    manifest = tmp_path / "manifests" / "campaign.csv"
    rc = main(["bundle", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "b")])
    assert rc == 0 and "Sites panel shows the default focus species ROPT,RUGR,STGR,SPGR,WIPT" in capsys.readouterr().out


def test_include_list_typo_refused_before_any_rank_starts(tmp_path, data_root, capsys):
    manifest = make_campaign(tmp_path)
    include = tmp_path / "include.txt"
    include.write_text("Ovenbird\nRufed Grouse\n")
    rc = main(["run", str(manifest), "--include", str(include), "--hawkears-data-root", str(data_root)])
    err = capsys.readouterr().err
    assert rc == 2 and "line 2: 'Rufed Grouse'" in err and "Ruffed Grouse" in err
    script = tmp_path / "job.sbatch"
    flags = ["--include", str(include), "--hawkears-data-root", str(data_root)]
    rc = main(["orchestrate", "--manifest", str(manifest), "--sockeye-script", str(script), "--run-args", *flags])
    assert rc == 2 and "'Rufed Grouse'" in capsys.readouterr().err and not script.exists()  # no script made of a typo


def test_tiny_model_exports_refused_without_the_flag_and_marked_with_it(tmp_path, data_root, capsys):
    folder = _agg(tmp_path, tiny_campaign(tmp_path))
    out = tmp_path / "exports"
    rc = main(["export", str(folder), "--format", "all", "--focus-species", "RUGR", "--output", str(out)])
    assert rc == 2 and "tiny random-weight test model" in capsys.readouterr().err and not out.exists()
    rc = main(["export", str(folder), "--format", "all", "--focus-species", "RUGR", "--output", str(out), "--allow-tiny-model"])
    assert rc == 0
    tags = list(csv.DictReader(open(out / "wildtrax_tags.csv")))
    assert tags and all(t["species_individual_comments"].startswith("TINY TEST MODEL") for t in tags)
    assert "HawkEars 2.3.0 Confidence" in tags[0]["species_individual_comments"]
    listing = json.loads((out / "export.json").read_text())
    assert listing["tiny_model"] is True
    for rel in listing["files"]:
        if rel.endswith((".csv", ".txt")):
            text = (out / rel).read_text()
            assert "TINY TEST MODEL" in text.splitlines()[0] + "".join(text.splitlines()[1:2]) or "model_warning" in text, rel
            assert "model_warning" in text or "comments" in text.splitlines()[0], rel


SITES_ALIASED = "site,lat,long,tz,study\nNWT-01,61.5,-117.25,America/Yellowknife,Dehcho\n"


def test_sites_aliases_are_read_and_said(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tone(tmp_path / "audio" / "NWT-01" / "NWT-01_20240601_050000.wav", 5)
    (tmp_path / "sites.csv").write_text(SITES_ALIASED)
    assert main(["chunk", str(tmp_path / "audio"), "--layout", "wildtrax", "--sites", str(tmp_path / "sites.csv")]) == 0
    err = capsys.readouterr().err
    assert "column 'lat' read as 'latitude'" in err and "column 'tz' read as 'time_zone'" in err
    rows = list(csv.DictReader(open(next((tmp_path / "audio").parent.rglob("manifests/*.csv")))))
    assert rows[0]["lat"] == "61.5" and rows[0]["lon"] == "-117.25" and rows[0]["study_area"] == "Dehcho"


def test_sites_unknown_column_exit_2_naming_the_expected_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tone(tmp_path / "audio" / "NWT-01" / "NWT-01_20240601_050000.wav", 5)
    (tmp_path / "sites.csv").write_text("location,lattitude,longitude\nNWT-01,61.5,-117.25\n")
    assert main(["chunk", str(tmp_path / "audio"), "--layout", "wildtrax", "--sites", str(tmp_path / "sites.csv")]) == 2
    err = capsys.readouterr().err
    assert "unknown column(s) 'lattitude'" in err and "location,latitude,longitude,region,time_zone,study_area" in err
    assert not list(tmp_path.rglob("manifests/*.csv"))


def test_low_band_off_on_cpu_is_named(caplog):
    from badc_mpi.records import Binding
    from badc_mpi.runners.hawkears.env import DataRoot
    from badc_mpi.runners.hawkears.options import HawkearsOptions
    from badc_mpi.runners.hawkears.startup import low_band_choice

    root = DataRoot("/models", False, "m", "cli", ("a.ckpt",), ("low.ckpt",))
    cpu = Binding("vm", 0, 0, "cpu0@vm", "")
    with caplog.at_level("WARNING"):
        assert low_band_choice(HawkearsOptions(), root, cpu) is None  # HawkEars' own CPU default: off
        assert low_band_choice(HawkearsOptions(low_band=False), root, cpu) is False
    said = [r.getMessage() for r in caplog.records if "low-band" in r.getMessage()]
    assert len(said) == 1 and "off: HawkEars' default on CPU" in said[0] and "--low-band" in said[0]
