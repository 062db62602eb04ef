#!/usr/bin/env python3
"""Benchmark: HawkEars resident worker vs one CLI process per chunk vs bare in-process scoring.

Runs in the runner's venv (``make bench-hawkears``); HawkEars itself runs in its own env. Same
tiny model, same synthetic 30 s chunks, one CPU rank. Prints one JSON object:

- resident: ``HawkearsRunner(mode="resident")`` over all chunks (worker started once);
- cli: ``HawkearsRunner(mode="cli")`` over the first ``--cli-chunks`` chunks only (each is a full
  ``hawkears analyze`` process); its chunks/s is extrapolated from its mean per-chunk time;
- bare: britekit's ``Predictor`` loaded once in one process of the HawkEars env, scoring each chunk
  (decode, spectrograms, ensemble forward, labels, CSV) with no runner, no protocol and none of
  HawkEars' per-recording work (class filters, heuristics, manifest); one untimed warm-up chunk
  first, as the resident worker warms up before its hello.

Targets: resident >= 15x CLI chunks/s; resident per-chunk time <= 1.2x bare.

Usage: python scripts/bench_hawkears.py [--chunks 40] [--chunk-s 30] [--cli-chunks 5]
       [--models 3] [--threads 1] [--data-root DIR] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from badc_mpi import hawkears_env  # noqa: E402
from badc_mpi.runners.base import Binding, Task  # noqa: E402
from badc_mpi.runners.hawkears import HawkearsOptions, build_hawkears_runner  # noqa: E402

CPU = Binding(host=platform.node(), rank=1, local_rank=0, worker="cpu0@bench", cuda_visible_devices="")
START_TIMES = {1: [0.0], 2: [0.0, 1.5], 3: [0.0, 1.0, 2.0], 4: [0.0, 1.0, 2.0, 0.0], 5: [0.0, 1.0, 2.0, 0.0, 1.5], 6: [0.0, 1.0, 2.0]}

BARE = r"""
import json, os, sys, time
t0 = time.perf_counter()
from copy import deepcopy
from pathlib import Path
import torch
from britekit import Predictor
from hawkears.core.config_loader import get_config
root, models, threads, out_dir, start_times = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
paths = sys.argv[6:]
if threads:
    torch.set_num_threads(threads)
cfg = deepcopy(get_config(None, data_root=root))
cfg.infer.max_models = models
predictor = Predictor(cfg.misc.ckpt_folder, cfg=cfg)
predictor.get_overlapping_scores(paths[0], start_times)  # warm-up, untimed (the resident worker warms up at start)
load_s = time.perf_counter() - t0
times, cpus = [], []
for path in paths:
    t, c = time.perf_counter(), time.process_time()
    frame_map = predictor.get_overlapping_scores(path, start_times)
    df = predictor.get_dataframe(None, frame_map, None, Path(path).stem)
    df.to_csv(os.path.join(out_dir, Path(path).stem + ".csv"), index=False, float_format="%.3f")
    times.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
