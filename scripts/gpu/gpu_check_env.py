"""What the checks of ``scripts/gpu/gpu_check.py`` share: the budget, the context, subprocesses under a
timeout, HawkEars' python and data root, and the binding of a ``CUDA_VISIBLE_DEVICES`` mask."""

from __future__ import annotations

import argparse
import os
import select
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

from badc_mpi.errors import RunnerSetupError  # noqa: E402
from badc_mpi.gpu.binding import detect, plan_binding, select_visible  # noqa: E402
from badc_mpi.gpu.nvml import DeviceInfo, NvmlBackend  # noqa: E402
from badc_mpi.options import BindingOptions  # noqa: E402
from badc_mpi.records import Binding  # noqa: E402
from badc_mpi.runners.hawkears import env as hawkears_env  # noqa: E402
from badc_mpi.runners.hawkears import overlay as hawkears_overlay  # noqa: E402
from badc_mpi.runners.process import signal_group  # noqa: E402


class Budget:
    """The global time budget: checks and subprocess timeouts are capped by what is left."""

    def __init__(self, total_s: float) -> None:
        self.end = time.monotonic() + total_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def cap(self, want_s: float) -> float:
        """``want_s``, or less when the budget ends sooner (at least 1 s)."""
        return max(1.0, min(want_s, self.left() - 2.0))


@dataclass
class Ctx:
    """Everything a check needs; ``python``/``data_root`` are filled in by :func:`setup_hawkears`."""

    args: argparse.Namespace
    dry: bool
    backend: NvmlBackend
    device: DeviceInfo
    target: str  #: the UUID (or MIG id) the checks bind to
    first_uuid: str  #: the first GPU in PCI bus order (what --max-gpus 1 picks)
    budget: Budget
    work: Path
    env: dict[str, str]
    mpiexec: list[str]
    python: str | None = None
    data_root: str | None = None
    setup_error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def alloc_mib(self) -> int:
        return 1024

    @property
    def chunk_s(self) -> float:
        return 2.0 if self.dry else 30.0

    @property
    def hawkears_chunk_s(self) -> float:
        """Chunks HawkEars scores in checks c-e (short in a dry run: CPU)."""
        return 6.0 if self.dry else 30.0

    @property
    def sweep_chunks(self) -> int:
        return 8 if self.dry else 32

    @property
    def sweep_ranks(self) -> tuple[int, ...]:
        return (1, 2, 4)

    @property
    def sweep_batches(self) -> tuple[int, ...]:
        """``--hawkears-batch`` values of the sweep (the dry run's command runner has no batches)."""
        return (1,) if self.dry else (1, 4, 16)

    def sweep_chunks_for(self, batch: int) -> int:
        """Enough chunks that every rank of the widest sweep holds a full batch several times."""
        return max(self.sweep_chunks, 16 * batch)

    @staticmethod
    def read_line(child: subprocess.Popen, timeout_s: float) -> str | None:
        """One line of the child's stdout within ``timeout_s`` (None: nothing came)."""
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], timeout_s)
        return child.stdout.readline() if ready else None


@dataclass
class Done:
    rc: int
    out: str
    err: str
    seconds: float
    timed_out: bool = False


def run_cmd(argv: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path | str | None = None) -> Done:
    """Run ``argv`` in its own process group; on timeout kill the whole group (rc 124)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return Done(proc.returncode, out, err, time.monotonic() - start)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid)
        out, err = proc.communicate()
        return Done(124, out, f"timed out after {timeout:.0f} s\n{err}", time.monotonic() - start, True)
    except BaseException:  # the global budget alarm: leave nothing behind
        signal_group(proc.pid)
        proc.wait()
        raise


def _wrapper(work: Path, python: str, python_path: str) -> str:
    """A python that finds hawkears/britekit in ``python_path``: the runner drops PYTHONPATH from
    HawkEars' environment, so the folder is set by this wrapper instead."""
    path = work / "hawkears-python"
    folder = os.path.abspath(python_path)
    path.write_text(hawkears_overlay.wrapper_text(python, folder), encoding="utf-8")  # the overlay's wrapper
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def setup_python(ctx: Ctx) -> str:
    """HawkEars' python: --python (through --python-path), else the `make hawkears` env's."""
    if ctx.python:
        return ctx.python
    args = ctx.args
    python = args.python or (sys.executable if args.python_path else hawkears_env.find_hawkears_python(ctx.env))
    if args.python_path:
        python = _wrapper(ctx.work, python, args.python_path)
    ctx.python = python
    return python


def setup_hawkears(ctx: Ctx) -> tuple[str, str]:
    """(python, data root); builds a tiny data root in the work folder when none is found."""
    if ctx.setup_error:
        raise RunnerSetupError(ctx.setup_error)
    try:
        python = setup_python(ctx)
        if ctx.data_root is None:
            try:
                ctx.data_root = hawkears_env.resolve_data_root(
                    ctx.args.hawkears_data_root, ctx.env, python=python, allow_tiny=True
                ).path
            except RunnerSetupError:
                if ctx.args.hawkears_data_root:
                    raise
                ctx.data_root = _build_tiny(ctx, python)
    except RunnerSetupError as exc:
        ctx.setup_error = str(exc).splitlines()[0]
        raise
    return python, ctx.data_root


def _build_tiny(ctx: Ctx, python: str) -> str:
    dest = ctx.work / "tiny-data-root"
    env = dict(ctx.env, CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    done = run_cmd(
        [python, str(REPO / "scripts" / "hawkears" / "build_tiny_model.py"), str(dest)], timeout=ctx.budget.cap(300), env=env
    )
    if done.rc != 0:
        raise RunnerSetupError(f"cannot build a tiny data root with {python}: {done.err.strip()[-300:]}")
    return str(dest)


def target_binding(ctx: Ctx, mask: str) -> Binding:
    """The binding of local rank 0 of 1 under ``CUDA_VISIBLE_DEVICES=mask``, planned here with
    the node's NVML (``detect``, ``select_visible``, ``plan_binding``), as a rank would."""
    gpus, visible_env, reason = detect(dict(ctx.env, CUDA_VISIBLE_DEVICES=mask), quiet=True)
    if reason:
        raise AssertionError(f"NVML unavailable while binding: {reason}")
    visible = select_visible(gpus, visible_env)
    binding, _ = plan_binding(
        host=socket.gethostname(),
        rank=0,
        local_rank=0,
        local_size=1,
        visible=visible,
        visible_env=visible_env,
        options=BindingOptions(),
    )
    return binding
