"""The output lock: atomic creation, takeover of provably dead holders (pid, SLURM job), refusals."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import time

import pytest

from badc_mpi.errors import ExitCode, LockError
from badc_mpi.storage import lock as lock_mod

HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    """This process is in no SLURM job, and squeue is never really run (each test sets the seam)."""
    for var in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)

    def no_squeue(job_id: str) -> str | None:
        raise AssertionError(f"squeue asked about job {job_id} where it must not be")

    monkeypatch.setattr(lock_mod, "squeue_state", no_squeue)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(directory, **info) -> None:
    holder = {"host": HOST, "pid": os.getpid(), "run_id": "old", "started_at": "x", **info}
    (directory / lock_mod.LOCK_NAME).write_text(json.dumps(holder))


def holder_of(directory) -> dict:
    return json.loads((directory / lock_mod.LOCK_NAME).read_text())


def squeue_says(monkeypatch, answer: str | None) -> list[str]:
    asked: list[str] = []

    def fake(job_id: str) -> str | None:
        asked.append(job_id)
        return answer

    monkeypatch.setattr(lock_mod, "squeue_state", fake)
    return asked


def test_the_lock_is_complete_json_naming_host_pid_run_and_slurm_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "sockeye")
    held = lock_mod.acquire(tmp_path, "run-a")
    info = holder_of(tmp_path)
    assert info["host"] == HOST and info["pid"] == os.getpid() and info["run_id"] == "run-a"
    assert info["slurm_job_id"] == "4242" and info["slurm_cluster"] == "sockeye" and info["slurm_restart_count"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock_mod.LOCK_NAME]  # no temporary file left
    held.release()
    assert not (tmp_path / lock_mod.LOCK_NAME).exists()


def test_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    write_lock(tmp_path, pid=dead_pid())
    lock = lock_mod.acquire(tmp_path, "run-new")
    assert holder_of(tmp_path)["run_id"] == "run-new"
    assert "taking over the stale output lock" in caplog.text
    lock.release()


def test_a_live_holder_is_refused_with_exit_4_naming_it(tmp_path):
    held = lock_mod.acquire(tmp_path, "run-a")
    with pytest.raises(LockError) as err:
        lock_mod.acquire(tmp_path, "run-b")
    assert err.value.exit_code == ExitCode.LOCKED
    assert "run-a" in str(err.value) and str(os.getpid()) in str(err.value)
    held.release()


@pytest.mark.parametrize("answer", ["", "COMPLETED", "CANCELLED\n", "TIMEOUT", "NODE_FAIL", "PREEMPTED"])
def test_a_lock_whose_slurm_job_is_over_is_taken_over_at_once(tmp_path, monkeypatch, answer):
    # another host, fresh heartbeat: without SLURM this would wait STALE_AFTER_S or need --force-unlock
    write_lock(tmp_path, host="node-gone", pid=1, slurm_job_id="777")
    asked = squeue_says(monkeypatch, answer)
    lock = lock_mod.acquire(tmp_path, "run-new")
    assert asked == ["777"]
    assert holder_of(tmp_path)["run_id"] == "run-new"
    lock.release()


@pytest.mark.parametrize("answer", ["RUNNING", "PENDING", "COMPLETING", "SUSPENDED", "CONFIGURING", "REQUEUED"])
def test_a_lock_whose_slurm_job_still_runs_is_refused(tmp_path, monkeypatch, answer):
    write_lock(tmp_path, host="node-busy", pid=1, slurm_job_id="778")
    squeue_says(monkeypatch, answer)
    with pytest.raises(LockError) as err:
        lock_mod.acquire(tmp_path, "run-new")
    assert "SLURM job 778" in str(err.value) and "--force-unlock" in str(err.value)
    assert holder_of(tmp_path)["run_id"] == "old"


def test_a_running_slurm_job_on_this_host_with_a_live_pid_is_refused(tmp_path, monkeypatch):
    write_lock(tmp_path, slurm_job_id="779")  # our own live pid
    squeue_says(monkeypatch, "RUNNING")
    with pytest.raises(LockError):
        lock_mod.acquire(tmp_path, "run-new")


def test_a_finished_slurm_job_beats_a_reused_pid_on_this_host(tmp_path, monkeypatch):
    write_lock(tmp_path, slurm_job_id="780")  # the pid is alive, but it is not the job's any more
    squeue_says(monkeypatch, "")
    lock_mod.acquire(tmp_path, "run-new").release()


def test_unknown_squeue_falls_back_to_the_old_rules(tmp_path, monkeypatch):
    write_lock(tmp_path, host="node-x", pid=1, slurm_job_id="781")
    asked = squeue_says(monkeypatch, None)  # squeue missing or failing
    with pytest.raises(LockError):
        lock_mod.acquire(tmp_path, "run-new")  # another host, fresh heartbeat: refused
    assert asked == ["781"]
    lock_mod.acquire(tmp_path, "run-forced", force=True).release()  # --force-unlock still works
    write_lock(tmp_path, host="node-x", pid=1, slurm_job_id="781")
    old = time.time() - 2 * lock_mod.STALE_AFTER_S
    os.utime(tmp_path / lock_mod.LOCK_NAME, (old, old))
    lock_mod.acquire(tmp_path, "run-late").release()  # a stopped heartbeat still counts
    write_lock(tmp_path, pid=dead_pid(), slurm_job_id="781")
    lock_mod.acquire(tmp_path, "run-dead").release()  # and a dead pid on this host


def test_another_clusters_job_is_not_asked_about(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "here")
    write_lock(tmp_path, host="node-y", pid=1, slurm_job_id="782", slurm_cluster="there")
    with pytest.raises(LockError):
        lock_mod.acquire(tmp_path, "run-new")  # the autouse seam would fail the test if squeue were asked


def test_an_earlier_incarnation_of_this_requeued_job_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "900")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(tmp_path, host="node-z", pid=1, slurm_job_id="900", slurm_restart_count=0)
    lock_mod.acquire(tmp_path, "run-requeued").release()
    # the same incarnation (another step of this job): the old rules, so a live holder is refused
    write_lock(tmp_path, host="node-z", pid=1, slurm_job_id="900", slurm_restart_count=1)
    with pytest.raises(LockError):
        lock_mod.acquire(tmp_path, "run-step2")


@pytest.mark.parametrize("content", ["", '{"host": "', "{not json", "[]"])
def test_a_half_written_lock_is_refused_not_taken_over(tmp_path, content):
    (tmp_path / lock_mod.LOCK_NAME).write_text(content)  # fresh mtime
    with pytest.raises(LockError) as err:
        lock_mod.acquire(tmp_path, "run-new")
    assert "unreadable" in str(err.value) and "--force-unlock" in str(err.value)
    assert (tmp_path / lock_mod.LOCK_NAME).read_text() == content  # untouched
    old = time.time() - 2 * lock_mod.STALE_AFTER_S
    os.utime(tmp_path / lock_mod.LOCK_NAME, (old, old))
    lock_mod.acquire(tmp_path, "run-later").release()  # long untouched: stale


def test_a_half_written_lock_yields_to_force_unlock(tmp_path):
    (tmp_path / lock_mod.LOCK_NAME).write_text("")
    lock_mod.acquire(tmp_path, "run-forced", force=True).release()


def test_squeue_state_reads_squeue(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real seam, with a fake squeue on PATH
    fake = tmp_path / "squeue"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$3" in\n'
        "  1) echo RUNNING ;;\n"
        "  2) ;;\n"
        "  3) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;\n"
        "  *) echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1 ;;\n"
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert lock_mod.squeue_state("1") == "RUNNING"
    assert lock_mod.squeue_state("2") == ""
    assert lock_mod.squeue_state("3") == ""  # purged from slurmctld: over
    assert lock_mod.squeue_state("4") is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert lock_mod.squeue_state("1") is None  # no squeue at all
    assert lock_mod.state_means_gone(None) is None
    assert lock_mod.state_means_gone("") is True
    assert lock_mod.state_means_gone("RUNNING") is False
    assert lock_mod.state_means_gone("COMPLETED\nCOMPLETED") is True
    assert lock_mod.state_means_gone("SOMETHING_NEW") is False


def _contend(directory: str, run_id: str, barrier, results) -> None:  # noqa: ANN001
    barrier.wait()
    try:
        lock_mod.acquire(directory, run_id)
        results.put((run_id, "won"))
        time.sleep(0.5)  # hold it while the other contender looks
    except LockError:
        results.put((run_id, "refused"))


@pytest.mark.parametrize("start", ["free", "dead-holder"])
def test_concurrent_acquire_from_two_processes_has_exactly_one_winner(tmp_path, start):
    ctx = multiprocessing.get_context("fork")
    for round_no in range(3):
        directory = tmp_path / f"r{round_no}"
        directory.mkdir()
        if start == "dead-holder":
            write_lock(directory, pid=dead_pid())
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(directory), f"run-{i}", barrier, results)) for i in range(2)]
        for p in procs:
            p.start()
        outcome = dict(results.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert sorted(outcome.values()) == ["refused", "won"], outcome
        winner = next(r for r, o in outcome.items() if o == "won")
        assert holder_of(directory)["run_id"] == winner
        assert sorted(p.name for p in directory.iterdir()) == [lock_mod.LOCK_NAME]
