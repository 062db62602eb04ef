"""The pure parts of ``scripts/gpu/gpu_check.py``: result records, figures from telemetry, the Markdown
table and the JSON form. No processes, no NVML, no files."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

#: every check, in the order it runs: key -> one-line title (the table's first column)
CHECKS: dict[str, str] = {
    "nvml": "a) NVML: devices, UUIDs, MIG, per-process and device VRAM, utilisation",
    "masks": "b) CUDA_VISIBLE_DEVICES by index / UUID / UUID prefix (`badc-mpi gpus --json`)",
    "resident": "c) resident HawkEars on the GPU chosen by UUID (+ GpuSampler)",
    "oom": "d) CUDA out of memory -> failure class oom, restart, next chunk",
    "bench": "e) scripts/bench/bench_hawkears.py on the GPU",
    "sweep": "f) mpiexec -n K badc-mpi run --workers-per-gpu K --hawkears-batch B, K = 1, 2, 4, B = 1, 4, 16",
}

NO_GPU_EXIT = 3


@dataclass
class CheckResult:
    """One check's outcome: ``status`` PASS/FAIL/SKIP, ``reason`` one line, ``figures`` measured."""

    key: str
    status: str = SKIP
    reason: str = ""
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return CHECKS.get(self.key, self.key)


@dataclass
class Report:
    """What one ``gpu-check`` found; :func:`format_markdown` and :func:`report_json` render it."""

    date_utc: str
    mode: str  #: ``gpu`` or ``dry-run`` (fake NVML, CPU)
    host: str
    gpu: str  #: name, UUID and memory of the device the checks used
    driver: str
    nvml_backend: str
    command: str
    hawkears_python: str = ""
    data_root: str = ""
    budget_s: float = 0.0
    wall_s: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status == PASS for c in self.checks)


def one_line(text: object, limit: int = 240) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters (a FAIL reason)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def no_gpu_line(reason: str) -> str:
    """The single line printed (exit 3) where there is no GPU to check."""
    return f"gpu-check: no NVIDIA GPU here (NVML: {one_line(reason)}); nothing checked"


def budget_line(key: str, left_s: float) -> str:
    return f"gpu-check: budget spent ({left_s:.0f} s left): skipping {key}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value)


def format_figures(figures: Mapping[str, Any]) -> str:
    """``k=v; k=v`` for the table cell; lists of rows (sub-tables) are left out here."""
    return "; ".join(f"{k}={_fmt(v)}" for k, v in figures.items() if not _is_rows(v))


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def format_markdown(report: Report) -> str:
    """The block to paste into docs/benchmarks.md: header lines, one row per check, sub-tables."""
    lines = [
        f"### GPU check, {report.date_utc} ({report.mode})",
        "",
        f"- machine: `{report.host}`; GPU: {report.gpu}; driver: {report.driver}; NVML backend: `{report.nvml_backend}`",
        f"- command: `{report.command}`",
        f"- HawkEars python: `{report.hawkears_python or '-'}`; data root: `{report.data_root or '-'}`",
        f"- result: {'all checks passed' if report.ok else 'NOT all checks passed'} in {report.wall_s:.0f} s "
        f"(budget {report.budget_s:.0f} s)",
        "",
    ]
    rows = [[c.title, c.status, f"{c.seconds:.1f}", c.reason or "-", format_figures(c.figures) or "-"] for c in report.checks]
    lines += _table(["check", "result", "s", "reason", "figures"], rows)
    for c in report.checks:
        for name, value in c.figures.items():
            if _is_rows(value):
                header = list(dict.fromkeys(k for row in value for k in row))
                lines += ["", f"{c.title}: {name}", ""]
                lines += _table(header, ([_fmt(row.get(k)) for k in header] for row in value))
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    data = dataclasses.asdict(report)
    data["ok"] = report.ok
    for check, record in zip(data["checks"], report.checks, strict=True):
        check["title"] = record.title
    return data


# ------------------------------------------------------------------ figures from telemetry
def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _values(events: list[Mapping[str, Any]], key: str) -> list[float]:
    return [float(e[key]) for e in events if isinstance(e.get(key), (int, float))]


def telemetry_figures(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """chunks/s over the span from the first attempt's start to the last success, and the GPU
    fields of the successful attempts (mean of per-attempt means, max of maxima, VRAM peaks)."""
    events = list(events)
    ok = [e for e in events if e.get("event") == "success"]
    # telemetry 2 names worker and device once per rank (its ``worker`` event), telemetry 1 in each line
    facts = {e.get("rank"): e for e in events if e.get("event") == "worker"}
    device_of = {rank: f.get("device") for rank, f in facts.items()}
    failed = [e for e in events if e.get("event") in ("failure", "retry")]
    starts = [t for t in (_ts(e.get("started_at")) for e in events) if t is not None]
    ends = [t for t in (_ts(e.get("finished_at")) for e in ok) if t is not None]
    span = (max(ends) - min(starts)) if starts and ends else None
    means, maxes = _values(ok, "gpu_util_pct_mean"), _values(ok, "gpu_util_pct_max")
    vram, device = _values(ok, "vram_used_mib"), _values(ok, "vram_device_mib")
    return {
        "chunks_ok": len(ok),
        "failed_attempts": len(failed),
        "span_s": round(span, 2) if span is not None else None,
        "chunks_per_s": round(len(ok) / span, 3) if span else None,
        "util_mean_pct": round(statistics.mean(means), 1) if means else None,
        "util_max_pct": round(max(maxes), 1) if maxes else None,
        "vram_runner_peak_mib": round(max(vram), 1) if vram else None,
        "vram_device_peak_mib": round(max(device), 1) if device else None,
        "batch_max_score_diff": max(diffs) if (diffs := _values(list(facts.values()), "batch_max_score_diff")) else None,
        "workers": sorted({str(e.get("worker") or facts.get(e.get("rank"), {}).get("worker")) for e in ok}),
        "devices": sorted(
            {
                str(d)
                for e in ok
                if (d := e.get("device") or device_of.get(e.get("rank")) or (e.get("metrics") or {}).get("device"))
            }
        ),
    }
