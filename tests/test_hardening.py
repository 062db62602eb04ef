"""Field hardening under a real mpiexec: scratch folders, file-system errors, quarantine, lost ranks.

Each test starts its own run and signals only processes it started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import FAKE_CMD, MPIEXEC, PYTHON, descendants, make_dataset, read_jsonl, run_badc, sidecar, telemetry_files


def command_args(manifest: Path, root: Path, *extra: str, cmd: str = FAKE_CMD) -> list[str]:
    return [
        "run",
        str(manifest),
        "--runner",
        "command",
        "--runner-cmd",
        cmd,
        "--output-dir",
        str(root / "out"),
        "--telemetry-dir",
        str(root / "tel"),
        "--backoff-s",
        "0.05",
        "--backoff-max-s",
        "0.1",
        *extra,
    ]


def only_telemetry(root: Path) -> tuple[Path, list[dict]]:
    (tfile,) = telemetry_files(root / "tel")
    return tfile, read_jsonl(tfile)


def test_scratch_dir_given_is_never_removed_and_default_is_node_local(tmp_path):
    manifest = make_dataset(tmp_path, 2, 3, seconds=0.2)
    given = tmp_path / "shared-tmp"
    given.mkdir()
    (given / "someone-elses-file").write_text("keep me")
    proc = run_badc(command_args(manifest, tmp_path, "--scratch-dir", str(given)), np=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (given / "someone-elses-file").read_text() == "keep me"
    assert sorted(p.name for p in given.iterdir()) == ["someone-elses-file"]  # the run's own folder is gone
    _, events = only_telemetry(tmp_path)
    scratches = {Path(e["scratch_dir"]) for e in events if e["event"] == "worker"}  # each rank's own folder
    assert len(scratches) == 2 and all(given in p.parents and p.parent.name.startswith("badc-mpi-") for p in scratches)

    node_local = tmp_path / "node-local"  # what $SLURM_TMPDIR / $TMPDIR would be on a compute node
    node_local.mkdir()
    again = tmp_path / "second"
    proc = run_badc(command_args(manifest, again), np=2, env={"TMPDIR": str(node_local), "SLURM_TMPDIR": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, events = only_telemetry(again)
    scratches = {Path(e["scratch_dir"]) for e in events if e["event"] == "worker"}
    assert len(scratches) == 2 and all(node_local in p.parents for p in scratches)
    assert list(node_local.iterdir()) == []  # removed what it created, nothing else was there
    assert not [p for p in (again / "out").rglob("*") if "scratch" in p.name]  # no scratch in the output tree


def test_file_system_error_fails_the_chunk_not_the_job(tmp_path):
    """A folder that cannot be created (here: a file in its way, as root cannot be denied access)
    fails that recording's attempts as 'output'; the other chunks finish and the job ends cleanly."""
    manifest = make_dataset(tmp_path, 3, 3, seconds=0.2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "rec001").write_text("a file where the recording's folder should go")
    proc = run_badc(
        command_args(manifest, tmp_path, "--max-retries", "1", "--quarantine-after", "0", "--per-chunk-outputs"), np=2
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # some chunks failed; no abort (70), no traceback
    assert "Traceback" not in proc.stderr
    tfile, events = only_telemetry(tmp_path)
    finals = {e["chunk_id"]: e for e in events if e["event"] in ("success", "failure")}
    assert len(finals) == 9
    bad = {k: e for k, e in finals.items() if k.startswith("rec001_")}
    assert bad and all(e["event"] == "failure" and e["failure_class"] == "output" for e in bad.values())
    assert all("file-system error" in e["reason"] for e in bad.values())
    assert all(e["event"] == "success" for k, e in finals.items() if not k.startswith("rec001_"))
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    assert summary["state"] == "finished" and summary["counts"]["failed"] == 3
    assert not (out / ".badc-mpi.lock").exists()


def test_a_store_folder_that_cannot_be_made_stops_before_the_run(tmp_path):
    manifest = make_dataset(tmp_path, 1, 2, seconds=0.2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "detections").write_text("a file where the detection store should go")
    proc = run_badc(command_args(manifest, tmp_path), np=None)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if "detection store folder" in x]
    assert str(tmp_path / "out" / "detections") in line and "--output-dir" in proc.stderr
    assert not (tmp_path / "tel").exists() or not list((tmp_path / "tel").glob("*.jsonl"))


