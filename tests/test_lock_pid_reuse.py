"""The output lock when the holder's pid lives on in another process (issue 19, item 9): a pid
whose start time differs from the lock's is not the holder; ``--force-unlock`` always works; the
refusal names ``--force-unlock``. Through the real CLI, with a real process holding the pid."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from badc_mpi.storage import lock as lock_mod

from helpers import FAKE_CMD, make_dataset, run_badc, start_time

RUN_ARGS = ["--runner", "command", "--runner-cmd", FAKE_CMD]


@pytest.fixture
def other_process():
    """A live process of this test's own (its pid plays the reused pid)."""
    proc = subprocess.Popen(["sleep", "120"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def plant_lock(out: Path, pid: int, **start: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": pid, "run_id": "old-run", "started_at": "2026-01-01T00:00:00Z", **start}
    (out / lock_mod.LOCK_NAME).write_text(json.dumps(holder))


def run(tmp_path: Path, *extra: str):
    manifest = tmp_path / "ds" / "manifests" / "chunks.csv"
    if not manifest.exists():
        make_dataset(tmp_path / "ds", 1, 2)
    args = ["run", str(manifest), *RUN_ARGS, "--output-dir", str(tmp_path / "out"), "--telemetry-dir", str(tmp_path / "tel")]
    return run_badc([*args, *extra], np=None)


def test_process_start_reads_field_22_and_the_boot_time(other_process):
    start = lock_mod.process_start(other_process.pid)
    assert start is not None and start["pid_start_ticks"] > 0 and start["boot_time_s"] > 0
    assert lock_mod.same_process({"pid": other_process.pid, **start}, start) is True
    moved = {**start, "pid_start_ticks": start["pid_start_ticks"] - 1}
    assert lock_mod.same_process(moved, start) is False
    assert lock_mod.same_process({"pid": other_process.pid}, start) is None  # an old lock: no start recorded


def boot_time_s() -> int:
    (line,) = [x for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime ")]
    return int(line.split()[1])


def test_a_lock_whose_pid_was_reused_is_taken_over(tmp_path, other_process):
    ticks = start_time(other_process.pid)
    assert ticks is not None  # the lock's holder started earlier than the process that has its pid now
    plant_lock(tmp_path / "out", other_process.pid, pid_start_ticks=ticks - 500, boot_time_s=boot_time_s())
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "taking over the stale output lock of run old-run" in proc.stderr
    assert "that pid now belongs to a process started later" in proc.stderr
    assert not (tmp_path / "out" / lock_mod.LOCK_NAME).exists()  # released at the end
    assert other_process.poll() is None  # the other process was only looked at


def test_a_new_lock_records_its_start_and_a_live_holder_is_still_refused(tmp_path, other_process):
    ticks = start_time(other_process.pid)
    plant_lock(tmp_path / "out", other_process.pid, pid_start_ticks=ticks, boot_time_s=boot_time_s())  # the very process
    proc = run(tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "--force-unlock" in proc.stderr and f"pid {other_process.pid}" in proc.stderr
    held = lock_mod.acquire(tmp_path / "mine", "run-x")
    try:
        assert held.info["pid_start_ticks"] == lock_mod.process_start(held.info["pid"])["pid_start_ticks"]
    finally:
        held.release()


def test_an_old_lock_without_a_start_is_held_but_yields_to_force_unlock(tmp_path, other_process):
    plant_lock(tmp_path / "out", other_process.pid)  # written by an older badc-mpi: no start time
    refused = run(tmp_path)
    assert refused.returncode == 4
    assert "--force-unlock" in refused.stderr.splitlines()[-1] or "--force-unlock" in refused.stderr
    forced = run(tmp_path, "--force-unlock")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "taking over the stale output lock of run old-run" in forced.stderr and "--force-unlock" in forced.stderr
