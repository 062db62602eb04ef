"""The chunker's files: the manifest of virtual chunks and one ``.chunk_status.json`` per recording.

The manifest is streamed in batches through Arrow's CSV writer into one atomic, fsynced file
(``storage/atomic.py``): 10 million chunks never sit in memory as rows. Column order:
:data:`MANIFEST_COLUMNS`. The status files carry the fields the lab's chunker wrote (and the guard,
``inputs/chunk_status.py``, reads), plus the header's facts; ``chunk_output_dir`` is null because
no audio is written.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from badc_mpi.chunker.plan import RecordingPlan
from badc_mpi.errors import RecordingsError
from badc_mpi.inputs.chunk_status import STATUS_FILE
from badc_mpi.inputs.slices import CHUNK_KIND_COLUMN, SLICE
from badc_mpi.records import STANDARD_COLUMNS
from badc_mpi.storage.atomic import atomic_write_stream, ensure_dir, fsync_paths, temp_path_for

#: per-recording columns, in the order they follow the standard ones
PLACE_TIME_COLUMNS = (
    "location",
    "study_area",
    "recording_start_utc",
    "recording_start_local",
    "date",
    "region",
    "lat",
    "lon",
    "latitude",
    "longitude",
    "sample_rate",  #: Hz, from the header (WildTrax's recording_sample_frequency)
    "deploy_start",  #: the site table's deployment window (detection histories)
    "deploy_end",
)
MANIFEST_COLUMNS = (
    *STANDARD_COLUMNS,
    CHUNK_KIND_COLUMN,
    *PLACE_TIME_COLUMNS,
)
BATCH_ROWS = 262_144


def _degrees(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def recording_values(plan: RecordingPlan, manifest_dir: str) -> dict[str, str]:
    """The per-recording column values of ``plan`` (pure; "" = unknown)."""
    named = plan.named
    site = named.site
    lat = _degrees(site.latitude if site else None)
    lon = _degrees(site.longitude if site else None)
    return {
        "recording_id": named.recording_id,
        "source_path": os.path.relpath(named.found.path, manifest_dir).replace(os.sep, "/"),
        "location": named.facts.location,
        "study_area": named.study_area,
        "recording_start_utc": named.when.utc_text,
        "recording_start_local": named.when.local_text,
        "date": named.when.local_date,
        "region": site.region if site else "",
        "lat": lat,
        "lon": lon,
        "latitude": lat,
        "longitude": lon,
        "sample_rate": str(plan.header.samplerate) if plan.header.samplerate else "",
        "deploy_start": site.deploy_start if site else "",
        "deploy_end": site.deploy_end if site else "",
    }


def _strings(values: list[str], take: pa.Array) -> pa.Array:
    return pa.array([v if v else None for v in values], pa.string()).take(take)


def _batch(plans: list[RecordingPlan], manifest_dir: str, overlap_ms: int) -> pa.Table:
    counts = np.array([len(p.starts) for p in plans], dtype=np.int64)
    take = pa.array(np.repeat(np.arange(len(plans), dtype=np.int64), counts))
    starts = pa.array(np.concatenate([p.starts for p in plans]))
    ends = pa.array(np.concatenate([p.ends for p in plans]))
    rows = [recording_values(p, manifest_dir) for p in plans]
    column = {name: _strings([r[name] for r in rows], take) for name in ("recording_id", "source_path", *PLACE_TIME_COLUMNS)}
    n = len(starts)
    column["chunk_id"] = pc.binary_join_element_wise(
        column["recording_id"], "_chunk_", pc.cast(starts, pa.string()), "_", pc.cast(ends, pa.string()), ""
    )
    column["start_ms"], column["end_ms"] = starts, ends
    column["overlap_ms"] = pa.array(np.full(n, overlap_ms, dtype=np.int64))
    column["sha256"] = column["notes"] = pa.nulls(n, pa.string())
    column[CHUNK_KIND_COLUMN] = pa.array([SLICE], pa.string()).take(pa.array(np.zeros(n, dtype=np.int64)))
    return pa.table({name: column[name] for name in MANIFEST_COLUMNS})


def _batches(plans: Iterable[RecordingPlan], manifest_dir: str, overlap_ms: int) -> Iterator[pa.Table]:
    pending: list[RecordingPlan] = []
    rows = 0
    for plan in plans:
        if not plan.ok:
            continue
        pending.append(plan)
        rows += len(plan.starts)
        if rows >= BATCH_ROWS:
            yield _batch(pending, manifest_dir, overlap_ms)
            pending, rows = [], 0
    if pending:
        yield _batch(pending, manifest_dir, overlap_ms)


def write_manifest(path: str, plans: Iterable[RecordingPlan], overlap_ms: int) -> int:
    """Write the chunks of the plans that succeeded to ``path`` atomically; returns the row count."""
    path = os.path.abspath(path)
    manifest_dir = os.path.dirname(path)
    schema = pa.schema([(name, pa.int64() if name.endswith("_ms") else pa.string()) for name in MANIFEST_COLUMNS])
    written = 0

    def write(handle: Any) -> None:
        nonlocal written
        with pacsv.CSVWriter(handle, schema, write_options=pacsv.WriteOptions(quoting_style="needed")) as writer:
            for table in _batches(plans, manifest_dir, overlap_ms):
                writer.write_table(table)
                written += table.num_rows

    atomic_write_stream(path, write)
    return written


def status_document(plan: RecordingPlan, *, manifest_path: str, chunk_s: float, overlap_s: float, now: str) -> dict[str, Any]:
    """The ``.chunk_status.json`` of one recording (pure)."""
    header = plan.header
    return {
        "recording_id": plan.named.recording_id,
        "audio_path": plan.named.found.path,
        "chunk_output_dir": None,
        "virtual_chunks": True,
        "manifest_path": manifest_path,
        "chunk_duration": chunk_s,
        "overlap": overlap_s,
        "status": "completed" if plan.ok else "failed",
        "started_at": now,
        "completed_at": now if plan.ok else None,
        "updated_at": now,
        "manifest_rows": len(plan.starts),
        "duration_s": header.frames / header.samplerate if header.samplerate else None,
        "sample_rate": header.samplerate or None,
        "channels": header.channels or None,
        "format": f"{header.format}/{header.subtype}" if header.format else None,
        "error": plan.error or None,
    }


def _same_file(a: str, b: str) -> bool:
    """Whether two recording paths name one file: folders resolved, the file's own link (an
    annexed file's) not followed."""

    def norm(path: str) -> str:
        return os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))

    return norm(a) == norm(b)


