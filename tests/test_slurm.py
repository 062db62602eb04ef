"""badc-mpi under a real SLURM: real ``srun``, real ``sbatch slurm/infer.sbatch``, real signals.

Run by ``make test-slurm`` (scripts/cluster/slurm_cluster.py brings up a throwaway cluster: munge,
slurmctld, two slurmd on this host, fake GPUs; docs/howto/testing-slurm.md), skipped elsewhere
(outside CI's make test-slurm: there a missing cluster fails them).
Every job runs the fake HawkEars through ``--runner command``, one runs real HawkEars on the tiny
model. Each test leaves no process of its jobs behind (checked after each test).

``BADC_MPI_TEST_SBATCH_SCRIPT`` names another batch script to test instead of slurm/infer.sbatch:
it must take ``MANIFEST... [-- run options]``, resume when resubmitted, and print ``badc-mpi:``
operator lines naming the job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ci_rules import SLURM_REQUIRED_ENV, SLURM_SKIP, require_or_skip, slurm_required
from helpers import FAKE_CMD, PYTHON, REPO, make_dataset, run_own
from slurm_jobs import (
    Budget,
    capped,
    cluster_state,
    parse_repeats,
    runs,
    set_budget,
    signal_option,
    submit,
    successes,
    wait_for,
    wait_until,
)

STATE = cluster_state()
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def _the_cluster():
    """Skipped outside make test-slurm (CI runs them there); in make test-slurm (which sets
    BADC_MPI_SLURM_REQUIRED=1) a missing cluster fails every test instead."""
    require_or_skip(STATE is not None, SLURM_SKIP, required=slurm_required(), why=f"{SLURM_REQUIRED_ENV}=1, no cluster")


SCRIPT = REPO / os.environ.get("BADC_MPI_TEST_SBATCH_SCRIPT", "slurm/infer.sbatch")
PY = os.path.relpath(PYTHON, REPO)  # `.venv/bin/python`, typed from the repository root
CLUSTER = "badctest"
MPI = f"--mpi={os.environ.get('BADC_SRUN_MPI', 'pmi2')}"  # as slurm/infer.sbatch: pmi2 for the MPICH wheel
CLEANUP_S = 45  # nothing_left_behind: a stop ends within KillWait (30 s), then nothing may be left
# BADC_MPI_SLURM_REPEAT=NAME=COUNT[,NAME=COUNT]: run those tests COUNT times in a row, in place
# (e.g. test_two_nodes_srun_N2_n4=20 inside the whole file, to show a flaky test is fixed)
REPEAT_ENV = "BADC_MPI_SLURM_REPEAT"
REPEATS = parse_repeats(os.environ.get(REPEAT_ENV, ""), REPEAT_ENV)


def pytest_generate_tests(metafunc):  # noqa: ANN001 - pytest hook, for this module's tests
    count = REPEATS.get(metafunc.function.__name__, 1)
    if count > 1:
        metafunc.fixturenames.append("repeat_index")
        metafunc.parametrize("repeat_index", range(1, count + 1), ids=lambda i: f"run{i}of{count}")


def dataset(root: Path, recordings: int, chunks: int, **kw) -> Path:
    """make_dataset's chunks inside a DataLad dataset (its .datalad/ folder), as on Sockeye: the
    outputs and telemetry go under ``root/artifacts`` wherever the job runs from."""
    manifest = make_dataset(root, recordings, chunks, **kw)
    (root / ".datalad").mkdir(exist_ok=True)
    return manifest


def telemetry(root: Path) -> Path:
    return root / "artifacts" / "telemetry" / "infer"


def fake_args(*extra: str, sleep_s: float = 0.0) -> list[str]:
    cmd = FAKE_CMD + (f" --sleep-s {sleep_s}" if sleep_s else "")
    return ["--runner", "command", "--runner-cmd", cmd, "--backoff-s", "0.05", "--backoff-max-s", "0.1", *extra]


def job_args(*extra: str, sleep_s: float = 0.0) -> list[str]:
    """Run options after the script's ``--``. ``--allow-cpu``: the test cluster's GPUs are fake
    (SLURM sets CUDA_VISIBLE_DEVICES=0,1,2,3; NVML sees none), so a rank refuses without it."""
    return ["--", *fake_args("--allow-cpu", *extra, sleep_s=sleep_s)]


def sbatch(manifests: list[Path], args: list[str], out: Path, *, time_min: int = 5, lead_s: int = 60, opts: tuple = ()) -> str:
    """``sbatch SCRIPT MANIFEST... -- ARGS`` from the repository root, as a user submits it; only
    the time limit and the warning signal's lead are scaled down, and the output file moved."""
    return submit(
        SCRIPT, [*map(str, manifests), *args], out=out, sbatch=[f"--time={time_min}", *signal_option(SCRIPT, lead_s), *opts]
    )


