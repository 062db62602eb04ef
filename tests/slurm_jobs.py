"""Submitting to and reading back the test cluster of scripts/cluster/slurm_cluster.py (make test-slurm).

Generic over batch scripts: :func:`submit` takes any script and its arguments, and only adds what
a test on this machine must change (output file, time limit, the lead time of the script's own
``#SBATCH --signal``), so a new script under slurm/ drops in unchanged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO, read_jsonl, sidecar, telemetry_files

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
SIGNAL_DIRECTIVE = re.compile(r"^#SBATCH\s+--signal[= ](?P<where>[A-Z]+:)?(?P<sig>[A-Z0-9]+)(@\d+)?\s*$", re.M)


def cluster_state() -> Path | None:
    """The test cluster's folder (set by ``slurm_cluster.py run``), or None outside make test-slurm."""
    value = os.environ.get("BADC_MPI_TEST_SLURM")
    return Path(value) if value else None


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o`` (one line of Key=Value words) as a dict. Pure. Values with spaces
    (``Command``, ``Reason``) are cut at the first space: only the simple fields are read."""
    out: dict[str, str] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if eq and key and key not in out:
            out[key] = value
    return out


def signal_option(script: Path, lead_s: int) -> list[str]:
    """The script's own ``#SBATCH --signal`` (batch shell ``B:`` or steps, which signal) with a
    lead time of ``lead_s`` instead of its real one (minutes before a 12-hour limit). Pure on the
    script's text; ``[]`` when the script asks for no warning signal."""
    match = SIGNAL_DIRECTIVE.search(script.read_text())
    if not match:
        return []
    return [f"--signal={match.group('where') or ''}{match.group('sig')}@{lead_s}"]


def submit(
    script: Path | str | None,
    args: list[str],
    *,
    out: Path,
    sbatch: tuple[str, ...] | list[str] = (),
    cwd: Path = REPO,
    env: dict | None = None,
) -> str:
    """``sbatch [sbatch opts] SCRIPT ARGS`` from ``cwd`` (the repository root, as users submit),
    the job's output going to ``out`` (``%j`` allowed); no script: ``--wrap "ARGS"``. Returns the job id."""
    what = [str(script), *map(str, args)] if script is not None else ["--wrap", " ".join(map(str, args))]
    cmd = ["sbatch", "--parsable", f"--output={out}", *sbatch, *what]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout.strip().split(";")[0]


def parse_repeats(text: str, name: str = "repeats") -> dict[str, int]:
    """``NAME=COUNT[,NAME=COUNT]`` (tests to run COUNT times in a row) as a dict. Pure; a part
    that is not NAME=COUNT with COUNT >= 1 raises ValueError naming ``name``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        test, eq, count = part.partition("=")
        if not test or not eq or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{name}: {part!r} is not NAME=COUNT (COUNT >= 1)")
        out[test] = int(count)
    return out


def job(job_id: str) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"scontrol show job {job_id}: {proc.stderr}"
    return parse_scontrol(proc.stdout)


@dataclass(frozen=True)
class Budget:
    """The time a test's own waits may take: its pytest-timeout less what its cleanup needs, so a
    wait that runs out fails with its own message before pytest-timeout kills the test."""

    timeout_s: float  #: the test's pytest-timeout
    reserve_s: float  #: kept for the cleanup after the test (and a margin)
    started: float  #: time.monotonic() at the test's start

    @property
    def end(self) -> float:
        return self.started + self.timeout_s - self.reserve_s

    def cap(self, want_s: float) -> float:
        """``want_s``, or what is left of the budget when that is less (never below 0)."""
        return max(0.0, min(want_s, self.end - time.monotonic()))

    def why(self, want_s: float, got_s: float) -> str:
        """Names the budget in a failure when it, not the wait's own limit, cut the wait short."""
        if got_s >= want_s:
            return ""
        return (
            f" (cut from {want_s:.0f} s: the test's budget of {self.timeout_s - self.reserve_s:.0f} s, its "
            f"{self.timeout_s:.0f} s timeout less {self.reserve_s:.0f} s for the cleanup, ran out)"
        )


_budget: Budget | None = None


def set_budget(budget: Budget | None) -> None:
    """Every :func:`wait_for`, :func:`wait_until` and :func:`capped` from now on ends by ``budget``'s
    end (None: no budget). Set per test by tests/test_slurm.py."""
    global _budget
    _budget = budget


def capped(want_s: float) -> float:
    """A subprocess timeout: ``want_s``, or what is left of the test's budget."""
    return _budget.cap(want_s) if _budget else want_s


def _limit(want_s: float) -> tuple[float, str]:
    if _budget is None:
        return want_s, ""
    got_s = _budget.cap(want_s)
    return got_s, _budget.why(want_s, got_s)


def wait_for(job_id: str, states: set[str] = FINAL_STATES, timeout_s: float = 240, cancel: bool = True) -> dict[str, str]:
    """Poll until the job reaches one of ``states``; past ``timeout_s`` (or the test's budget) fail
    (AssertionError), cancelling the job unless ``cancel`` is False."""
    limit_s, why = _limit(timeout_s)
    deadline = time.monotonic() + limit_s
    info: dict[str, str] = {}
    while True:
        info = job(job_id)
        if info.get("JobState") in states or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if info.get("JobState") in states:
        return info
    if cancel:
        subprocess.run(["scancel", job_id], timeout=30)
    raise AssertionError(
        f"job {job_id} not {sorted(states)} after {limit_s:.0f} s{why}{' (cancelled)' if cancel else ''}: {info}"
    )


def wait_until(predicate, timeout_s: float, what, interval_s: float = 0.25):  # noqa: ANN001
    """``predicate()``'s first true value within ``timeout_s`` (or the test's budget); ``what``
    (text, or a callable for the state at the end) names it in the failure."""
    limit_s, why = _limit(timeout_s)
    deadline = time.monotonic() + limit_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    if value:
        return value
    raise AssertionError(f"not within {limit_s:.0f} s{why}: {what() if callable(what) else what}")


def runs(telemetry_dir: Path) -> list[dict]:
    """Every run in ``telemetry_dir``, oldest first: its summary, events and ledger records."""
    found = []
    for tfile in telemetry_files(telemetry_dir):
        summary_path = sidecar(tfile, ".summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        ledger = sidecar(tfile, ".ledger.jsonl")
        records = read_jsonl(ledger)[1:] if ledger.exists() else []
        found.append({"telemetry": tfile, "summary": summary, "events": read_jsonl(tfile), "ledger": records})
    return found


def successes(all_runs: list[dict]) -> dict[str, int]:
    """Chunk key -> how many ledger success records all the runs hold together (resume: exactly one)."""
    counts: dict[str, int] = {}
    for run in all_runs:
        for rec in run["ledger"]:
            if rec["s"] == "success":
                key = f"{rec['r']}/{rec['c']}"
                counts[key] = counts.get(key, 0) + 1
    return counts
