"""Shared test helpers: synthetic datasets, running badc-mpi under a real mpiexec, reading results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _folder in (
    "demo",
    "gpu",
    "cluster",
    "bench",
):  # the scripts tests import: make_audio, make_demo, gpu_check_*, slurm_cluster, bench_*
    sys.path.insert(0, str(REPO / "scripts" / _folder))

import make_audio  # noqa: E402

PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
# the MPICH wheel's mpiexec next to this Python (make install); with a site MPI (make install
# MPI=system: no mpiexec in the venv) the one on PATH, as the CLI's printed resume command does.
# `make test` exports BADC_MPI_TEST_MPIEXEC=$(MPIEXEC), the launcher of its --only-mpi pass.
MPIEXEC = os.environ.get("BADC_MPI_TEST_MPIEXEC") or (str(VENV_BIN / "mpiexec") if (VENV_BIN / "mpiexec").exists() else "mpiexec")


def _hydra_version() -> str:
    try:
        out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in out.splitlines():
        if line.strip().startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


#: Debian's MPICH 4.0.2 hydra sometimes exits 0 after forwarding SIGTERM/SIGINT although every
#: rank exited non-zero (reproduced with a 5-line mpi4py script that exits 75: 1 run in 6). The
#: PyPI MPICH 5 wheel always passes the ranks' code on. Only the launcher's status is affected.
HYDRA_MAY_DROP_SIGNAL_EXIT = _hydra_version().startswith("4.0")


def stopped_exit_ok(rc: int, expected: int = 75) -> bool:
    """mpiexec's status after a forwarded SIGTERM/SIGINT: the ranks' code, allowing the launcher quirk above."""
    return rc == expected or (rc == 0 and HYDRA_MAY_DROP_SIGNAL_EXIT)


FAKE = str(REPO / "scripts" / "hawkears" / "fake_hawkears.py")
FAKE_CMD = f"{PYTHON} {FAKE} --input {{input}} --output {{output_dir}}"
HEADER = "recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes,site"


def hawkears_tiny() -> tuple[str, str]:
    """(HawkEars' python, the tiny model's data root); the test fails with the fix when they are
    missing, or is skipped with BADC_MPI_SKIP_HAWKEARS=1 (outside CI: ci_rules.skip_or_fail)."""
    import pytest

    from badc_mpi.errors import RunnerSetupError
    from badc_mpi.runners.hawkears import env as hawkears_env

    from ci_rules import skip_or_fail

    try:
        python = hawkears_env.find_hawkears_python()
        root = hawkears_env.tiny_data_root(python=python)
        if not (root / hawkears_env.TINY_MARKER).exists():
            raise RunnerSetupError(f"no tiny model at {root}", fix="run `make hawkears-tiny`")
    except RunnerSetupError as exc:
        if os.environ.get("BADC_MPI_SKIP_HAWKEARS") == "1":
            skip_or_fail(f"HawkEars not installed (BADC_MPI_SKIP_HAWKEARS=1): {exc}")
        pytest.fail(f"HawkEars or its tiny model missing: {exc}. Fix: run `make hawkears hawkears-tiny`", pytrace=False)
    return python, str(root)


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
    timeout_s: float = 200,
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
    return run_own(cmd, timeout_s=timeout_s, cwd=cwd, env={"PYTHONUNBUFFERED": "1", **(env or {})})


GRACE_S = 20.0  # SIGTERM to the launcher, then this long before SIGKILL to what it started


def run_own(
    cmd: list[str],
    *,
    timeout_s: float,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own session; past ``timeout_s`` stop it and everything it started, and
    fail the test. An exception while waiting (pytest-timeout's, a KeyboardInterrupt) stops them too.

    Stopping: SIGTERM to ``cmd`` (mpiexec forwards it to its ranks), :data:`GRACE_S` to finish,
    then SIGKILL to every process below it, found by parent PID before anything was signalled:
    only this test's own processes, never another job's.
    """
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_tree(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout_s} s and stopped: {' '.join(map(str, cmd))}\n"
            f"--- stdout (tail)\n{out[-2000:]}\n--- stderr (tail)\n{err[-3000:]}"
        ) from None
    except BaseException:
        stop_tree(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stop_tree(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM ``proc``, wait up to ``grace_s``, then SIGKILL ``proc`` and every process that was
    below it when this was called (each checked by start time, so a reused PID is left alone).
    A ``proc`` already reaped is left alone: its PID may be someone else's by now."""
    if proc.poll() is not None:
        return
    tree = ProcessTree(proc.pid, interval_s=None)
    tree.refresh()
    signal_own(proc.pid, tree.start_times.get(proc.pid), signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    tree.refresh()
    tree.kill_all()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), ``None`` once it
    is gone or a zombie: with the PID it names one process, so a PID reused by someone else's
    process is never mistaken for ours."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def signal_own(pid: int, started: int | None, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``started``."""
    if started is None or start_time(pid) != started:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


class ProcessTree:
    """Every process seen below ``root`` (by parent PID) while it runs, with its start time.

    With ``interval_s`` a thread records them every ``interval_s`` until :meth:`close`; processes
    re-parented to init after their parent was killed stay recorded, so a test can signal what its
    own launcher left behind, and only that.
    """

    def __init__(self, root: int, interval_s: float | None = 0.1) -> None:
        self.root = root
        self.start_times: dict[int, int] = {}
        started = start_time(root)
        if started is not None:
            self.start_times[root] = started
        self._stop = threading.Event()
        self._thread = None
        if interval_s is not None:
            self._thread = threading.Thread(target=self._watch, args=(interval_s,), daemon=True)
            self._thread.start()

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.refresh()

    def refresh(self) -> None:
        """Record the living processes below the root and below every process recorded so far."""
        roots = {self.root} | set(self.alive())  # a dead recorded PID may be someone else's by now
        for pid in _below(roots, _children()):
            if pid not in self.start_times:
                started = start_time(pid)
                if started is not None:
                    self.start_times[pid] = started

    def alive(self) -> list[int]:
        return [pid for pid, started in list(self.start_times.items()) if start_time(pid) == started]

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        for pid, started in list(self.start_times.items()):
            signal_own(pid, started, sig)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def telemetry_files(telemetry_dir: Path) -> list[Path]:
    return sorted(p for p in telemetry_dir.glob("*.jsonl") if not p.name.endswith(".ledger.jsonl"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_telemetry(path: Path) -> list[dict[str, Any]]:
    """A run's per-chunk telemetry records with the facts of their run and worker joined in
    (``run_id``, ``host``, ``pid``, GPU, versions, command template...), a torn last line skipped."""
    from badc_mpi.storage.telemetry import with_facts

    data = path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].decode().splitlines()
    return list(with_facts(json.loads(x) for x in lines if x.strip()))


def sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name[: -len(".jsonl")] + suffix)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    return children


def _below(roots: set[int], children: dict[int, list[int]]) -> set[int]:
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def descendants(root: int) -> set[int]:
    """PIDs of every living process below ``root`` (by parent PID): tests signal only their own."""
    return _below({root}, _children())


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def store_records(out: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The detection store under ``out``, read independently of badc_mpi: run id -> chunk key ->
    its chunk records (normally one), each with its detections as dicts. Torn last lines dropped."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted((out / "detections").glob("*.jsonl")):
        data = path.read_bytes()
        for raw in data[: data.rfind(b"\n") + 1].splitlines():
            rec = json.loads(raw)
            if "chunk_id" not in rec:
                continue  # the header and versions lines
            lists = ("label", "label_code", "label_name", "confidence", "start_s", "end_s")
            for same in ("label_code", "label_name"):  # null: repeats label
                rec[same] = rec["label"] if rec[same] is None else rec[same]
            assert all(len(rec[k]) == rec["n"] for k in lists), path
            rec["detections"] = [dict(zip(lists, values)) for values in zip(*(rec[k] for k in lists))]
            runs.setdefault(rec["run_id"], {}).setdefault(f"{rec['recording_id']}/{rec['chunk_id']}", []).append(rec)
    return runs
