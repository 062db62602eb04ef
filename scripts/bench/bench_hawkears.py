#!/usr/bin/env python3
"""Benchmark: HawkEars resident worker vs one CLI process per chunk vs bare in-process scoring.

Runs in the runner's venv (``make bench-hawkears``); HawkEars itself runs in its own env. Same
tiny model, same synthetic 30 s chunks, one CPU rank. Prints one JSON object:

- resident: ``HawkearsRunner(mode="resident")`` over all chunks (worker started once);
- cli: ``HawkearsRunner(mode="cli")`` over ``--cli-chunks`` of the chunks only, spread over the run
  (each is a full ``hawkears analyze`` process); its chunks/s is extrapolated from its mean
  per-chunk time;
- bare: britekit's ``Predictor`` loaded once in one process of the HawkEars env, scoring each chunk
  (decode, spectrograms, ensemble forward, labels, CSV) with no runner, no protocol and none of
  HawkEars' per-recording work (class filters, heuristics, manifest); one untimed warm-up chunk
  first, as the resident worker warms up before its hello.

The three modes are interleaved chunk by chunk (resident, bare, and now and then CLI), so that
other load on a shared machine hits them alike; CPU times are reported next to wall times.
Targets: resident >= 15x CLI chunks/s; resident per-chunk time <= 1.2x bare.

On a GPU, ``--cuda-visible-devices UUID`` binds all three modes to that GPU (default "": CPU).

``--variants plain,malloc,pipeline,batch4,batch16`` measures instead the resident worker's
throughput options through a rank's real supervisor (``scripts/bench/bench_variants.py``): per-chunk
time with malloc tuning off and on, the pipeline off and on, and K = 1, 4, 16, interleaved round
by round, with whether each variant's detections equal the plain one's.

Usage: python scripts/bench/bench_hawkears.py [--chunks 40] [--chunk-s 30] [--cli-chunks 5]
       [--models 3] [--threads 1] [--data-root DIR] [--workdir DIR] [--cuda-visible-devices UUID]
       [--variants all|NAME,... [--rounds 6] [--round-chunks 16]]
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
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "bench"))
sys.path.insert(0, str(REPO / "scripts" / "demo"))  # make_audio

from bench_variants import VARIANTS, bench_variants  # noqa: E402

from badc_mpi.records import Binding
from badc_mpi.runners.base import Task  # noqa: E402
from badc_mpi.runners.hawkears import env as hawkears_env  # noqa: E402
from badc_mpi.runners.hawkears.adapter import build_hawkears_runner  # noqa: E402
from badc_mpi.runners.hawkears.options import HawkearsOptions  # noqa: E402

CPU = Binding(host=platform.node(), rank=1, local_rank=0, worker="cpu0@bench", cuda_visible_devices="")


def bench_binding(mask: str) -> Binding:
    """CPU for ``""``; else the GPU that ``mask`` (a UUID or MIG id) names, as a rank binds it."""
    if not mask:
        return CPU
    return Binding(host=platform.node(), rank=1, local_rank=0, worker="gpu@bench", cuda_visible_devices=mask, gpu_uuid=mask)


START_TIMES = {
    1: [0.0],
    2: [0.0, 1.5],
    3: [0.0, 1.0, 2.0],
    4: [0.0, 1.0, 2.0, 0.0],
    5: [0.0, 1.0, 2.0, 0.0, 1.5],
    6: [0.0, 1.0, 2.0],
}

BARE = r"""
import json, os, sys, time
t0 = time.perf_counter()
from copy import deepcopy
from pathlib import Path
import torch
from britekit import Predictor
from hawkears.core.config_loader import get_config
root, models, threads, out_dir, start_times, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]), sys.argv[6]
out = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
if threads:
    torch.set_num_threads(threads)
