"""scripts/gpu/gpu_check.py (``make gpu-check``): its dry mode runs every check on CPU against the fake
NVML, so the GPU script cannot rot; without a GPU it says so in one line and exits 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "gpu"))

from gpu_check_report import (  # noqa: E402
    CHECKS,
    FAIL,
    PASS,
    SKIP,
    CheckResult,
    Report,
    format_markdown,
    no_gpu_line,
    report_json,
    telemetry_figures,
)

from badc_mpi.errors import RunnerSetupError  # noqa: E402
from badc_mpi.gpu.nvml import BACKEND_ENV, NvmlUnavailable, PynvmlBackend  # noqa: E402
from badc_mpi.runners.hawkears import env as hawkears_env  # noqa: E402

from fakes.nvml import fake_env  # noqa: E402

SCRIPT = str(REPO / "scripts" / "gpu" / "gpu_check.py")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (BACKEND_ENV, "BADC_MPI_FAKE_NVML", "CUDA_VISIBLE_DEVICES")}
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str], timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _hawkears_ready() -> bool:
    try:
        hawkears_env.resolve_data_root(None, python=hawkears_env.find_hawkears_python(), allow_tiny=True)
        return True
    except RunnerSetupError as exc:
        if os.environ.get("BADC_MPI_SKIP_HAWKEARS") == "1":
            return False
        pytest.fail(f"HawkEars environment or tiny model missing: {exc}. Fix: run `make hawkears hawkears-tiny`")


@pytest.mark.slow
@pytest.mark.hawkears
def test_dry_run_reports_every_check(tmp_path: Path) -> None:
    ready = _hawkears_ready()
    out = tmp_path / "report.json"
    start = time.monotonic()
    proc = _run(["--dry-run", "--out", str(out), "--workdir", str(tmp_path / "work")], _env())
    took = time.monotonic() - start
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for title in CHECKS.values():
        assert any(line.startswith(f"| {title} |") for line in table), f"no row for {title}:\n{proc.stdout}"
    assert "(dry-run)" in proc.stdout and "tests/fake_nvml/four.json" in proc.stdout
    report = json.loads(out.read_text())
    assert [c["key"] for c in report["checks"]] == list(CHECKS)
    status = {c["key"]: c["status"] for c in report["checks"]}
    if ready:
        assert proc.returncode == 0, f"{status}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        assert report["ok"] and set(status.values()) == {PASS}
        oom = next(c for c in report["checks"] if c["key"] == "oom")["figures"]
        assert oom["first_class"] == "oom" and oom["worker_starts"] == 2 and oom["next_ok"]
    else:  # without HawkEars the checks that need it fail, the others still pass
        assert proc.returncode == 1
        assert status["nvml"] == status["masks"] == status["sweep"] == PASS
    sweep = next(c for c in report["checks"] if c["key"] == "sweep")["figures"]["runs"]
    assert [r["K"] for r in sweep] == [1, 2, 4] and [r["workers"] for r in sweep] == [1, 2, 4]
    assert all(r["util_max_pct"] is not None and r["chunks_per_s"] for r in sweep)
    print(f"dry run took {took:.1f} s")


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("name", ["no_driver", "zero"])
def test_no_gpu_fake(name: str) -> None:
    proc = _run([], _env(**fake_env(name)), timeout=60)
    assert proc.returncode == 3
    line = _one_line(proc)
    assert line.startswith("gpu-check: no NVIDIA GPU here (NVML: ") and line.endswith("); nothing checked")


def test_no_gpu_real_nvml() -> None:
    try:
        PynvmlBackend().shutdown()
        pytest.skip("this machine has a working NVML: the real check would run")
    except NvmlUnavailable:
        pass
    proc = _run([], _env(), timeout=60)
    assert proc.returncode == 3
    assert _one_line(proc).startswith("gpu-check: no NVIDIA GPU here (NVML: ")


# ------------------------------------------------------------------ pure parts
def test_markdown_rows_and_sub_tables() -> None:
    checks = [CheckResult(key) for key in CHECKS]
    checks[0] = CheckResult("nvml", PASS, "", 1.25, {"devices": 1, "util_max_pct": 37.0})
    checks[1] = CheckResult("masks", FAIL, "index '0': rc 2 | bad", 0.5, {"masks": [{"mask": "index", "rc": 2}]})
    report = Report("2026-12-01 19:00 UTC", "gpu", "node1", "NVIDIA H200", "570.1", "pynvml", "python x", checks=checks)
    text = format_markdown(report)
    assert "NOT all checks passed" in text and not report.ok
    assert (
        "| a) NVML: devices, UUIDs, MIG, per-process and device VRAM, utilisation | PASS | 1.2 | - | devices=1; util_max_pct=37 |"
        in text
    )
    assert "rc 2 \\| bad" in text  # a pipe in a reason does not break the table
    assert "| mask | rc |" in text and "| index | 2 |" in text
    assert sum(line.startswith(f"| {CHECKS['oom']} | {SKIP} |") for line in text.splitlines()) == 1
    data = report_json(report)
    assert data["ok"] is False and data["checks"][0]["title"] == CHECKS["nvml"]
    assert no_gpu_line("a\nb") == "gpu-check: no NVIDIA GPU here (NVML: a); nothing checked"


def test_telemetry_figures() -> None:
    def event(kind: str, start: str, end: str | None = None, **gpu: float) -> dict:
        return {"event": kind, "started_at": start, "finished_at": end, "worker": "gpu0@n", **gpu}

    events = [
        event("start", "2026-12-01T10:00:00.000Z"),
        event("success", "2026-12-01T10:00:00.000Z", "2026-12-01T10:00:01.000Z", gpu_util_pct_mean=20, gpu_util_pct_max=40),
        event("retry", "2026-12-01T10:00:00.500Z", "2026-12-01T10:00:01.000Z"),
        event("success", "2026-12-01T10:00:01.000Z", "2026-12-01T10:00:04.000Z", gpu_util_pct_mean=40, vram_used_mib=900),
    ]
    figs = telemetry_figures(events)
    assert figs["chunks_ok"] == 2 and figs["failed_attempts"] == 1 and figs["span_s"] == 4.0
    assert figs["chunks_per_s"] == 0.5 and figs["util_mean_pct"] == 30.0 and figs["util_max_pct"] == 40.0
    assert figs["vram_runner_peak_mib"] == 900.0 and figs["vram_device_peak_mib"] is None
    assert figs["devices"] == [] and telemetry_figures([])["chunks_per_s"] is None
    events[1]["metrics"] = {"device": "cuda"}  # telemetry 1: in the line
    assert telemetry_figures(events)["devices"] == ["cuda"]
    del events[1]["metrics"]  # telemetry 2: in the worker event of the line's rank
    compact = [{"event": "worker", "rank": 2, "worker": "gpu1@m", "device": "cuda:0"}]
    compact += [{**{k: v for k, v in e.items() if k != "worker"}, "rank": 2} for e in events]
    figs = telemetry_figures(compact)
    assert figs["devices"] == ["cuda:0"] and figs["workers"] == ["gpu1@m"] and figs["chunks_ok"] == 2
