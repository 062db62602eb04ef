"""A healthy rank whose start-up is slow is not declared lost: start-up is governed by
``--startup-timeout-s`` alone, the silence limit starts with the rank's first message.

The slow step is a real one: a worker builds its HawkEars runner (hashing every checkpoint of the
data root) in its main thread, before its first heartbeat. On a slow shared file system that takes
minutes; here rank 1's data root holds a 2-GB (sparse) extra checkpoint and the silence limit is 3 s.
Before the fix rank 1 was set aside as ``lost`` (silent) while it hashed, and the job ended with
``MPI_Abort``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import MPIEXEC, PYTHON, hawkears_tiny, make_dataset, read_jsonl, run_own, sidecar, telemetry_files


@pytest.mark.timeout(400)
def test_a_rank_slow_to_start_is_not_lost(tmp_path: Path) -> None:
    _, tiny = hawkears_tiny()
    slow = tmp_path / "slow-root"
    shutil.copytree(tiny, slow)
    with open(slow / "data" / "ckpt" / "zz-slow-to-hash.ckpt", "wb") as handle:
        handle.truncate(2 << 30)  # sorted last: never loaded (the CPU loads the first 3), but hashed
    manifest = make_dataset(tmp_path, recordings=1, chunks_per_recording=4, seconds=6.0, sample_rate=22050)
    args = [
        "-m", "badc_mpi", "run", str(manifest), "--models", "1",
        "--output-dir", str(tmp_path / "out"), "--telemetry-dir", str(tmp_path / "tel"),
        "--progress-interval-s", "3600", "--backoff-s", "0.1", "--silent-after-s", "3",
    ]  # fmt: skip
    # MPMD: no --hawkears-data-root, so each rank takes its own HAWKEARS_DATA_ROOT
    cmd = [
        MPIEXEC, "-n", "1", "-env", "HAWKEARS_DATA_ROOT", tiny, PYTHON, *args,
        ":", "-n", "1", "-env", "HAWKEARS_DATA_ROOT", str(slow), PYTHON, *args,
    ]  # fmt: skip
    proc = run_own(cmd, cwd=tmp_path, timeout_s=300, env={"PYTHONUNBUFFERED": "1", "HAWKEARS_DATA_ROOT": ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "lost" not in proc.stdout, proc.stdout[-2000:]
    (tfile,) = telemetry_files(tmp_path / "tel")
    workers = json.loads(sidecar(tfile, ".summary.json").read_text())["workers"]
    assert {w["rank"]: w["status"] for w in workers.values()} == {0: "ok", 1: "ok"}
    events = read_jsonl(tfile)
    assert len([e for e in events if e["event"] == "success"]) == 4
    assert os.path.getsize(slow / "data" / "ckpt" / "zz-slow-to-hash.ckpt") == 2 << 30
