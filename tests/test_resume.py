"""Crash-safe resume with real processes: kill -9 at seeded moments, rerun with --resume, check.

Also: corrupt state is a loud error, a torn last line is tolerated, the output lock, SIGTERM.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import (
    MPIEXEC,
    PYTHON,
    REPO,
    ProcessTree,
    make_dataset,
    run_badc,
    run_own,
    sidecar,
    signal_own,
    stop_tree,
    stopped_exit_ok,
    store_records,
    telemetry_files,
)

FAKE_SLOW = (
    f"{PYTHON} {REPO / 'scripts' / 'hawkears' / 'fake_hawkears.py'} --input {{input}} --output {{output_dir}} --sleep-s 0.05"
)
#: 0.2 s a chunk: the kill -9 test's 300 chunks outlast its ten seeded kills (1.1 s each on average)
SLOWER = FAKE_SLOW.replace("--sleep-s 0.05", "--sleep-s 0.2")


def run_args(manifest: Path, root: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(manifest),
        "--runner",
        "command",
        "--runner-cmd",
        FAKE_SLOW,
        "--output-dir",
        str(root / "out"),
        "--telemetry-dir",
        str(root / "tel"),
        "--progress-interval-s",
        "3600",
        *extra,
    ]


def rank_pids(tree: ProcessTree) -> dict[int, int]:
    """PMI rank -> pid of the badc-mpi ranks among the processes of ``tree`` (this test's mpiexec)."""
    found = {}
    for pid in tree.alive():
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
            if "badc_mpi" not in cmd:
                continue
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        env = dict(kv.split("=", 1) for kv in environ.split("\0") if "=" in kv)
        if "PMI_RANK" in env:
            found[int(env["PMI_RANK"])] = pid
    return found


def kill_run(manifest: Path, root: Path, target: str, delay_s: float) -> Path:
    """Start a 3-rank run, SIGKILL ``target`` (rank0 | worker | mpiexec) ``delay_s`` after its first
    chunk started, and return the killed run's telemetry file. Only this run's own processes (every
    process seen below its mpiexec while it ran) are signalled."""
    args = run_args(manifest, root, "--resume")
    args[args.index("--runner-cmd") + 1] = SLOWER
    cmd = [MPIEXEC, "-n", "3", PYTHON, "-m", "badc_mpi", *args]
    before = set(telemetry_files(root / "tel")) if (root / "tel").exists() else set()
    log_path = root / f"kill-{target}-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        tree = ProcessTree(proc.pid)
        try:
            tfile = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:  # the moment counts from the first chunk started
                new = set(telemetry_files(root / "tel")) - before if (root / "tel").exists() else set()
                if new and b'"event":"start"' in next(iter(new)).read_bytes():
                    tfile = next(iter(new))
                    break
                time.sleep(0.05)
            assert tfile is not None, f"no chunk started within 60 s (exit {proc.poll()}): {log_path.read_text()[-2000:]}"
            time.sleep(delay_s)
            assert proc.poll() is None, f"the run ended before the kill ({delay_s:.2f} s after its first start)"
            tree.refresh()
            if target == "mpiexec":
                signal_own(proc.pid, tree.start_times.get(proc.pid), signal.SIGKILL)
            else:
                rank = 0 if target == "rank0" else 1
                victim = rank_pids(tree).get(rank)
                assert victim is not None, f"rank {rank} of this run not found"
                signal_own(victim, tree.start_times[victim], signal.SIGKILL)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            # whatever the launcher left behind (orphaned ranks and proxies) goes too, as a scheduler would do
        finally:
            tree.refresh()
            tree.kill_all()
            tree.close()
            proc.wait(timeout=20)
    deadline = time.monotonic() + 20
    while tree.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not tree.alive(), f"processes of the killed run survive: {tree.alive()}"
    return tfile


def run_of(tfile: Path) -> tuple[list[dict], list[dict]]:
    """(telemetry events, ledger entries) of one run (torn last lines dropped)."""
    from badc_mpi.storage.ledger import read_ledger

    text = tfile.read_bytes()
    lines = text[: text.rfind(b"\n") + 1].decode().splitlines()
    ledger = sidecar(tfile, ".ledger.jsonl")
    return [json.loads(x) for x in lines if x.strip()], read_ledger(ledger).entries if ledger.exists() else []


def created_at(tfile: Path) -> str:
    from badc_mpi.storage.ledger import read_ledger

    ledger = sidecar(tfile, ".ledger.jsonl")
    return (read_ledger(ledger).header.get("created_at") if ledger.exists() else None) or ""


def all_runs(tel: Path) -> list[tuple[list[dict], list[dict]]]:
    """(telemetry events, ledger entries) of every run, oldest first (torn last lines dropped)."""
    ordered = sorted(telemetry_files(tel), key=lambda t: (created_at(t), t.name))  # by start time (ms), not name
    return [run_of(tfile) for tfile in ordered]


def check_store(out: Path, runs: list[tuple[list[dict], list[dict]]], keys: set[str]) -> None:
    """The store's crash rule: every success a run's ledger records has exactly one complete record
    in that run's segments (records without a ledger success may exist: never counted); nothing
    per chunk on disk."""
    stored = store_records(out)
    for _events, entries in runs:
        for e in entries:
            if e["s"] == "success":
                records = stored.get(e["run"], {}).get(f"{e['r']}/{e['c']}", [])
                assert len(records) == 1, (e, len(records))
    assert {k for run in stored.values() for k in run} <= keys
    assert {p.name for p in out.iterdir()} <= {"detections", ".badc-mpi.lock"}


def check_outputs(out: Path, keys: set[str]) -> None:
    """Exactly one set of final files per chunk: scores.csv + detections.jsonl, no leftovers."""
    files = Counter()
    for path in out.rglob("*"):
        if path.is_file() and ".badc-scratch" not in path.parts and path.name != ".badc-mpi.lock":
            files[path.relative_to(out).as_posix()] += 1
    expected = set()
    for key in keys:
        rec, chunk = key.split("/")
        expected |= {f"{rec}/{chunk}.scores.csv", f"{rec}/{chunk}.detections.jsonl"}
    assert set(files) == expected, sorted(set(files) ^ expected)[:10]


@pytest.mark.timeout(600)  # ten killed runs (each under 60 s to start, 20 s to die) and a resume (150 s)
def test_kill_minus_9_at_seeded_moments_then_resume_loses_nothing_and_redoes_only_in_flight(tmp_path):
    manifest = make_dataset(tmp_path, recordings=10, chunks_per_recording=30, seconds=0.2)
    keys = {f"rec{r:03d}/rec{r:03d}_chunk_{c * 200}_{c * 200 + 200}" for r in range(10) for c in range(30)}
    rng = random.Random(20261128)
    targets = ["rank0", "worker", "mpiexec"]
    moments = [(targets[i % 3], rng.uniform(0.2, 2.0)) for i in range(10)]
    killed = [kill_run(manifest, tmp_path, target, delay) for target, delay in moments]
    final_args = run_args(manifest, tmp_path, "--resume")
    final_args[final_args.index("--runner-cmd") + 1] = SLOWER  # the killed runs' settings: nothing to rerun
    final = run_badc(final_args, np=3, cwd=tmp_path, timeout_s=150)
    assert final.returncode == 0, final.stderr[-3000:]
    runs = all_runs(tmp_path / "tel")
    assert len(runs) == len(moments) + 1  # each killed run started a chunk, so wrote telemetry
    # every kill hit in-flight work: the killed run started a chunk its ledger never finished
    for tfile, (target, delay) in zip(killed, moments):
        (events, entries) = run_of(tfile)
        started = {f"{e['recording_id']}/{e['chunk_id']}" for e in events if e["event"] == "start"}
        finished = {f"{e['r']}/{e['c']}" for e in entries}
        assert started - finished, f"the kill of {target} after {delay:.2f} s hit no chunk in flight ({tfile.name})"
    # no run recorded a chunk as a success twice, in its ledger or its telemetry
    for index, (events, entries) in enumerate(runs):
        twice = [k for k, n in Counter(f"{e['r']}/{e['c']}" for e in entries if e["s"] == "success").items() if n > 1]
        assert not twice, f"run {index}: chunks recorded as success twice in one ledger: {twice[:5]}"
        twice = [
            k
            for k, n in Counter(f"{e['recording_id']}/{e['chunk_id']}" for e in events if e["event"] == "success").items()
            if n > 1
        ]
        assert not twice, f"run {index}: two success events for one chunk: {twice[:5]}"
    # exactly one success per chunk over every ledger of every run
    successes = Counter(f"{e['r']}/{e['c']}" for _, entries in runs for e in entries if e["s"] == "success")
    assert set(successes) == keys and set(successes.values()) == {1}
    summary = json.loads(sidecar(sorted(telemetry_files(tmp_path / "tel"))[-1], ".summary.json").read_text())
    assert summary["counts"]["success"] == 300 and summary["counts"]["total"] == 300
    # summary/2 lists only failed or unfinished chunks: none here; the ledgers hold every success
    assert summary["schema"] == "badc-mpi.summary/2" and summary["chunks"] == {}
    check_store(tmp_path / "out", runs, keys)
    # redone chunks: only those in flight (started, no final ledger record) when a run was killed
    done_before: set[str] = set()
    in_flight_total = 0
    starts_per_chunk: Counter[str] = Counter()
    for index, (events, entries) in enumerate(runs):
        started = {f"{e['recording_id']}/{e['chunk_id']}" for e in events if e["event"] == "start"}
        finished = {f"{e['r']}/{e['c']}" for e in entries}
        again = started & done_before
        assert not again, f"run {index}: chunks done in an earlier run ran again: {sorted(again)[:5]}"
        in_flight_total += len(started - finished)
        done_before |= {f"{e['r']}/{e['c']}" for e in entries if e["s"] == "success"}
        starts_per_chunk.update(started)
    redone = sum(n - 1 for n in starts_per_chunk.values())
    assert redone <= in_flight_total
    # every killed run left a torn-or-complete ledger that the next run read without complaint
    assert "resume:" in final.stdout


def test_torn_last_line_resumes_and_corrupt_state_is_a_loud_error(tmp_path):
    manifest = make_dataset(tmp_path, 2, 5, seconds=0.2)
    first = run_badc(run_args(manifest, tmp_path), np=2)
    assert first.returncode == 0, first.stderr[-2000:]
    (tfile,) = telemetry_files(tmp_path / "tel")
    ledger = sidecar(tfile, ".ledger.jsonl")
    summary = sidecar(tfile, ".summary.json")
    # a torn last line (killed mid-write): tolerated and reported
    with open(ledger, "ab") as fh:
        fh.write(b'{"r":"rec000","c":"rec000_chu')
    again = run_badc(run_args(manifest, tmp_path, "--resume"), np=2)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cut short" in again.stderr and "10 skipped" in again.stdout
    # a corrupt line in the middle: exit 2, naming the file and the line, nothing run
    lines = ledger.read_bytes().split(b"\n")
    lines[3] = b"{not json"
    ledger.write_bytes(b"\n".join(lines))
    n_before = len(telemetry_files(tmp_path / "tel"))
    bad = run_badc(run_args(manifest, tmp_path, "--resume"), np=2)
    assert bad.returncode == 2
    assert f"{ledger}, line 4" in bad.stderr and "Fix:" in bad.stderr
    assert len(telemetry_files(tmp_path / "tel")) == n_before
    # a corrupt summary named with --resume-summary: exit 2 naming it
    summary.write_text('{"chunks": [1, 2')
    bad = run_badc(run_args(manifest, tmp_path, "--resume-summary", str(summary)), np=2)
    assert bad.returncode == 2 and str(summary) in bad.stderr and "not valid JSON" in bad.stderr


def test_resume_summary_chain_and_changed_hash(tmp_path):
    manifest = make_dataset(tmp_path, 2, 5, seconds=0.2)
    # first run: only recording rec000 (as a partial manifest with the same ids)
    lines = manifest.read_text().splitlines()
    part = tmp_path / "manifests" / "part.csv"
    part.write_text("\n".join([lines[0]] + [x for x in lines[1:] if x.startswith("rec000,")]) + "\n")
    r1 = run_badc(run_args(part, tmp_path), np=2)
    assert r1.returncode == 0
    s1 = sidecar(telemetry_files(tmp_path / "tel")[0], ".summary.json")
    r2 = run_badc(run_args(manifest, tmp_path, "--resume-summary", str(s1)), np=2)
    assert r2.returncode == 0 and "5 skipped" in r2.stdout, r2.stdout
    s2 = sidecar(max(telemetry_files(tmp_path / "tel"), key=lambda p: p.stat().st_mtime_ns), ".summary.json")
    doc = json.loads(s2.read_text())
    assert doc["counts"]["success"] == 10 and doc["counts"]["skipped"] == 5
    # resuming the resumed run needs only its own summary; a changed sha256 makes a chunk run again
    first = lines[1].split(",")
    first[6] = "a" * 64
    manifest.write_text("\n".join([lines[0], ",".join(first)] + lines[2:]) + "\n")
    r3 = run_badc(run_args(manifest, tmp_path, "--resume-summary", str(s2)), np=2)
    assert r3.returncode == 0 and "9 skipped" in r3.stdout and "sha256 changed" in r3.stdout, r3.stdout


def test_output_lock_refuses_a_concurrent_run_and_takes_over_a_dead_one(tmp_path):
    manifest = make_dataset(tmp_path, 2, 4, seconds=0.2)
    args = [
        "run",
        str(manifest),
        "--dry-run",
        "--stub-sleep-s",
        "4.0",  # 4 chunks per rank: the first run holds the lock for ~16 s, far longer than a start-up
        "--output-dir",
        str(tmp_path / "out"),
        "--telemetry-dir",
        str(tmp_path / "tel"),
    ]
    first = subprocess.Popen(
        [MPIEXEC, "-n", "2", PYTHON, "-m", "badc_mpi", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lock = tmp_path / "out" / ".badc-mpi.lock"
    try:
        # wait until the first run holds the lock: its run_id (from its telemetry) in the lock file
        holder: dict = {}
        run_id = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            files = telemetry_files(tmp_path / "tel") if (tmp_path / "tel").exists() else []
            if files and run_id is None:
                events = [json.loads(x) for x in files[0].read_text().splitlines()[:1] if x.endswith("}")]
                run_id = events[0]["run_id"] if events else None
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if run_id is not None and holder.get("run_id") == run_id:
                break
            time.sleep(0.05)
        assert run_id is not None and holder.get("run_id") == run_id, (first.poll(), run_id, holder)
        second = run_badc(args, np=2)
        assert first.poll() is None, "the first run ended before the second checked the lock"
        assert second.returncode == 4, second.stderr
        assert json.loads(lock.read_text()) == holder
        assert f"pid {holder['pid']}" in second.stderr and holder["host"] in second.stderr
        out, err = first.communicate(timeout=90)
    except BaseException:
        stop_tree(first)
        raise
    assert first.returncode == 0, err[-2000:]
    assert not lock.exists()
    # a stale lock of a dead process on this host is taken over with a warning
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "run_id": "old", "started_at": "x"}))
    third = run_badc(args[:4] + ["0.01"] + args[5:], np=2)
    assert third.returncode == 0, third.stderr
    assert "taking over the stale output lock" in third.stderr
    # another host's fresh lock needs --force-unlock
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "run_id": "other", "started_at": "x"}))
    fourth = run_badc(args[:4] + ["0.01"] + args[5:], np=2)
    assert fourth.returncode == 4 and "--force-unlock" in fourth.stderr
    fifth = run_badc(args[:4] + ["0.01"] + args[5:] + ["--force-unlock"], np=2)
    assert fifth.returncode == 0, fifth.stderr


