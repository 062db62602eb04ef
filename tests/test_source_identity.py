"""Resume and bundles count a record only for the audio it was made from (issue 19, item 3).

Recording ids are paths below the chunker's ROOT, so two studies with one layout give the same
ids: the chunker now refuses to take over another recording's ``.chunk_status.json`` (naming
both), and every ledger line names its source (``p``, the chunk's input path): a manifest that
points the same keys at other audio is run again by ``--resume`` and is ``not_analysed`` in a
bundle until then. Ledger lines of older versions (no ``p``) are matched by key, as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from badc_mpi.cli import main
from badc_mpi.storage.ledger import LEDGER_SUFFIX

from helpers import FAKE_CMD, make_dataset, run_badc

RUN_ARGS = ["--runner", "command", "--runner-cmd", FAKE_CMD]


def tone(path: Path, seconds: float, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (np.sin(np.arange(int(seconds * rate)) * 0.05) * 8000).astype(np.int16), rate, subtype="PCM_16")


def test_two_roots_with_one_layout_cannot_share_a_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for study in ("studyA", "studyB"):
        tone(tmp_path / study / "A01" / "20240601_050000.WAV", 4)
    sites = tmp_path / "sites.csv"
    sites.write_text("location,time_zone\nA01,America/Edmonton\n")
    chunks = tmp_path / "ds" / "artifacts" / "chunks"
    common = ["--layout", "audiomoth", "--sites", str(sites), "--chunks-dir", str(chunks)]
    out_a, out_b = tmp_path / "ds" / "manifests" / "a.csv", tmp_path / "ds" / "manifests" / "b.csv"
    assert main(["chunk", str(tmp_path / "studyA"), *common, "--out", str(out_a)]) == 0
    (status,) = chunks.rglob(".chunk_status.json")
    before = status.read_text()
    capsys.readouterr()
    assert main(["chunk", str(tmp_path / "studyB"), *common, "--out", str(out_b)]) == 2
    said = capsys.readouterr()
    text = said.out + said.err
    assert str(tmp_path / "studyA" / "A01" / "20240601_050000.WAV") in text
    assert str(tmp_path / "studyB" / "A01" / "20240601_050000.WAV") in text
    assert status.read_text() == before and not out_b.exists()  # nothing written
    assert main(["chunk", str(tmp_path / "studyA"), *common, "--out", str(out_a), "--force"]) == 0  # its own: fine


def point_at_copies(manifest: Path, folder: str) -> None:
    """The same keys, their audio copied to ``folder`` (another recording, as far as anyone knows)."""
    ds = manifest.parent.parent
    shutil.copytree(ds / "audio", ds / folder)
    manifest.write_text(manifest.read_text().replace(",../audio/", f",../{folder}/"))


def bundle_summary(source: Path, dest: Path, tel: Path) -> dict:
    assert main(["bundle", str(source), "--telemetry-dir", str(tel), "--dest", str(dest), "--force"]) == 0
    (summary,) = dest.rglob("summary.json")
    return json.loads(summary.read_text())


def test_the_same_keys_on_other_audio_are_run_again_and_never_counted(tmp_path):
    ds = tmp_path / "ds"
    manifest = make_dataset(ds, 1, 2)
    base = ["run", str(manifest), *RUN_ARGS, "--telemetry-dir", str(tmp_path / "tel"), "--output-dir", str(tmp_path / "out")]
    first = run_badc(base, np=None, cwd=ds)
    assert first.returncode == 0, first.stderr[-2000:]
    (ledger,) = (tmp_path / "tel").glob(f"*{LEDGER_SUFFIX}")
    point_at_copies(manifest, "audio2")
    summary = bundle_summary(manifest, tmp_path / "b1", tmp_path / "tel")  # the old records were made from other audio
    assert summary["counts"]["analysed"] == 0 and summary["counts"]["not_analysed"] == 2
    again = run_badc([*base, "--resume"], np=1, cwd=ds)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-2000:]
    assert (
        "0 skipped (done earlier), 2 to run" in said and "2 rerun because their records were made from another audio file" in said
    )
    summary = bundle_summary(manifest, tmp_path / "b2", tmp_path / "tel")
    assert summary["counts"]["analysed"] == 2
    lines = [json.loads(x) for x in ledger.read_text().splitlines()[1:]]  # each line names its audio
    assert {line["p"] for line in lines} == {str(ds / "audio" / f"{line['c']}.wav") for line in lines}


def test_ledger_lines_without_a_source_are_matched_by_key_as_before(tmp_path):
    ds = tmp_path / "ds"
    manifest = make_dataset(ds, 1, 2)
    base = ["run", str(manifest), *RUN_ARGS, "--telemetry-dir", str(tmp_path / "tel"), "--output-dir", str(tmp_path / "out")]
    assert run_badc(base, np=None, cwd=ds).returncode == 0
    (ledger,) = (tmp_path / "tel").glob(f"*{LEDGER_SUFFIX}")
    head, *records = ledger.read_text().splitlines()
    old = [json.dumps({k: v for k, v in json.loads(x).items() if k != "p"}, separators=(",", ":")) for x in records]
    ledger.write_text("\n".join([head, *old]) + "\n")  # as an older badc-mpi wrote it
    again = run_badc([*base, "--resume"], np=None, cwd=ds)
    assert again.returncode == 0 and "2 skipped (done earlier), 0 to run" in again.stdout + again.stderr
