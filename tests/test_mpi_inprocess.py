"""badc_mpi.run called in-process on every rank of the pytest-mpi session (mpiexec -n 3 pytest --with-mpi)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import FAKE_CMD, make_dataset, read_jsonl, sidecar


def shared_tmp(comm, tmp_path: Path) -> Path:
    """Rank 0's own temporary folder, for every rank (one host: each rank's pytest has its own)."""
    return Path(comm.bcast(str(tmp_path) if comm.Get_rank() == 0 else None, root=0))


@pytest.mark.mpi(min_size=2)
def test_run_api_on_every_rank_with_the_command_runner(tmp_path):
    from mpi4py import MPI

    import badc_mpi

    comm = MPI.COMM_WORLD
    root = shared_tmp(comm, tmp_path)
    manifest = make_dataset(root, 3, 8, seconds=0.5) if comm.Get_rank() == 0 else None
    manifest = comm.bcast(str(manifest) if manifest else None, root=0)
    outcome = badc_mpi.run(
        [manifest],
        runner="command",
        runner_cmd=FAKE_CMD,
        output_dir=str(root / "out"),
        chunks_dir=str(root / "artifacts" / "chunks"),
        telemetry_dir=str(root / "tel"),
        progress_interval_s=3600,
    )
    assert outcome.exit_code == 0
    if comm.Get_rank() == 0:
        summary = outcome.summary
        assert summary["counts"]["success"] == 24 and summary["counts"]["failed"] == 0
        events = read_jsonl(Path(outcome.telemetry_path))
        ranks = {e["rank"] for e in events if e["event"] == "success"}
        assert ranks == set(range(comm.Get_size())), "every rank, rank 0 included, works on chunks"
        on_disk = json.loads(sidecar(Path(outcome.telemetry_path), ".summary.json").read_text())
        assert on_disk["counts"] == summary["counts"]
    else:
        assert outcome.summary is None
    comm.Barrier()


@pytest.mark.mpi(min_size=2)
def test_dry_run_with_stub_sleep_spreads_work(tmp_path):
    from mpi4py import MPI

    import badc_mpi

    comm = MPI.COMM_WORLD
    root = shared_tmp(comm, tmp_path)
    manifest = comm.bcast(str(make_dataset(root, 2, 15, seconds=0.2)) if comm.Get_rank() == 0 else None, root=0)
    outcome = badc_mpi.run(
        manifest,
        dry_run=True,
        stub_sleep_s=0.1,
        output_dir=str(root / "out"),
        chunks_dir=str(root / "artifacts" / "chunks"),
        telemetry_dir=str(root / "tel"),
        progress_interval_s=3600,
    )
    assert outcome.exit_code == 0
    if comm.Get_rank() == 0:
        per_rank = {}
        for e in read_jsonl(Path(outcome.telemetry_path)):
            if e["event"] == "success":
                per_rank[e["rank"]] = per_rank.get(e["rank"], 0) + 1
        assert sum(per_rank.values()) == 30
        assert len(per_rank) == comm.Get_size() and min(per_rank.values()) >= 3
    comm.Barrier()
