"""Per-chunk outputs ``<output>/<recording_id>/<chunk_id>.*``, written by :mod:`badc_mpi.storage.atomic`.

Temporary names (``.<final name>.tmp-<pid>-<hex>``) can never equal a final name
(``<chunk_id>.scores.csv``, ``.labels.csv``, ``.detections.jsonl``). A killed attempt can leave
them behind; :func:`remove_stale_outputs` removes them.

Per chunk, ``<chunk_id>.detections.jsonl`` is written LAST: its presence marks a completed chunk
(an empty file means "analysed, nothing found").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from badc_mpi.records import Chunk, check_id
from badc_mpi.storage.atomic import TEMP_TAIL_RE, atomic_copy, atomic_write_bytes, ensure_dir, fsync_dir, jsonl_bytes
from badc_mpi.storage.detections import LABELS1, SCORES2, canonical_records, parse_raw

SCORES_SUFFIX = ".scores.csv"
LABELS_SUFFIX = ".labels.csv"
DETECTIONS_SUFFIX = ".detections.jsonl"
_RAW_SUFFIX = {SCORES2: SCORES_SUFFIX, LABELS1: LABELS_SUFFIX}


# -- per-chunk outputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkOutputs:
    """Final paths of one chunk's outputs."""

    recording_dir: str
    scores_csv: str  #: raw HawkEars 2.x CSV copy
    labels_csv: str  #: raw HawkEars 1.x CSV copy (only for ``labels1`` runs)
    detections_jsonl: str  #: canonical detections; its presence marks a completed chunk

    def raw_csv(self, raw_format: str) -> str:
        """The raw copy's path for ``raw_format`` (``scores2`` or ``labels1``)."""
        if raw_format == SCORES2:
            return self.scores_csv
        if raw_format == LABELS1:
            return self.labels_csv
        raise ValueError(f"unknown raw output format {raw_format!r}; valid: {SCORES2}, {LABELS1}")

    @property
    def finals(self) -> tuple[str, str, str]:
        return (self.scores_csv, self.labels_csv, self.detections_jsonl)


def chunk_output_paths(output_dir: str | os.PathLike[str], recording_id: str, chunk_id: str) -> ChunkOutputs:
    """``<output_dir>/<recording_id>/<chunk_id>.{scores.csv,labels.csv,detections.jsonl}``."""
    folder = os.path.join(
        os.path.abspath(os.fspath(output_dir)),
        check_id(recording_id, "recording_id"),
    )
    chunk_id = check_id(chunk_id, "chunk_id")
    return ChunkOutputs(
        recording_dir=folder,
        scores_csv=os.path.join(folder, chunk_id + SCORES_SUFFIX),
        labels_csv=os.path.join(folder, chunk_id + LABELS_SUFFIX),
        detections_jsonl=os.path.join(folder, chunk_id + DETECTIONS_SUFFIX),
    )


@dataclass(frozen=True)
class FinalizedOutputs:
    """What :func:`finalize_chunk_outputs` wrote."""

    raw_csv: str
    detections_jsonl: str
    detections: int  #: number of detections (lines in ``detections_jsonl``)
    raw_format: str

    def as_dict(self) -> dict[str, str]:
        """The output paths, for telemetry and the summary: ``raw_csv``, ``detections_jsonl``."""
        return {"raw_csv": self.raw_csv, "detections_jsonl": self.detections_jsonl}


def finalize_chunk_outputs(
    output_dir: str | os.PathLike[str],
    chunk: Chunk,
    raw_path: str | os.PathLike[str],
    raw_format: str,
    *,
    run_id: str,
    hawkears_version: str | None,
    model_version: str | None,
    class_map: Mapping[str, str] | None = None,
    class_names: Mapping[str, str] | None = None,
) -> FinalizedOutputs:
    """Validate a runner's raw CSV and move the chunk's outputs into place, durably.

    Order: parse (raises :class:`~badc_mpi.storage.detections.OutputFormatError` before touching
    anything), remove an older ``.detections.jsonl`` (so the chunk reads "incomplete" until this
    call ends), write the raw copy, then the detections file last.
    """
    raw = parse_raw(raw_path, raw_format, class_map=class_map, class_names=class_names)
    records = canonical_records(raw, chunk, run_id=run_id, hawkears_version=hawkears_version, model_version=model_version)
    paths = chunk_output_paths(output_dir, chunk.recording_id, chunk.chunk_id)
    ensure_dir(paths.recording_dir)
    raw_dst = paths.raw_csv(raw_format)
    stale = [paths.detections_jsonl] + [p for p in (paths.scores_csv, paths.labels_csv) if p != raw_dst]
    removed = False
    for old in stale:
        try:
            os.unlink(old)
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        fsync_dir(paths.recording_dir)
    atomic_copy(raw_path, raw_dst, mkdir=False)
    atomic_write_bytes(paths.detections_jsonl, jsonl_bytes(records), mkdir=False)
    return FinalizedOutputs(
        raw_csv=raw_dst,
        detections_jsonl=paths.detections_jsonl,
        detections=len(records),
        raw_format=raw_format,
    )


def is_chunk_complete(output_dir: str | os.PathLike[str], recording_id: str, chunk_id: str) -> bool:
    """Whether the chunk's detections file (written last) exists."""
    return os.path.isfile(chunk_output_paths(output_dir, recording_id, chunk_id).detections_jsonl)


def remove_stale_outputs(output_dir: str | os.PathLike[str], recording_id: str, chunk_id: str) -> list[str]:
    """Remove temporary files a killed attempt left for this chunk; returns the removed paths.

    Only call it for a chunk this process owns (a concurrent writer's temp file would vanish).
    Final files are left alone.
    """
    return Leftovers().remove(output_dir, recording_id, chunk_id)


class Leftovers:
    """:func:`remove_stale_outputs` without listing a recording's folder once per chunk.

    A worker lists each recording folder once, the first time it works on one of its chunks, and
    remembers the temporary files it found there (normally none) by chunk; each attempt then
    removes only its own chunk's. Temporary files are left by killed attempts of *earlier*
    processes, so one listing per worker sees them all: O(files) per recording instead of
    O(files x chunks). A temporary file another live process creates later is its own business.
    """

    def __init__(self) -> None:
        self._found: dict[str, dict[str, list[str]]] = {}  #: recording folder -> chunk final name -> temp paths

    def remove(self, output_dir: str | os.PathLike[str], recording_id: str, chunk_id: str) -> list[str]:
        paths = chunk_output_paths(output_dir, recording_id, chunk_id)
        found = self._found.get(paths.recording_dir)
        if found is None:
            found = self._found[paths.recording_dir] = _temp_files(paths.recording_dir)
        removed: list[str] = []
        for final in paths.finals:
            for path in found.pop(os.path.basename(final), ()):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                removed.append(path)
        if removed:
            fsync_dir(paths.recording_dir)
        return sorted(removed)


def _temp_files(folder: str) -> dict[str, list[str]]:
    """Temporary files in ``folder`` by the final name they were meant for."""
    out: dict[str, list[str]] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for entry in entries:
        name = entry.name
        cut = name.rfind(".tmp-")
        if name.startswith(".") and cut > 1 and TEMP_TAIL_RE.fullmatch(name[cut + 5 :]):
            out.setdefault(name[1:cut], []).append(entry.path)
    return out
