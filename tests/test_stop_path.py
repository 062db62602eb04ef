"""SLURM's stop path: whatever stops a run (SIGTERM or SIGINT to mpiexec, kill -9 of mpiexec or of
a rank), no process of the run is left behind, and a drain fits SLURM's default KillWait (30 s).

Each run is this test's own ``mpiexec -n 2`` (a new session); the test records the PIDs of all its
descendants while it runs and, after the stop, checks only those. It never signals a process it
did not start; at the end it SIGKILLs only recorded PIDs that still are what was recorded.
HawkEars runs stop while the resident workers are still loading their models (the tiny model
takes several seconds to load, so the stop is known to land in the start-up wait).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from badc_mpi.errors import RunnerSetupError
from badc_mpi.records import Binding
from badc_mpi.runners.hawkears.env import SUPPORTED_HAWKEARS_VERSION

from ci_rules import skip_or_fail
from helpers import FAKE, FAKE_CMD, MPIEXEC, PYTHON, cmdline, descendants, make_dataset, sidecar, stopped_exit_ok, telemetry_files

STOPS = ("SIGTERM", "SIGINT", "kill-mpiexec", "kill-rank")
CPU_BINDING = Binding(host="localhost", rank=1, local_rank=0, worker="cpu0@localhost", cuda_visible_devices="")
RESIDENT = "runners/hawkears/resident.py"
HANGING_PYTHON = str(Path(__file__).parent / "fakes" / "hawkears_python")  # the hang seam
KILL_WAIT_S = 30.0  #: SLURM's default KillWait: SIGKILL follows SIGTERM after this long
GONE_WITHIN_S = 5.0  #: after the job ended, every process of the run must be gone within this


def proc_identity(pid: int) -> tuple[str, str] | None:
    """(start time, state) of a process, or None when there is none."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19], fields[0]


