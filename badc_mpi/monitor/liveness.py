"""Is the run's rank 0 still there? (pure, but for :func:`pid_alive`).

A run whose summary is not final is running only while rank 0 lives: it writes the summary every
``--summary-interval-s`` (30 s by default) and telemetry as chunks finish. The monitor calls a
run's rank 0 gone when the run header names this host and its pid no longer runs, or when
neither the summary nor the telemetry file changed (their mtimes, not the times written in
them) for :data:`SILENT_S`; it then prints the resume
command from the header's manifests and folders.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

SILENT_S = 180.0  #: six default summary intervals without a summary nor a telemetry line


def pid_alive(pid: int) -> bool | None:
    """Whether a process ``pid`` runs on this host (None: cannot tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return None
    return True


def rank0_gone(
    header: dict[str, Any] | None,
    *,
    final: bool,
    summary_age_s: float | None,
    telemetry_age_s: float | None,
    host: str,
    alive: Callable[[int], bool | None] = pid_alive,
) -> str | None:
    """Why rank 0 is taken to be gone, or None (it may be running, or the run is over)."""
    if final or header is None:
        return None
    pid = header.get("pid")
    if header.get("host") == host and isinstance(pid, int) and alive(pid) is False:
        return f"rank 0 (pid {pid} on {host}) is gone: the run died without its final summary"
    ages = [a for a in (summary_age_s, telemetry_age_s) if a is not None]
    if summary_age_s is not None and min(ages) > SILENT_S:  # both files untouched (their mtimes)
        return (
            f"rank 0 seems gone: no summary nor telemetry for {min(ages) / 60:.0f} min "
            f"(it writes one every 30 s while it runs; host {header.get('host') or '?'}, pid {pid or '?'})"
        )
    return None


def resume_hint(header: dict[str, Any] | None) -> str | None:
    """The command that resumes the run named by its telemetry header (its manifests and folders)."""
    if not header or not header.get("manifests"):
        return None
    manifests = [str(m) for m in header["manifests"]]
    pinned = [
        w
        for name in ("output_dir", "telemetry_dir")
        if header.get(name)
        for w in (f"--{name.replace('_', '-')}", str(header[name]))
    ]
    make = f"make resume MANIFEST={shlex.quote(' '.join(manifests))}" + (
        f" ARGS={shlex.quote(shlex.join(pinned))}" if pinned else ""
    )
    return f"{make}  (or: {shlex.join(['badc-mpi', 'run', *manifests, *pinned, '--resume'])}, with the run's other options)"