def operator_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("badc-mpi:")]


def job_processes() -> list[int]:
    """Processes of this cluster's jobs still alive: a job's tasks and scripts (their environment
    names this cluster's SLURM_CONF and a SLURM_JOB_ID) and its slurmstepd."""
    import slurm_cluster

    out = []
    for pid in slurm_cluster.processes_with_env("SLURM_CONF", os.environ["SLURM_CONF"]):
        try:
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(b"SLURM_JOB_ID=") for v in env) or slurm_cluster._cmdline(pid).startswith("slurmstepd"):
            out.append(pid)
    return out


def shared_memory_of(job_id: str) -> set[Path]:
    """The /dev/shm files the processes of job ``job_id`` have mapped."""
    found = set()
    for pid in job_processes():
        proc = Path("/proc") / str(pid)
        try:
            if f"SLURM_JOB_ID={job_id}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            maps = (proc / "maps").read_text()
        except OSError:
            continue
        found |= {Path(line.split()[-1]) for line in maps.splitlines() if " /dev/shm/" in line}
    return found


def describe(pids: list[int]) -> list[str]:
    import slurm_cluster

    return [f"{pid} (parent {parent(pid)}): {slurm_cluster._cmdline(pid)[:200]}" for pid in pids]


def parent(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def queued(states: str = "PD,R,S,CG") -> list[str]:
    squeue = subprocess.run(["squeue", "-h", "-t", states, "-o", "%A %T %j"], capture_output=True, text=True, timeout=30)
    return [line for line in squeue.stdout.splitlines() if line.strip()]


def timeout_of(request) -> float:  # noqa: ANN001
    marker = request.node.get_closest_marker("timeout")
    if marker and marker.args:
        return float(marker.args[0])
    return float(request.config.getini("timeout") or 300)


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    """Every wait of the test ends inside its own budget (its pytest-timeout less the cleanup's
    time), so a hang fails with the wait's message; then no job and no job process may be left."""
    set_budget(Budget(timeout_of(request), reserve_s=CLEANUP_S + 30, started=time.monotonic()))
    try:
        yield
    finally:
        set_budget(None)
    # a job the test left pending or running (it failed half-way) is cancelled, and named below;
    # COMPLETING is a job that ended (srun returned) while SLURM still gathers its processes
    active = queued("PD,R,S")
    for line in active:
        subprocess.run(["scancel", line.split()[0]], timeout=30)
    # a stop ends within SLURM's KillWait (30 s): after that nothing of any job may be running
    wait_until(
        lambda: not job_processes() and not queued(), CLEANUP_S, lambda: f"jobs ended: {queued()} {describe(job_processes())}"
    )
    assert not active, f"jobs still pending or running after the test (now cancelled): {active}"


def test_srun_three_ranks_as_users_type_it_and_the_summary_names_job_and_step(tmp_path):
    manifest = dataset(tmp_path, 3, 4, seconds=0.2)
    name = f"badc-srun-{tmp_path.name}"[:60]
    cmd = [
        "srun",
        "-n",
        "3",
        MPI,
        f"--job-name={name}",
        PY,
        "-m",
        "badc_mpi",
        "run",
        str(manifest),
        *fake_args(sleep_s=0.3),
    ]
    proc = run_own(cmd, cwd=REPO, timeout_s=capped(180))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = runs(telemetry(tmp_path))
    summary = run["summary"]
    assert summary["state"] == "finished" and summary["counts"]["success"] == 12
    slurm = summary["slurm"]
    assert slurm["step_id"] == "0" and slurm["cluster"] == CLUSTER and slurm["ntasks"] == "3"
    info = wait_for(slurm["job_id"])  # the job the summary names is this srun's
    assert info["JobName"] == name and info["JobState"] == "COMPLETED"
    assert len(summary["workers"]) == 3  # one world of 3 ranks, not 3 worlds of 1
    headers = [e for e in run["events"] if e["event"] == "run"]  # the telemetry's header line
    assert [h.get("slurm") for h in headers] == [slurm] and headers[0]["ranks"] == 3
    assert {e["rank"] for e in run["events"] if e["event"] == "success"} == {0, 1, 2}
    assert successes([run]) == {f"rec{r:03d}/rec{r:03d}_chunk_{i * 200}_{(i + 1) * 200}": 1 for r in range(3) for i in range(4)}


def test_sbatch_infer_runs_every_chunk_once_with_operator_lines(tmp_path):
    manifest = dataset(tmp_path, 2, 10, seconds=0.2)
    out = tmp_path / "slurm-%j.out"
    job_id = sbatch([manifest], job_args(sleep_s=0.2), out)
    info = wait_for(job_id)
    text = Path(str(out).replace("%j", job_id)).read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-3000:]
    assert any(re.search(rf"\b{job_id}\b", line) for line in operator_lines(text)), text[-2000:]
    (run,) = runs(telemetry(tmp_path))  # where the script says: the dataset's artifacts/
    summary = run["summary"]
    assert summary["state"] == "finished" and summary["counts"]["success"] == 20
    assert summary["slurm"]["job_id"] == job_id and summary["slurm"]["step_id"] == "0"
    ranks = int(summary["slurm"]["ntasks"])
    assert ranks == int(info["NumTasks"]) and len(summary["workers"]) == ranks and ranks >= 2
    counts = successes([run])
    assert len(counts) == 20 and set(counts.values()) == {1}
    assert not (tmp_path / "artifacts" / "infer" / ".badc-mpi.lock").exists()