def test_a_rank_that_keeps_failing_is_quarantined_and_its_chunks_finish_elsewhere(tmp_path):
    manifest = make_dataset(tmp_path, 2, 6, seconds=0.2)
    bad_rank = f"{FAKE_CMD} --fail-if-output-contains=-r1/"  # rank 1's scratch: one bad GPU
    proc = run_badc(command_args(manifest, tmp_path, "--max-retries", "3", "--quarantine-after", "2", cmd=bad_rank), np=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tfile, events = only_telemetry(tmp_path)
    finals = [e for e in events if e["event"] in ("success", "failure")]
    assert len(finals) == 12 and all(e["event"] == "success" and e["rank"] == 0 for e in finals)
    retries = [e for e in events if e["event"] == "retry"]
    assert retries and all(e["rank"] == 1 for e in retries)
    # held after 2 undecided failures (no new work while rank 0 retries them), set aside once both
    # succeeded on rank 0: at most its window more
    assert 2 <= len({e["chunk_id"] for e in retries}) <= 4
    workers = json.loads(sidecar(tfile, ".summary.json").read_text())["workers"]
    (bad,) = [w for w in workers.values() if w["status"] != "ok"]
    assert bad["status"] == "quarantined" and "2 chunks failed here and then succeeded on other ranks" in bad["note"]
    assert "quarantined" in proc.stdout  # the final table says so


def test_every_rank_failing_on_its_disk_stops_cleanly_with_summary_and_resume(tmp_path):
    """A full disk on every node ('output' failures are the rank's, never the chunk's): each rank is
    quarantined, the run stops (exit 75) with its summary written and the resume command printed,
    instead of failing every chunk of the campaign; the resume after the fix runs them all."""
    manifest = make_dataset(tmp_path, 3, 4, seconds=0.2)
    out = tmp_path / "out"
    out.mkdir()
    for rec in ("rec000", "rec001", "rec002"):
        (out / rec).write_text("in the way: every attempt fails as 'output' (like ENOSPC)")
    args = command_args(manifest, tmp_path, "--quarantine-after", "2", "--per-chunk-outputs")
    proc = run_badc(args, np=2)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert "no rank is left to work" in proc.stdout and "resume with:" in proc.stdout
    tfile, _ = only_telemetry(tmp_path)
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    assert summary["state"] == "stopped" and summary["counts"]["success"] == 0
    assert summary["counts"]["pending"] > 0  # left for the resume, not failed
    assert {w["status"] for w in summary["workers"].values()} == {"quarantined"}
    assert not (out / ".badc-mpi.lock").exists()
    for rec in ("rec000", "rec001", "rec002"):
        (out / rec).unlink()  # the disk fixed
    again = run_badc([*args, "--resume"], np=2)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]


def _rank_pid(events: list[dict], rank: int) -> int | None:
    if not any(e["event"] == "start" and e["rank"] == rank for e in events):
        return None  # not working yet
    pids = {e["pid"] for e in events if e["event"] == "worker" and e["rank"] == rank}
    return pids.pop() if pids else None


def _stop_rank_1_once_it_works(proc, tel: Path, timeout_s: float = 60) -> int:  # noqa: ANN001
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = telemetry_files(tel) if tel.exists() else []
        if files:
            from test_hawkears_mpi import read_jsonl_safe

            pid = _rank_pid(read_jsonl_safe(files[0]), 1)
            if pid is not None and pid in descendants(proc.pid):
                os.kill(pid, signal.SIGSTOP)  # a hung node: the rank answers nothing any more
                return pid
        time.sleep(0.05)
    raise AssertionError("rank 1 never started a chunk")


