"""The MPI loops: rank 0 coordinates (and works), every other rank works.

Every loop is non-blocking: ``iprobe`` plus a capped exponential back-off sleep (1 µs doubling to
1 ms by default), reset whenever something happened, so a waiting rank costs a few percent of a
core instead of a whole one. Rank 0's own worker runs its attempts in a thread, so model loading or
a long chunk never stalls dispatch.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any

from badc_mpi import gpu as gpu_mod
from badc_mpi.errors import BadcError
from badc_mpi.logs import get_logger
from badc_mpi.options import RunOptions
from badc_mpi.protocol import (
    TAG_ASSIGN, TAG_FATAL, TAG_GOODBYE, TAG_HELLO, TAG_REPORT, TAG_SETUP, TAG_STOP,
    Backoff, Fatal, Goodbye, Hello, Mailbox, Report, Stop,
)
from badc_mpi.runners import build_runner
from badc_mpi.runners.base import Binding
from badc_mpi.worker import Worker, WorkerConfig

log = get_logger(__name__)


def bind_rank(comm: Any, options: RunOptions) -> tuple[Binding, list[str], str | None]:
    """This rank's GPU binding from its node-local rank (``COMM_TYPE_SHARED``) and NVML."""
    from mpi4py import MPI

    rank = comm.Get_rank()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    try:
        local_rank, local_size = local.Get_rank(), local.Get_size()
    finally:
        local.Free()
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    bopts = gpu_mod.BindingOptions(options.max_gpus, options.workers_per_gpu, options.cpu_workers)
    binding, warnings, reason = gpu_mod.bind_rank(
        host=socket.gethostname(), rank=rank, local_rank=local_rank, local_size=local_size, options=bopts,
        quiet=rank != 0,
    )
    return binding, warnings, reason


def make_sampler(binding: Binding) -> Any:
    """A GPU sampler for a GPU binding (None on CPU ranks or without NVML)."""
    if not binding.uses_gpu:
        return None
    from badc_mpi import nvml

    try:
        backend = nvml.open_backend()
    except nvml.NvmlUnavailable as exc:
        log.info("GPU sampling off: %s", exc)
        return None
    return gpu_mod.GpuSampler(backend, binding)


def rank_config(config: WorkerConfig, binding: Binding) -> WorkerConfig:
    """The per-rank copy of the run's worker config (own scratch folder)."""
    scratch = os.path.join(config.scratch_dir, f"{binding.host}-r{binding.rank}")
    return dataclasses.replace(config, scratch_dir=scratch)


def start_worker(config: WorkerConfig, binding: Binding) -> Worker:
    runner = build_runner(config.runner_kind, config.runner_options)
    worker = Worker(config, binding, runner, make_sampler(binding))
    worker.start()
    return worker


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
    worker: Worker | None = None
    try:
        worker = start_worker(config, binding)
    except BadcError as exc:
        box.send(0, TAG_FATAL, Fatal(rank, binding.host, str(exc)))
    outstanding = 0
    fatal_sent = worker is None
    stop: Stop | None = None
    backoff.reset()
    while stop is None:
        progressed = False
        if worker is not None:
            events = worker.drain_events()
            if worker.fatal and not fatal_sent:
                exc = worker.fatal_exc
                if exc is not None and not isinstance(exc, BadcError):
                    raise exc  # a bug, not a setup problem: the job aborts (never hangs)
                box.send(0, TAG_FATAL, Fatal(rank, binding.host, worker.fatal))
                fatal_sent = True
            want = 0
            if worker.ready and not worker.fatal:
                want = max(0, worker.window() - worker.busy - outstanding)
            if events or want:
                log.debug("report: %d event(s), want %d", len(events), want)
                box.send(0, TAG_REPORT, Report(rank, events, want))
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


class RemoteWorkers:
    """Rank 0's view of the other ranks: hellos, credits, stop and goodbye."""

    def __init__(self, comm: Any, box: Mailbox) -> None:
        self.comm = comm
        self.box = box
        self.size = comm.Get_size()
        self.hellos: dict[int, Hello] = {}
        self.credit: dict[int, int] = {}
        self.stopped = False

    def collect_hellos(self, backoff: Backoff, handle: Any) -> None:
        """Wait for every worker's Hello (other early messages go to ``handle``)."""
        while len(self.hellos) < self.size - 1:
            src, tag, msg = self.box.wait(None, backoff)
            if tag == TAG_HELLO:
                self.hellos[src] = msg
                self.credit[src] = 0
            else:
                handle(src, tag, msg)

    def stop_all(self, exit_code: int, message: str = "", wait_s: float = 120.0) -> None:
        """Tell every worker to stop; wait (politely) for their goodbyes."""
        if self.stopped or self.size == 1:
            self.stopped = True
            return
        self.stopped = True
        for dest in range(1, self.size):
            self.box.send(dest, TAG_STOP, Stop(exit_code, message))
        pending = set(range(1, self.size))
        deadline = time.monotonic() + wait_s
        backoff = Backoff()
        while pending and time.monotonic() < deadline:
            got = self.box.poll(None)
            if got is None:
                backoff.sleep()
                continue
            if got[1] == TAG_GOODBYE:
                pending.discard(got[0])
        if pending:
            log.warning("ranks %s did not confirm the stop within %.0f s", sorted(pending), wait_s)
        self.box.flush()


__all__ = ["bind_rank", "worker_main", "RemoteWorkers", "start_worker", "rank_config", "make_sampler"]