def test_gpus_the_job_was_given_but_cannot_use_refuse_without_allow_cpu(tmp_path):
    """The cluster's GPUs are fake (NVML sees none): without --allow-cpu no rank may fall back to
    the CPU silently; the job ends with exit 2 naming the fix, and nothing was analysed."""
    manifest = dataset(tmp_path, 1, 4, seconds=0.2)
    out = tmp_path / "slurm-%j.out"
    job_id = sbatch([manifest], ["--", *fake_args()], out)
    info = wait_for(job_id)
    text = Path(str(out).replace("%j", job_id)).read_text()
    assert info["ExitCode"] == "2:0", (info, text[-3000:])
    assert "--allow-cpu" in text and "CUDA_VISIBLE_DEVICES=0,1,2,3" in text  # SLURM's mask, named
    assert not successes(runs(telemetry(tmp_path)))


@pytest.mark.timeout(480)  # the resident HawkEars: 10 s alone, 183 s on 2 cores at load 13
def test_sbatch_with_real_hawkears_on_the_tiny_model(tmp_path):
    from badc_mpi.errors import BadcError
    from badc_mpi.runners.hawkears import env as hawkears_env

    try:
        tiny = hawkears_env.tiny_data_root(python=hawkears_env.find_hawkears_python())
    except BadcError as exc:
        pytest.fail(f"HawkEars not set up (make hawkears-tiny): {exc}")
    manifest = dataset(tmp_path, 1, 4, seconds=6.0, sample_rate=22050)
    out = tmp_path / "slurm-%j.out"
    extra = ["--", "--models", "1", "--hawkears-data-root", str(tiny), "--allow-tiny-model", "--allow-cpu", "--backoff-s", "0.1"]
    job_id = sbatch([manifest], extra, out, opts=("--ntasks-per-node=2",))
    info = wait_for(job_id, timeout_s=390)
    text = Path(str(out).replace("%j", job_id)).read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-4000:]
    assert any(job_id in line for line in operator_lines(text))
    (run,) = runs(telemetry(tmp_path))
    summary = run["summary"]
    assert summary["state"] == "finished" and summary["counts"]["success"] == 4 and summary["slurm"]["job_id"] == job_id
    assert summary["runner"]["runner"] == "hawkears" and len(summary["workers"]) == 2
    assert set(successes([run]).values()) == {1} and len(successes([run])) == 4