def _run_and_stop_rank_1(tmp_path: Path, *extra: str) -> tuple[int, str, str, int]:
    import signal
    import subprocess

    manifest = make_dataset(tmp_path, 2, 8, seconds=0.2)
    slow = f"{FAKE_CMD} --sleep-s 0.5"
    cmd = [MPIEXEC, "-n", "2", PYTHON, "-m", "badc_mpi", *command_args(manifest, tmp_path, *extra, cmd=slow)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stopped = None
    try:
        stopped = _stop_rank_1_once_it_works(proc, tmp_path / "tel")
        out, err = proc.communicate(timeout=120)
    finally:
        for pid in ({stopped} if stopped else set()) | descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err, stopped


def test_a_silent_rank_is_lost_and_the_run_finishes_without_it(tmp_path):
    code, out, err, _ = _run_and_stop_rank_1(tmp_path, "--silent-after-s", "3")
    assert code == 0, err[-3000:]
    assert "were lost; ending the job" in err
    tfile, events = only_telemetry(tmp_path)
    finals = {e["chunk_id"]: e for e in events if e["event"] in ("success", "failure")}
    assert len(finals) == 16 and all(e["event"] == "success" for e in finals.values())
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    (lost,) = [w for w in summary["workers"].values() if w["status"] != "ok"]
    assert lost["status"] == "lost" and "silent" in lost["note"] and summary["counts"]["success"] == 16


def test_a_stuck_chunk_past_its_deadline_goes_elsewhere(tmp_path):
    code, out, err, _ = _run_and_stop_rank_1(tmp_path, "--timeout-s", "2", "--deadline-margin-s", "1", "--silent-after-s", "600")
    assert code == 0, err[-3000:]
    tfile, events = only_telemetry(tmp_path)
    lost = [e for e in events if e.get("failure_class") == "lost"]
    assert lost and all(e["event"] == "retry" for e in lost)  # counted as a failed attempt, retried
    finals = {e["chunk_id"]: e for e in events if e["event"] in ("success", "failure")}
    assert len(finals) == 16 and all(e["event"] == "success" for e in finals.values())
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    (gone,) = [w for w in summary["workers"].values() if w["status"] != "ok"]
    assert gone["status"] == "lost" and "stuck" in gone["note"]


def test_a_rank_that_never_joins_is_lost_at_start_up(tmp_path):
    manifest = make_dataset(tmp_path, 1, 4, seconds=0.2)
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, time\n"
        "from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.Get_rank() == 1:\n"
        "    time.sleep(120)  # a node that never comes up\n"
        "from badc_mpi.__main__ import _main\n"
        "sys.exit(_main())\n"
    )
    import subprocess

    args = command_args(manifest, tmp_path, "--startup-timeout-s", "3")
    proc = subprocess.run(
        [MPIEXEC, "-n", "2", PYTHON, str(driver), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tfile, events = only_telemetry(tmp_path)
    assert len([e for e in events if e["event"] == "success"]) == 4
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    (lost,) = [w for w in summary["workers"].values() if w["status"] != "ok"]
    assert lost["status"] == "lost" and "did not join" in lost["note"]


def test_resume_never_mixes_settings_silently_and_finds_work_under_any_manifest_name(tmp_path):
    manifest = make_dataset(tmp_path, 2, 3, seconds=0.2)
    first = run_badc(command_args(manifest, tmp_path), np=2)
    assert first.returncode == 0, first.stderr[-2000:]
    # the same chunks under another manifest name: earlier work is found by output folder and keys
    renamed = manifest.with_name("renamed.csv")
    renamed.write_text(manifest.read_text())
    again = run_badc(command_args(renamed, tmp_path, "--resume"), np=2)
    assert again.returncode == 0 and "6 skipped" in again.stdout, again.stdout + again.stderr[-2000:]
    # other settings (here the runner's command; for HawkEars: versions, models, --min-score, ...)
    changed = f"{FAKE_CMD} --min-score 0.5"
    refused = run_badc(command_args(manifest, tmp_path, "--resume", cmd=changed), np=2)
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("badc-mpi: error")]
    assert len(errors) == 1 and "done with other settings" in errors[0] and "template" in errors[0]
    assert "--rerun-changed" in errors[0] and "--accept-mixed" in errors[0]
    kept = run_badc(command_args(manifest, tmp_path, "--resume", "--accept-mixed", cmd=changed), np=2)
    assert kept.returncode == 0 and "6 kept although done with other settings" in kept.stdout, kept.stderr[-2000:]
    rerun = run_badc(command_args(manifest, tmp_path, "--resume", "--rerun-changed", cmd=changed), np=2)
    assert rerun.returncode == 0 and "6 rerun because they were done with other settings" in rerun.stdout
    # and now the new settings' run is the one found: a plain resume with them skips everything
    plain = run_badc(command_args(manifest, tmp_path, "--resume", cmd=changed), np=2)
    assert plain.returncode == 0 and "6 skipped" in plain.stdout, plain.stderr[-2000:]


def _one_error(proc) -> str:  # noqa: ANN001
    errors = [line for line in proc.stderr.splitlines() if line.startswith("badc-mpi: error")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


def test_unwritable_output_or_telemetry_folder_is_a_one_line_error_before_the_run(tmp_path):
    manifest = make_dataset(tmp_path, 1, 2, seconds=0.2)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = command_args(manifest, tmp_path)
    args[args.index("--output-dir") + 1] = str(blocker / "out")
    error = _one_error(run_badc(args, np=None))
    assert "output folder" in error and "cannot be written" in error and "--output-dir" in error
    args = command_args(manifest, tmp_path)
    args[args.index("--telemetry-dir") + 1] = "/proc/badc-mpi-telemetry"  # not writable, even for root
    error = _one_error(run_badc(args, np=None))
    assert "telemetry folder" in error and "--telemetry-dir" in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing was written


def test_long_ids_work_and_names_too_long_for_the_file_system_stop_before_the_run(tmp_path, monkeypatch):
    """Two valid 130-character ids once made a 255+ byte scratch name (ENAMETOOLONG aborted the job):
    scratch names are short now. What can still be too long is refused before the run."""
    manifest = make_dataset(tmp_path, 1, 2, seconds=0.2)
    lines = manifest.read_text().splitlines()
    first = lines[1].split(",")
    first[0], first[1] = "r" * 130, "c" * 130
    (tmp_path / "artifacts" / "chunks" / first[0]).mkdir(parents=True)
    (tmp_path / "artifacts" / "chunks" / first[0] / ".chunk_status.json").write_text('{"status": "completed"}')
    manifest.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    ok = run_badc(command_args(manifest, tmp_path, "--per-chunk-outputs"), np=None)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "out" / first[0] / f"{first[1]}.detections.jsonl").exists()
    long_name = manifest.with_name("m" * 230 + ".csv")  # telemetry names add ~36 bytes to its stem
    long_name.write_text(manifest.read_text())
    error = _one_error(run_badc(command_args(long_name, tmp_path / "again"), np=None))
    assert "makes telemetry file names of" in error and "rename the manifest" in error
    assert not (tmp_path / "again").exists()  # nothing was written


def test_chunk_ids_over_a_smaller_name_limit_are_refused(monkeypatch, tmp_path):
    from badc_mpi.errors import UsageError
    from badc_mpi.inputs import locations

    from helpers import make_chunk

    monkeypatch.setattr(locations, "name_max", lambda folder: 143)  # e.g. eCryptfs
    chunks = [make_chunk(chunk_id="c" * 90), make_chunk(chunk_id="c" * 110, line=7)]
    with pytest.raises(UsageError) as info:
        locations.check_name_lengths(chunks, str(tmp_path), str(tmp_path), "manifest")
    assert "line 7" in str(info.value) and "limit of 143" in str(info.value) and "at most 104" in str(info.value)
    locations.check_name_lengths(chunks[:1], str(tmp_path), str(tmp_path), "manifest")  # 90 + 39 fits
