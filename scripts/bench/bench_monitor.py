#!/usr/bin/env python3
"""Benchmark ``badc-mpi monitor``: the first view of a big telemetry log, and the CPU that
``--follow`` costs while the log grows. Prints one JSON object (figures for docs/benchmarks.md).

    python scripts/bench/bench_monitor.py [--lines 1000000] [--workers 8] [--repeat 3]
        [--follow-s 30] [--rate 200] [--keep DIR]

1. writes a telemetry log of ``--lines`` lines as rank 0 would (the ``run`` header, a ``worker``
   event per worker, then ``start`` and result lines of ``--workers`` GPU workers, 2% failed
   attempts retried up to twice; the records are built by ``badc_mpi.storage.telemetry``), reads
   it once to warm the page cache, then times ``python -m badc_mpi monitor LOG --once``
   ``--repeat`` times (wall and CPU, best and median);
2. starts ``monitor --follow`` (default interval, 2 s) on a copy of the first 100,000 lines, with
   its output on a pseudo-terminal (the redraw path) and then on a pipe (the SLURM-log path),
   while this process appends ``--rate`` lines/s in 10 batches a second; measures the monitor's
   CPU time (utime + stime from /proc) over ``--follow-s`` seconds after its first view; then
   writes a final summary and checks that the monitor ends by itself with every line read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import pty
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from badc_mpi.records import Chunk  # noqa: E402
from badc_mpi.storage import telemetry as tel  # noqa: E402
from badc_mpi.transport.messages import ResultEvent  # noqa: E402

RUN_ID = "20261201T000000Z-bench"
COMMAND = ["<resident>", "hawkears-2.3.0", "--min-score", "0.8", "--band", "1"]


def telemetry_lines(n_lines: int, workers: int = 8, seed: int = 1, t0_s: float = 1.79e9):
    """``n_lines`` telemetry lines of a run on ``workers`` GPUs (a generator)."""
    rnd = random.Random(seed)
    statics = [
        tel.worker_static(
            i,
            1000 + i,
            SimpleNamespace(
                host=f"se{i // 4:03d}",
                worker=f"gpu{i % 4}@se{i // 4:03d}",
                gpu_index=i % 4,
                gpu_uuid=f"GPU-{i:08x}-aaaa-bbbb-cccc",
                gpu_name="Tesla V100-SXM2-32GB",
            ),
        )  # fmt: skip
        for i in range(workers)
    ]
    model = "main=[" + ",".join(f"hgnet.{i}:{i:012x}" for i in range(5)) + "]"
    yield tel.dumps(tel.run_record(RUN_ID, t0_s - 60, host="se000", ranks=workers, runner="hawkears", model_version=model))
    for st in statics:
        facts = {**st, "runner": "hawkears", "device": "cuda", "model_version": model, "hawkears_version": "2.3.0",
                 "worker_pid": 5000, "worker_starts": 1, "load_s": 12.5, "command": COMMAND}  # fmt: skip
        yield tel.worker_line(facts, t0_s - 30)
    t, written, c = t0_s, 1 + len(statics), 0
    while written < n_lines:
        c += 1
        rec = f"rec{c // 60:05d}"
        start = c % 60 * 60000
        chunk = Chunk(rec, f"{rec}_chunk_{start}_{start + 60000}", f"audio/{rec}.wav", f"/data/audio/{rec}.wav",
                      start, start + 60000, None, None, "", (("site", "s1"),), "/data/m.csv", c + 1)  # fmt: skip
        st = statics[rnd.randrange(workers)]
        attempt = 1
        while written < n_lines:
            yield tel.start_line(tel.who(st), chunk, attempt, t)
            written += 1
            runtime = rnd.uniform(1, 3)
            bad = rnd.random() < 0.02
            gpu = {"vram_used_mib": 2100 + rnd.randrange(300), "vram_device_mib": 32510,
                   "gpu_util_pct_mean": rnd.uniform(50, 90), "gpu_util_pct_max": 99}  # fmt: skip
            ev = ResultEvent(
                key=chunk.key, attempt=attempt, started_at=t, finished_at=t + runtime, ok=not bad,
                failure_class="exit" if bad else None, reason="Error: CUDA error: an illegal memory access" if bad else "",
                exit_code=3 if bad else 0, signal=None, command=COMMAND,
                outputs={} if bad else {"scores": f"/out/{rec}/{chunk.chunk_id}.scores.csv",
                                        "detections": f"/out/{rec}/{chunk.chunk_id}.detections.jsonl"},
                detections=None if bad else rnd.randrange(5), runner_pid=5000, gpu=gpu, metrics={"score_s": round(runtime, 4)},
            )  # fmt: skip
            t += 2.0 / workers
            event = "retry" if bad and attempt < 3 else "failure" if bad else "success"
            if written < n_lines:
                body = tel.result_body(tel.who(st), chunk, ev, ev.metrics)
                yield tel.result_line(event, 5.0 if event == "retry" else None, body)
                written += 1
            if event != "retry":
                break
            attempt += 1


def write_log(path: Path, n_lines: int, workers: int = 8) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for line in telemetry_lines(n_lines, workers):
            fh.write(line + "\n")


def monitor_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "badc_mpi", "monitor", str(path), *args]


def first_view(path: Path, repeat: int) -> dict:
    with open(path, "rb") as fh:  # warm the page cache: the figure is the monitor's, not the disk's
        while fh.read(64 << 20):
            pass
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(monitor_cmd(path, "--once"), capture_output=True, text=True, cwd=REPO)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"monitor --once failed: {proc.stderr}")
    return {
        "wall_s_best": round(min(walls), 2),
        "wall_s_median": round(statistics.median(walls), 2),
        "wall_s_runs": [round(w, 2) for w in walls],
        "cpu_s_best": round(min(cpus), 2),
        "cpu_s_median": round(statistics.median(cpus), 2),
        "cpu_s_runs": [round(c, 2) for c in cpus],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "view_head": proc.stdout.splitlines()[:4],
    }


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def follow(src: Path, work: Path, seconds: float, rate: int, tty: bool, seed_lines: int = 100_000) -> dict:
    path = work / f"follow-{'tty' if tty else 'pipe'}.jsonl"
    with open(src, encoding="utf-8") as fh:  # only the lines this needs, not the whole big log
        lines = list(itertools.islice(fh, seed_lines + int(rate * seconds * 1.5) + rate))
    path.write_text("".join(lines[:seed_lines]))
    rest = iter(lines[seed_lines:])
    summary = tel.sidecar(path, ".summary.json")
    summary.unlink(missing_ok=True)
    if tty:
        master, slave = pty.openpty()
        proc = subprocess.Popen(monitor_cmd(path, "--follow"), stdout=slave, stderr=subprocess.PIPE, cwd=REPO)
        os.close(slave)
        reader = os.fdopen(master, "rb", buffering=0)
    else:
        proc = subprocess.Popen(monitor_cmd(path, "--follow"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        reader = proc.stdout
    seen: list[bytes] = []

    def drain() -> None:
        try:
            while chunk := reader.read(65536):
                seen.append(chunk)
        except OSError:  # the pty closes with an EIO when the monitor exits
            pass

    threading.Thread(target=drain, daemon=True).start()
    while not any(b"telemetry " in s for s in seen):  # the first view is drawn
        if proc.poll() is not None:
            raise SystemExit(f"monitor --follow ended early: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    appended = 0
    batch = max(1, rate // 10)
    t0, c0 = time.monotonic(), cpu_s(proc.pid)
    with open(path, "a", encoding="utf-8") as fh:
        while time.monotonic() - t0 < seconds:
            for _ in range(batch):
                fh.write(next(rest))
                appended += 1
            fh.flush()
            time.sleep(max(0.0, t0 + appended / rate - time.monotonic()))
    elapsed, c1 = time.monotonic() - t0, cpu_s(proc.pid)
    summary.write_text(json.dumps({"run_id": RUN_ID, "state": "finished", "counts": {"total": 10**6}}))
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    text = b"".join(seen).decode(errors="replace")
    total = seed_lines + appended
    return {
        "output": "tty" if tty else "pipe",
        "seconds": round(elapsed, 1),
        "lines_appended": appended,
        "lines_per_s": round(appended / elapsed, 1),
        "cpu_s": round(c1 - c0, 3),
        "cpu_pct_of_a_core": round(100 * (c1 - c0) / elapsed, 2),
        "exit_code": code,
        "saw_every_line": f"{total:,} lines" in text,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--follow-s", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=200, help="lines appended per second while following")
    ap.add_argument("--keep", metavar="DIR", help="write the logs here, keep them and reuse them (default: a temporary folder)")
    args = ap.parse_args()
    import numpy
    import pyarrow

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-monitor-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        log = work / f"big-{args.lines}-{args.workers}.jsonl"
        t0 = time.perf_counter()
        if not (args.keep and log.exists()):  # --keep reuses the log it wrote before
            write_log(log, args.lines, args.workers)
        result = {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"pyarrow {pyarrow.__version__}, numpy {numpy.__version__}",
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "lines": args.lines,
            "bytes": log.stat().st_size,
            "workers": args.workers,
            "generate_s": round(time.perf_counter() - t0, 1),
            "first_view": first_view(log, args.repeat),
        }
        if args.follow_s > 0:
            result["follow"] = [follow(log, work, args.follow_s, args.rate, tty) for tty in (True, False)]
        result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