def check_status_owners(plans: Iterable[RecordingPlan], chunks_dir: str) -> None:
    """RecordingsError (exit 2, nothing written) when a recording's ``.chunk_status.json`` already
    belongs to another recording: two roots with one layout (``A01/20240601_050000.WAV`` in two
    studies) give the same recording ids, and one dataset's ids must name one recording each.
    A status file of the same recording (chunked again) may be replaced."""
    clashes: list[str] = []
    for plan in plans:
        target = os.path.join(chunks_dir, plan.named.recording_id, STATUS_FILE)
        try:
            with open(target, encoding="utf-8") as handle:
                owner = json.load(handle).get("audio_path")
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError):
            owner = None  # unreadable: the guard refuses it anyway; chunking again repairs it
        if isinstance(owner, str) and not _same_file(owner, plan.named.found.path):
            clashes.append(
                f"{target}: recording id {plan.named.recording_id!r} is {owner}; {plan.named.found.path} would take it over"
            )
    if clashes:
        raise RecordingsError(
            f"{len(clashes)} recording id(s) already name another recording in {chunks_dir} (first: {clashes[0]})",
            fix="give this tree its own --chunks-dir and manifest (another dataset), or chunk from a ROOT one folder "
            "higher so that the ids include the study's folder",
            problems=clashes,
        )


def write_status_files(
    plans: Iterable[RecordingPlan], chunks_dir: str, *, manifest_path: str, chunk_s: float, overlap_s: float
) -> int:
    """``<chunks_dir>/<recording_id>/.chunk_status.json`` for every plan; returns how many.

    Each file is written to a temporary name and renamed (a reader sees all of it or nothing), but
    not fsynced one by one (four serial fsyncs per file made 100,000 recordings take ~8 minutes):
    at the end the files, their folders and the folders that gained a folder are fsynced together
    (:func:`~badc_mpi.storage.atomic.fsync_paths`, never the whole node's ``os.sync()``), before
    the manifest, written last, exists. A status file torn by a crash before that reads as
    ``unreadable``: the guard refuses it.
    """
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    count = 0
    ensure_dir(chunks_dir)
    written: list[str] = []
    folders: set[str] = set()
    for plan in plans:
        document = status_document(plan, manifest_path=manifest_path, chunk_s=chunk_s, overlap_s=overlap_s, now=now)
        folder = os.path.join(chunks_dir, plan.named.recording_id)
        if folder not in folders:
            made = folder
            while not os.path.isdir(made):  # each folder made here is a new entry in its parent
                folders.add(os.path.dirname(made))
                made = os.path.dirname(made)
            os.makedirs(folder, exist_ok=True)
            folders.add(folder)
        target = os.path.join(folder, STATUS_FILE)
        temp = temp_path_for(target)
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(document, indent=1) + "\n")
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        written.append(target)
        count += 1
    fsync_paths(written, sorted(folders))  # all of them before the manifest exists
    return count