@pytest.mark.timeout(420)  # two jobs, the first one 60-90 s by design
def test_time_limit_stops_with_summary_and_exit_75_then_resubmitting_resumes(tmp_path):
    """--time=1 (SLURM's least) and the script's warning signal 10 s ahead: slurmctld sends it at
    its first 30-second check that is within lead + 30 s of the end, i.e. 20-50 s into the job,
    before ~60 s of work is done and before the limit (60-90 s)."""
    manifest = dataset(tmp_path, 2, 80, seconds=0.2)
    out = tmp_path / "slurm-%j.out"
    args = job_args("--grace-s", "10", sleep_s=1.5)
    first = sbatch([manifest], args, out, time_min=1, lead_s=10)
    info = wait_for(first, timeout_s=150)
    text = Path(str(out).replace("%j", first)).read_text()
    assert info["ExitCode"] == "75:0" and info["JobState"] != "TIMEOUT", (info, text[-3000:])
    assert any("resubmit" in line for line in operator_lines(text)), text[-2000:]
    resume_lines = [line for line in text.splitlines() if "--resume" in line and "srun" in line]
    assert resume_lines and MPI in resume_lines[-1], text[-3000:]  # the printed command works under srun
    (run1,) = runs(telemetry(tmp_path))
    assert run1["summary"]["state"] == "interrupted" and run1["summary"]["slurm"]["job_id"] == first
    done_first = set(successes([run1]))
    assert 0 < len(done_first) < 160
    assert not (tmp_path / "artifacts" / "infer" / ".badc-mpi.lock").exists()  # released on the way out

    second = sbatch([manifest], args, out)  # the same command again
    info = wait_for(second, timeout_s=180)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", Path(str(out).replace("%j", second)).read_text()[-3000:]
    run1, run2 = runs(telemetry(tmp_path))
    assert run2["summary"]["state"] == "finished" and run2["summary"]["slurm"]["job_id"] == second
    counts = successes([run1, run2])
    assert len(counts) == 160 and set(counts.values()) == {1}  # every chunk exactly once over both jobs
    started_again = {f"{e['recording_id']}/{e['chunk_id']}" for e in run2["events"] if e["event"] == "start"}
    assert started_again and not started_again & done_first


def test_scancel_mid_run_drains_within_killwait_then_resubmitting_resumes(tmp_path):
    manifest = dataset(tmp_path, 2, 40, seconds=0.2)
    out = tmp_path / "slurm-%j.out"
    args = job_args("--grace-s", "10", sleep_s=1.0)
    first = sbatch([manifest], args, out)
    tel = telemetry(tmp_path)
    wait_until(lambda: len(successes(runs(tel))) >= 8 if tel.exists() and runs(tel) else False, 120, "8 chunks done")
    subprocess.run(["scancel", first], check=True, timeout=30)  # SIGTERM to the steps and the batch shell
    info = wait_for(first, timeout_s=60)
    assert info["JobState"] == "CANCELLED", info
    # rank 0 drains and writes the summary before KillWait's SIGKILL (30 s)
    summary = wait_until(lambda: (s := runs(tel)[0]["summary"]) and s["state"] != "running" and s, 40, "final summary")
    assert summary["state"] == "interrupted" and summary["slurm"]["job_id"] == first
    wait_until(lambda: not job_processes(), 45, "the cancelled job's processes gone")
    (run1,) = runs(tel)
    done_first = set(successes([run1]))
    assert 8 <= len(done_first) < 80

    second = sbatch([manifest], args, out)
    info = wait_for(second, timeout_s=240)
    assert info["JobState"] == "COMPLETED", Path(str(out).replace("%j", second)).read_text()[-3000:]
    run1, run2 = runs(tel)
    counts = successes([run1, run2])
    assert len(counts) == 80 and set(counts.values()) == {1}
    assert not {f"{e['recording_id']}/{e['chunk_id']}" for e in run2["events"] if e["event"] == "start"} & done_first


