"""`badc-mpi monitor` on a young run and a dead one (issue 21), through the real CLI on a real
dry run's telemetry: the total comes from the run header (the first line), so progress and ETA
show before the first summary; a run whose rank 0 is gone is called that, with the resume
command, and --follow ends instead of waiting forever."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from badc_mpi.monitor.liveness import SILENT_S

from helpers import PYTHON, make_dataset, run_own


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """One real dry run (its telemetry and summary), copied and edited by each test."""
    tmp_path = tmp_path_factory.mktemp("liveness")
    manifest = make_dataset(tmp_path / "ds", 2, 3)
    run = run_own(
        [PYTHON, "-m", "badc_mpi", "run", str(manifest), "--dry-run", "--no-chunk-check",
         "--telemetry-dir", str(tmp_path / "tel"), "--output-dir", str(tmp_path / "out")],
        timeout_s=120, cwd=tmp_path / "ds",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (telemetry,) = [p for p in (tmp_path / "tel").glob("*.jsonl") if not p.name.endswith(".ledger.jsonl")]
    return manifest, telemetry, telemetry.read_text().splitlines()


def _monitor(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_own([PYTHON, "-m", "badc_mpi", "monitor", str(path), *args], timeout_s=60)


def test_the_total_and_eta_come_from_the_first_line(tmp_path, real_run):
    _, telemetry, lines = real_run
    lines = list(lines)
    header = json.loads(lines[0])
    assert header["event"] == "run" and header["total"] == 6 and header["skipped"] == 0
    young = tmp_path / "young" / telemetry.name  # the same run before its first summary: no sidecar yet
    young.parent.mkdir()
    lines[0] = json.dumps({**header, "pid": os.getpid()})  # rank 0 still running: this process stands in
    young.write_text(lines[0] + "\n")
    out = _monitor(young, "--once").stdout
    assert "0 / 6 chunks (0.0%)" in out and "total not known" not in out and "DEAD" not in out
    successes = [i for i, ln in enumerate(lines) if json.loads(ln).get("event") == "success"]
    young.write_text("\n".join(lines[: successes[2] + 1]) + "\n")  # three chunks done, still no summary
    out = _monitor(young, "--once").stdout
    assert "3 / 6 chunks (50.0%)" in out
    eta = out.split("ETA ")[1].split("\n")[0]
    assert eta != "-" and "gone" not in eta, out


def test_a_run_whose_rank_0_died_is_called_dead_with_its_resume_command(tmp_path, real_run):
    manifest, telemetry, lines = real_run
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that ran here and is gone
    header = {**json.loads(lines[0]), "host": socket.gethostname(), "pid": dead.pid}
    crashed = tmp_path / "crashed" / telemetry.name
    crashed.parent.mkdir()
    crashed.write_text("\n".join([json.dumps(header), *lines[1:4]]) + "\n")
    summary = json.loads(Path(str(telemetry)[: -len(".jsonl")] + ".summary.json").read_text())
    summary["state"] = "running"  # the last snapshot rank 0 wrote before it died
    Path(str(crashed)[: -len(".jsonl")] + ".summary.json").write_text(json.dumps(summary))
    done = _monitor(crashed, "--follow", "--interval-s", "0.2")  # ends by itself: the run will not go on
    assert done.returncode == 0, done.stderr
    assert f"DEAD: rank 0 (pid {dead.pid} on {socket.gethostname()}) is gone" in done.stdout
    assert "running?" not in done.stdout and "ETA - (rank 0 gone)" in done.stdout
    resume = done.stdout.split("resume    ")[1].split("\n")[0]
    assert resume.startswith(f"make resume MANIFEST={manifest}") and "--resume" in resume
    assert f"--telemetry-dir {telemetry.parent}" in resume
    assert f"--telemetry-dir {telemetry.parent}" in resume.split("  (or:")[0]  # make resume too: into the run's own folders


def test_a_silent_run_on_another_host_is_called_gone_after_minutes(tmp_path, real_run):
    _, telemetry, lines = real_run
    header = {**json.loads(lines[0]), "host": "some-other-node"}
    quiet = tmp_path / "quiet" / telemetry.name
    quiet.parent.mkdir()
    quiet.write_text("\n".join([json.dumps(header), *lines[1:4]]) + "\n")
    summary = Path(str(quiet)[: -len(".jsonl")] + ".summary.json")
    summary.write_text(json.dumps({"run_id": header["run_id"], "state": "running", "counts": {"total": 6}}))
    assert "DEAD" not in _monitor(quiet, "--once").stdout  # just written: alive as far as we know
    old = time.time() - SILENT_S - 60
    for path in (quiet, summary):
        os.utime(path, (old, old))
    out = _monitor(quiet, "--once").stdout
    assert "DEAD: rank 0 seems gone: no summary nor telemetry for 4 min" in out and "make resume MANIFEST=" in out
