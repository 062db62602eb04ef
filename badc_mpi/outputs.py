"""Atomic, fsynced writes of per-chunk outputs.

The rule: every file another step reads is written to a temporary name in the same folder,
fsynced, renamed onto its final name, and the folder fsynced. Final names are only ever created
by rename, so a reader sees either nothing or the whole file.

Temporary names are ``.<final name>.tmp-<pid>-<hex>``: hidden, and ending in ``.tmp-...`` they can
never equal a final name (``<chunk_id>.scores.csv``, ``.labels.csv``, ``.detections.jsonl``).
A killed attempt can leave them behind; :func:`remove_stale_outputs` removes them.

Per chunk, ``<chunk_id>.detections.jsonl`` is written LAST: its presence marks a completed chunk
(an empty file means "analysed, nothing found").
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from badc_mpi.detections import LABELS1, SCORES2, canonical_records, parse_raw

_TMP_RE = re.compile(r"\.tmp-\d+-[0-9a-f]+\Z")
_TMP_TAIL_RE = re.compile(r"\d+-[0-9a-f]+")
SCORES_SUFFIX = ".scores.csv"
LABELS_SUFFIX = ".labels.csv"
DETECTIONS_SUFFIX = ".detections.jsonl"
_RAW_SUFFIX = {SCORES2: SCORES_SUFFIX, LABELS1: LABELS_SUFFIX}


# -- primitives --------------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so renames and new entries in it are durable.

    Filesystems that cannot fsync a directory (EINVAL/ENOTSUP) are tolerated.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def ensure_dir(path: str | os.PathLike[str]) -> str:
    """Create ``path`` (and parents) if missing, fsyncing each parent that gained an entry."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(path)
    if parent != path:
        ensure_dir(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return path
    fsync_dir(parent)
    return path


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temporary names."""
    return name.startswith(".") and _TMP_RE.search(name) is not None


def temp_path_for(path: str | os.PathLike[str]) -> str:
    """A fresh temporary path next to ``path`` (``.<name>.tmp-<pid>-<hex>``)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _open_temp(path: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = temp_path_for(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file next to {path}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _atomic_write(path: str | os.PathLike[str], write: Any, *, mkdir: bool = True) -> str:
    """Open a temp file, ``write(fileobj)``, flush+fsync, rename onto ``path``, fsync folder."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if mkdir:
        ensure_dir(folder)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(folder)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mkdir: bool = True) -> str:
    """Write ``data`` to ``path`` atomically and durably; returns the absolute path."""
    return _atomic_write(path, lambda handle: handle.write(data), mkdir=mkdir)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", mkdir: bool = True
) -> str:
    """Write ``text`` (no newline translation) atomically and durably."""
    return atomic_write_bytes(path, text.encode(encoding), mkdir=mkdir)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, mkdir: bool = True) -> str:
    """Copy the bytes of ``src`` (symlinks followed) to ``dst`` atomically and durably."""
    with open(os.fspath(src), "rb") as source:
        return _atomic_write(dst, lambda handle: shutil.copyfileobj(source, handle, 1 << 20), mkdir=mkdir)


def jsonl_bytes(records: Iterable[Mapping[str, Any]]) -> bytes:
    """One compact JSON object per line (key order kept, UTF-8, NaN refused)."""
    lines = [
        json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
        for record in records
    ]
    return "".join(lines).encode("utf-8")


def atomic_write_jsonl(
    path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], *, mkdir: bool = True
) -> str:
    """Write ``records`` as JSON Lines atomically; no records gives an empty file."""
    return atomic_write_bytes(path, jsonl_bytes(records), mkdir=mkdir)


# -- per-chunk outputs -------------------------------------------------------------------------


def _check_id(kind: str, value: str) -> str:
    if not value or value in (".", "..") or "/" in value or os.sep in value or "\0" in value:
        raise ValueError(f"unsafe {kind} {value!r} for a path component")
    return value


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
        _check_id("recording_id", recording_id),
    )
    chunk_id = _check_id("chunk_id", chunk_id)
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
    chunk: Any,
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

    Order: parse (raises :class:`~badc_mpi.detections.OutputFormatError` before touching
    anything), remove an older ``.detections.jsonl`` (so the chunk reads "incomplete" until this
    call ends), write the raw copy, then the detections file last.
    """
    raw = parse_raw(raw_path, raw_format, class_map=class_map, class_names=class_names)
    records = canonical_records(
        raw, chunk, run_id=run_id, hawkears_version=hawkears_version, model_version=model_version
    )
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
    paths = chunk_output_paths(output_dir, recording_id, chunk_id)
    prefixes = tuple("." + os.path.basename(p) + ".tmp-" for p in paths.finals)
    removed: list[str] = []
    try:
        entries = list(os.scandir(paths.recording_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if any(
            entry.name.startswith(prefix) and _TMP_TAIL_RE.fullmatch(entry.name[len(prefix):])
            for prefix in prefixes
        ):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.path)
    if removed:
        fsync_dir(paths.recording_dir)
    return sorted(removed)
