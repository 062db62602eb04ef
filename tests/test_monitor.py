"""badc-mpi monitor: the telemetry parser, the incremental reader (torn lines, replaced files),
the text, the CLI on a real dry run, and --follow on a log another process keeps appending to."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from badc_mpi.monitor.loop import Monitor, MonitorOptions, run_monitor
from badc_mpi.monitor.parse import parse_block, parse_lines
from badc_mpi.monitor.state import MonitorState, Timeline
from badc_mpi.monitor.tail import SummaryWatcher, TelemetryTail, parse_summary_head
from badc_mpi.monitor.view import format_duration, format_snapshot, one_line, rebucket, sparkline
from badc_mpi.storage import summary as summary_mod
from badc_mpi.storage import telemetry as tel
from badc_mpi.transport.messages import ResultEvent

from helpers import PYTHON, make_chunk, make_dataset, run_own

T0 = 1_790_000_000.0
RUN = "20261201T000000Z-test"


def static(i: int, gpu: bool = True) -> dict:
    binding = SimpleNamespace(
        host="node1", worker=f"gpu{i}@node1" if gpu else f"cpu{i}@node1", gpu_index=i if gpu else None,
        gpu_uuid=f"GPU-{i}" if gpu else None, gpu_name="Fake" if gpu else None,
        gpu_memory_total_mib=16000 if gpu else None,  # the monitor's "of": the device's size, from the worker event
    )  # fmt: skip
    return tel.worker_static(i, 100 + i, binding)


def attempt_lines(st: dict, n: int, attempt: int, event: str, at_s: float, runtime_s: float = 2.0, **kw) -> list[str]:
    """A ``start`` line and its result line, as rank 0 writes them."""
    chunk = make_chunk(recording_id="rec1", chunk_id=f"rec1_c{n}")
    ok = event == "success"
    ev = ResultEvent(
        key=chunk.key, attempt=attempt, started_at=at_s, finished_at=at_s + runtime_s, ok=ok,
        failure_class=kw.get("failure_class"), reason=kw.get("reason", ""), exit_code=0 if ok else 3, signal=None,
        command=["hawkears"], outputs={}, detections=1 if ok else None, runner_pid=7, gpu=kw.get("gpu", {}), metrics={},
    )  # fmt: skip
    backoff = 5.0 if event == "retry" else None
    return [
        tel.start_line(tel.who(st), chunk, attempt, at_s),
        tel.result_line(event, backoff, tel.result_body(tel.who(st), chunk, ev)),
    ]


def known_log() -> list[str]:
    """gpu0: 3 successes (one after an oom retry), gpu1: 1 success, a timeout retry then a failure
    (exit); a chunk still in flight on gpu1."""
    g0, g1 = static(0), static(1)
    gpu = {"vram_used_mib": 2000, "vram_device_mib": 16000, "gpu_util_pct_mean": 60.0, "gpu_util_pct_max": 90}
    lines = [tel.dumps(tel.run_record(RUN, T0 - 5, host="node1")), tel.worker_line(g0, T0 - 1), tel.worker_line(g1, T0 - 1)]
    lines += attempt_lines(g0, 1, 1, "success", T0, 2.0, gpu=gpu)
    lines += attempt_lines(g0, 2, 1, "retry", T0 + 2, 1.0, failure_class="oom", reason="CUDA out of memory")
    lines += attempt_lines(g1, 3, 1, "success", T0 + 1, 3.0, gpu={**gpu, "vram_used_mib": 5000})
    lines += attempt_lines(g0, 2, 2, "success", T0 + 10, 2.0, gpu={**gpu, "vram_used_mib": 2500, "gpu_util_pct_max": 95})
    lines += attempt_lines(g1, 4, 1, "retry", T0 + 5, 4.0, failure_class="timeout", reason="timed out\nafter 4 s")
    lines += attempt_lines(g1, 4, 2, "failure", T0 + 20, 1.0, failure_class="exit", reason="Error: bad audio " * 20)
    lines += attempt_lines(g0, 5, 1, "success", T0 + 30, 2.0, gpu={**gpu, "gpu_util_pct_mean": 70.0, "vram_used_mib": 2200})
    lines.append(tel.start_line(tel.who(g1), make_chunk(chunk_id="rec1_c6"), 1, T0 + 31))
    return lines


def folded(lines: list[str], per_line: bool = False) -> MonitorState:
    state = MonitorState()
    blocks = [line + "\n" for line in lines] if per_line else ["".join(line + "\n" for line in lines)]
    for block in blocks:
        state.apply(block.encode())
    return state


def check_known(state: MonitorState) -> None:
    snap = state.snapshot("run.jsonl", T0 + 40, None)
    rows = {r.worker: r for r in snap.workers}
    g0, g1 = rows["gpu0@node1"], rows["gpu1@node1"]
    assert (snap.success, snap.failure, snap.retries, snap.in_flight, snap.lines) == (4, 1, 2, 1, 18)
    assert (g0.success, g0.failure, g0.retries, g0.failed_attempts, g0.in_flight, g0.rank) == (3, 0, 1, 1, 0, 0)
    assert (g1.success, g1.failure, g1.retries, g1.failed_attempts, g1.in_flight, g1.rank) == (1, 1, 1, 2, 1, 1)
    assert g0.runtime_mean_s == pytest.approx((2 + 1 + 2 + 2) / 4)
    assert (g0.util_last_pct, g0.util_max_pct, g0.vram_last_mib, g0.vram_max_mib, g0.vram_device_mib) == (
        70,
        95,
        2200,
        2500,
        16000,
    )
    assert (g1.vram_last_mib, g1.util_max_pct) == (5000, 90)
    assert snap.attempts_by_class == {"oom": 1, "timeout": 1, "exit": 1}
    assert snap.failures_by_class == {"exit": 1}
    assert g0.last_error.failure_class == "oom" and g0.last_error.event == "retry"
    assert g1.last_error.failure_class == "exit" and g1.last_error.reason.startswith("Error: bad audio")
    assert sum(g0.finished_buckets) == 3 and sum(g1.finished_buckets) == 2 and sum(g1.retry_buckets) == 1
    assert snap.run_id == RUN and snap.elapsed_s == pytest.approx(32.0)


def test_the_parser_counts_known_lines_in_one_block_and_line_by_line():
    check_known(folded(known_log()))
    check_known(folded(known_log(), per_line=True))


def test_the_forgiving_path_reads_what_pyarrow_reads_and_skips_bad_lines():
    block = "".join(line + "\n" for line in known_log()).encode()
    fast, slow = parse_block(block), parse_lines(block)
    for name in ("event", "worker", "rank", "failure_class", "started_ms", "finished_ms"):
        assert getattr(fast, name).tolist() == getattr(slow, name).tolist(), name
    assert fast.worker_names == slow.worker_names and fast.class_names == slow.class_names
    for name in fast.floats:
        assert fast.floats[name].tolist() == pytest.approx(slow.floats[name].tolist(), nan_ok=True), name
    lines = known_log()
    lines.insert(3, '{"event": "success", "worker": "gpu0@node1", "runtime_s": "not a number"')  # corrupt
    lines.insert(5, "[1, 2]")
    state = folded(lines)
    assert state.bad_lines == 2
    check_known_counts = state.snapshot("x", T0 + 40, None)
    assert (check_known_counts.success, check_known_counts.failure, check_known_counts.retries) == (4, 1, 2)


def test_a_torn_last_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = known_log()
    whole = "".join(line + "\n" for line in lines[:4]).encode()
    third = (lines[4] + "\n").encode()
    path.write_bytes(whole + third[:50])
    monitor = Monitor(path)
    snap = monitor.refresh(T0 + 40)
    assert snap.lines == 4 and monitor.tail.partial == third[:50] and monitor.tail.offset_bytes == len(whole) + 50
    with open(path, "ab") as fh:  # the writer finishes the line, and writes the rest
        fh.write(third[50:])
        fh.write("".join(line + "\n" for line in lines[5:]).encode())
    snap = monitor.refresh(T0 + 40)
    assert monitor.tail.partial == b"" and snap.lines == len(lines)
    check_known(monitor.state)
    monitor.close()


def test_a_replaced_or_shrunk_file_is_read_again_from_the_start(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = known_log()
    path.write_text("".join(line + "\n" for line in lines))
    monitor = Monitor(path)
    assert monitor.refresh(T0).lines == len(lines)
    fresh = tmp_path / "new.jsonl"
    fresh.write_text("".join(line + "\n" for line in lines[:5]))  # the header, 2 workers, 1 chunk
    os.replace(fresh, path)  # another file under the name
    snap = monitor.refresh(T0)
    assert snap.lines == 5 and snap.success == 1 and "replaced" in snap.notices[-1] and "started over" in snap.notices[-1]
    path.write_text(lines[0] + "\n")  # truncated in place, smaller than what was read
    snap = monitor.refresh(T0)
    assert snap.lines == 1 and "shrank" in snap.notices[-1]
    text = "".join(line + "\n" for line in lines)
    path.write_text(text.replace("telemetry/2", "telemetry/9", 1))  # rewritten in place, bigger
    snap = monitor.refresh(T0)
    assert snap.lines == len(lines) and "rewritten" in snap.notices[-1]
    assert "started over" in format_snapshot(snap)
    monitor.close()


def test_a_missing_file_is_waited_for(tmp_path):
    path = tmp_path / "later.jsonl"
    tail = TelemetryTail(path)
    assert not tail.check().exists and list(tail.blocks()) == []
    path.write_text(known_log()[0] + "\n")
    assert tail.check().exists and [bytes(b) for b in tail.blocks()] == [(known_log()[0] + "\n").encode()]
    monitor = Monitor(tmp_path / "nothing.jsonl")
    assert "waiting for the telemetry file" in format_snapshot(monitor.refresh(T0))


def test_sparklines_and_other_text():
    assert sparkline([0, 1, 2, 4, 8]) == " ▁▂▄█"
    assert sparkline([0, 0]) == "  " and sparkline([]) == ""
    assert sparkline([1, 16], top=16) == "▁█" and sparkline([3], top=6) == "▄"
    assert rebucket([1, 2, 3, 4, 5], 2) == ([6, 9], 3)
    assert rebucket([1, 2], 10) == ([1, 2], 1)
    assert format_duration(3725) == "1:02:05" and format_duration(90000) == "1d 1:00:00" and format_duration(None) == "-"
    assert one_line("a\n  b\tc", 10) == "a b c" and one_line("x" * 20, 8) == "xxxxxxx…"


def test_the_timeline_coarsens_and_keeps_every_event():
    import numpy as np

    line = Timeline(cap_buckets=8, bucket_ms=1000)
    line.add(0, np.array([0, 0]), np.array([1000, 2500]), 1)
    assert line.bucket_ms == 1000 and line.row(0, 0, 3) == [1, 1, 0]
    line.add(1, np.array([0]), np.array([40_000]), 1)  # 39 s after the origin: 8 buckets need 8 s each
    assert line.bucket_ms == 8000 and line.row(0, 0, 8)[0] == 2 and sum(line.row(1, 0, 8)) == 1
    assert line.used(40_000) == 5


def test_the_view_shows_progress_rate_eta_and_errors_plainly():
    state = folded(known_log())
    head = parse_summary_head(
        b'{"run_id":"%s","state":"running","counts":{"total":20,"skipped":2}}' % RUN.encode(), complete=True
    )
    text = format_snapshot(state.snapshot("run.jsonl", T0 + 33, head, size_bytes=123))
    assert "7 / 20 chunks (35.0%): 4 succeeded, 1 failed, 2 skipped (resume)" in text
    assert "in flight 1" in text and "ETA " in text and "ETA -" not in text
    assert "failed attempts by class: oom 1, timeout 1, exit 1" in text and "failed chunks by class: exit 1" in text
    assert "gpu1@node1" in text and "failure exit: Error: bad audio" in text and "…" in text
    assert "\x1b" not in text


def test_the_summary_head_is_read_without_the_chunks(tmp_path):
    meta = {"telemetry": "/x/run.jsonl", "options": {"chunks_dir": "/y"}}
    workers = [summary_mod.WorkerStats(f"gpu{i}@n{i}" + "x" * 200, "n", i, "GPU") for i in range(400)]  # > 64 KB head
    entries = [(f"rec/c{i}", '{"status":"pending"}') for i in range(50_000)]
    text = summary_mod.render_summary(meta, {"total": 50_000, "skipped": 3}, workers, entries, state="finished", run_id=RUN)
    path = tmp_path / "run.summary.json"
    path.write_text(text)
    head = SummaryWatcher(path).poll()
    assert head is not None and head.final and (head.run_id, head.total, head.skipped) == (RUN, 50_000, 3)
    assert parse_summary_head(text.encode()[:1000], complete=False) is None
    assert parse_summary_head(b"not json", complete=True) is None


def test_follow_in_process_redraws_on_a_terminal_and_ends_with_the_summary(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = known_log()
    path.write_text("".join(line + "\n" for line in lines[:9]))
    ticks = []

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def sleep(_s: float) -> None:  # the "run" goes on between two refreshes
        ticks.append(1)
        if len(ticks) == 1:
            with open(path, "a") as fh:
                fh.write("".join(line + "\n" for line in lines[9:]))
        elif len(ticks) == 2:
            tel.sidecar(path, ".summary.json").write_text(
                json.dumps({"run_id": RUN, "state": "finished", "counts": {"total": 5}})
            )

    out = Terminal()
    assert run_monitor(MonitorOptions(str(path), follow=True, interval_s=0.01), out, clock=lambda: T0 + 40, sleep=sleep) == 0
    frames = out.getvalue().split("\x1b[H")[1:]
    assert len(frames) == 3 and "\x1b[2J" in frames[0] and "\x1b[K" in frames[1]
    assert "2 succeeded" in frames[0] and "4 succeeded, 1 failed" in frames[-1] and "finished" in frames[-1]


def test_cli_once_on_a_real_dry_run(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 2, 3)
    run = run_own(
        [PYTHON, "-m", "badc_mpi", "run", str(manifest), "--dry-run", "--stub-sleep-s", "0.01", "--no-chunk-check",
         "--telemetry-dir", str(tmp_path / "tel"), "--output-dir", str(tmp_path / "out")],
        timeout_s=120, cwd=tmp_path / "ds",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (telemetry,) = [p for p in (tmp_path / "tel").glob("*.jsonl") if not p.name.endswith(".ledger.jsonl")]
    for target in (telemetry, tmp_path / "tel"):  # the file, or its folder
        proc = run_own([PYTHON, "-m", "badc_mpi", "monitor", str(target), "--once"], timeout_s=60)
        assert proc.returncode == 0, proc.stderr
        assert "6 / 6 chunks (100.0%): 6 succeeded, 0 failed" in proc.stdout and "finished" in proc.stdout
        assert "cpu0@" in proc.stdout and "\x1b" not in proc.stdout
    missing = run_own([PYTHON, "-m", "badc_mpi", "monitor", str(tmp_path / "nope.jsonl")], timeout_s=60)
    assert missing.returncode == 2 and "no such telemetry file" in missing.stderr and "Fix:" in missing.stderr


WRITER = r"""
import json, sys, time
src, dst, summary, run_id = sys.argv[1:5]
lines = open(src).read().splitlines(keepends=True)
with open(dst, "a") as fh:
    for i, line in enumerate(lines):
        if i % 5 == 4:  # now and then a torn line, finished a little later
            fh.write(line[:40]); fh.flush(); time.sleep(0.1); fh.write(line[40:])
        else:
            fh.write(line)
        fh.flush()
        time.sleep(0.1)
