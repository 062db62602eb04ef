"""The HawkEars checks of ``scripts/gpu/gpu_check.py``: c) the resident runner on the GPU chosen by
UUID with the GpuSampler, d) the CUDA out-of-memory path, e) ``scripts/bench/bench_hawkears.py``.

The OOM is made by a child (HawkEars' python, torch) that grabs nearly all free memory of the GPU
after the runner has loaded its models, so the next, long chunk cannot allocate its batch; the
child then lets go and the runner must restart and score the next chunk. In a dry run (no CUDA)
the runner's python is tests/fakes/hawkears_python, whose resident raises torch's
``OutOfMemoryError`` for inputs named by ``BADC_TEST_OOM_ON``; everything else is the same.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpu_check_env import REPO, Ctx, run_cmd, setup_hawkears, target_binding
from gpu_check_report import one_line
from make_audio import synth_wave, write_wav

from badc_mpi.gpu.sampler import GpuSampler
from badc_mpi.records import OOM, Binding, Chunk
from badc_mpi.runners.base import AttemptResult, Task
from badc_mpi.runners.hawkears.adapter import HawkearsRunner, build_hawkears_runner
from badc_mpi.runners.hawkears.options import HawkearsOptions

FAKE_PYTHON = REPO / "tests" / "fakes" / "hawkears_python"
OOM_MARK = "oom-chunk"
OOM_CHUNK_S = 900.0  #: long enough that its batch needs memory the runner has not cached yet

#: the memory hog of check d): grab free GPU memory in shrinking blocks until torch says OOM,
#: report, hold until stdin closes. Without CUDA (dry run) it grabs nothing and says so.
HOG = r"""
import json, sys
import torch
if not torch.cuda.is_available():
    print(json.dumps({"cuda": False, "grabbed_mib": 0}), flush=True)
    sys.stdin.read()
    sys.exit(0)
