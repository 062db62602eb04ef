"""A logged (non-TTY) run shows it moving (issue 21): the progress line comes at once (with the
total), then after 2, 4, 8 ... s up to the steady interval; HawkEars' start-up stages are named
in the rank's log (checked through the real CLI and the tiny HawkEars model in
tests/test_hawkears_mpi.py, whose run is reused for it)."""

from __future__ import annotations

import io

from badc_mpi.coordinator.progress import Progress


def test_a_log_gets_progress_at_once_then_at_doubling_gaps_up_to_the_interval():
    now = [100.0]
    out = io.StringIO()
    progress = Progress(50, stream=out, interval_s=30.0, clock=lambda: now[0])
    for second in range(0, 200):
        now[0] = 100.0 + second
        progress.update(second // 4, 0)
    times = [0, 2, 6, 14, 30, 60, 90, 120, 150, 180]  # the gaps 2, 4, 8, 16, then 30 s steady
    lines = out.getvalue().splitlines()
    assert len(lines) == len(times) and lines[0].startswith("badc-mpi progress: 0/50 chunks (0.0%)")
    assert [int(ln.split()[2].split("/")[0]) for ln in lines] == [t // 4 for t in times]
