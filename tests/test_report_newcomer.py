"""The report a newcomer opens first (issue 21), through the real CLI (`badc-mpi bundle`):
the Sites panel's scale (zero palest, NA grey, never -0.1..0.1), species x local time of day with
species names, whole-number ticks on counts, no GPU panel for CPU runs, per-site and per-recording
tables, next steps and links (exports, review packs); and in a real headless Chromium driven by
Selenium at 1,400 px: no table overflows the page, the links lead to the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bundle import make_golden

from badc_mpi.cli import main
from badc_mpi.results.bundle import charts

from ci_rules import require_or_skip


def _bundle(root: Path, *, empty: bool = False, cpu: bool = False) -> Path:
    """The golden runs with a location column and every recording's start known (recC's on the
    next day, and never analysed: NA there); ``empty``: no detections; ``cpu``: no GPU samples."""
    manifest = make_golden(root)
    lines = manifest.read_text().splitlines()
    lines = [ln.replace("s3,", "s3,2026-06-02T06:00:00Z") if ln.startswith("recC") else ln for ln in lines]
    lines = [lines[0] + ",location"] + [f"{ln},SITE-{ln.split(',')[-2][-1]}" for ln in lines[1:]]
    manifest.write_text("\n".join(lines) + "\n")
    if empty:
        for path in (root / "out").rglob("*.detections.jsonl"):
            path.write_bytes(b"")
    if cpu:
        for path in (root / "tel").glob("*.jsonl"):
            if not path.name.endswith(".ledger.jsonl"):
                events = [json.loads(line) for line in path.read_text().splitlines()]
                gpu = ("gpu_util_pct_mean", "gpu_util_pct_max", "vram_used_mib", "gpu_name", "gpu_index")
                path.write_text("".join(json.dumps({k: v for k, v in e.items() if k not in gpu}) + "\n" for e in events))
    return manifest


def _run_bundle(root: Path, manifest: Path, monkeypatch, capsys) -> tuple[Path, dict]:
    """`badc-mpi bundle` in-process; every chart's figure kept (title -> figure) before it is drawn."""
    figures: dict[str, object] = {}
    real = charts._png

    def keep(fig):
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()] or [fig.get_suptitle()]
        figures[titles[0]] = fig
        return real(fig)

    monkeypatch.setattr(charts, "_png", keep)
    monkeypatch.chdir(root)
    assert main(["bundle", str(manifest), "--telemetry-dir", str(root / "tel"), "--bucket-minutes", "15"]) == 0
    out = capsys.readouterr().out
    folder = Path(next(ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("bundle ")))
    last = out.strip().splitlines()[-1]  # the next step: open the report, then the exports unless written
    assert last.startswith("next: open artifacts/aggregate/golden/report.html in a browser"), last
    assert ("badc-mpi export artifacts/aggregate/golden --format all" in last) != (folder / "exports").is_dir(), last
    return folder, figures


def _fig(figures: dict, start: str):
    return next(f for t, f in figures.items() if t.startswith(start))


def _whole_ticks(axis) -> bool:
    ticks = [t for t in axis.get_ticklocs() if axis.get_view_interval()[0] - 1e-9 <= t <= axis.get_view_interval()[1] + 1e-9]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


def test_sites_scale_with_no_detections_is_zero_palest_and_na_grey(tmp_path, monkeypatch, capsys):
    folder, figures = _run_bundle(tmp_path, _bundle(tmp_path, empty=True, cpu=True), monkeypatch, capsys)
    sites = _fig(figures, "Focus species")
    image = sites.axes[0].get_images()[0]
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)  # not -0.1..0.1
    cmap = image.get_cmap()
    data = image.get_array()
    assert data.mask.any() and (data.filled(-1) == 0).any()  # NA cells and surveyed zeros both present
    zero = cmap(image.norm(0.0))
    assert zero == cmap(0.0) and sum(zero[:3]) == max(sum(cmap(x)[:3]) for x in np.linspace(0, 1, 11))  # the palest
    assert cmap.get_bad()[:3] == pytest.approx((0xBD / 255,) * 3)  # NA: grey, whatever the data
    assert _whole_ticks(sites.axes[1].yaxis)  # the colour bar counts 0, 1
    workers = _fig(figures, "Throughput per worker")
    assert len(workers.axes) == 1 and "no GPU samples" in workers.axes[0].get_title()  # no empty GPU plot
    page = (folder / "report.html").read_text()
    assert "GPU util" not in page.split('id="worker-table"')[1].split("</table>")[0]