torch.cuda.init()
held = []
for block in (1 << 30, 1 << 26, 1 << 21):
    while True:
        try:
            held.append(torch.empty(block, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            break
free, total = torch.cuda.mem_get_info()
print(json.dumps({"cuda": True, "grabbed_mib": sum(t.numel() for t in held) >> 20,
                  "free_mib": free >> 20, "total_mib": total >> 20}), flush=True)
sys.stdin.read()
"""


def _chunk(path: Path, line: int) -> Chunk:
    stem = path.stem
    return Chunk(stem, stem, str(path), str(path), None, None, None, None, "", (), str(path.parent), line)


def _wavs(folder: Path, names: list[str], seconds: float) -> list[Chunk]:
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    for i, name in enumerate(names):
        path = folder / f"{name}.wav"
        write_wav(path, synth_wave(seconds, 22050, seed=i), 22050)
        chunks.append(_chunk(path, i + 2))
    return chunks


def _runner(ctx: Ctx, python: str, data_root: str, name: str) -> HawkearsRunner:
    options = HawkearsOptions(
        python=python,
        data_root=data_root,
        models=1 if ctx.dry else None,  # CPU: one model is enough to run the code paths
        start_timeout_s=ctx.budget.cap(300),
        log_dir=str(ctx.work / f"{name}-logs"),
    )
    return build_hawkears_runner(options)


def _attempt(ctx: Ctx, runner: HawkearsRunner, chunk: Chunk, sampler: GpuSampler | None, n: int) -> tuple[AttemptResult, dict]:
    task = Task(chunk, 1, str(ctx.work / "scratch" / f"{chunk.chunk_id}-{n}"), ctx.budget.cap(180), "gpu-check")
    if sampler is not None:
        sampler.begin(runner.active_pids)
    try:
        result = runner.run(task)
    finally:
        gpu = sampler.end() if sampler is not None else {}
    return result, gpu


def _uuid_binding(ctx: Ctx) -> Binding:
    binding = target_binding(ctx, ctx.target)
    if binding.cuda_visible_devices != ctx.target:
        raise AssertionError(f"binding by UUID gave CUDA_VISIBLE_DEVICES={binding.cuda_visible_devices!r}")
    return binding


def _device_ok(ctx: Ctx, device: Any, *, bound: bool = True) -> bool:
    """cuda on a GPU binding (in a dry run the fake resident reports FAKE_DEVICE); the bench of a
    dry run runs unbound, on the CPU."""
    return str(device).startswith("cuda") if bound or not ctx.dry else str(device).startswith("cpu")


#: what the fake resident of a dry run reports: the GPU binding's code paths without CUDA
FAKE_DEVICE = "cuda (fake: dry run on the CPU)"


def _runner_python(ctx: Ctx, python: str) -> str:
    """HawkEars' python; in a dry run the fake one, whose resident reports a CUDA device (the
    rank is bound to a fake GPU, and badc-mpi refuses a GPU rank whose HawkEars runs on the CPU)
    and raises torch's OutOfMemoryError for OOM_MARK inputs."""
    if not ctx.dry:
        return python
    os.environ.update(BADC_TEST_REAL_HAWKEARS_PYTHON=python, BADC_TEST_OOM_ON=OOM_MARK, BADC_TEST_REPORT_DEVICE=FAKE_DEVICE)
    return str(FAKE_PYTHON)


def _forget_fakes() -> None:
    for var in ("BADC_TEST_REAL_HAWKEARS_PYTHON", "BADC_TEST_OOM_ON", "BADC_TEST_REPORT_DEVICE"):
        os.environ.pop(var, None)


# ---------------------------------------------------------------------------- c) resident
def check_resident(ctx: Ctx, res: Any) -> None:
    python, data_root = setup_hawkears(ctx)
    binding = _uuid_binding(ctx)
    n = 2 if ctx.dry else 4
    chunks = _wavs(ctx.work / "resident", [f"resident{i}" for i in range(n)], ctx.hawkears_chunk_s)
    runner = _runner(ctx, _runner_python(ctx, python), data_root, "resident")
    sampler = GpuSampler(ctx.backend, binding, interval_s=0.25)
    results = []
    try:
        runner.start(binding)
        for n, chunk in enumerate(chunks):
            results.append(_attempt(ctx, runner, chunk, sampler, n))
        described = runner.describe()
    finally:
        runner.close()
        _forget_fakes()
    ok = [r for r, _ in results if r.ok]
    gpu = [g for _, g in results]
    per = [r.metrics.get("wall_s") for r, _ in results if r.metrics.get("wall_s") is not None]
    res.figures.update(
        device=described.get("device"),
        models=len(described.get("models_loaded") or []),
        low_band=len(described.get("low_band_models_loaded") or []),
        load_s=results[0][0].metrics.get("load_s") if results else None,
        chunks_ok=f"{len(ok)}/{len(chunks)}",
        per_chunk_s=round(sum(per) / len(per), 3) if per else None,
        hawkears_peak_vram_mib=max((r.metrics.get("peak_vram_mib") or 0 for r, _ in results), default=None),
        sampler_vram_runner_mib=[g.get("vram_used_mib") for g in gpu],
        sampler_vram_device_mib=max((g.get("vram_device_mib") or 0 for g in gpu), default=None),
        sampler_util_mean_pct=[g.get("gpu_util_pct_mean") for g in gpu],
        sampler_util_max_pct=max((g.get("gpu_util_pct_max") or 0 for g in gpu), default=None),
    )
    if len(ok) != len(chunks):
        bad = next(r for r, _ in results if not r.ok)
        raise AssertionError(f"{len(chunks) - len(ok)} chunk(s) failed: {bad.failure_class}: {one_line(bad.reason)}")
    if not _device_ok(ctx, described.get("device")):
        raise AssertionError(f"HawkEars reports device {described.get('device')!r}")
    if ctx.device.mig:
        res.reason = "MIG: NVML gives no per-process VRAM or utilisation (expected)"
        return
    missing = [k for g in gpu for k in ("vram_used_mib", "vram_device_mib", "gpu_util_pct_max") if g.get(k) is None]
    if missing:
        raise AssertionError(f"GpuSampler figures missing: {sorted(set(missing))}")


# ---------------------------------------------------------------------------- d) OOM
def _hog(ctx: Ctx, python: str) -> tuple[subprocess.Popen, dict]:
    env = dict(ctx.env, CUDA_VISIBLE_DEVICES=ctx.target, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    env.pop("PYTHONPATH", None)  # a --python-path wrapper sets its own
    hog = subprocess.Popen(
        [python, "-c", HOG],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    line = ctx.read_line(hog, ctx.budget.cap(120))
    if not line:
        hog.kill()
        raise AssertionError(f"the memory hog said nothing: {one_line(hog.stderr.read() if hog.poll() is not None else '')}")
    return hog, json.loads(line)


def _release(hog: subprocess.Popen) -> None:
    try:
        hog.stdin.close()  # type: ignore[union-attr]
        hog.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        hog.kill()
        hog.wait()


def check_oom(ctx: Ctx, res: Any) -> None:
    python, data_root = setup_hawkears(ctx)
    binding = _uuid_binding(ctx)
    runner_python = _runner_python(ctx, python)
    big_s = ctx.hawkears_chunk_s if ctx.dry else OOM_CHUNK_S
    big = _wavs(ctx.work / "oom", [OOM_MARK], big_s)[0]
    after = _wavs(ctx.work / "oom", ["after-oom"], ctx.hawkears_chunk_s)[0]
    runner = _runner(ctx, runner_python, data_root, "oom")
    hog = None
    try:
        runner.start(binding)
        hog, grabbed = _hog(ctx, python)
        res.figures.update(hog_grabbed_mib=grabbed.get("grabbed_mib"), free_left_mib=grabbed.get("free_mib"))
        if not ctx.dry and not grabbed.get("cuda"):
            raise AssertionError(f"torch in the memory hog ({python}) sees no CUDA device")
        first, _ = _attempt(ctx, runner, big, None, 0)
        _release(hog)
        hog = None
        starts = runner.worker_starts
        second, _ = _attempt(ctx, runner, after, None, 1)
        res.figures.update(
            oom_chunk_s=big_s,
            first_class=first.failure_class,
            first_reason=one_line(first.reason, 120),
            worker_starts=runner.worker_starts,
            next_ok=second.ok,
            next_device=second.metrics.get("device"),
            next_wall_s=second.metrics.get("wall_s"),
        )
    finally:
        if hog is not None:
            _release(hog)
        runner.close()
        _forget_fakes()
    if first.failure_class != OOM:
        raise AssertionError(f"the hogged chunk came back {first.failure_class or 'ok'}, not oom: {one_line(first.reason)}")
    if not second.ok:
        raise AssertionError(f"the chunk after the OOM failed: {second.failure_class}: {one_line(second.reason)}")
    if runner.worker_starts != starts + 1:
        raise AssertionError(f"the worker was not restarted (starts {starts} -> {runner.worker_starts})")


# ---------------------------------------------------------------------------- e) bench
def check_bench(ctx: Ctx, res: Any) -> None:
    python, data_root = setup_hawkears(ctx)
    mask = "" if ctx.dry else ctx.target
    opts = ["--chunks", "2" if ctx.dry else "12", "--cli-chunks", "1", "--chunk-s", str(ctx.hawkears_chunk_s)]
    opts += ["--models", "1" if ctx.dry else "3", "--cuda-visible-devices", mask]
    argv = [sys.executable, str(REPO / "scripts" / "bench" / "bench_hawkears.py"), *opts]
    argv += ["--python", python, "--data-root", data_root, "--workdir", str(ctx.work / "bench")]
    res.figures["command"] = "scripts/bench/bench_hawkears.py " + shlex.join(opts)
    done = run_cmd(argv, timeout=ctx.budget.cap(240), env=ctx.env)
    if done.rc != 0:
        raise AssertionError(f"exit {done.rc}: {one_line(done.err.strip().splitlines()[-1] if done.err.strip() else '')}")
    report = json.loads(done.out)
    resident, cli, bare = report["resident"], report["cli"], report["bare"]
    res.figures.update(
        device=report.get("device"),
        resident_device=resident.get("device"),
        resident_chunks_per_s=resident["chunks_per_s"],
        cli_chunks_per_s=cli["chunks_per_s"],
        bare_chunks_per_s=bare["chunks_per_s"],
        resident_vs_cli=report["resident_vs_cli_speedup"],
        resident_vs_bare=report["resident_overhead_vs_bare"],
    )
    failures = resident["failures"] + cli["failures"] + bare["failures"]
    if failures:
        raise AssertionError(f"{len(failures)} failed chunk(s): {one_line(failures[0])}")
    if not (_device_ok(ctx, report.get("device"), bound=False) and _device_ok(ctx, resident.get("device"), bound=False)):
        raise AssertionError(f"bench ran on {report.get('device')} / {resident.get('device')}")
