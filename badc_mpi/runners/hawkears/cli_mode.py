"""The HawkEars runner's CLI mode (``--hawkears-mode cli``): one ``hawkears analyze`` process per
chunk, the slow baseline; and how any attempt's outputs and failures are judged."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from badc_mpi.records import CRASH, EXIT, INPUT, NO_OUTPUT, TIMEOUT
from badc_mpi.runners.base import AttemptResult, Task
from badc_mpi.runners.process import die_with_parent, kill_group, signame

TAIL_CHARS = 4000  #: of stderr, in failure reasons
INPUT_ERROR_MARKERS = (
    "Could not load recording",
    "Caught exception in audio load",
    "No audio stream",
    "No audio samples",
    "No predictions generated for",
)


def cli_argv(python: str, analyze: list[str]) -> list[str]:
    """``hawkears analyze ...`` with the environment's ``hawkears`` script, or through its python."""
    exe = Path(python).parent / "hawkears"
    base = [str(exe)] if exe.exists() else [python, "-c", "import sys; from hawkears.cli import cli; sys.exit(cli())"]
    return [*base, *analyze]


def fail(result: AttemptResult, failure_class: str, reason: str) -> AttemptResult:
    result.ok, result.failure_class, result.reason = False, failure_class, reason.strip()
    return result


def judge_outputs(result: AttemptResult, scratch_dir: str, stderr_tail: Callable[[], str]) -> AttemptResult:
    """A finished attempt's ``scores.csv``: success with its row count, or ``no_output``."""
    scores = os.path.join(scratch_dir, "scores.csv")
    if not os.path.isfile(scores) or os.path.getsize(scores) == 0:
        return fail(result, NO_OUTPUT, f"no scores.csv in {scratch_dir}\n{stderr_tail()}")
    if result.metrics.get("detections") is None:
        with open(scores, "rb") as handle:
            result.metrics["detections"] = max(0, sum(1 for _ in handle) - 1)
    result.ok, result.failure_class, result.reason, result.raw_output = True, None, "", scores
    return result


def run_cli_attempt(
    argv: list[str],
    task: Task,
    result: AttemptResult,
    *,
    cwd: str,
    env: dict[str, str],
    log_path: str,
    running: Callable[[int | None], None],
) -> AttemptResult:
    """One `hawkears analyze` process for one chunk: run, time out (process group killed), judge."""
    start = time.monotonic()
    with open(log_path, "wb") as sink:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # a prctl only: `hawkears analyze` dies with this rank
        )
        result.pid = proc.pid
        running(proc.pid)
        try:
            rc: int | None = proc.wait(timeout=task.timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
            kill_group(proc)
        finally:
            running(None)
    result.metrics.update(wall_s=round(time.monotonic() - start, 4), cli_pid=proc.pid)
    text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    tail = text[-TAIL_CHARS:]
    if rc is None:
        return fail(result, TIMEOUT, f"`hawkears analyze` ran past {task.timeout_s:g} s; killed its process group\n{tail}")
    if rc < 0:
        result.signal = -rc
        return fail(result, CRASH, f"`hawkears analyze` died by signal {-rc} ({signame(-rc)})\n{tail}")
    if rc != 0:
        result.exit_code = rc
        return fail(result, EXIT, f"`hawkears analyze` exited with status {rc}\n{tail}")
    result.exit_code = 0
    if os.path.isfile(os.path.join(task.scratch_dir, "scores.csv")):
        return judge_outputs(result, task.scratch_dir, lambda: tail)
    bad = [line for line in text.splitlines() if any(m in line for m in INPUT_ERROR_MARKERS)]
    if bad:  # HawkEars exits 0 on undecodable or too-short audio: its log says so
        loaded = [line for line in bad if line.startswith("Could not load recording")]
        return fail(result, INPUT, (loaded or bad)[-1])
    return fail(result, NO_OUTPUT, f"`hawkears analyze` exited 0 without scores.csv\n{tail}")