def test_rank_0_killed_outright_leaves_its_lock_and_the_resubmission_takes_it_over(tmp_path):
    """SIGKILL of rank 0 (its node gone; ``scancel --signal=KILL`` would not do: SLURM cancels with
    SIGTERM first, and the run drains): no summary, the output lock stays; srun ends the other
    ranks (--kill-on-bad-exit); the resubmitted job takes the lock over at once (its holder is
    gone) and finishes, no chunk done twice."""
    manifest = dataset(tmp_path, 2, 30, seconds=0.2)
    out = tmp_path / "slurm-%j.out"
    args = job_args(sleep_s=1.0)
    first = sbatch([manifest], args, out)
    tel = telemetry(tmp_path)
    wait_until(lambda: len(successes(runs(tel))) >= 8 if tel.exists() and runs(tel) else False, 120, "8 chunks done")
    lockfile = tmp_path / "artifacts" / "infer" / ".badc-mpi.lock"
    holder = json.loads(lockfile.read_text())
    env = (Path("/proc") / str(holder["pid"]) / "environ").read_bytes().split(b"\0")
    assert f"SLURM_JOB_ID={first}".encode() in env and b"SLURM_PROCID=0" in env  # this job's rank 0, ours
    segments = shared_memory_of(first)  # MPICH's /dev/shm segments: a killed job cannot remove them
    os.kill(holder["pid"], signal.SIGKILL)
    try:  # srun --kill-on-bad-exit=1 ends the other ranks, which would wait on rank 0 forever
        ended = wait_for(first, timeout_s=60, cancel=False)
    except AssertionError:
        ended = None
        subprocess.run(["scancel", first], timeout=30)  # as an operator would: on to the lock
        wait_for(first, timeout_s=60)
    wait_until(lambda: not job_processes(), 45, lambda: f"the killed job's processes gone: {describe(job_processes())}")
    for path in segments:
        path.unlink(missing_ok=True)  # ours: mapped by this job's ranks, and nobody maps them now
    assert json.loads(lockfile.read_text())["slurm_job_id"] == first  # nobody released it
    (run1,) = runs(tel)
    done_first = set(successes([run1]))
    assert done_first and (run1["summary"] or {}).get("state", "running") == "running"  # no final summary

    second = sbatch([manifest], args, out)
    info = wait_for(second, timeout_s=240)
    text = Path(str(out).replace("%j", second)).read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert "taking over the stale output lock" in text and f"SLURM job {first}" in text, text[-3000:]
    run1, run2 = runs(tel)
    counts = successes([run1, run2])
    assert len(counts) == 60 and set(counts.values()) == {1}
    assert not {f"{e['recording_id']}/{e['chunk_id']}" for e in run2["events"] if e["event"] == "start"} & done_first
    assert ended is not None and ended["JobState"] == "FAILED", (
        "after rank 0 died the job kept running (its other ranks wait on rank 0 forever): it would hold "
        "its GPUs until the time limit; the script's srun needs --kill-on-bad-exit=1"
    )


def test_two_manifests_one_queue_interleave_across_ranks(tmp_path):
    """A short and a long recording in two manifests, one job: chunks of both run at the same
    time on different ranks (one queue, not one manifest after the other)."""
    whole = dataset(tmp_path, 2, 16, seconds=0.2)
    header, *rows = whole.read_text().splitlines()
    short, long = whole.with_name("short.csv"), whole.with_name("long.csv")
    short.write_text("\n".join([header, *[r for r in rows if r.startswith("rec000,")][:4]]) + "\n")
    long.write_text("\n".join([header, *[r for r in rows if r.startswith("rec001,")]]) + "\n")
    out = tmp_path / "slurm-%j.out"
    job_id = sbatch([short, long], job_args(sleep_s=0.5), out)
    info = wait_for(job_id)
    assert info["JobState"] == "COMPLETED", Path(str(out).replace("%j", job_id)).read_text()[-3000:]
    (run,) = runs(telemetry(tmp_path))
    assert run["summary"]["counts"]["success"] == 20 and len(run["summary"]["manifests"]) == 2
    events = run["events"]
    started = {(e["chunk_id"], e["attempt"]): e["started_at"] for e in events if e["event"] == "start"}
    done = [e for e in events if e["event"] == "success"]
    by_rec: dict[str, set[int]] = {}
    for e in done:
        by_rec.setdefault(e["recording_id"], set()).add(e["rank"])
    assert len(by_rec["rec000"]) >= 2 and len(by_rec["rec001"]) >= 2, by_rec
    spans = [(e["recording_id"], e["rank"], started[(e["chunk_id"], e["attempt"])], e["finished_at"]) for e in done]
    overlap = [
        (a, b)
        for a in spans
        if a[0] == "rec000"
        for b in spans
        if b[0] == "rec001" and b[1] != a[1] and a[2] < b[3] and b[2] < a[3]
    ]
    assert overlap, spans