time.sleep(0.3)
open(summary + ".tmp", "w").write(json.dumps({"run_id": run_id, "state": "finished", "counts": {"total": 5}}))
import os; os.replace(summary + ".tmp", summary)
"""


def test_follow_sees_another_process_append_and_ends_when_the_summary_says_finished(tmp_path):
    src, path = tmp_path / "src.jsonl", tmp_path / "run.jsonl"
    src.write_text("".join(line + "\n" for line in known_log()))
    summary = tel.sidecar(path, ".summary.json")
    monitor = subprocess.Popen(
        [PYTHON, "-m", "badc_mpi", "monitor", str(path), "--follow", "--interval-s", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    writer = None
    try:
        head = ""  # the file does not exist yet: the monitor says it waits, then the writer starts
        while "waiting for the telemetry file" not in head:
            line = monitor.stdout.readline()
            assert line, f"the monitor ended early: {monitor.stderr.read()}"
            head += line
        writer = subprocess.Popen([PYTHON, "-c", WRITER, str(src), str(path), str(summary), RUN], start_new_session=True)
        assert writer.wait(timeout=60) == 0
        out, err = monitor.communicate(timeout=60)
        out = head + out
    finally:
        for proc in (writer, monitor):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert monitor.returncode == 0, err
    snapshots = out.split("badc-mpi monitor: ")[1:]
    assert "waiting for the telemetry file" in snapshots[0]
    seen = {s.split("telemetry ", 1)[1].split(" lines")[0] for s in snapshots if "\ntelemetry " in s}
    assert len(seen) >= 3  # it saw the log grow
    assert "4 succeeded, 1 failed" in snapshots[-1] and "finished" in snapshots[-1] and "18 lines" in snapshots[-1]
    assert "\x1b" not in out


def test_ctrl_c_ends_follow_cleanly(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text("".join(line + "\n" for line in known_log()))
    proc = subprocess.Popen(
        [PYTHON, "-m", "badc_mpi", "monitor", str(path), "--follow", "--interval-s", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        first = proc.stdout.readline()
        while "badc-mpi monitor" not in first and time.monotonic() < deadline:
            first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_bench_generator_lines_are_read_back(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))
    import bench_monitor

    path = tmp_path / "gen.jsonl"
    bench_monitor.write_log(path, 2000, workers=4)
    state = MonitorState()
    state.apply(path.read_bytes())
    snap = state.snapshot(str(path), time.time(), None)
    assert snap.lines == 2000 and len(snap.workers) == 4 and snap.retries > 0


def test_cli_usage_errors_say_the_fix(tmp_path, capsys):
    from badc_mpi.cli import main

    (tmp_path / "run.summary.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "run.jsonl").write_text("")
    for args, needle in (
        ([str(tmp_path / "run.summary.json")], "a sidecar, not the run's telemetry"),
        ([str(tmp_path / "empty")], "no telemetry (*.jsonl) in this folder"),
        ([str(tmp_path / "run.jsonl"), "--interval-s", "0"], "must be above 0"),
    ):
        assert main(["monitor", *args]) == 2
        assert needle in capsys.readouterr().err
    assert main(["monitor", str(tmp_path / "run.jsonl")]) == 0
    assert "no events yet" in capsys.readouterr().out


def test_schema_1_lines_that_name_their_worker_in_every_line_still_read():
    lines = []
    for n, (rank, event) in enumerate([(0, "start"), (0, "success"), (1, "start"), (1, "retry"), (1, "start"), (1, "failure")]):
        line = {"schema": "badc-mpi.telemetry/1", "run_id": RUN, "event": event, "rank": rank, "worker": f"gpu{rank}@old"}
        at = tel.utc_iso(T0 + n)
        line.update({"started_at": at} if event == "start" else {"finished_at": at, "runtime_s": 1.0, "failure_class": None})
        lines.append(json.dumps(line))
    snap = folded(lines).snapshot("run.jsonl", T0 + 10, None)
    rows = {r.worker: r for r in snap.workers}
    assert set(rows) == {"gpu0@old", "gpu1@old"} and snap.run_id == RUN
    assert (rows["gpu0@old"].success, rows["gpu1@old"].failure, rows["gpu1@old"].retries, rows["gpu1@old"].rank) == (1, 1, 1, 1)
