"""The resident HawkEars worker's line to its rank: the JSON-lines protocol, and how it stops.

Runs INSIDE HawkEars' own environment, loaded by path by ``resident.py`` (standard library only,
no badc_mpi imports). The scoring itself is ``resident.py``'s (class ``Resident``).

Protocol (JSON lines). The reply stream is the ORIGINAL stdout; at start, fd 1 and sys.stdout are
pointed at stderr (:class:`ReplyStream`) so nothing that HawkEars, britekit, torch or C libraries
print can corrupt it.

- On start: ``{"hello": true, "ok": true, "pid", "hawkears_version", "britekit_version",
  "torch_version", "device", "load_s", "models", "low_band_models", "max_models", "low_band"}``
  or ``{"hello": true, "ok": false, "error_class": "error", "message"}`` and exit 1.
- Request: ``{"id", "input", "output_dir", "options": {"lat", "lon", "date", "region"}}`` (any of
  the per-chunk options may be absent/null: the start options apply), or ``{"op": "quit"}``.
  End of stdin also quits.
- Reply: ``{"id", "ok", "error_class": null|"input"|"oom"|"error", "message", "scores_csv",
  "detections", "decode_s", "score_s", "cpu_s", "peak_vram_mib", "pid"}`` (``cpu_s``: CPU time of
  the whole worker process during the request).
- ``{"op": "prefetch", "input"}`` (with ``--prefetch on``): decode that file in a decoder process
  now, for a request that follows; no reply. Read by a thread as it arrives (:func:`read_requests`),
  so it overlaps the request being scored.
- ``{"op": "batch", "items": [request, ...]}`` (with ``--batch K``): one reply per item, in order,
  each with ``"batch": n`` and its share of the batch's forward time in ``score_s``
  (``resident_pipeline.py``).

Stopping: the worker dies with its rank (:func:`tie_to_parent`) and exits promptly on
SIGTERM/SIGINT (:func:`exit_on_stop_signals`).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time

STOP_GRACE_S = 2.0  #: after SIGTERM/SIGINT, how long a clean exit may take before a hard one


def tie_to_parent(parent_pid: int | None) -> None:
    """First thing: die (SIGKILL) with the parent (the rank); exit now if it is already gone."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG, Linux only
    except (OSError, AttributeError, TypeError):
        pass
    if parent_pid and os.getppid() != parent_pid:
        sys.stderr.write(f"hawkears-worker: parent {parent_pid} is gone; exiting\n")
        os._exit(1)


def exit_on_stop_signals() -> None:
    """SIGTERM/SIGINT: SystemExit(128+signal) in the main thread (finally blocks run); a watchdog
    woken by the C-level handler itself (whatever the main thread does) hard-exits if that is slow."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    os.register_at_fork(after_in_child=lambda: signal.set_wakeup_fd(-1))  # a forked child's signals are its own
    stops = (signal.SIGTERM, signal.SIGINT)

    def handler(signum: int, _frame: object) -> None:
        sys.stderr.write(f"hawkears-worker: {signal.Signals(signum).name} received; exiting\n")
        raise SystemExit(128 + signum)

    def watchdog() -> None:
        hit: list[int] = []
        while not hit:
            hit = [b for b in os.read(wake_r, 64) if b in stops]
        time.sleep(STOP_GRACE_S)
        os._exit(128 + hit[0])

    for sig in stops:
        signal.signal(sig, handler)
    threading.Thread(target=watchdog, name="stop-watchdog", daemon=True).start()


class ReplyStream:
    """Replies on the original stdout; everything else printed goes to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, message: dict) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()


def failed_hello(exc: BaseException) -> dict:
    """The hello of a worker that could not load (then it exits 1)."""
    return {"hello": True, "ok": False, "error_class": "error", "pid": os.getpid(), "message": f"{type(exc).__name__}: {exc}"}


def serve(worker, replies: ReplyStream) -> int:  # noqa: ANN001
    """Answer requests in order until a quit (or end of input): ``worker`` is the loaded
    ``Resident`` (``handle``, ``handle_batch``, ``cache``); its decoders are closed at the end."""
    requests: queue.Queue[dict] = queue.Queue()
    threading.Thread(target=read_requests, args=(requests, worker.cache), name="requests", daemon=True).start()
    try:
        while True:
            request = requests.get()
            op = request.get("op")
            if op == "quit":
                break
            if op == "bad":
                replies.send({"id": None, "ok": False, "error_class": "error", "message": request["message"], "pid": os.getpid()})
            elif op == "batch":
                for reply in worker.handle_batch(list(request.get("items") or [])):
                    replies.send(reply)
            else:
                replies.send(worker.handle(request))
    finally:
        if worker.cache is not None:
            worker.cache.close()
    return 0


def read_requests(requests: queue.Queue, cache) -> None:  # noqa: ANN001
    """The stdin reader: a prefetch starts its decode at once (while a chunk is scored); every
    other request goes to the main thread in order. End of input is a quit."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except ValueError as exc:
            requests.put({"op": "bad", "message": f"bad request: {exc}"})
            continue
        if request.get("op") == "prefetch":
            if cache is not None:
                cache.announce(str(request.get("input") or ""))
            continue
        requests.put(request)
        if request.get("op") == "quit":
            return
    requests.put({"op": "quit"})
