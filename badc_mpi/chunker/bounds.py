"""Where the chunks of one recording start and end (pure, numpy).

Chunks of ``chunk_ms`` start every ``chunk_ms - overlap_ms``; the last one ends at the recording's
end. **The tail rule**: HawkEars scores 3-s windows (``spec_duration: 3.0``) and gives no
predictions for less audio, so a last chunk shorter than :data:`MIN_CHUNK_MS` is merged into the
one before it (that chunk then ends at the recording's end: up to ``chunk_ms + 3 s`` long). A
recording shorter than :data:`MIN_CHUNK_MS` gets no chunk: the chunker marks it ``failed``.
"""

from __future__ import annotations

import numpy as np

MIN_CHUNK_MS = 3000  #: HawkEars' spectrogram length (yaml/default.yaml audio.spec_duration)


def chunk_bounds(
    duration_ms: int, chunk_ms: int, overlap_ms: int = 0, min_ms: int = MIN_CHUNK_MS
) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) in ms, int64; empty when ``duration_ms < min_ms``."""
    if chunk_ms <= 0 or not 0 <= overlap_ms < chunk_ms:
        raise ValueError(f"chunk {chunk_ms} ms with overlap {overlap_ms} ms: need 0 <= overlap < chunk")
    if duration_ms < min_ms:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    step = chunk_ms - overlap_ms
    count = 1 if duration_ms <= chunk_ms else 1 + -(-(duration_ms - chunk_ms) // step)
    starts = np.arange(count, dtype=np.int64) * step
    ends = np.minimum(starts + chunk_ms, duration_ms)
    if count > 1 and ends[-1] - starts[-1] < min_ms:
        starts, ends = starts[:-1], ends[:-1].copy()
        ends[-1] = duration_ms
    return starts, ends
