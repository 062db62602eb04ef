"""One exchange with the resident HawkEars process: requests for one chunk or a batch, their replies.

The protocol is ``resident.py``'s (JSON lines). A single chunk travels as a plain request, several
as one ``{"op": "batch"}`` whose replies come back one per chunk, in order. Every reply must arrive
before the exchange's deadline: the start plus the longest of the chunks' timeouts, as rank 0
expects each chunk of the batch to end within its timeout of the batch's start (a batch's first
reply waits for the whole batch's forward pass: timeouts are generous, 5x the audio by default). How each chunk's attempt ended is judged here; what the runner
must do with its process afterwards (keep it, or kill it and start another before the next
attempt) comes back as :attr:`Exchange.discard`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from badc_mpi.records import CRASH, EXIT, INPUT, OOM, TIMEOUT
from badc_mpi.runners.base import AttemptResult
from badc_mpi.runners.hawkears.cli_mode import fail, judge_outputs
from badc_mpi.runners.hawkears.process import WorkerProcess
from badc_mpi.runners.process import signame

#: reply figures copied into the attempt's metrics (telemetry keeps ``detections`` and ``batch``)
REPLY_METRICS = ("decode_s", "score_s", "cpu_s", "peak_vram_mib", "detections", "batch", "batch_splits", "decoded_ahead")
OPTIONAL = frozenset(REPLY_METRICS[5:])  #: only when the reply has them


@dataclass
class Item:
    """One chunk of an exchange: its request and the result being filled in."""

    request: dict[str, Any]
    result: AttemptResult
    scratch_dir: str
    timeout_s: float


@dataclass
class Exchange:
    items: list[Item]
    discard: bool = False  #: the process must be killed (timeout, crash, OOM, unexpected error)


def message(items: list[Item]) -> bytes:
    """The line sent for ``items``: a plain request, or a batch of them."""
    if len(items) == 1:
        return (json.dumps(items[0].request) + "\n").encode()
    return (json.dumps({"op": "batch", "items": [item.request for item in items]}) + "\n").encode()


def run_exchange(
    worker: WorkerProcess,
    items: list[Item],
    send: Callable[[bytes], None],
    base_metrics: dict[str, Any],
    stderr_tail: Callable[[], str],
) -> Exchange:
    """Send ``items``, read their replies, judge each chunk. Never raises for the process's faults."""
    done = Exchange(items)
    start = time.monotonic()
    deadline = start + max(item.timeout_s for item in items)
    try:
        send(message(items))
        broken = False
    except (BrokenPipeError, OSError):
        broken = True
    for n, item in enumerate(items):
        line: bytes | str = "eof" if broken else _read(worker, deadline)
        item.result.metrics.update(base_metrics, wall_s=round(time.monotonic() - start, 4))
        if isinstance(line, str):  # the process hung or died: this chunk and the rest of the batch
            done.discard = True
            for rest in items[n:]:
                rest.result.metrics.update(base_metrics)
                _lost(rest.result, line, worker, max(i.timeout_s for i in items), stderr_tail)
            return done
        try:
            reply = json.loads(line)
            if reply.get("id") != item.request["id"]:
                raise ValueError(f"reply id {reply.get('id')!r} != request id {item.request['id']}")
        except ValueError as exc:
            done.discard = True
            for rest in items[n:]:
                fail(rest.result, EXIT, f"HawkEars worker protocol error: {exc}: {line[:300]!r}")
            return done
        if judge_reply(item, reply, stderr_tail):
            done.discard = True
    return done


def _read(worker: WorkerProcess, deadline: float) -> bytes | str:
    try:
        return worker.read_line(deadline)
    except OSError:
        return "eof"


def _lost(result: AttemptResult, how: str, worker: WorkerProcess, timeout_s: float, stderr_tail: Callable[[], str]) -> None:
    if how == "timeout":
        fail(result, TIMEOUT, f"no reply after {timeout_s:g} s; killed the worker's process group\n{stderr_tail()}")
        return
    rc = worker.proc.wait()
    if rc < 0:
        result.signal = -rc
        fail(result, CRASH, f"the HawkEars worker died by signal {-rc} ({signame(-rc)})\n{stderr_tail()}")
    else:
        result.exit_code = rc
        fail(result, EXIT, f"the HawkEars worker exited with status {rc}\n{stderr_tail()}")


def judge_reply(item: Item, reply: dict[str, Any], stderr_tail: Callable[[], str]) -> bool:
    """Fill in ``item.result`` from its reply; True when the process must be replaced."""
    result = item.result
    for key in REPLY_METRICS:
        if key not in OPTIONAL or reply.get(key) is not None:
            result.metrics[key] = reply.get(key)
    if reply.get("ok"):
        judge_outputs(result, item.scratch_dir, stderr_tail)
        return False
    error_class, text = reply.get("error_class"), reply.get("message") or ""
    if error_class == "input":
        fail(result, INPUT, text)
        return False
    if error_class == "oom":  # OOM or an unexpected error: a fresh worker for the next attempt
        fail(result, OOM, text)
    else:
        fail(result, EXIT, f"{text}\n{stderr_tail()}")
    return True