print(json.dumps({"load_s": load_s, "times": times, "cpus": cpus, "device": str(predictor.device)}))
"""


@dataclasses.dataclass(frozen=True)
class Chunk:
    input_path: str
    extra: tuple = ()
    line: int = 0
    key: str = ""


def make_chunks(folder: Path, n: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    from make_audio import synth_wave, write_wav  # scripts/make_audio.py (numpy)

    paths = []
    for i in range(n):
        path = folder / f"bench_{i:03d}.wav"
        if not path.exists():
            write_wav(path, synth_wave(seconds, 22050, seed=i), 22050)
        paths.append(path)
    return paths


def run_mode(mode: str, paths: list[Path], scratch: Path, args: argparse.Namespace) -> dict:
    opts = HawkearsOptions(mode=mode, data_root=args.data_root, models=args.models, threads=args.threads,
                           python=args.python)
    runner = build_hawkears_runner(opts)
    t0 = time.perf_counter()
    runner.start(CPU)
    start_s = time.perf_counter() - t0
    times, cpus, failures = [], [], []
    try:
        for i, path in enumerate(paths):
            t, children = time.perf_counter(), _children_cpu_s()
            res = runner.run(Task(Chunk(str(path)), 1, str(scratch / f"{mode}-{i:03d}"), 600.0, "bench"))
            times.append(time.perf_counter() - t)
            # CPU seconds of the work (less sensitive than wall time to other load on the machine):
            # the worker's own figure, or what the finished CLI process used
            cpus.append(res.metrics["cpu_s"] if mode == "resident" else _children_cpu_s() - children)
            if not res.ok:
                failures.append(f"{path.name}: {res.failure_class}: {res.reason[:200]}")
        starts = runner.worker_starts
    finally:
        runner.close()
    total = sum(times)
    return {
        "chunks": len(paths), "start_s": round(start_s, 2), "per_chunk_s_mean": round(statistics.mean(times), 3),
        "per_chunk_s_median": round(statistics.median(times), 3), "per_chunk_s_min": round(min(times), 3),
        "per_chunk_s_max": round(max(times), 3), "chunks_per_s": round(len(paths) / total, 3),
        "per_chunk_cpu_s_mean": round(statistics.mean(cpus), 3),
        "chunks_per_s_incl_start": round(len(paths) / (total + start_s), 3), "worker_starts": starts,
        "failures": failures, "model_version": runner.data_root.model_version,
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_bare(python: str, root: str, paths: list[Path], out: Path, args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    argv = [python, "-c", BARE, root, str(args.models), str(args.threads or 0), str(out),
            json.dumps(START_TIMES[args.models]), *map(str, paths)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bare scoring failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    times = data["times"]
    return {"chunks": len(times), "load_s": round(data["load_s"], 2), "per_chunk_s_mean": round(statistics.mean(times), 3),
            "per_chunk_s_median": round(statistics.median(times), 3), "chunks_per_s": round(len(times) / sum(times), 3),
            "per_chunk_cpu_s_mean": round(statistics.mean(data["cpus"]), 3), "device": data["device"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--chunk-s", type=float, default=30.0)
    p.add_argument("--cli-chunks", type=int, default=5, help="CLI mode runs only this many chunks (extrapolated)")
    p.add_argument("--models", type=int, default=3, help="ensemble size (HawkEars' CPU default: 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in every mode (0 = torch default)")
    p.add_argument("--data-root", default=None, help="default: the tiny model")
    p.add_argument("--python", default=None, help="HawkEars env python (default: make hawkears's)")
    p.add_argument("--workdir", default=None, help="keep chunks and outputs here (default: a temp dir)")
    args = p.parse_args(argv)
    args.threads = args.threads or None
    python = args.python or hawkears_env.find_hawkears_python()
    root = hawkears_env.resolve_data_root(args.data_root, python=python)
    args.data_root = root.path
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="badc-bench-hawkears-"))
    load_before = os.getloadavg()
    try:
        paths = make_chunks(work / "chunks", args.chunks, args.chunk_s)
        resident = run_mode("resident", paths, work / "scratch", args)
        cli = run_mode("cli", paths[: args.cli_chunks], work / "scratch", args)
        bare = run_bare(python, root.path, paths, work / "bare", args)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    speedup = resident["chunks_per_s"] / cli["chunks_per_s"]
    overhead = resident["per_chunk_s_mean"] / bare["per_chunk_s_mean"]
    cpu_speedup = cli["per_chunk_cpu_s_mean"] / resident["per_chunk_cpu_s_mean"]
    cpu_overhead = resident["per_chunk_cpu_s_mean"] / bare["per_chunk_cpu_s_mean"]
    report = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "command": " ".join([Path(sys.executable).name, "scripts/bench_hawkears.py", *(argv if argv is not None else sys.argv[1:])]),
        "data_root": root.path, "tiny_model": root.is_tiny, "chunk_s": args.chunk_s, "models": args.models,
        "threads": args.threads or "torch default", "device": bare["device"],
        "resident": resident, "cli": cli, "bare": bare,
        "resident_vs_cli_speedup": round(speedup, 1), "resident_overhead_vs_bare": round(overhead, 3),
        "cpu_time": {"resident_vs_cli_speedup": round(cpu_speedup, 1), "resident_overhead_vs_bare": round(cpu_overhead, 3)},
        "targets": {"resident_vs_cli_speedup>=15": speedup >= 15, "resident_overhead_vs_bare<=1.2": overhead <= 1.2},
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