def pmi_errors() -> list[str]:
    """The error lines srun's pmi2 plugin wrote so far into this cluster's slurmd logs."""
    lines = []
    for log in sorted((STATE / "log").glob("slurmd-*.log")):
        lines += [line for line in log.read_text(errors="replace").splitlines() if "error: mpi/pmi2" in line]
    return lines


def test_two_nodes_srun_N2_n4(tmp_path):
    """Two slurmd on this host: ranks on both nodes form one MPI world (srun's pmi2 plugin across
    slurmd), with the network module a multi-node job of the MPICH wheel needs (set by badc-mpi
    itself: transport/netmod.py), and no PMI request of the job garbled on the way (the slurmd logs
    name none)."""
    manifest = dataset(tmp_path, 2, 8, seconds=0.2)
    nodes = tmp_path / "nodes.txt"
    wrapper = f'sh -c \'echo $SLURMD_NODENAME $PMI_RANK >> {nodes}; exec "$0" "$@"\' {FAKE_CMD} --sleep-s 0.3'
    cmd = ["srun", "-N2", "-n4", MPI, PY, "-m", "badc_mpi", "run", str(manifest), *fake_args()]
    cmd[cmd.index("--runner-cmd") + 1] = wrapper
    errors_before = len(pmi_errors())
    proc = run_own(cmd, cwd=REPO, timeout_s=capped(180))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MPIR_CVAR_CH4_NETMOD=ofi" in proc.stderr  # badc-mpi chose it itself (transport/netmod.py)
    assert not pmi_errors()[errors_before:], pmi_errors()[errors_before:]
    (run,) = runs(telemetry(tmp_path))
    summary = run["summary"]
    assert summary["counts"]["success"] == 16 and len(summary["workers"]) == 4
    assert summary["slurm"]["nodelist"] == "n[1-2]"
    seen = {tuple(line.split()) for line in nodes.read_text().splitlines()}
    assert {node for node, _ in seen} == {"n1", "n2"}, seen  # chunks ran on both nodes
    assert set(successes([run]).values()) == {1}


def test_output_lock_of_a_finished_job_is_taken_over_via_squeue_and_a_running_one_refused(tmp_path):
    """The lock's SLURM rule against a real squeue: a lock naming a job of this cluster that is
    over is taken at once; one naming a job still running is refused (exit 4)."""
    manifest = dataset(tmp_path, 1, 3, seconds=0.2)
    lockfile = tmp_path / "artifacts" / "infer" / ".badc-mpi.lock"
    lockfile.parent.mkdir(parents=True)
    done = submit(None, ["true"], out=tmp_path / "true-%j.out")
    assert wait_for(done)["JobState"] == "COMPLETED"
    sleeper = submit(None, ["sleep", "300"], out=tmp_path / "sleep-%j.out")
    wait_for(sleeper, {"RUNNING"}, timeout_s=60)

    def holder(job_id: str) -> None:  # another node's run, its pid alive there as far as we know
        info = {"host": "another-node", "pid": 4242, "run_id": f"held-by-{job_id}", "started_at": "2026-01-01T00:00:00Z"}
        lockfile.write_text(json.dumps({**info, "slurm_job_id": job_id, "slurm_cluster": CLUSTER, "slurm_restart_count": 0}))

    cmd = ["srun", "-n", "2", MPI, PY, "-m", "badc_mpi", "run", str(manifest), *fake_args()]
    try:
        holder(sleeper)
        refused = run_own(cmd, cwd=REPO, timeout_s=capped(120))
        assert refused.returncode == 4, refused.stderr[-2000:]
        assert sleeper in refused.stderr and json.loads(lockfile.read_text())["run_id"] == f"held-by-{sleeper}"
    finally:
        subprocess.run(["scancel", sleeper], timeout=30)
    holder(done)
    taken = run_own(cmd, cwd=REPO, timeout_s=capped(120))
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert "no longer running" in taken.stderr and not lockfile.exists()


