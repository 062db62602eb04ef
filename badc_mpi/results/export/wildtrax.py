"""WildTrax tag, task and clip rows from one recording's detections (pure; docs/results.md, "WildTrax").

Columns are WildTrax's tag template. Fields WildTrax leaves to the uploader, and what we write:
``observer`` "Not Assigned" (classifier tags), ``individual_number`` 1, ``vocalization`` "SONG"
(HawkEars does not tell song from call), ``abundance`` 1, ``min_tag_freq``/``max_tag_freq`` 200 /
13000 Hz (HawkEars' own Raven output), ``species_individual_comments`` "HawkEars <version>
Confidence: 0.93", ``tag_is_hidden_for_verification`` "FALSE", ``recording_sample_frequency``
from a ``sample_rate`` manifest column (else empty), ``internal_tag_id`` empty.

WildTrax's rules: a task always starts at second 0 of its recording (the templates have no
offset) and ``task_duration`` is whole seconds in 1..1800. So a recording longer than 1800 s is
**split into clips** (docs/results.md, "Recordings longer than 1800 s"): clip ``k`` covers
``[k * 1800 s, min((k + 1) * 1800 s, length))`` of the recording and is a WildTrax recording of
its own, at the same location, starting ``k * 1800 s`` later (``recording_date_time`` and the
file name ``LOCATION_YYYYMMDD_HHMMSS`` shifted by the offset); ``wildtrax_clips.csv`` is the cut
list. Each clip gets one task of its whole seconds (or ``--task-duration``, capped at the clip);
a tag goes to the clip its start falls in, ``tag_start_time`` relative to the clip's start, its
duration cut at the task's end (never straddling two tasks; counted). Tags that start at or after
their task's end do not sync and are left out (counted; only a fractional last second, a tail
under 1 s, or beyond ``--task-duration``); a tag at 0 s moves to 0.1 s; ``1SPT`` keeps a
species' first tag per task, ``1SPM`` its first per minute of the task, ``None`` every tag.
WildTrax reads a recording's location and date-time from its uploaded file name (wildRtrax's
``wt_audio_scanner``: the location before the first ``_``, then ``YYYYMMDD_HHMMSS``), so tasks and
tags sync only when the uploaded name carries exactly their ``location`` and
``recording_date_time``. ``wildtrax_rename.csv`` lists every recording (or clip) whose upload name
(``LOCATION_YYYYMMDD_HHMMSS.ext``, the task's own time) differs from its file's name: AudioMoth
UTC names, SM5 ``_AC_`` names, date folders, clips (docs/results.md, "Upload names").
Species codes other than four capital letters (HawkEars' ``FROG-WOOD``, ``TOAD-AMER``...) have
no confirmed WildTrax code: left out and counted, never invented.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.results.aggregate.schema import ANALYSED
from badc_mpi.results.export.meta import ExportError, Recording

TAG_COLUMNS = [
    "location", "recording_date_time", "task_duration", "task_method", "observer", "species_code",
    "individual_number", "vocalization", "abundance", "tag_start_time", "tag_duration", "min_tag_freq",
    "max_tag_freq", "species_individual_comments", "tag_is_hidden_for_verification",
    "recording_sample_frequency", "internal_tag_id",
]  # fmt: skip
TASK_COLUMNS = [
    "location", "recording_date_time", "task_method", "recording_sample_frequency", "task_duration",
    "task_is_complete", "observer", "task_comments", "internal_task_id",
]  # fmt: skip
CLIP_COLUMNS = [
    "recording_id", "source_path", "clip", "clip_start_s", "clip_end_s", "wildtrax_file_name", "location",
    "recording_date_time", "task_duration", "task_is_complete",
]  # fmt: skip
RENAME_COLUMNS = [
    "source_path", "action", "clip_start_s", "clip_end_s", "wildtrax_file_name", "location", "recording_date_time",
]  # fmt: skip
METHODS = ("None", "1SPT", "1SPM")
MAX_TASK_S = 1800
CLIP_MS = MAX_TASK_S * 1000
MIN_TAG_START_S = 0.1
LOW_FREQ_HZ, HIGH_FREQ_HZ = 200, 13000
WILDTRAX_AUDIO = (".wav", ".flac", ".wac")
_CODE_RE = re.compile(r"^[A-Z]{4}$")
LEFT_AFTER_TASK = "start at or after its task's end"
CUT_AT_TASK_END = "cut at their task's end"
NO_TASK = "in a tail under 1 s or a clip without a task"


@dataclass(frozen=True)
class Clip:
    """One WildTrax recording (and its task) cut from a recording."""

    index: int
    start_ms: int  #: offset in the recording
    end_ms: int | None  #: None: the recording's length is unknown
    task_duration_s: int
    recording_date_time: str
    file_name: str

    @property
    def task_end_ms(self) -> int:
        return self.start_ms + self.task_duration_s * 1000


@dataclass
class WildTraxRows:
    """Rows of one recording (or, added up, of the whole export) and what was left out."""

    tags: list[list[Any]] = field(default_factory=list)
    tasks: list[list[Any]] = field(default_factory=list)
    clips: list[list[Any]] = field(default_factory=list)
    renames: list[list[Any]] = field(default_factory=list)  #: RENAME_COLUMNS rows
    left_out: Counter[str] = field(default_factory=Counter)  #: reason -> tags
    codes_left_out: Counter[str] = field(default_factory=Counter)  #: species code -> tags
    split: Counter[str] = field(default_factory=Counter)  #: recordings split, clips made, clips without a task


def check_options(method: str, requested: int | None) -> None:
    if method not in METHODS:
        raise ExportError(f"--task-method {method!r} is not a WildTrax method", fix=f"use one of: {', '.join(METHODS)}")
    if requested is not None and not 1 <= requested <= MAX_TASK_S:
        raise ExportError(f"--task-duration {requested} is outside WildTrax's 1..{MAX_TASK_S} s", fix="give seconds in 1..1800")


def _file_name(rec: Recording, when: dt.datetime | None) -> str:
    ext = os.path.splitext(rec.source_path or "")[1].lower()
    stamp = when.strftime("%Y%m%d_%H%M%S") if when else ""
    return f"{rec.location or ''}_{stamp}{ext if ext in WILDTRAX_AUDIO else '.wav'}"


def upload_differs(source_path: str | None, file_name: str) -> bool:
    """Whether a file must be uploaded under ``file_name`` rather than its own name (the stem
    exactly, the extension in any case: WildTrax takes ``.WAV`` as ``.wav``)."""
    if not source_path:
        return True
    own = os.path.basename(source_path)
    stem, ext = os.path.splitext(own)
    want_stem, want_ext = os.path.splitext(file_name)
    return stem != want_stem or ext.lower() != want_ext.lower()


def plan_clips(rec: Recording, requested: int | None = None) -> list[Clip]:
    """The clips (WildTrax recordings) of ``rec``: one when it is 1800 s or shorter (or its
    length is unknown), else consecutive 1800-s clips; a tail under 1 s makes no clip."""
    length = rec.duration_ms
    bounds: list[tuple[int, int | None]] = []
    if length is None:
        bounds.append((0, None))
    else:
        start = 0
        while start < length and (start == 0 or length - start >= 1000):
            bounds.append((start, min(start + CLIP_MS, length)))
            start += CLIP_MS
        bounds = bounds or [(0, length)]
    clips = []
    for index, (start, end) in enumerate(bounds):
        whole_s = MAX_TASK_S if end is None else max(1, min(MAX_TASK_S, (end - start) // 1000))
        duration = whole_s if requested is None else min(requested, whole_s)
        when = rec.start_local + dt.timedelta(milliseconds=start) if rec.start_local else None
        text = when.strftime("%Y-%m-%d %H:%M:%S") if when else ""
        clips.append(Clip(index, start, end, duration, text, _file_name(rec, when)))
    return clips


def _seconds(ms: float) -> float:
    return round(ms / 1000.0, 3)


def _clip_of(clips: Sequence[Clip], start_ms: int) -> Clip | None:
    index = start_ms // CLIP_MS if start_ms >= 0 else 0
    return clips[index] if index < len(clips) else None


def recording_rows(
    rec: Recording,
    chunks: Iterable[dict[str, Any]],
    detections: Iterable[dict[str, Any]],
    *,
    method: str = "None",
    task_duration: int | None = None,
) -> WildTraxRows:
    """Tag, task and clip rows of one analysed recording. ``chunks``: its rows of the ``chunks``
    table (a clip with a chunk not analysed gets ``task_is_complete`` ``f``; a clip with no
    analysed chunk gets no task); ``detections``: dicts with ``label_code, label, confidence,
    start_ms, end_ms, hawkears_version``, filtered by confidence, sorted by start."""
    out = WildTraxRows()
    clips = plan_clips(rec, task_duration)
    analysed: Counter[int] = Counter()
    missing: Counter[int] = Counter()
    for c in chunks:
        for covered in clips:
            start, end = c.get("start_ms") or 0, c.get("end_ms")
            if (end is None or end > covered.start_ms) and (covered.end_ms is None or start < covered.end_ms):
                (analysed if c.get("status") == ANALYSED else missing)[covered.index] += 1
    with_task = {clip.index for clip in clips if analysed[clip.index]}
    if len(clips) > 1:
        out.split.update({"recordings": 1, "clips": len(clips), "clips without a task": len(clips) - len(with_task)})
    seen: set[tuple[Any, ...]] = set()
    valid: dict[str, bool] = {}
    heads = {c.index: [rec.location, c.recording_date_time, c.task_duration_s, method, "Not Assigned"] for c in clips}
    rate = rec.sample_rate or ""
    for d in detections:
        code = d.get("label_code") or d.get("label") or ""
        ok = valid.get(code)
        if ok is None:
            ok = valid[code] = _CODE_RE.match(code) is not None
        if not ok:
            out.codes_left_out[code] += 1
            continue
        start_ms = d["start_ms"]
        clip = _clip_of(clips, int(start_ms))
        if clip is None or clip.index not in with_task or start_ms >= clip.task_end_ms:
            out.left_out[LEFT_AFTER_TASK if clip is not None and clip.index in with_task else NO_TASK] += 1
            continue
        start_s = _seconds(start_ms - clip.start_ms)
        if method != "None":
            key = (clip.index, code) if method == "1SPT" else (clip.index, code, int(start_s // 60))
            if key in seen:
                out.left_out[f"not the first of its species ({method})"] += 1
                continue
            seen.add(key)
        end_ms, task_end_ms = d["end_ms"], clip.task_end_ms
        if end_ms > task_end_ms:
            out.split[CUT_AT_TASK_END] += 1
            end_ms = task_end_ms
        shown = start_s if start_s > MIN_TAG_START_S else MIN_TAG_START_S
        duration = min(_seconds(end_ms - start_ms), round(clip.task_duration_s - shown, 3))
        version = d.get("hawkears_version") or "?"
        out.tags.append(
            [*heads[clip.index], code, 1, "SONG", 1, shown, duration, LOW_FREQ_HZ, HIGH_FREQ_HZ,
             f"HawkEars {version} Confidence: {float(d['confidence']):.2f}", "FALSE", rate, ""]
        )  # fmt: skip
    for clip in clips:
        complete = "f" if missing[clip.index] else "t"
        end_s = "" if clip.end_ms is None else _seconds(clip.end_ms)
        has_task = clip.index in with_task
        out.clips.append([rec.recording_id, rec.source_path or "", clip.index, _seconds(clip.start_ms), end_s, clip.file_name,
                          rec.location, clip.recording_date_time, clip.task_duration_s if has_task else "",
                          complete if has_task else ""])  # fmt: skip
        if len(clips) > 1 or upload_differs(rec.source_path, clip.file_name):
            action = "cut" if len(clips) > 1 else "rename"
            out.split["renamed"] += action == "rename"
            out.renames.append([rec.source_path or "", action, _seconds(clip.start_ms) if action == "cut" else "",
                                end_s if action == "cut" else "", clip.file_name, rec.location, clip.recording_date_time])  # fmt: skip
        if has_task:
            out.tasks.append([rec.location, clip.recording_date_time, method, rec.sample_rate or "", clip.task_duration_s,
                              complete, "Not Assigned", "", ""])  # fmt: skip
    return out


def notes(rows: WildTraxRows) -> list[str]:
    """What the export says about the WildTrax files (pure)."""
    out = []
    for reason, n in sorted(rows.left_out.items()):
        out.append(f"wildtrax: {n} tag(s) left out: {reason}")
    if rows.codes_left_out:
        listed = ", ".join(f"{c or '(empty)'} ({n})" for c, n in sorted(rows.codes_left_out.items()))
        out.append(f"wildtrax: species codes without a WildTrax code left out: {listed}")
    if rows.split["recordings"]:
        out.append(
            f"wildtrax: {rows.split['recordings']} recording(s) longer than {MAX_TASK_S} s split into {rows.split['clips']} "
            f"clips ({rows.split['clips without a task']} without an analysed chunk, so without a task): cut their audio "
            "as wildtrax_clips.csv lists and upload the clips under those names"
        )
    if rows.split["renamed"]:
        out.append(
            f"wildtrax: {rows.split['renamed']} recording(s) must be uploaded under another name than their file's (WildTrax reads "
            "location and date-time from the uploaded name): rename them as wildtrax_rename.csv lists"
        )
    if rows.split[CUT_AT_TASK_END]:
        out.append(f"wildtrax: {rows.split[CUT_AT_TASK_END]} tag(s) {CUT_AT_TASK_END} (kept in the task they start in)")
    return out
