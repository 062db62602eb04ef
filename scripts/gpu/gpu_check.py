#!/usr/bin/env python3
"""``make gpu-check``: one prepared script that exercises, on one NVIDIA GPU, every path that
otherwise only ever meets the fake NVML, in a few minutes, and prints a Markdown table for
docs/benchmarks.md (``--out FILE``: the same as JSON).

Checks (independent: a failing one is reported and the others still run):

a) nvml: the real NVML backend: devices, UUIDs, MIG, per-process VRAM of a child that allocates
   1 GiB with torch, device VRAM used, utilisation;
b) masks: ``CUDA_VISIBLE_DEVICES`` by index, UUID and UUID prefix through ``badc-mpi gpus --json``
   and ``select_visible``/``plan_binding``; an unknown entry must exit 2;
c) resident: the resident HawkEars runner bound by UUID scores a few chunks on ``cuda``; the
   GpuSampler's figures are non-null;
d) oom: a child grabs (nearly) all free GPU memory with torch, then a long chunk must come back as
   failure class ``oom``; the child lets go; the runner restarts and scores the next chunk;
e) bench: ``scripts/bench/bench_hawkears.py --cuda-visible-devices UUID`` (short);
f) sweep: ``mpiexec -n K python -m badc_mpi run --workers-per-gpu K --max-gpus 1 --hawkears-batch B``
   for K = 1, 2, 4 and B = 1, 4, 16 over a generated manifest: chunks/s, GPU utilisation, VRAM and
   the largest score difference between a batch and the per-chunk path, from the run's telemetry.

Without a GPU (NVML unavailable or no device) it prints one line and exits 3. ``--dry-run`` runs the
same code on CPU against the fake NVML (tests/fakes/nvml.py with tests/fake_nvml/four.json): the
HawkEars checks on CPU, the OOM through tests/fakes/hawkears_python (BADC_TEST_OOM_ON), the sweep
with the command runner and scripts/hawkears/fake_hawkears.py. Exit 0 only when every check passes.

Usage: python scripts/gpu/gpu_check.py [--dry-run] [--out FILE.json] [--budget-s 480]
       [--python HAWKEARS_PYTHON] [--python-path DIR] [--hawkears-data-root DIR] [--gpu INDEX|UUID]
       [--mpiexec 'CMD ...'] [--only nvml,masks,...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "gpu"))
sys.path.insert(0, str(REPO / "scripts" / "demo"))  # make_audio

from gpu_check_env import Budget, Ctx, run_cmd, setup_hawkears, setup_python, target_binding  # noqa: E402
from gpu_check_hawkears import check_bench, check_oom, check_resident  # noqa: E402
from gpu_check_report import (  # noqa: E402
    CHECKS,
    FAIL,
    NO_GPU_EXIT,
    PASS,
    CheckResult,
    Report,
    budget_line,
    format_markdown,
    no_gpu_line,
    one_line,
    report_json,
    telemetry_figures,
)

from badc_mpi.errors import RunnerSetupError  # noqa: E402
from badc_mpi.gpu import nvml  # noqa: E402
from badc_mpi.gpu.binding import detect  # noqa: E402
from badc_mpi.runners.process import signal_group  # noqa: E402

FAKE_BACKEND = f"{REPO / 'tests' / 'fakes' / 'nvml.py'}:FakeNvmlBackend"
FAKE_FILE = REPO / "tests" / "fake_nvml" / "four.json"
FAKE_CMD = f"{sys.executable} {REPO / 'scripts' / 'hawkears' / 'fake_hawkears.py'} --input {{input}} --output {{output_dir}}"
MIN_CHECK_S = 15.0  #: a check does not start with less budget than this

#: the child of check a): allocate MiB with torch on the one visible device, keep the GPU busy for
#: a few seconds, say so, hold until stdin closes. Without torch or CUDA (dry run) it says that.
ALLOC = r"""
import json, sys, time
mib, busy_s = int(sys.argv[1]), float(sys.argv[2])
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError as exc:
    torch, cuda = None, False
if not cuda:
    print(json.dumps({"cuda": False, "torch": getattr(torch, "__version__", None)}), flush=True)
    sys.stdin.read()
    sys.exit(0)
x = torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
a = torch.randn(4096, 4096, device="cuda")
print(json.dumps({"cuda": True, "torch": torch.__version__, "cuda_version": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0)}), flush=True)
end = time.monotonic() + busy_s
while time.monotonic() < end:
    a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