def test_the_test_cluster_is_its_own_with_fake_gpus_and_pmi2():
    """The harness itself: this cluster's config, its own munge socket, fake GPUs, and srun's
    PMI-2 plugin (the MPICH wheel's ranks see each other only with it)."""
    conf = Path(os.environ["SLURM_CONF"])
    assert conf.parent == STATE and f"AuthInfo=socket={STATE}/munge/munge.socket" in conf.read_text()
    listed = subprocess.run(["srun", "--mpi=list"], capture_output=True, text=True, timeout=30)
    assert MPI.split("=")[1] in listed.stdout + listed.stderr
    gpus = run_own(["srun", "-n1", "--gpus-per-node=4", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], timeout_s=capped(60))
    assert gpus.stdout.strip() == "0,1,2,3"
    world = run_own(
        ["srun", "-n", "2", MPI, PY, "-c", "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())"],
        cwd=REPO,
        timeout_s=capped(60),
    )
    assert world.stdout.split() == ["2", "2"], world.stderr


def _split(whole: Path) -> list[Path]:
    """The dataset's manifest as one manifest per recording, in its ``manifests/`` folder."""
    header, *rows = whole.read_text().splitlines()
    out = []
    for rec in sorted({r.split(",")[0] for r in rows}):
        path = whole.with_name(f"{rec}.csv")
        path.write_text("\n".join([header, *[r for r in rows if r.startswith(rec + ",")]]) + "\n")
        out.append(path)
    whole.unlink()
    return out


@pytest.mark.parametrize("array", [False, True], ids=["queue", "array"])
def test_orchestrate_writes_and_submits_a_script_that_completes(tmp_path, array):
    """``orchestrate --sockeye-script --submit`` through the real sbatch: one queue over both
    manifests, or an array task per manifest; every chunk done exactly once."""
    manifests = _split(dataset(tmp_path, 2, 4, seconds=0.2))
    script = tmp_path / "job.sbatch"
    sockeye = ["--sockeye-script", str(script), "--sockeye-time", "00:05:00", "--sockeye-mem", "1G"]
    sockeye += ["--sockeye-cpus-per-task", "1", "--sockeye-log-dir", str(tmp_path / "logs")]
    proc = run_own(
        [PYTHON, "-m", "badc_mpi", "orchestrate", str(tmp_path), *sockeye, *(["--sockeye-array"] if array else []), "--submit"]
        + ["--run-args", *fake_args("--allow-cpu", sleep_s=0.1)],
        cwd=REPO,
        timeout_s=capped(120),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job_id,) = re.findall(r"submitted\s+job (\d+)", proc.stdout)
    jobs = [job_id] + ([f"{job_id}_{i}" for i in range(len(manifests))] if array else [])
    for one in jobs[1:] if array else jobs:
        info = wait_for(one)
        logs = "\n".join(f.read_text()[-1500:] for f in sorted(tmp_path.rglob("*.out")))
        assert info["JobState"] == "COMPLETED", (one, info.get("ExitCode"), logs)
    ledgers = sorted(tmp_path.rglob("*.ledger.jsonl"))
    assert len(ledgers) == (len(manifests) if array else 1), ledgers
    counts: dict[str, int] = {}
    for ledger in ledgers:
        for rec in [json.loads(x) for x in ledger.read_text().splitlines()[1:]]:
            if rec["s"] == "success":
                counts[f"{rec['r']}/{rec['c']}"] = counts.get(f"{rec['r']}/{rec['c']}", 0) + 1
    assert len(counts) == 8 and set(counts.values()) == {1}, counts


_unknown = sorted(set(REPEATS) - {n for n in globals() if n.startswith("test_")})
if _unknown:
    raise ValueError(f"{REPEAT_ENV} names no test of {Path(__file__).name}: {', '.join(_unknown)}")
