"""Results one can trust, through the real CLI and real mpiexec (issue 19, items 4, 6 and 8):

- a bundle holds one fingerprint: after a ``--rerun-changed`` at another ``--min-score`` stopped
  half way, the chunks it did not reach are ``stale`` (not counted, listed); ``--accept-mixed``
  keeps them with a banner, and an export of that bundle without it leaves them out;
- ``bundle MANIFEST`` (and the sbatch scripts' bundle step) finds a retry through ``X.failed.csv``
  (by output folder and chunk keys): the retried chunk is analysed, with its detections;
- a re-export replaces exactly the previous export's files: a dropped focus species' history
  goes, a user's own file in the folder stays.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from test_export import make_campaign
from test_sbatch import job_env, sbatch_like
from test_sbatch import run_args as sbatch_run_args

from badc_mpi.cli import main

from helpers import (
    FAKE_CMD,
    MPIEXEC,
    PYTHON,
    REPO,
    make_dataset,
    run_badc,
    stop_tree,
    stopped_exit_ok,
    store_records,
    telemetry_files,
)


def _run_args(manifest: Path, root: Path, template: str, *extra: str) -> list[str]:
    return [
        "run",
        str(manifest),
        "--runner",
        "command",
        "--runner-cmd",
        template,
        "--output-dir",
        str(root / "out"),
        "--telemetry-dir",
        str(root / "tel"),
        "--progress-interval-s",
        "3600",
        *extra,
    ]


def _table(folder: Path, name: str) -> list[dict]:
    return pq.read_table(folder / f"{name}.parquet").to_pylist()


def _stopped_half_way(manifest: Path, root: Path, template: str, successes: int, *extra: str) -> None:
    """A run started with mpiexec and sent SIGTERM once ``successes`` chunks succeeded."""
    before = set(telemetry_files(root / "tel"))
    cmd = [MPIEXEC, "-n", "2", PYTHON, "-m", "badc_mpi", *_run_args(manifest, root, template, *extra)]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            new = [p for p in telemetry_files(root / "tel") if p not in before]
            if new and new[0].read_text().count('"event":"success"') >= successes:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)  # mpiexec forwards it to every rank
        _, err = proc.communicate(timeout=90)
    except BaseException:
        stop_tree(proc)
        raise
    assert stopped_exit_ok(proc.returncode), f"exit {proc.returncode}\n" + err[-2000:]


def test_a_half_done_rerun_at_other_settings_leaves_the_rest_stale_unless_accept_mixed(tmp_path, capsys):
    manifest = make_dataset(tmp_path, 2, 3, seconds=0.2)
    first = run_badc(_run_args(manifest, tmp_path, FAKE_CMD), np=2)
    assert first.returncode == 0, first.stderr[-2000:]
    # the new settings: --min-score 0.95; rec001's chunks hang, so the rerun stops with them undone
    strict = FAKE_CMD + " --min-score 0.95 --hang-on rec001"
    _stopped_half_way(manifest, tmp_path, strict, 3, "--resume", "--rerun-changed", "--grace-s", "3")
    ledgers = sorted((tmp_path / "tel").glob("*.ledger.jsonl"), key=lambda p: json.loads(p.open().readline())["created_at"])
    old_run, new_run = (json.loads(p.open().readline())["run_id"] for p in ledgers)

    bundle = tmp_path / "b"
    assert main(["bundle", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(bundle)]) == 0
    assert "3 stale" in capsys.readouterr().out
    chunks = {c["chunk_id"]: c for c in _table(bundle, "chunks")}
    assert Counter(c["status"] for c in chunks.values()) == {"analysed": 3, "stale": 3}
    assert all(c["run_id"] == new_run for c in chunks.values() if c["status"] == "analysed")
    assert all(c["run_id"] == old_run and c["detections"] is None for c in chunks.values() if c["status"] == "stale")
    assert {c["chunk_id"][:6] for c in chunks.values() if c["status"] == "stale"} == {"rec001"}
    fingerprints = {r["run_id"]: r["fingerprint"] for r in _table(bundle, "runs")}
    assert fingerprints[old_run] != fingerprints[new_run] and None not in fingerprints.values()
    dets = _table(bundle, "detections")
    assert {(d["run_id"], d["fingerprint"]) for d in dets} <= {(new_run, fingerprints[new_run])}
    assert all(d["confidence"] >= 0.95 for d in dets)  # none of the old 0.7 detections
    summary = json.loads((bundle / "summary.json").read_text())
    assert (summary["counts"]["stale"], summary["counts"]["analysed"], summary["counts"]["mixed"]) == (3, 3, 0)
    assert summary["fingerprint"]["id"] == fingerprints[new_run]
    page = (bundle / "report.html").read_text()
    assert "id='stale-note'" in page and 'id="mixed-banner"' not in page
    assert all(cid in page for cid, c in chunks.items() if c["status"] == "stale")  # listed in the table

    mixed = tmp_path / "m"
    args = ["bundle", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(mixed), "--accept-mixed"]
    assert main(args) == 0
    chunks = {c["chunk_id"]: c for c in _table(mixed, "chunks")}
    assert Counter(c["status"] for c in chunks.values()) == {"analysed": 6}
    summary = json.loads((mixed / "summary.json").read_text())
    assert (summary["counts"]["stale"], summary["counts"]["mixed"]) == (0, 3)
    assert 'id="mixed-banner"' in (mixed / "report.html").read_text()
    per_run = {(d["run_id"], d["fingerprint"]) for d in _table(mixed, "detections")}
    assert (old_run, fingerprints[old_run]) in per_run  # each row says which settings made it

    # an export of the mixed bundle keeps one fingerprint unless told otherwise
    assert main(["export", str(mixed), "--format", "raven", "--output", str(tmp_path / "x1")]) == 0
    assert sorted(p.name[:6] for p in (tmp_path / "x1" / "raven").iterdir()) == ["rec000"]
    assert main(["export", str(mixed), "--format", "raven", "--output", str(tmp_path / "x2"), "--accept-mixed"]) == 0
    assert sorted(p.name[:6] for p in (tmp_path / "x2" / "raven").iterdir()) == ["rec000", "rec001"]


def test_bundle_of_a_manifest_counts_its_retry_through_the_failed_csv(tmp_path):
    manifest = make_dataset(tmp_path, 2, 3, seconds=0.2)
    fail_file = tmp_path / "fail.txt"
    fail_file.write_text("rec001_chunk_200_400\n")
    template = f"{FAKE_CMD} --fail-file {fail_file}"  # the same settings in both runs
    first = run_badc(_run_args(manifest, tmp_path, template, "--max-retries", "0"), np=2)
    assert first.returncode == 1, first.stderr[-2000:]
    (failed_csv,) = (tmp_path / "tel").glob("*.failed.csv")
    fail_file.write_text("")
    retry = run_badc(_run_args(failed_csv, tmp_path, template), np=2, cwd=tmp_path)
    assert retry.returncode == 0, retry.stderr[-2000:]
    heads = [json.loads(p.open().readline()) for p in (tmp_path / "tel").glob("*.ledger.jsonl")]
    retry_run = max(heads, key=lambda h: h["created_at"])
    assert retry_run["manifests"] == [str(failed_csv)]

    bundle = tmp_path / "b"
    assert main(["bundle", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(bundle)]) == 0
    chunks = {c["chunk_id"]: c for c in _table(bundle, "chunks")}
    assert Counter(c["status"] for c in chunks.values()) == {"analysed": 6}
    assert all(c["in_manifest"] for c in chunks.values())
    retried = chunks["rec001_chunk_200_400"]
    stored = store_records(tmp_path / "out")[retry_run["run_id"]]["rec001/rec001_chunk_200_400"][0]
    assert retried["run_id"] == retry_run["run_id"] and retried["detections"] == stored["n"]
    dets = [d for d in _table(bundle, "detections") if d["chunk_id"] == "rec001_chunk_200_400"]
    assert sorted(d["label"] for d in dets) == sorted(stored["label"])
    summary = json.loads((bundle / "summary.json").read_text())
    assert summary["counts"]["runs"] == 2 and summary["counts"]["failed"] == 0 and summary["problems"] == []
    # every run of the telemetry folder: the retry's X.failed.csv repeats X's rows, counted once, no note
    assert main(["bundle", str(tmp_path / "tel"), "--dest", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert (summary["counts"]["chunks"], summary["counts"]["analysed"], summary["problems"]) == (6, 6, [])


def test_a_re_export_replaces_exactly_the_files_of_the_previous_one(tmp_path):
    manifest = make_campaign(tmp_path)
    exp = tmp_path / "exp"
    common = ["--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"), "--output", str(exp)]
    assert main(["export", str(manifest), "--format", "raven", "--focus-species", "RUGR,OVEN", *common]) == 0
    hist = exp / "histories"
    assert (hist / "RUGR.csv").exists() and (hist / "OVEN.csv").exists()
    mine = exp / "histories" / "my_notes.txt"
    mine.write_text("the user's own file\n")
    first = json.loads((exp / "export.json").read_text())
    assert "histories/OVEN.csv" in first["files"] and all(not Path(f).is_absolute() for f in first["files"])

    assert main(["export", str(manifest), "--format", "tables", "--focus-species", "RUGR", *common]) == 0
    assert (hist / "RUGR.csv").exists() and not (hist / "OVEN.csv").exists()  # the dropped species' history is gone
    assert not (exp / "raven").exists()  # the dropped format's files and their folder too
    assert mine.read_text() == "the user's own file\n"  # never touched
    listing = json.loads((exp / "export.json").read_text())
    on_disk = sorted(str(p.relative_to(exp)) for p in exp.rglob("*") if p.is_file() and p.name != "export.json")
    assert sorted([*listing["files"], "histories/my_notes.txt"]) == on_disk  # it lists every file it wrote
    assert "histories/OVEN.csv" in listing["removing"]


def test_the_sbatch_bundle_step_counts_a_retry_through_the_failed_csv(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 2, 2, seconds=0.2)
    fail_file = tmp_path / "fail.txt"
    fail_file.write_text("rec001_chunk_200_400\n")
    args = [str(manifest), "--", *sbatch_run_args("--fail-file", str(fail_file)), "--max-retries", "0"]
    env = job_env(tmp_path, DATASET=str(tmp_path / "ds"))
    first = sbatch_like(REPO / "slurm" / "infer.sbatch", args, env)
    assert first.returncode == 1 and "1 failed" in first.stdout, first.stdout + first.stderr
    (failed_csv,) = (tmp_path / "ds" / "data" / "telemetry" / "infer").glob("*.failed.csv")
    fail_file.write_text("")
    retry = run_badc(["run", str(failed_csv), *args[2:]], np=None, cwd=tmp_path / "ds")  # as the run's message says
    assert retry.returncode == 0, retry.stderr[-2000:]
    again = sbatch_like(REPO / "slurm" / "infer.sbatch", args, env)  # resumes (nothing left), then bundles
    assert again.returncode == 0, again.stdout + again.stderr
    summary = json.loads((tmp_path / "ds" / "artifacts" / "aggregate" / "chunks" / "summary.json").read_text())
    assert (summary["counts"]["analysed"], summary["counts"]["failed"]) == (4, 0), summary["counts"]