sys.stdin.read()
"""


# ---------------------------------------------------------------------------- a) NVML
def check_nvml(ctx: Ctx, res: CheckResult) -> None:
    devs = ctx.backend.devices()
    uuids = [d.uuid for d in devs]
    res.figures.update(
        devices=len(devs),
        uuids=uuids,
        mig={d.index: list(d.mig_uuids) for d in devs if d.mig} or "off",
    )
    problems = [u for u in uuids if not u.startswith("GPU-")]
    if problems or len(set(uuids)) != len(uuids):
        raise AssertionError(f"bad or duplicate UUIDs: {uuids}")
    dev = ctx.device.uuid
    before = ctx.backend.device_vram_used_mib(dev)
    env = dict(ctx.env, CUDA_VISIBLE_DEVICES=ctx.target, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    try:
        python = setup_python(ctx)  # HawkEars' python has a CUDA torch
    except RunnerSetupError:
        python = sys.executable
    child = subprocess.Popen(
        [python, "-c", ALLOC, str(ctx.alloc_mib), "4"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    proc_mib: list[float | None] = []
    used: list[float] = []
    util: list[float | None] = []
    try:
        line = ctx.read_line(child, ctx.budget.cap(120))
        if not line:
            child.kill()
            raise AssertionError(f"the torch child {python} said nothing: {one_line(child.stderr.read()[-2000:])}")
        hello = json.loads(line)
        for _ in range(12):
            proc_mib.append(ctx.backend.process_vram_mib(dev, {child.pid}))
            used.append(ctx.backend.device_vram_used_mib(dev))
            util.append(ctx.backend.utilization_pct(dev))
            time.sleep(0.25)
    finally:
        _stop(child)
    seen = [v for v in proc_mib if v is not None]
    utils = [v for v in util if v is not None]
    res.figures.update(
        child_cuda=hello.get("cuda"),
        torch=hello.get("torch"),
        cuda=hello.get("cuda_version"),
        vram_before_mib=round(before, 1),
        child_vram_mib=max(seen) if seen else None,
        device_vram_peak_mib=round(max(used), 1),
        util_max_pct=max(utils) if utils else None,
    )
    if ctx.dry:
        if not seen or not utils:
            raise AssertionError("the fake backend gave no per-process VRAM or utilisation")
        return
    if not hello.get("cuda"):
        raise AssertionError(f"torch in the child python {python} sees no CUDA device: {hello}")
    if ctx.device.mig:
        res.reason = "MIG: per-process VRAM and utilisation are not reported by NVML (expected)"
        return
    if not seen or max(seen) < ctx.alloc_mib:
        raise AssertionError(
            f"per-process VRAM of pid {child.pid} is {max(seen) if seen else None} MiB, expected >= "
            f"{ctx.alloc_mib} (NVML lists no such pid: a container PID namespace?)"
        )
    if max(used) < before + 0.9 * ctx.alloc_mib:
        raise AssertionError(f"device VRAM used rose from {before:.0f} only to {max(used):.0f} MiB")
    if not utils:
        raise AssertionError("NVML reports no utilisation for this device")


def _stop(child: subprocess.Popen) -> None:
    try:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        signal_group(child.pid)
        child.wait()


# ---------------------------------------------------------------------------- b) masks
def check_masks(ctx: Ctx, res: CheckResult) -> None:
    dev = ctx.device
    cases = [("index", str(dev.index)), ("uuid", dev.uuid), ("uuid prefix", dev.uuid[:12])]
    rows, failures = [], []
    for name, mask in cases:
        env = dict(ctx.env, CUDA_VISIBLE_DEVICES=mask)
        done = run_cmd([sys.executable, "-m", "badc_mpi", "gpus", "--json"], timeout=ctx.budget.cap(60), env=env)
        binding = None
        if done.rc == 0:
            binding = (json.loads(done.out).get("binding") or {}) if done.out.strip() else {}
        got = (binding or {}).get("gpu_uuid")
        in_process = target_binding(ctx, mask).gpu_uuid  # select_visible + plan_binding here
        ok = done.rc == 0 and got == dev.uuid == in_process and binding.get("cuda_visible_devices") == mask
        rows.append({"mask": name, "value": mask, "rc": done.rc, "gpu_uuid": got, "ok": ok})
        if not ok:
            failures.append(f"{name} {mask!r}: rc {done.rc}, got {got}, in-process {in_process} {one_line(done.err)}")
    bad = "GPU-ffffffff-0000"
    done = run_cmd(
        [sys.executable, "-m", "badc_mpi", "gpus", "--json"],
        timeout=ctx.budget.cap(60),
        env=dict(ctx.env, CUDA_VISIBLE_DEVICES=bad),
    )
    rows.append({"mask": "unknown", "value": bad, "rc": done.rc, "gpu_uuid": None, "ok": done.rc == 2})
    if done.rc != 2:
        failures.append(f"unknown entry {bad!r}: exit {done.rc}, expected 2")
    res.figures["masks"] = rows
    if failures:
        raise AssertionError("; ".join(failures))


# ---------------------------------------------------------------------------- f) sweep
def _sweep_manifest(folder: Path, chunks: int, seconds: float, rate: int) -> Path:
    """``chunks`` rows over 8 distinct recordings (rows repeat files: audio is written once)."""
    from make_audio import synth_wave, write_wav

    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = ["recording_id,chunk_id,source_path,start_ms,end_ms"]
    step = int(seconds * 1000)
    for i in range(chunks):
        rec, start = f"rec{i % 4:02d}", (i // 4) * step
        cid = f"{rec}_chunk_{start}_{start + step}"
        audio = folder / "audio" / f"a{i % 8}.wav"
        if not audio.exists():
            write_wav(audio, synth_wave(seconds, rate, seed=i), rate)
        rows.append(f"{rec},{cid},audio/{audio.name},{start},{start + step}")
    manifest = folder / f"sweep-{chunks}.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def check_sweep(ctx: Ctx, res: CheckResult) -> None:
    """``--workers-per-gpu`` K x ``--hawkears-batch`` B: chunks/s, GPU use, VRAM, batch score difference."""
    rate = 8000 if ctx.dry else 22050
    if ctx.dry:
        runner = ["--runner", "command", "--runner-cmd", FAKE_CMD]
    else:
        setup_hawkears(ctx)
        runner = ["--hawkears-python", ctx.python, "--hawkears-data-root", ctx.data_root]
    env = dict(ctx.env)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if ctx.target != ctx.first_uuid:  # not the first GPU: narrow to it (binding rule 1)
        env["CUDA_VISIBLE_DEVICES"] = ctx.target
    rows, failures = [], []
    for k in ctx.sweep_ranks:
        for batch in ctx.sweep_batches:
            chunks = ctx.sweep_chunks_for(batch)
            label = f"K={k} B={batch}"
            if ctx.budget.left() < MIN_CHECK_S:
                print(budget_line(f"sweep {label}", ctx.budget.left()), file=sys.stderr, flush=True)
                rows.append({"K": k, "batch": batch, "result": "skipped: budget spent"})
                failures.append(f"{label} skipped (budget)")
                continue
            manifest = _sweep_manifest(ctx.work / "sweep", chunks, ctx.chunk_s, rate)
            out = ctx.work / f"sweep-k{k}-b{batch}"
            argv = [*ctx.mpiexec, "-n", str(k), sys.executable, "-m", "badc_mpi", "run", str(manifest)]
            argv += ["--output-dir", str(out / "out"), "--telemetry-dir", str(out / "tel"), "--no-chunk-check"]
            argv += ["--max-gpus", "1", "--workers-per-gpu", str(k), "--max-retries", "0", *runner]
            if not ctx.dry:
                argv += ["--hawkears-log-dir", str(out / "logs"), "--hawkears-batch", str(batch)]
            done = run_cmd(argv, timeout=ctx.budget.cap(180), env=env, cwd=ctx.work)
            events = []
            for path in sorted((out / "tel").glob("*.jsonl")):
                if not path.name.endswith(".ledger.jsonl"):
                    events += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            figs = telemetry_figures(events)
            row = {"K": k, "batch": batch, "chunks": chunks, "rc": done.rc, "wall_s": round(done.seconds, 1), **figs}
            row["workers"] = len(figs["workers"])
            rows.append(row)
            if done.rc != 0 or figs["chunks_ok"] != chunks:
                why = "timed out" if done.timed_out else f"exit {done.rc}"
                failures.append(f"{label}: {why}, {figs['chunks_ok']}/{chunks} chunks: {one_line(done.err[-2000:])}")
            elif not ctx.dry and not (figs["devices"] and all(d.startswith("cuda") for d in figs["devices"])):
                failures.append(f"{label}: HawkEars ran on {figs['devices']}, not cuda")
            elif figs["util_max_pct"] is None and not ctx.device.mig:
                failures.append(f"{label}: no GPU utilisation in telemetry")
    res.figures.update(chunk_s=ctx.chunk_s, runs=rows)
    if failures:
        raise AssertionError("; ".join(failures))


# ---------------------------------------------------------------------------- driver
RUNNERS = {
    "nvml": check_nvml,
    "masks": check_masks,
    "resident": check_resident,
    "oom": check_oom,
    "bench": check_bench,
    "sweep": check_sweep,
}


class BudgetSpent(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise BudgetSpent("the global budget ran out during this check")


def run_check(ctx: Ctx, key: str, only: set[str]) -> CheckResult:
    res = CheckResult(key)
    if only and key not in only:
        res.reason = "not selected (--only)"
        return res
    left = ctx.budget.left()
    if left < MIN_CHECK_S:
        print(budget_line(key, left), file=sys.stderr, flush=True)
        res.reason = f"budget spent ({left:.0f} s left)"
        return res
    print(f"gpu-check: {CHECKS[key]} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        RUNNERS[key](ctx, res)
        res.status = PASS
    except Exception as exc:  # noqa: BLE001 - a failing check is data; the others still run
        res.status, res.reason = FAIL, one_line(f"{type(exc).__name__}: {exc}" if not str(exc) else exc)
    res.seconds = round(time.monotonic() - start, 1)
    print(f"gpu-check: {key}: {res.status} {res.reason}", file=sys.stderr, flush=True)
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("--dry-run", action="store_true", help="CPU only: fake NVML, HawkEars on CPU, fake runner in the sweep")
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    p.add_argument("--budget-s", type=float, default=480.0, help="global time budget (default 480)")
    p.add_argument(
        "--python", default=None, help="HawkEars' python (default: $BADC_MPI_HAWKEARS_PYTHON, the `make hawkears` env)"
    )
    p.add_argument("--python-path", default=None, metavar="DIR", help="folder with hawkears/britekit (pip --target) for --python")
    p.add_argument("--hawkears-data-root", default=None, help="real models (default: staged ones, else the tiny model)")
    p.add_argument("--gpu", default=None, help="NVML index or UUID of the GPU to check (default: the first by PCI bus id)")
    p.add_argument("--mpiexec", default=None, help="launcher command (default: the venv's mpiexec, else mpiexec on PATH)")
    p.add_argument("--only", default="", help="comma-separated checks: " + ",".join(CHECKS))
    p.add_argument("--workdir", default=None, help="keep generated audio, outputs and logs here (default: a temp dir)")
    args = p.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(CHECKS)
    if unknown:
        p.error(f"--only: unknown checks {sorted(unknown)}; choose from {','.join(CHECKS)}")
    return args


def _driver(ctx: Ctx) -> str:
    if ctx.dry:
        return f"fake ({os.path.relpath(FAKE_FILE, REPO)})"
    try:
        import pynvml

        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception as exc:  # noqa: BLE001 - informative only
        return f"unknown ({one_line(exc)})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    budget = Budget(args.budget_s)
    # badc-mpi's own subprocesses (`badc-mpi gpus`, ranks, the bench) import it from this checkout
    # even where it is not pip-installed; HawkEars' processes drop PYTHONPATH (the runner does)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if args.dry_run:  # every process opening NVML (ranks too) reads these
        os.environ[nvml.BACKEND_ENV] = FAKE_BACKEND
        os.environ["BADC_MPI_FAKE_NVML"] = str(FAKE_FILE)
    try:
        backend = nvml.open_backend()
        gpus = detect(dict(os.environ, CUDA_VISIBLE_DEVICES=""), backend)[0]  # all of them, PCI order
        devices = {d.uuid: d for d in backend.devices()}
    except nvml.NvmlUnavailable as exc:
        print(no_gpu_line(exc.reason))
        return NO_GPU_EXIT
    if not devices:
        print(no_gpu_line("no device found"))
        return NO_GPU_EXIT
    want = args.gpu or gpus[0].uuid
    device = next((d for d in devices.values() if want in (d.uuid, str(d.index))), None)
    if device is None:
        print(f"gpu-check: --gpu {want} names no GPU here ({', '.join(devices)})", file=sys.stderr)
        return 2
    work = Path(args.workdir).absolute() if args.workdir else Path(tempfile.mkdtemp(prefix="badc-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    mpiexec = shlex.split(args.mpiexec) if args.mpiexec else [_default_mpiexec()]
    ctx = Ctx(
        args=args,
        dry=args.dry_run,
        backend=backend,
        device=device,
        target=device.mig_uuids[0] if device.mig and device.mig_uuids else device.uuid,
        first_uuid=gpus[0].uuid,
        budget=budget,
        work=work,
        env=dict(os.environ),
        mpiexec=mpiexec,
    )
    only = set(filter(None, args.only.split(",")))
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(args.budget_s) + 60)
    checks = []
    try:
        for key in CHECKS:
            checks.append(run_check(ctx, key, only))
    finally:
        signal.alarm(0)
        backend.shutdown()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report = Report(
        date_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        mode="dry-run" if ctx.dry else "gpu",
        host=socket.gethostname(),
        gpu=f"{device.name} ({device.uuid}, {device.memory_total_mib} MiB{', MIG' if device.mig else ''})",
        driver=_driver(ctx),
        nvml_backend=nvml.backend_name(),
        command=shlex.join(["python", "scripts/gpu/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        hawkears_python=ctx.python or "",
        data_root=ctx.data_root or "",
        budget_s=args.budget_s,
        wall_s=round(time.monotonic() - t0, 1),
        checks=checks,
    )
    print(format_markdown(report), end="")
    if args.out:
        Path(args.out).write_text(json.dumps(report_json(report), indent=1) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


def _default_mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else (shutil.which("mpiexec") or "mpiexec")


if __name__ == "__main__":
    sys.exit(main())
