"""Where outputs go: DataLad dataset detection and the default directories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from badc_mpi.inputs.locations import LOCATIONS_HELP, Locations, default_locations, find_dataset_root

from ci_rules import require_or_skip


def fake_dataset(path) -> str:
    (path / ".datalad").mkdir(parents=True)
    return str(path)


def datalad_executable() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "datalad")
    return beside if os.access(beside, os.X_OK) else shutil.which("datalad")


def test_real_datalad_dataset(tmp_path):
    datalad = datalad_executable()
    require_or_skip(datalad is not None, "datalad is not installed: `make install` puts it in .venv")
    env = dict(os.environ, PATH=os.path.dirname(datalad) + os.pathsep + os.environ.get("PATH", ""))
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.org")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.org")
    done = subprocess.run([datalad, "create", str(tmp_path / "ds")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = tmp_path / "ds" / "manifests" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("recording_id,chunk_id,source_path\n")
    root = str(tmp_path / "ds")
    assert find_dataset_root(manifest) == root
    assert default_locations(manifest, cwd=tmp_path) == Locations(
        root, f"{root}/artifacts/infer", f"{root}/artifacts/telemetry/infer", f"{root}/artifacts/chunks"
    )


def test_nearest_dataset_wins_and_start_is_the_manifest_folder(tmp_path):
    outer = fake_dataset(tmp_path / "outer")
    inner = fake_dataset(tmp_path / "outer" / "sub" / "inner")
    (tmp_path / "outer" / "sub" / "inner" / "deep").mkdir()
    assert find_dataset_root(f"{inner}/deep/manifest.csv") == inner
    assert find_dataset_root(f"{inner}/deep") == inner
    assert find_dataset_root(f"{outer}/sub/manifest.csv") == outer
    assert find_dataset_root(f"{outer}/manifest.csv") == outer
    assert find_dataset_root(tmp_path / "manifest.csv") is None


def test_relative_manifest_path_uses_cwd(tmp_path, monkeypatch):
    root = fake_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "manifests").mkdir()
    monkeypatch.chdir(tmp_path / "ds" / "manifests")
    assert find_dataset_root("m.csv") == root
    assert default_locations("m.csv").output_dir == f"{root}/artifacts/infer"


def test_outside_a_dataset_defaults_follow_cwd(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    expected = Locations(None, f"{work}/artifacts/infer", f"{work}/data/telemetry/infer", f"{work}/artifacts/chunks")
    assert default_locations(tmp_path / "m.csv") == expected
    other = tmp_path / "other"
    assert default_locations("m.csv", cwd=other) == Locations(
        None, f"{other}/artifacts/infer", f"{other}/data/telemetry/infer", f"{other}/artifacts/chunks"
    )


def test_flags_override_and_become_absolute(tmp_path):
    root = fake_dataset(tmp_path / "ds")
    locations = default_locations(
        f"{root}/m.csv", output_dir="out", telemetry_dir="/t/./x", chunks_dir="../chunks", cwd=tmp_path / "here"
    )
    assert locations == Locations(root, f"{tmp_path}/here/out", "/t/x", f"{tmp_path}/chunks")
    only_chunks = default_locations(f"{root}/m.csv", chunks_dir="c", cwd=tmp_path)
    assert only_chunks.output_dir == f"{root}/artifacts/infer"
    assert only_chunks.chunks_dir == f"{tmp_path}/c"


def test_symlinks_are_not_resolved(tmp_path):
    root = fake_dataset(tmp_path / "ds")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "m.csv").write_text("")
    (tmp_path / "ds" / "link.csv").symlink_to(tmp_path / "elsewhere" / "m.csv")
    (tmp_path / "ds" / "linkdir").symlink_to(tmp_path / "elsewhere")
    assert find_dataset_root(f"{root}/link.csv") == root
    assert find_dataset_root(f"{root}/linkdir/m.csv") == root
    assert default_locations(f"{root}/linkdir/m.csv").chunks_dir == f"{root}/artifacts/chunks"
    assert find_dataset_root(tmp_path / "elsewhere" / "m.csv") is None


def test_a_datalad_file_is_not_a_dataset(tmp_path):
    (tmp_path / ".datalad").write_text("")
    assert find_dataset_root(tmp_path / "m.csv") is None


def test_help_documents_the_rule():
    for words in (
        "DataLad",
        "artifacts/infer",
        "artifacts/telemetry/infer",
        "data/telemetry/infer",
        "artifacts/chunks",
        "--output-dir",
        "--telemetry-dir",
        "--chunks-dir",
    ):
        assert words in LOCATIONS_HELP
