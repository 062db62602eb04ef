"""Recordings under a folder: find them, read their headers, name them.

:func:`find_recordings` walks a plain folder or a DataLad dataset in sorted order for ``.wav`` and
``.flac`` files (any case). Hidden entries (``.git``, ``.datalad``) are skipped, and so are
``artifacts/`` and ``manifests/`` at a dataset's root (they hold outputs, and older chunkers'
chunk files). Folder symlinks are not followed; file symlinks (git-annex) are read through their
path and never resolved; a symlink whose annexed content is absent is kept, marked ``absent``.

:func:`probe` reads one header with ``soundfile`` (libsndfile) and never raises: an empty,
truncated or unreadable file comes back with ``error`` set. :func:`recording_id_for` is the id
rule: the path relative to the scanned root, extension dropped, ``/`` mapped to ``~``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from badc_mpi.records import validate_id

AUDIO_EXTENSIONS = (".wav", ".flac")
ID_SEPARATOR = "~"  #: stands for '/' in recording ids
DATASET_SKIP = ("artifacts", "manifests")  #: at a DataLad dataset's root
_WAV_FORMATS = ("WAV", "WAVEX", "RF64", "W64")
_SHOULD_BE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


@dataclass(frozen=True)
class Found:
    """One audio file: its path (absolute, symlinks kept) and its path under the root (``/``)."""

    path: str
    rel: str
    absent: bool = False  #: a symlink to content that is not here (``datalad get`` it)


@dataclass(frozen=True)
class Header:
    """What a file's header says; ``error`` is set when it cannot be chunked."""

    frames: int = 0
    samplerate: int = 0
    channels: int = 0
    format: str = ""
    subtype: str = ""
    error: str = ""
    comment: str = ""  #: the WAV ``ICMT`` comment (AudioMoth writes its clock's time zone there)

    @property
    def duration_ms(self) -> int:
        return self.frames * 1000 // self.samplerate if self.samplerate else 0


def is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def find_recordings(root: str, *, dataset_root: bool = False) -> list[Found]:
    """Every audio file under ``root``, sorted by relative path (``dataset_root``: skip
    :data:`DATASET_SKIP` at the top)."""
    root = os.path.abspath(root)
    found: list[Found] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        top = folder == root
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and dataset_root and d in DATASET_SKIP))
        for name in sorted(files):
            if name.startswith(".") or not is_audio(name):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            absent = os.path.islink(path) and not os.path.exists(path)
            found.append(Found(path, rel, absent))
    found.sort(key=lambda f: f.rel)
    return found


def recording_id_for(rel: str) -> str:
    """``Study/ST-01/20240601_050000.wav`` -> ``Study~ST-01~20240601_050000``."""
    base = rel.rsplit(".", 1)[0] if is_audio(rel) else rel
    return base.replace("/", ID_SEPARATOR)


def id_problem(recording_id: str) -> str | None:
    """Why ``recording_id`` cannot be a recording id (it becomes a folder name), or None."""
    return validate_id(recording_id, "recording_id")


def probe(found: Found) -> Header:
    """The header of ``found`` (never raises: problems come back as ``error``)."""
    import soundfile

    if found.absent:
        return Header(error=f"annexed content not present (symlink to {os.readlink(found.path)}): run `datalad get` on it")
    try:
        size = os.path.getsize(found.path)
    except OSError as exc:
        return Header(error=f"cannot be read: {exc.strerror or exc}")
    if size == 0:
        return Header(error="empty file (0 bytes)")
    try:
        with soundfile.SoundFile(found.path) as audio:
            comment = (audio.comment or "") if audio.format in _WAV_FORMATS else ""
            header = Header(audio.frames, audio.samplerate, audio.channels, audio.format, audio.subtype, comment=comment)
            if header.frames <= 0:
                return Header(error="no audio samples")
            if audio.format in _WAV_FORMATS:
                short = _SHOULD_BE.search(audio.extra_info)
                if short:
                    declared, held = short.groups()
                    return Header(error=f"truncated: its header declares {declared} data bytes, the file holds {held}")
            elif audio.seekable():  # FLAC: the header's sample count must be reachable
                audio.seek(header.frames - 1)
                audio.read(1, dtype="int16")
    except Exception as exc:  # noqa: BLE001 - libsndfile's errors (LibsndfileError, RuntimeError, OSError) are data
        text = " ".join(str(exc).split())
        if "seek" in text.lower() or "read" in text.lower():
            return Header(error=f"truncated or damaged: its last samples cannot be read ({text})")
        return Header(error=f"unreadable: {text}")
    return header
