"""Virtual chunks: the one rule shared by the chunker that writes them and the runner that reads them.

A manifest row whose ``chunk_kind`` column is ``slice`` is a *virtual* chunk: ``source_path`` is
the whole recording and ``[start_ms, end_ms)`` the part to score; the runner reads just those
samples. Any other row (no column, empty, ``file``) is the lab's older kind: ``source_path`` is
the chunk's own audio file and ``start_ms``/``end_ms`` only say where it lay in its recording.
Pure: no audio is read here.
"""

from __future__ import annotations

from collections.abc import Iterable

CHUNK_KIND_COLUMN = "chunk_kind"
SLICE = "slice"  #: read [start_ms, end_ms) of source_path
FILE = "file"  #: source_path is the chunk itself (the default)
CHUNK_KINDS = (SLICE, FILE)


def chunk_kind(extra: Iterable[tuple[str, str]] | None) -> tuple[str, str | None]:
    """(kind, problem) from a chunk's extra columns: ``file`` when the column is absent or empty."""
    value = (dict(extra or ()).get(CHUNK_KIND_COLUMN) or "").strip().lower()
    if not value:
        return FILE, None
    if value not in CHUNK_KINDS:
        return FILE, f"{CHUNK_KIND_COLUMN} {value!r} is not one of {', '.join(CHUNK_KINDS)}"
    return value, None


def frame_range(start_ms: int | None, end_ms: int | None, samplerate: int, frames: int) -> tuple[int, int]:
    """The frames ``[first, stop)`` of a slice: ``ms * rate // 1000`` at both ends (so adjacent
    slices share no sample and miss none), the end clamped to the recording.

    ValueError (with the numbers) when the slice is empty or starts past the recording's end.
    """
    first = 0 if start_ms is None else start_ms * samplerate // 1000
    stop = frames if end_ms is None else min(frames, end_ms * samplerate // 1000)
    if first >= frames:
        raise ValueError(f"slice starts at {start_ms} ms, past the recording's end ({frames * 1000 // max(samplerate, 1)} ms)")
    if stop <= first:
        raise ValueError(f"slice {start_ms}..{end_ms} ms holds no samples at {samplerate} Hz")
    return first, stop
