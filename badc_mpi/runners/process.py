"""Child processes of runners: one way to end a process group, one way to name a signal.

Every runner starts its children in a new session (``start_new_session=True``), so the child leads
its own process group and everything it forks can be ended together.
"""

from __future__ import annotations

import os
import signal
import subprocess


def signame(sig: int) -> str:
    """``SIGKILL`` for 9; ``?`` for a number that is no signal."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = 3.0, reap_s: float = 10.0) -> None:
    """End the process group ``proc`` leads: SIGTERM, then (after at most ``grace_s``, or at once when
    ``grace_s`` is 0) SIGKILL to the whole group, stragglers whose leader already exited included;
    then reap ``proc`` (waiting up to ``reap_s``)."""
    if grace_s > 0:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=reap_s)
    except subprocess.TimeoutExpired:
        pass
