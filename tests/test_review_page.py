"""``review.html`` in a real headless Chromium driven by Selenium and Debian's chromium-driver:
load from file://, play a clip, verdicts by click and by key, reload (kept), export verdicts.csv.
Skipped only without chromium, chromedriver or selenium, outside CI (CI=true fails instead)."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

from test_review import make_review_bundle

from badc_mpi.cli import main

from ci_rules import require_or_skip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _driver(downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    opts.binary_location = str(CHROMIUM)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(str(DRIVER)), options=opts)


def _wait(predicate, timeout_s: float = 20.0):
    end = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.1)


def test_review_page_plays_keeps_and_exports_verdicts(tmp_path):
    try:
        import selenium  # noqa: F401

        have_selenium = True
    except ImportError:
        have_selenium = False
    require_or_skip(
        CHROMIUM is not None and DRIVER is not None and have_selenium,
        "no chromium, chromedriver or selenium: `make browser` installs Debian's chromium and chromium-driver, "
        "`make install` selenium",
    )
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    bundle = make_review_bundle(tmp_path)
    assert main(["review", str(bundle), "--all-species", "--per-species", "2", "--seed", "5"]) == 0
    pack = bundle / "review" / "1"
    with open(pack / "review.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    d = _driver(downloads)
    try:
        d.get((pack / "review.html").as_uri())
        assert _wait(lambda: d.execute_script("return document.body.dataset.ready === '1'"))
        items = d.find_elements(By.CSS_SELECTOR, ".item")
        assert [i.get_attribute("data-id") for i in items] == [r["detection_id"] for r in rows]
        played = d.execute_async_script(
            "const done = arguments[arguments.length - 1]; const a = document.querySelector('audio');"
            "a.muted = true; a.play().then(() => setTimeout(() => done([a.paused, a.currentTime, a.duration]), 400),"
            " (e) => done(String(e)));"
        )
        assert isinstance(played, list) and played[0] is False and played[1] > 0 and played[2] > 1.0, played
        items[0].find_element(By.CSS_SELECTOR, ".b-wrong").click()  # by click; the first item is now current
        ActionChains(d).send_keys("j").perform()  # to the second
        ActionChains(d).send_keys("c").perform()  # second: correct, moves on
        ActionChains(d).send_keys("u").perform()  # third: unsure
        expected = [(rows[0], "wrong"), (rows[1], "correct"), (rows[2], "unsure")]
        d.refresh()
        assert _wait(lambda: d.execute_script("return document.body.dataset.ready === '1'"))
        items = d.find_elements(By.CSS_SELECTOR, ".item")
        assert [i.get_attribute("data-verdict") for i in items[:4]] == ["wrong", "correct", "unsure", None]
        assert d.find_element(By.ID, "overall").text == f"3 / {len(rows)} reviewed"
        first = d.find_element(By.CSS_SELECTOR, "section.species .progress").text
        assert first.endswith(f"/ {sum(1 for r in rows if r['species_code'] == rows[0]['species_code'])} reviewed")
        d.find_element(By.ID, "export").click()
        exported = _wait(lambda: (downloads / "verdicts.csv").exists() and (downloads / "verdicts.csv").read_text())
        text = d.execute_script("return window.reviewVerdictsCsv()")
    finally:
        d.quit()
    want = "detection_id,species_code,verdict\n" + "".join(f"{r['detection_id']},{r['species_code']},{v}\n" for r, v in expected)
    assert exported == text == want
