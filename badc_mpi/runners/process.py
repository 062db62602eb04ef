"""Child processes of runners: one way to end a process group, one way to name a signal, one way
to tie a child's life to its rank's.

Every runner starts its children in a new session (``start_new_session=True``), so the child leads
its own process group and everything it forks can be ended together, and with
``preexec_fn=die_with_parent()``, so a rank killed outright (``kill -9``, MPI abort, SLURM) takes
its child with it: on Linux the child asks for SIGKILL when its parent goes
(``prctl(PR_SET_PDEATHSIG)``), and exits at once if the parent is already gone. The "parent" is the
*thread* that started the child: runners start children from the attempt thread, which outlives them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die (SIGKILL) with the thread that starts it; None
    where Linux's prctl is unavailable. Runs between fork and exec: only a prctl and two syscalls."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: nobody would kill us
            os._exit(1)

    return preexec


def signame(sig: int) -> str:
    """``SIGKILL`` for 9; ``?`` for a number that is no signal."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"


def signal_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal process group ``pgid`` (SIGKILL by default) if it still exists; from any thread."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = 3.0, reap_s: float = 10.0) -> None:
    """End the process group ``proc`` leads: SIGTERM, then (after at most ``grace_s``, or at once when
    ``grace_s`` is 0) SIGKILL to the whole group, stragglers whose leader already exited included;
    then reap ``proc`` (waiting up to ``reap_s``)."""
    if grace_s > 0:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=reap_s)
    except subprocess.TimeoutExpired:
        pass