def test_species_by_local_time_of_day_named_and_counts_in_whole_numbers(tmp_path, monkeypatch, capsys):
    folder, figures = _run_bundle(tmp_path, _bundle(tmp_path), monkeypatch, capsys)
    heat = _fig(figures, "Species x local time of day")
    ax = heat.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["American Robin (AMRO)", "Yellow-rumped Warbler (YRWA)"]
    assert ax.get_xlabel().startswith("local time of day")
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "5:00"  # the recordings' 05:00 start, not 26 UTC hours
    assert ax.get_images()[0].get_array().shape[1] == 4  # 5:00..5:45 in 15-minute buckets
    for title, axis in (
        ("Top 2 species", _fig(figures, "Top 2 species").axes[0].xaxis),
        ("heat map colour bar", heat.axes[1].yaxis),
        ("confidence", figures["AMRO"].axes[0].yaxis),
        ("chunks finished", _fig(figures, "Throughput per worker").axes[0].yaxis),
    ):
        assert _whole_ticks(axis), title
    assert len(_fig(figures, "Throughput per worker").axes) == 2  # GPU samples: the utilisation panel is there


CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    require_or_skip(
        webdriver is not None and CHROMIUM is not None and CHROMEDRIVER is not None,
        "needs selenium (make install) and Debian's chromium + chromium-driver (make browser, as root)",
    )
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_report_tables_fit_1400px_with_next_steps_and_links_in_chromium(tmp_path, monkeypatch, capsys):
    from selenium.webdriver.common.by import By

    manifest = _bundle(tmp_path)
    folder, _ = _run_bundle(tmp_path, manifest, monkeypatch, capsys)
    review = folder / "review" / "round-1" / "review.html"
    review.parent.mkdir(parents=True)
    review.write_text("<!DOCTYPE html><title>review round-1</title><p>pack</p>")
    assert main(["export", str(folder), "--format", "raven", "--allow-tiny-model"]) == 0  # exports/raven/ beside the report
    folder, _ = _run_bundle(tmp_path, manifest, monkeypatch, capsys)  # the report now links both
    driver = _driver()
    try:
        driver.get((folder / "report.html").as_uri())
        driver.set_window_size(1400, driver.execute_script("return document.documentElement.scrollHeight") + 150)
        width = driver.execute_script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width[0] <= width[1], width  # nothing wider than the window
        for table in ("worker-table", "site-table", "recording-table", "failure-table", "provenance-table"):
            el = driver.find_element(By.ID, table)
            sizes = driver.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth]", el)
            assert sizes[0] <= sizes[1], (table, sizes)  # fits: no scroll bar inside the page either
        sites = [r.text.split()[0] for r in driver.find_elements(By.CSS_SELECTOR, "#site-table tr")[1:]]
        assert sites == ["SITE-1", "SITE-2", "SITE-3"]
        recs = driver.find_element(By.ID, "recording-table").text
        assert "recA SITE-1 2026-06-01 05:00 UTC" in recs
        steps = driver.find_element(By.ID, "next-steps").text
        assert "--resume" in steps and "tiny test model" in steps and "bundle.duckdb" in steps
        assert "badc-mpi export" not in steps  # the exports are there: linked, not asked for
        driver.save_screenshot(str(tmp_path / "report-1400.png"))
        assert (tmp_path / "report-1400.png").stat().st_size > 50_000
        exports = driver.find_element(By.ID, "link-exports")
        assert "raven" in exports.text
        driver.find_element(By.LINK_TEXT, "round-1").click()
        assert driver.title == "review round-1"
    finally:
        driver.quit()


def test_next_steps_lead_from_bundle_to_review_to_calibration():
    """The loop the README shows: no pack yet -> the review command; a pack without thresholds ->
    the calibrate command; thresholds there -> neither."""
    from badc_mpi.results.bundle.guide import next_steps

    summary = {"counts": {"failed": 0, "not_analysed": 0}}
    files = {"exports": ["exports/raven"], "export_list": [], "review": [], "thresholds": []}
    first = " ".join(next_steps(summary, "/b/golden", files))
    assert "badc-mpi review /b/golden --all-species" in first and "calibrate" not in first
    files["review"] = ["review/1/review.html"]
    second = " ".join(next_steps(summary, "/b/golden", files))
    assert "badc-mpi calibrate /b/golden --verdicts" in second and "badc-mpi review" not in second
    files["thresholds"] = ["thresholds.csv"]
    third = " ".join(next_steps(summary, "/b/golden", files))
    assert "badc-mpi calibrate" not in third and "badc-mpi review" not in third
