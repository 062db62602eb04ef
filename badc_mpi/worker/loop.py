"""A worker rank's loop (every rank but 0): say hello, take the set-up, work until told to stop.

Non-blocking: ``iprobe`` plus a capped exponential back-off sleep, reset whenever something
happened, so a waiting rank costs a few percent of a core instead of a whole one. The attempts
themselves run in the rank's :class:`~badc_mpi.worker.supervisor.Supervisor`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from badc_mpi.errors import BadcError
from badc_mpi.logs import get_logger
from badc_mpi.options import RunOptions
from badc_mpi.records import Binding
from badc_mpi.transport.mailbox import Backoff, Mailbox
from badc_mpi.transport.messages import (
    TAG_ASSIGN,
    TAG_FATAL,
    TAG_GOODBYE,
    TAG_HELLO,
    TAG_REPORT,
    TAG_SETUP,
    TAG_STOP,
    Fatal,
    Goodbye,
    Hello,
    Report,
    Stop,
)
from badc_mpi.worker.start import rank_config, start_worker
from badc_mpi.worker.supervisor import Supervisor

log = get_logger(__name__)


def ignore_stop_signals(rank: int) -> None:
    """Workers leave SIGTERM/SIGINT to rank 0, which drains the job (SLURM signals every task)."""
    import signal

    def note(signum: int, _frame: Any) -> None:
        log.info("rank %d: %s received; rank 0 decides when to stop", rank, signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, note)
        except ValueError:  # not the main thread (embedded use)
            pass


def worker_main(comm: Any, binding: Binding, options: RunOptions) -> int:
    """A non-zero rank: say hello, wait for the set-up, then work until told to stop."""
    rank = comm.Get_rank()
    ignore_stop_signals(rank)
    box = Mailbox(comm)
    box.send(0, TAG_HELLO, Hello(rank, os.getpid(), binding))
    import badc_mpi.records  # noqa: F401 - tasks unpickle into its Chunk: import while rank 0 plans

    backoff = Backoff(options.poll_max_s)
    _, tag, msg = box.wait(0, backoff)
    if tag == TAG_STOP:
        box.send(0, TAG_GOODBYE, Goodbye(rank))
        box.flush()
        return int(msg.exit_code)
    assert tag == TAG_SETUP, f"rank {rank}: unexpected message tag {tag} before set-up"
    config = rank_config(msg.config, binding)
    log.debug("set-up received for run %s", msg.run_id)
    worker: Supervisor | None = None
    try:
        worker = start_worker(config, binding)
    except BadcError as exc:
        box.send(0, TAG_FATAL, Fatal(rank, binding.host, str(exc)))
    outstanding = 0
    fatal_sent = worker is None
    stop: Stop | None = None
    backoff.reset()
    last_sent = time.monotonic()
    while stop is None:
        progressed = False
        if time.monotonic() - last_sent >= config.heartbeat_s:  # alive, even with nothing to say
            box.send(0, TAG_REPORT, Report(rank, [], 0))
            last_sent = time.monotonic()
        if worker is not None:
            events = worker.drain_events()
            if worker.fatal and not fatal_sent:
                failure = worker.fatal_exc
                if failure is not None and not isinstance(failure, BadcError):
                    raise failure  # a bug, not a setup problem: the job aborts (never hangs)
                box.send(0, TAG_FATAL, Fatal(rank, binding.host, worker.fatal))
                fatal_sent = True
            want = 0
            if worker.ready and not worker.fatal:
                want = max(0, worker.window() - worker.busy - outstanding)
            if events or want:
                log.debug("report: %d event(s), want %d", len(events), want)
                box.send(0, TAG_REPORT, Report(rank, events, want))
                last_sent = time.monotonic()
                outstanding += want
                progressed = True
        got = box.poll(0)
        if got is not None:
            progressed = True
            _, tag, msg = got
            if tag == TAG_ASSIGN:
                log.debug("assigned %d task(s)", len(msg.tasks))
                outstanding -= len(msg.tasks)
                if worker is not None:
                    worker.submit(msg.tasks)
            elif tag == TAG_STOP:
                stop = msg
        if progressed:
            backoff.reset()
        else:
            backoff.sleep()
    if worker is not None:
        worker.close()
    box.send(0, TAG_GOODBYE, Goodbye(rank))
    box.flush()
    return int(stop.exit_code)


__all__ = ["worker_main"]
