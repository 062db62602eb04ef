"""Shared test helpers: synthetic datasets, running badc-mpi under a real mpiexec, reading results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import make_audio  # noqa: E402

PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
MPIEXEC = os.environ.get("BADC_MPI_TEST_MPIEXEC") or str(VENV_BIN / "mpiexec")
FAKE = str(REPO / "scripts" / "fake_hawkears.py")
FAKE_CMD = f"{PYTHON} {FAKE} --input {{input}} --output {{output_dir}}"
HEADER = "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes,site"


def make_chunk(**fields: Any) -> Any:
    """A real :class:`badc_mpi.records.Chunk` with test defaults; keyword arguments override."""
    from badc_mpi.records import Chunk

    values = dict(
        recording_id="rec1",
        chunk_id="rec1_chunk_0_60000",
        source_path="rec1_chunk_0_60000.wav",
        input_path="/x/rec1_chunk_0_60000.wav",
        start_ms=0,
        end_ms=60000,
        overlap_ms=None,
        sha256=None,
        notes="",
        extra=(),
        manifest="/x/m.csv",
        line=2,
    )
    values.update(fields)
    return Chunk(**values)


def make_dataset(
    root: Path,
    recordings: int,
    chunks_per_recording: int,
    *,
    seconds: float = 1.0,
    sample_rate: int = 8000,
    status: str = "completed",
) -> Path:
    """Chunk WAVs, a manifest with relative paths and an extra column, and chunk-status files."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = [HEADER]
    step_ms = int(seconds * 1000)
    for r in range(recordings):
        rec = f"rec{r:03d}"
        for c in range(chunks_per_recording):
            start = c * step_ms
            cid = f"{rec}_chunk_{start}_{start + step_ms}"
            path = root / "audio" / f"{cid}.wav"
            make_audio.write_wav(str(path), make_audio.synth_wave(seconds, sample_rate, r * 1000 + c), sample_rate)
            rows.append(f"{rec},{cid},audio/{cid}.wav,{start},{start + step_ms},0,,,site{r % 3}")
        sdir = root / "artifacts" / "chunks" / rec
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / ".chunk_status.json").write_text(json.dumps({"recording_id": rec, "status": status}))
    manifest = root / "manifests" / "chunks.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    # relative source paths resolve against the manifest's folder
    manifest.write_text("\n".join(rows[:1] + [row.replace(",audio/", ",../audio/") for row in rows[1:]]) + "\n")
    return manifest


def run_badc(
    args: list[str],
    *,
    np: int | None = 3,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 240,
) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n np python -m badc_mpi ARGS`` (or no launcher when np is None), under a timeout.

    ``cwd`` defaults to the dataset root made by :func:`make_dataset` (the manifest's parent's
    parent), so ``./artifacts/chunks`` is found as for a dataset used from its top folder.
    """
    if cwd is None:
        manifests = [Path(a) for a in args if a.endswith(".csv") and Path(a).exists()]
        cwd = manifests[0].parent.parent if manifests else None
    cmd = [PYTHON, "-m", "badc_mpi", *args]
    if np is not None:
        cmd = [MPIEXEC, "-n", str(np), *cmd]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        ["timeout", "-s", "TERM", "-k", "20", str(timeout_s), *cmd],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
    )


def telemetry_files(telemetry_dir: Path) -> list[Path]:
    return sorted(p for p in telemetry_dir.glob("*.jsonl") if not p.name.endswith(".ledger.jsonl"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name[: -len(".jsonl")] + suffix)


def descendants(root: int) -> set[int]:
    """PIDs of every living process below ``root`` (by parent PID): tests signal only their own."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
