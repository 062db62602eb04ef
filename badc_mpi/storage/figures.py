"""Small pure helpers of a worker's reports: which runner metrics a per-chunk telemetry line
keeps, and one line for a file-system error."""

from __future__ import annotations

import errno
from typing import Any

#: runner metrics left out of telemetry lines (10 million chunks: every byte counts 10 MB; the target is
#: <= 400 bytes per chunk for its start and final lines, GPU figures included): the line's ``runtime_s``
#: says ``wall_s``; the sampler's ``vram_used_mib`` says ``peak_vram_mib``; HawkEars' decode/score
#: split (``decode_s``, ``score_s``, ``cpu_s``) is measured by ``make bench-hawkears`` and ``make
#: gpu-check``, not per chunk; a virtual chunk's ``slice_frames`` follows from its span, and its
#: ``slice_read_s`` is inside ``runtime_s``
NOT_PER_CHUNK = frozenset(
    {"wall_s", "cpu_s", "peak_vram_mib", "decode_s", "score_s", "slice_read_s", "slice_frames", "decoded_ahead"}
)


def chunk_metrics(metrics: dict[str, Any], static_keys: frozenset[str], detections: int | None) -> dict[str, Any]:
    """The per-chunk part of a runner's metrics, for telemetry: not the constant ones (in the
    worker event), no nulls, none of :data:`NOT_PER_CHUNK`, no ``detections`` equal to the
    line's own; floats to the millisecond."""
    out = {}
    for key, value in metrics.items():
        if value is None or key in static_keys or key in NOT_PER_CHUNK or (key == "detections" and value == detections):
            continue
        out[key] = round(value, 3) if isinstance(value, float) else value
    return out


def fs_reason(exc: OSError, doing: str) -> str:
    """One line for a file-system error: what failed, the error name and the path."""
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    where = f" ({exc.filename})" if exc.filename else ""
    return f"file-system error {doing}: {name} {exc.strerror or exc}{where}"