class Job:
    """One badc-mpi run started by this test, and every process it was seen to have."""

    def __init__(self, args: list[str], cwd: Path, log: Path, *, np: int = 2) -> None:
        self.log = log
        with open(log, "wb") as sink:
            self.proc = subprocess.Popen(
                [MPIEXEC, "-n", str(np), PYTHON, "-m", "badc_mpi", *args],
                cwd=cwd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        self.seen: dict[int, tuple[str, str]] = {}  # pid -> (start time, command line)

    def record(self) -> None:
        for pid in descendants(self.proc.pid):
            ident = proc_identity(pid)
            if ident is not None and (pid not in self.seen or self.seen[pid][0] == ident[0]):
                self.seen[pid] = (ident[0], cmdline(pid))  # again: a child forked, not yet exec'd, has its parent's

    def argv1(self, pid: int) -> str:
        parts = self.seen[pid][1].split()
        return parts[1] if len(parts) > 1 else ""

    def ranks(self) -> list[int]:
        return sorted(p for p, (_, c) in self.seen.items() if " -m badc_mpi " in c and "mpiexec" not in c)

    def residents(self) -> list[int]:
        return [p for p in self.seen if self.argv1(p).endswith(RESIDENT) and "--merge-config" not in self.seen[p][1]]

    def fakes(self) -> list[int]:
        return [p for p in self.seen if self.argv1(p) == FAKE]

    def wait_for(self, ready, timeout_s: float = 60.0) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.record()
            if ready(self):
                return
            assert self.proc.poll() is None, f"the run ended early:\n{self.output()[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"the run never got there:\n{self.output()[-3000:]}")

    def stop(self, how: str) -> float:
        """Stop the run; returns when the stop was sent (monotonic)."""
        self.record()
        if how in ("SIGTERM", "SIGINT"):
            self.proc.send_signal(getattr(signal, how))
        elif how == "kill-mpiexec":
            self.proc.send_signal(signal.SIGKILL)
        else:  # kill -9 of one rank the test recorded (which one does not matter: MPICH then ends the job)
            rank = self.ranks()[-1]
            if self.alive_or_none(rank):
                os.kill(rank, signal.SIGKILL)
        return time.monotonic()

    def alive_or_none(self, pid: int) -> bool:
        """Whether the recorded process ``pid`` still runs (a zombie is dead; a reused pid is not ours)."""
        ident = proc_identity(pid)
        return ident is not None and ident[0] == self.seen[pid][0] and ident[1] not in ("Z", "X")

    def left_behind(self, within_s: float = GONE_WITHIN_S) -> dict[int, str]:
        deadline = time.monotonic() + within_s
        while True:
            alive = {p: c for p, (_, c) in self.seen.items() if self.alive_or_none(p)}
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cleanup(self) -> None:
        for pid in self.seen:
            if self.alive_or_none(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def run_args(manifest: Path, root: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(manifest),
        "--output-dir",
        str(root / "out"),
        "--telemetry-dir",
        str(root / "tel"),
        "--progress-interval-s",
        "3600",
        *extra,
    ]


def summary_of(root: Path) -> dict:
    (tfile,) = telemetry_files(root / "tel")
    return json.loads(sidecar(tfile, ".summary.json").read_text())


def check_stop(job: Job, how: str, sent: float, root: Path) -> None:
    try:
        rc = job.proc.wait(timeout=KILL_WAIT_S + 30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the job did not end after {how}:\n{job.output()[-3000:]}") from None
    ended_s = time.monotonic() - sent
    left = job.left_behind()
    assert not left, f"left behind after {how}: {left}\n{job.output()[-3000:]}"
    if how in ("SIGTERM", "SIGINT"):
        assert stopped_exit_ok(rc), f"exit {rc}\n" + job.output()[-3000:]
        assert ended_s < KILL_WAIT_S, f"{how}: the job took {ended_s:.1f} s to end"
        assert summary_of(root)["state"] == "interrupted"


# ------------------------------------------------------------------- the command runner
@pytest.mark.parametrize("how", STOPS)
def test_no_command_runner_child_outlives_a_stop(tmp_path, how):
    manifest = make_dataset(tmp_path, 1, 4, seconds=0.2)
    args = run_args(manifest, tmp_path, "--runner", "command", "--runner-cmd", f"{FAKE_CMD} --sleep-s 60", "--grace-s", "1")
    job = Job(args, tmp_path, tmp_path / "job.log")
    try:
        job.wait_for(lambda j: len(j.fakes()) >= 2)  # both ranks mid-chunk
        sent = job.stop(how)
        check_stop(job, how, sent, tmp_path)
        assert len(job.ranks()) == 2 and len(job.fakes()) >= 2
    finally:
        job.cleanup()


def test_sigterm_with_60_s_chunks_in_flight_ends_within_kill_wait(tmp_path):
    """The default grace period (20 s), then every rank's runner interrupted: exit 75 within 30 s."""
    manifest = make_dataset(tmp_path, 1, 4, seconds=0.2)
    args = run_args(manifest, tmp_path, "--runner", "command", "--runner-cmd", f"{FAKE_CMD} --sleep-s 60")
    job = Job(args, tmp_path, tmp_path / "job.log")
    try:
        job.wait_for(lambda j: len(j.fakes()) >= 2)
        sent = job.stop("SIGTERM")
        rc = job.proc.wait(timeout=KILL_WAIT_S + 30)
        ended_s = time.monotonic() - sent
        out = job.output()
        assert stopped_exit_ok(rc), f"exit {rc}\n" + out[-3000:]
        assert ended_s < KILL_WAIT_S, f"the stop took {ended_s:.1f} s\n{out[-3000:]}"
        assert ended_s > 15, "the chunks in flight were not given the grace period"
        summary = summary_of(tmp_path)
        assert summary["state"] == "interrupted" and summary["counts"]["success"] == 0
        assert "resume with:" in out
        assert not job.left_behind()
    finally:
        job.cleanup()


# ------------------------------------------------------------------- HawkEars (tiny model)
@pytest.fixture(scope="module")
def hawkears() -> tuple[str, str]:
    from badc_mpi.errors import BadcError
    from badc_mpi.runners.hawkears import env as hawkears_env

    try:
        python = hawkears_env.find_hawkears_python()
        root = hawkears_env.describe_data_root(hawkears_env.tiny_data_root(python=python), "cli")  # pinned
    except BadcError as exc:
        if os.environ.get("BADC_MPI_SKIP_HAWKEARS") == "1":
            skip_or_fail(f"HawkEars not set up: {exc}")
        pytest.fail(f"HawkEars not set up: {exc}. Fix: make hawkears hawkears-tiny", pytrace=False)
    return python, root.path


@pytest.mark.hawkears
@pytest.mark.parametrize("how", STOPS)
def test_no_hawkears_worker_outlives_a_stop_during_model_loading(tmp_path, hawkears, how):
    manifest = make_dataset(tmp_path, 1, 2, seconds=6.0, sample_rate=22050)
    job = Job(run_args(manifest, tmp_path, "--models", "1", "--hawkears-data-root", hawkears[1]), tmp_path, tmp_path / "job.log")
    try:
        job.wait_for(lambda j: len(j.residents()) >= 2)  # both ranks' workers started, loading models
        time.sleep(0.5)
        sent = job.stop(how)
        check_stop(job, how, sent, tmp_path)
        assert "ready in" not in job.output(), "the stop came after the models were loaded"
    finally:
        job.cleanup()


@pytest.mark.hawkears
def test_sigterm_ends_a_run_whose_hawkears_chunks_hang(tmp_path, hawkears):
    """Both ranks stuck in a HawkEars chunk that never ends (the hang seam): after the grace period
    every rank's worker is killed, the run exits 75 well within KillWait and leaves nothing."""
    manifest = make_dataset(tmp_path, 1, 4, seconds=6.0, sample_rate=22050)
    python, root = hawkears
    hang = ("--hawkears-python", HANGING_PYTHON, "--hawkears-data-root", root)
    args = run_args(manifest, tmp_path, "--models", "1", *hang, "--grace-s", "2")
    os.environ["BADC_TEST_REAL_HAWKEARS_PYTHON"], os.environ["BADC_TEST_HANG_ON"] = python, "rec000"
    try:
        job = Job(args, tmp_path, tmp_path / "job.log")
    finally:
        del os.environ["BADC_TEST_REAL_HAWKEARS_PYTHON"], os.environ["BADC_TEST_HANG_ON"]
    try:
        job.wait_for(lambda j: started_ranks(tmp_path) == {0, 1}, timeout_s=120)
        time.sleep(0.5)
        sent = job.stop("SIGTERM")
        check_stop(job, "SIGTERM", sent, tmp_path)
        assert summary_of(tmp_path)["counts"]["success"] == 0
    finally:
        job.cleanup()


def started_ranks(root: Path) -> set[int]:
    files = telemetry_files(root / "tel") if (root / "tel").exists() else []
    if not files:
        return set()
    lines = files[0].read_bytes().split(b"\n")[:-1]  # whole lines only
    return {json.loads(x)["rank"] for x in lines if b'"event":"start"' in x}


def make_runner(hawkears: tuple[str, str]):  # noqa: ANN201
    from badc_mpi.runners.hawkears.adapter import build_hawkears_runner
    from badc_mpi.runners.hawkears.options import HawkearsOptions

    python, root = hawkears
    return build_hawkears_runner(HawkearsOptions(python=python, data_root=root, models=1))


def start_in_thread(runner) -> tuple[threading.Thread, dict, int]:  # noqa: ANN001
    """runner.start() in a thread (as the supervisor does); returns once the worker is loading."""
    outcome: dict = {}

    def start() -> None:
        try:
            runner.start(CPU_BINDING)
            outcome["ok"] = True
        except RunnerSetupError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [p for p in descendants(os.getpid()) if RESIDENT in cmdline(p) and "--merge-config" not in cmdline(p)]
        if pids:
            time.sleep(0.5)  # importing torch, loading the models
            return thread, outcome, pids[0]
        time.sleep(0.05)
    raise AssertionError("the resident worker never started")


def gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while True:
        ident = proc_identity(pid)
        if ident is None or ident[1] in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def kill_if_running(pid: int) -> None:
    """Cleanup: SIGKILL a process this test started, if it still runs."""
    if not gone(pid, 0):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.hawkears
@pytest.mark.parametrize("how", ["interrupt", "close"])
def test_the_runner_ends_a_worker_still_loading_its_models(hawkears, how):
    runner = make_runner(hawkears)
    thread, outcome, pid = start_in_thread(runner)
    try:
        began = time.monotonic()
        getattr(runner, how)()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the start-up wait was not interrupted"
        assert time.monotonic() - began < 5
        assert gone(pid, 2.0)
        assert outcome == {"ok": True}  # a stop is no start-up failure
        assert runner.active_pids() == []
    finally:
        runner.close()
        kill_if_running(pid)


@pytest.mark.hawkears
def test_sigterm_ends_the_resident_worker_promptly_while_it_loads(hawkears):
    runner = make_runner(hawkears)
    thread, outcome, pid = start_in_thread(runner)
    try:
        os.kill(pid, signal.SIGTERM)  # as SLURM signals every process of the step
        thread.join(timeout=10)
        assert not thread.is_alive()
        # its handler ran (it said so) and the process ended by SIGTERM: 128+15 from the handler's
        # exit, or -15 when the signal's default action finished it (e.g. during interpreter teardown)
        error = outcome.get("error", "")
        assert "exited with status 143" in error or "exited with status -15" in error, outcome
        assert "SIGTERM received" in error
    finally:
        runner.close()
        kill_if_running(pid)


@pytest.mark.hawkears
def test_the_resident_worker_dies_with_its_parent(hawkears, tmp_path):
    """kill -9 of the process that started it (a rank) takes the worker down: PR_SET_PDEATHSIG."""
    python, root = hawkears
    script = str(Path(__file__).resolve().parents[1] / "badc_mpi" / RESIDENT)
    argv = [python, script, "--data-root", root, "--require-version", SUPPORTED_HAWKEARS_VERSION, "--models", "1"]
    code = (  # a stand-in rank: starts the worker as the runner does, minus the runner's own preexec prctl
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen({argv!r} + ['--parent-pid', str(os.getpid())], cwd={root!r}, start_new_session=True,"
        " stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)
        assert proc_identity(child)[1] not in ("Z", "X")  # importing torch, loading models
        parent.kill()
        parent.wait()
        assert gone(child, 5.0), "the worker outlived the rank that started it"
    finally:
        kill_if_running(child)
    # started by a parent that is not the one named: it exits at once
    proc = subprocess.run(
        [python, script, "--data-root", root, "--parent-pid", str(os.getpid() + 1_000_000)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "is gone" in proc.stderr