cfg = deepcopy(get_config(None, data_root=root))
cfg.infer.max_models = models
predictor = Predictor(cfg.misc.ckpt_folder, cfg=cfg)
predictor.get_overlapping_scores(warm, start_times)  # warm-up, untimed (the resident worker warms up at start)
out.write(json.dumps({"load_s": time.perf_counter() - t0, "device": str(predictor.device)}) + "\n")
for line in sys.stdin:
    path = line.strip()
    t, c = time.perf_counter(), time.process_time()
    frame_map = predictor.get_overlapping_scores(path, start_times)
    df = predictor.get_dataframe(None, frame_map, None, Path(path).stem)
    df.to_csv(os.path.join(out_dir, Path(path).stem + ".csv"), index=False, float_format="%.3f")
    out.write(json.dumps({"s": time.perf_counter() - t, "cpu_s": time.process_time() - c}) + "\n")
"""


@dataclasses.dataclass(frozen=True)
class Chunk:
    input_path: str
    extra: tuple = ()
    line: int = 0
    key: str = ""


def make_chunks(folder: Path, n: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    from make_audio import synth_wave, write_wav  # scripts/demo/make_audio.py (numpy)

    paths = []
    for i in range(n):
        path = folder / f"bench_{i:03d}.wav"
        if not path.exists():
            write_wav(path, synth_wave(seconds, 22050, seed=i), 22050)
        paths.append(path)
    return paths


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Mode:
    """One way of scoring a chunk, with its per-chunk wall and CPU times."""

    def __init__(self, name: str) -> None:
        self.name, self.start_s = name, 0.0
        self.times: list[float] = []
        self.cpus: list[float] = []
        self.failures: list[str] = []
        self.extra: dict = {}

    def score(self, path: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def summary(self) -> dict:
        total = sum(self.times)
        return {
            "chunks": len(self.times),
            "start_s": round(self.start_s, 2),
            "per_chunk_s_mean": round(statistics.mean(self.times), 3),
            "per_chunk_s_median": round(statistics.median(self.times), 3),
            "per_chunk_s_min": round(min(self.times), 3),
            "per_chunk_s_max": round(max(self.times), 3),
            "chunks_per_s": round(len(self.times) / total, 3),
            "per_chunk_cpu_s_mean": round(statistics.mean(self.cpus), 3),
            "failures": self.failures,
            **self.extra,
        }


class RunnerMode(Mode):
    def __init__(self, mode: str, scratch: Path, args: argparse.Namespace) -> None:
        super().__init__(mode)
        self.scratch = scratch
        self.runner = build_hawkears_runner(
            HawkearsOptions(mode=mode, data_root=args.data_root, models=args.models, threads=args.threads, python=args.python)
        )
        t0 = time.perf_counter()
        self.runner.start(bench_binding(args.cuda_visible_devices))
        self.start_s = time.perf_counter() - t0

    def score(self, path: Path) -> None:
        t, children = time.perf_counter(), _children_cpu_s()
        res = self.runner.run(Task(Chunk(str(path)), 1, str(self.scratch / f"{self.name}-{path.stem}"), 600.0, "bench"))
        self.times.append(time.perf_counter() - t)
        # CPU seconds (steadier than wall time on a shared machine): the worker's own figure for the
        # resident mode, what the finished `hawkears analyze` process used for the CLI mode
        self.cpus.append(res.metrics["cpu_s"] if self.name == "resident" else _children_cpu_s() - children)
        if not res.ok:
            self.failures.append(f"{path.name}: {res.failure_class}: {res.reason[:200]}")

    def close(self) -> None:
        self.extra = {
            "worker_starts": self.runner.worker_starts,
            "model_version": self.runner.data_root.model_version,
            "device": self.runner.describe().get("device"),
        }
        self.runner.close()


class BareMode(Mode):
    """britekit's Predictor loaded once in one process of the HawkEars env; no runner."""

    def __init__(self, python: str, root: str, warm: Path, out: Path, args: argparse.Namespace) -> None:
        super().__init__("bare")
        out.mkdir(parents=True, exist_ok=True)
        env = bench_binding(args.cuda_visible_devices).runner_env(dict(os.environ))
        env.pop("PYTHONPATH", None)
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        argv = [
            python,
            "-c",
            BARE,
            root,
            str(args.models),
            str(args.threads or 0),
            str(out),
            json.dumps(START_TIMES[args.models]),
            str(warm),
        ]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=root, text=True
        )
        hello = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.start_s = time.perf_counter() - t0
        self.extra = {"load_s": round(hello["load_s"], 2), "device": hello["device"]}

    def score(self, path: Path) -> None:
        self.proc.stdin.write(f"{path}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        reply = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.times.append(reply["s"])
        self.cpus.append(reply["cpu_s"])

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=60)


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
    p.add_argument("--cuda-visible-devices", default="", metavar="UUID", help="GPU for every mode (default '': CPU)")
    p.add_argument("--variants", default=None, metavar="NAMES", help="'all' or some of " + ",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=6, help="with --variants: rounds per variant")
    p.add_argument("--round-chunks", type=int, default=16, help="with --variants: chunks per round")
    args = p.parse_args(argv)
    args.threads = args.threads or None
    python = args.python or hawkears_env.find_hawkears_python()
    root = hawkears_env.resolve_data_root(args.data_root, python=python, allow_tiny=True)
    args.data_root = root.path
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="badc-bench-hawkears-"))
    load_before = os.getloadavg()
    if args.variants:
        return variants_main(args, argv, root, work, load_before)
    modes: list[Mode] = []
    try:
        paths = make_chunks(work / "chunks", args.chunks, args.chunk_s)
        resident = RunnerMode("resident", work / "scratch", args)
        modes.append(resident)
        cli = RunnerMode("cli", work / "scratch", args)
        modes.append(cli)
        bare = BareMode(python, root.path, paths[0], work / "bare", args)
        modes.append(bare)
        every = max(1, len(paths) // max(1, args.cli_chunks))
        # interleaved chunk by chunk, so that other load on the machine hits every mode alike
        for i, path in enumerate(paths):
            resident.score(path)
            bare.score(path)
            if i % every == 0 and len(cli.times) < args.cli_chunks:
                cli.score(path)
    finally:
        for mode in modes:
            mode.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    res, cl, ba = resident.summary(), cli.summary(), bare.summary()
    res["chunks_per_s_incl_start"] = round(len(resident.times) / (sum(resident.times) + resident.start_s), 3)
    speedup = res["chunks_per_s"] / cl["chunks_per_s"]
    overhead = res["per_chunk_s_mean"] / ba["per_chunk_s_mean"]
    cpu_speedup = cl["per_chunk_cpu_s_mean"] / res["per_chunk_cpu_s_mean"]
    cpu_overhead = res["per_chunk_cpu_s_mean"] / ba["per_chunk_cpu_s_mean"]
    report = {
        **report_head(args, argv, root, load_before),
        "device": ba["device"],
        "cuda_visible_devices": args.cuda_visible_devices,
        "resident": res,
        "cli": cl,
        "bare": ba,
        "resident_vs_cli_speedup": round(speedup, 1),
        "resident_overhead_vs_bare": round(overhead, 3),
        "cpu_time": {
            "resident_vs_cli_speedup": round(cpu_speedup, 1),
            "resident_overhead_vs_bare": round(cpu_overhead, 3),
        },
        "targets": {"resident_vs_cli_speedup>=15": speedup >= 15, "resident_overhead_vs_bare<=1.2": overhead <= 1.2},
    }
    print(json.dumps(report, indent=1))
    return 0


def report_head(args: argparse.Namespace, argv: list[str] | None, root: Any, load_before: tuple) -> dict[str, Any]:
    """When, where, with what: the first keys of every report."""
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "command": " ".join(
            [Path(sys.executable).name, "scripts/bench/bench_hawkears.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "data_root": root.path,
        "tiny_model": root.is_tiny,
        "chunk_s": args.chunk_s,
        "models": args.models,
        "threads": args.threads or "torch default",
    }


def variants_main(args: argparse.Namespace, argv: list[str] | None, root: Any, work: Path, load_before: tuple) -> int:
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"bench_hawkears.py: unknown variant(s) {', '.join(unknown)}; use {', '.join(VARIANTS)}")
    options = HawkearsOptions(data_root=root.path, models=args.models, threads=args.threads, python=args.python)
    try:
        paths = make_chunks(work / "chunks", args.chunks, args.chunk_s)
        figures = bench_variants(
            names, options, bench_binding(args.cuda_visible_devices), paths, args.rounds, args.round_chunks, work
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        **report_head(args, argv, root, load_before),
        "rounds": args.rounds,
        "round_chunks": args.round_chunks,
        "variants": figures,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