def test_sigterm_writes_summary_exits_75_and_the_printed_command_resumes(tmp_path):
    manifest = make_dataset(tmp_path, 3, 10, seconds=0.2)
    args = run_args(manifest, tmp_path, "--grace-s", "20")
    args[args.index("--runner-cmd") + 1] = FAKE_SLOW.replace("--sleep-s 0.05", "--sleep-s 0.4")
    cmd = [MPIEXEC, "-n", "3", PYTHON, "-m", "badc_mpi", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            files = telemetry_files(tmp_path / "tel") if (tmp_path / "tel").exists() else []
            if files and files[0].read_text().count('"event":"success"') >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # mpiexec forwards it to every rank, as srun does at the time limit
        out, err = proc.communicate(timeout=60)
    except BaseException:
        stop_tree(proc)
        raise
    assert stopped_exit_ok(proc.returncode), f"exit {proc.returncode}\n" + err[-2000:]
    (tfile,) = telemetry_files(tmp_path / "tel")
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    assert summary["state"] == "interrupted"
    assert summary["counts"]["in_flight"] == 0  # in-flight chunks finished within the grace period
    done = summary["counts"]["success"]
    assert 0 < done < 30
    command = out.split("resume with:\n", 1)[1].strip().splitlines()[0]
    assert shlex.split(command)[:3] == [MPIEXEC, "-n", "3"] and command.endswith(" --resume")
    resumed = run_own(["bash", "-c", command], cwd="/", timeout_s=150)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{done} skipped" in resumed.stdout
    newest = max(telemetry_files(tmp_path / "tel"), key=lambda p: p.stat().st_mtime_ns)
    assert json.loads(sidecar(newest, ".summary.json").read_text())["counts"]["success"] == 30
