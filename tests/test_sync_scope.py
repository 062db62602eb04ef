"""`chunk` and `export` make what they wrote durable by fsyncing those files and folders, never by a
node-wide ``os.sync()`` (a shared login node can stall for minutes on one). Through the CLI, with
``os.fsync`` watched at its one seam: the path of every descriptor it is given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from badc_mpi.cli import main
from badc_mpi.inputs.chunk_status import STATUS_FILE


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every path fsynced from now on; ``os.sync`` fails the test."""
    paths: set[str] = set()
    real = os.fsync

    def fsync(fd: int) -> None:
        paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    def no_sync() -> None:
        raise AssertionError("os.sync() flushes the whole node: fsync what was written instead")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", no_sync)
    return paths


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsynced descriptors")
def test_chunk_fsyncs_its_status_files_and_folders_not_the_node(tmp_path: Path, monkeypatch, synced: set[str]) -> None:  # noqa: ANN001
    from test_chunk import tone

    monkeypatch.chdir(tmp_path)
    ds = tmp_path / "ds"
    (ds / ".datalad").mkdir(parents=True)
    tone(ds / "audio" / "NWT-01" / "NWT-01_20240601_050000.wav", 65)
    tone(ds / "audio" / "NWT-02" / "NWT-02_20240602_050000.wav", 30)
    assert main(["chunk", str(ds / "audio"), "--layout", "wildtrax"]) == 0
    statuses = sorted(ds.rglob(STATUS_FILE))
    assert len(statuses) == 2
    for status in statuses:
        assert str(status) in synced  # the file's data
        assert str(status.parent) in synced  # its new entry
    assert str(statuses[0].parent.parent) in synced  # the folder that gained the recordings' folders
    manifest = ds / "manifests" / "audio.csv"
    assert any(os.path.basename(p).startswith(f".{manifest.name}.tmp-") for p in synced)  # atomic: before its rename
    assert str(manifest.parent) in synced


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsynced descriptors")
def test_export_fsyncs_its_files_not_the_node(tmp_path: Path, synced: set[str]) -> None:
    from test_export import make_campaign

    manifest = make_campaign(tmp_path)
    code = main(
        ["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"),
         "--output", str(tmp_path / "exp"), "--format", "all"]
    )  # fmt: skip
    assert code == 0
    exp = tmp_path / "exp"
    written = sorted(p.relative_to(exp) for p in exp.rglob("*") if p.is_file())
    assert len(written) > 3
    for rel in written:
        # fsynced under the staging folder before the rename onto its final name
        assert any(p.endswith(os.sep + str(rel)) and ".export.tmp-" in p for p in synced) or str(exp / rel) in synced, rel
        assert str((exp / rel).parent) in synced  # the rename made durable
