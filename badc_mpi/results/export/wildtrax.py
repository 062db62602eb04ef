"""WildTrax tag, task and clip rows from one recording's detections (pure; docs/results.md, "WildTrax").

Columns are WildTrax's tag template. Fields WildTrax leaves to the uploader, and what we write:
``observer`` "Not Assigned" (classifier tags), ``individual_number`` 1, ``vocalization`` "SONG"
(HawkEars does not tell song from call) or "Non-vocal" for what HawkEars' low-band model hears
(Ruffed Grouse drumming, Spruce Grouse wing claps: :data:`LOW_BAND_CODES`), ``abundance`` 1,
``min_tag_freq``/``max_tag_freq`` 200 / 13000 Hz (HawkEars' own Raven output), 20 / 120 Hz for the
low-band species (HawkEars' ``yaml/low_band.yaml``), never above half the recording's sample rate,
``species_individual_comments`` "HawkEars <version> Confidence: 0.93",
``tag_is_hidden_for_verification`` "FALSE", ``recording_sample_frequency`` from a ``sample_rate``
manifest column (else empty), ``internal_tag_id`` empty. Tasks are incomplete (``f``, as
wildrtrax writes them: a classifier did not listen) unless ``task_status`` is ``complete``.

WildTrax's rules: a task always starts at second 0 of its recording (the templates have no
offset) and ``task_duration`` is 1 s or more, under 1800 s, with up to two decimals (wildrtrax's
``wt_make_aru_tasks`` refuses 1800 itself). So a recording longer than 1800 s is **split into
clips** (docs/results.md, "Recordings longer than 1800 s"): clip ``k`` covers ``[k * 1800 s,
min((k + 1) * 1800 s, length))`` of the recording and is a WildTrax recording of its own, at the
same location, starting ``k * 1800 s`` later (``recording_date_time`` and the file name
``LOCATION_YYYYMMDD_HHMMSS`` shifted by the offset); ``wildtrax_clips.csv`` is the cut list. Each
clip gets one task of its length to the hundredth of a second, at most 1799.99 s (or
``--task-duration``, capped at it).

Tags come from the detections' windows: a detection is cut at every task end it crosses and each
piece inside a task is a tag there (``tag_start_time`` relative to the clip, a piece at 0 s moves
to 0.1 s), so every task a species was heard in has its tag; with ``1SPM`` the pieces are also cut
at each minute of the task and a species keeps its first tag per minute, with ``1SPT`` its first
per task, with ``None`` every piece. A detection with no piece inside a task (it starts in the
last hundredth of a second, a tail under 1 s, or beyond ``--task-duration``) does not sync: left
out and counted. WildTrax reads a recording's location and date-time from its uploaded file name (wildRtrax's
``wt_audio_scanner``: the location before the first ``_``, then ``YYYYMMDD_HHMMSS``), so tasks and
tags sync only when the uploaded name carries exactly their ``location`` and
``recording_date_time``. ``wildtrax_rename.csv`` lists every recording (or clip) whose upload name
(``LOCATION_YYYYMMDD_HHMMSS.ext``, the task's own time) differs from its file's name: AudioMoth
UTC names, SM5 ``_AC_`` names, date folders, clips (docs/results.md, "Upload names").
Species codes other than four capital letters (``FROG-WOOD``, ``TOAD-AMER``...)
have no confirmed WildTrax code; codes outside a WildTrax project species list
(``--wildtrax-species``) would be refused: both left out and counted, never invented.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.results.aggregate.schema import ANALYSED
from badc_mpi.results.export.meta import ExportError, Recording
from badc_mpi.results.export.staging import field_text
from badc_mpi.results.export.stream import Detections

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
TASK_STATES = ("incomplete", "complete")
MAX_TASK_S = 1800  #: a clip's length; a task is shorter (wildrtrax: task_length < 1800)
CLIP_MS = MAX_TASK_S * 1000
MAX_TASK_MS = CLIP_MS - 10  #: 1799.99 s, the longest task wildrtrax accepts
MIN_TAG_START_S = 0.1
LOW_FREQ_HZ, HIGH_FREQ_HZ = 200, 13000
#: HawkEars' low-band model (``LowBandHeuristics``: Ruffed Grouse drumming, Spruce Grouse wing
#: claps; ``yaml/low_band.yaml`` min_freq 20, max_freq 120 Hz)
LOW_BAND_CODES = frozenset({"RUGR", "SPGR"})
LOW_BAND_HZ = (20, 120)
SONG, NON_VOCAL = "SONG", "Non-vocal"  #: WildTrax's vocalization types (wildrtrax: Song, Call, Non-vocal)
WILDTRAX_AUDIO = (".wav", ".flac", ".wac")
_CODE_RE = re.compile(r"^[A-Z]{4}$")
LEFT_AFTER_TASK = "start at or after its task's end"
CUT_AT_TASK_END = "cut at their task's end"
CONTINUED = "continued into the next task"
NO_TASK = "in a tail under 1 s or a clip without a task"


def band_hz(code: str, sample_rate: str | int | None) -> tuple[int, int]:
    """(min, max) frequency of a tag or selection of ``code``: the low band for the low-band
    species, else 200-13000 Hz; never above half the sample rate (when known; pure)."""
    low, high = LOW_BAND_HZ if code in LOW_BAND_CODES else (LOW_FREQ_HZ, HIGH_FREQ_HZ)
    try:
        rate = float(sample_rate) if sample_rate not in (None, "") else 0.0
    except (TypeError, ValueError):
        rate = 0.0
    if rate > 0:
        high = min(high, int(rate // 2))
        low = min(low, high)
    return low, high


def seconds_text(value_s: float) -> str:
    """A duration with at most two decimals, as WildTrax takes it (62.5, 1799.99, 61)."""
    text = f"{value_s:.2f}".rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True)
class Clip:
    """One WildTrax recording (and its task) cut from a recording."""

    index: int
    start_ms: int  #: offset in the recording
    end_ms: int | None  #: None: the recording's length is unknown
    task_duration_ms: int  #: to the hundredth of a second
    recording_date_time: str
    file_name: str

    @property
    def task_end_ms(self) -> int:
        return self.start_ms + self.task_duration_ms

    @property
    def task_duration_s(self) -> str:
        return seconds_text(self.task_duration_ms / 1000.0)


@dataclass
class WildTraxRows:
    """Rows of one recording (or, added up, of the whole export) and what was left out."""

    tags: list[str] = field(default_factory=list)  #: TAG_COLUMNS rows as CSV lines (millions: built as text)
    tasks: list[list[Any]] = field(default_factory=list)
    clips: list[list[Any]] = field(default_factory=list)
    renames: list[list[Any]] = field(default_factory=list)  #: RENAME_COLUMNS rows
    left_out: Counter[str] = field(default_factory=Counter)  #: reason -> tags
    codes_left_out: Counter[str] = field(default_factory=Counter)  #: species code -> tags
    split: Counter[str] = field(default_factory=Counter)  #: recordings split, clips made, clips without a task
    not_in_project: Counter[str] = field(default_factory=Counter)  #: species code -> tags (--wildtrax-species)


def check_options(method: str, requested: float | None, task_status: str = "incomplete") -> None:
    if method not in METHODS:
        raise ExportError(f"--task-method {method!r} is not a WildTrax method", fix=f"use one of: {', '.join(METHODS)}")
    if requested is not None and not (requested >= 1 and round(requested * 1000) <= MAX_TASK_MS):
        raise ExportError(
            f"--task-duration {requested} is outside WildTrax's 1..1799.99 s (wildrtrax refuses 1800)",
            fix="give seconds in 1..1799.99, at most two decimals",
        )
    if task_status not in TASK_STATES:
        raise ExportError(f"--task-status {task_status!r} is not a state", fix=f"use one of: {', '.join(TASK_STATES)}")


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


def plan_clips(rec: Recording, requested: float | None = None) -> list[Clip]:
    """The clips (WildTrax recordings) of ``rec``: one when it is 1800 s or shorter (or its
    length is unknown), else consecutive 1800-s clips; a tail under 1 s makes no clip. A clip's
    task lasts its length to the hundredth of a second (at most 1799.99 s), or ``requested``."""
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
    wanted = None if requested is None else int(round(requested * 1000))
    clips = []
    for index, (start, end) in enumerate(bounds):
        whole_ms = MAX_TASK_MS if end is None else max(1000, min(MAX_TASK_MS, (end - start) // 10 * 10))
        duration = whole_ms if wanted is None else min(wanted, whole_ms)
        when = rec.start_local + dt.timedelta(milliseconds=start) if rec.start_local else None
        text = when.strftime("%Y-%m-%d %H:%M:%S") if when else ""
        clips.append(Clip(index, start, end, duration, text, _file_name(rec, when)))
    return clips


def _seconds(ms: float) -> float:
    return round(ms / 1000.0, 3)


@functools.lru_cache(maxsize=1 << 16)
def _timing(offset_ms: int, length_ms: int, task_ms: int) -> str:
    """A tag's ``tag_start_time,tag_duration`` (a piece at ``offset_ms`` in its clip, ``length_ms``
    long, in a task of ``task_ms``): the start in seconds (at least 0.1 s), the length cut at the
    task's end; cached (windows repeat on HawkEars' grid)."""
    start_s = _seconds(offset_ms)
    shown = start_s if start_s > MIN_TAG_START_S else MIN_TAG_START_S
    duration = max(0.0, min(_seconds(length_ms), round(task_ms / 1000.0 - shown, 3)))
    return f"{shown!r},{duration!r}"


def _pieces(clips: Sequence[Clip], start_ms: int, end_ms: int, per_minute: bool) -> list[tuple[Clip, int, int]]:
    """The parts of ``[start_ms, end_ms]`` inside tasks: (clip, start, end) in recording ms, cut
    at every task end (and, ``per_minute``, at every minute of the task; pure)."""
    out = []
    for clip in clips:
        if clip.end_ms is not None and clip.end_ms <= start_ms:
            continue
        if clip.start_ms > start_ms and clip.start_ms >= end_ms:
            break
        lo = max(start_ms, clip.start_ms)
        if lo >= clip.task_end_ms:
            continue
        hi = max(lo, min(end_ms, clip.task_end_ms))
        if not per_minute:
            out.append((clip, lo, hi))
            continue
        minute = (lo - clip.start_ms) // 60000
        while True:
            m_end = clip.start_ms + (minute + 1) * 60000
            out.append((clip, lo, min(hi, m_end)))
            if hi <= m_end:
                break
            lo, minute = m_end, minute + 1
    return out


def recording_rows(
    rec: Recording,
    chunks: Iterable[dict[str, Any]],
    detections: Detections,
    *,
    method: str = "None",
    task_duration: float | None = None,
    task_status: str = "incomplete",
    project_species: frozenset[str] | None = None,
) -> WildTraxRows:
    """Tag, task and clip rows of one analysed recording. ``chunks``: its rows of the ``chunks``
    table (a clip with a chunk not analysed is always ``task_is_complete`` ``f``; a clip with no
    analysed chunk gets no task); ``detections``: columns ``label_code, label, start_ms,
    end_ms, hawkears_version, score2`` (:data:`~badc_mpi.results.export.stream.DETECTION_TEXT`),
    filtered by confidence, sorted by start;
    ``project_species``: the codes a WildTrax project accepts (None: any)."""
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
    tasked = [clip for clip in clips if clip.index in with_task]
    if len(clips) > 1:
        out.split.update({"recordings": 1, "clips": len(clips), "clips without a task": len(clips) - len(with_task)})
    seen: set[tuple[Any, ...]] = set()
    valid: dict[str, bool] = {}
    heads = {
        c.index: ",".join(field_text(v) for v in (rec.location, c.recording_date_time, c.task_duration_s, method, "Not Assigned"))
        for c in clips
    }
    rate = rec.sample_rate or ""
    tail = f",FALSE,{field_text(rate)},\n"
    bands: dict[str, tuple[str, str]] = {}
    comments: dict[tuple[Any, str], str] = {}
    per_minute = method == "1SPM"
    tasked_ends = {clip.index: clip.task_end_ms for clip in tasked}
    for code, start_ms, end_ms, version, score in zip(
        detections.codes(),
        detections.column("start_ms"),
        detections.column("end_ms"),
        detections.column("hawkears_version"),
        detections.column("score2"),
    ):
        code = code or ""
        ok = valid.get(code)
        if ok is None:
            ok = valid[code] = _CODE_RE.match(code) is not None
        if not ok:
            out.codes_left_out[code] += 1
            continue
        if project_species is not None and code not in project_species:
            out.not_in_project[code] += 1
            continue
        start_ms, end_ms = int(start_ms), int(end_ms)
        home = clips[start_ms // CLIP_MS] if 0 <= start_ms < CLIP_MS * len(clips) else None
        pieces: list[tuple[Clip, int, int]]
        if (
            home is not None
            and (home_end := tasked_ends.get(home.index)) is not None
            and end_ms <= home_end
            and start_ms < home_end
            and (not per_minute or (start_ms - home.start_ms) // 60000 == (max(start_ms, end_ms - 1) - home.start_ms) // 60000)
        ):  # the common case: inside one task (and one minute): one piece
            pieces = [(home, start_ms, end_ms)]
        else:
            pieces = _pieces(tasked, start_ms, end_ms, per_minute)
        if not pieces:
            at = _clip_of(clips, start_ms)
            out.left_out[LEFT_AFTER_TASK if at is not None and at.index in with_task else NO_TASK] += 1
            continue
        if end_ms > pieces[0][0].task_end_ms:
            out.split[CUT_AT_TASK_END] += 1
            if any(p[0].index != pieces[0][0].index for p in pieces):
                out.split[CONTINUED] += 1
        band = bands.get(code)
        if band is None:
            low, high = band_hz(code, rate)
            band = bands[code] = (f"{code},1,{NON_VOCAL if code in LOW_BAND_CODES else SONG},1,", f",{low},{high},")
        comment = comments.get((version, score))
        if comment is None:
            comment = comments[(version, score)] = field_text(f"HawkEars {version or '?'} Confidence: {score}")
        for clip, lo, hi in pieces:
            offset_ms = lo - clip.start_ms
            if method != "None":
                start_s = _seconds(offset_ms)
                key = (clip.index, code) if method == "1SPT" else (clip.index, code, int(start_s // 60))
                if key in seen:
                    out.left_out[f"not the first of its species ({method})"] += 1
                    continue
                seen.add(key)
            timing = _timing(offset_ms, hi - lo, clip.task_duration_ms)
            out.tags.append(f"{heads[clip.index]},{band[0]}{timing}{band[1]}{comment}{tail}")
    for clip in clips:
        complete = "f" if missing[clip.index] or task_status != "complete" else "t"
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


def _clip_of(clips: Sequence[Clip], start_ms: int) -> Clip | None:
    index = start_ms // CLIP_MS if start_ms >= 0 else 0
    return clips[index] if index < len(clips) else None


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
        out.append(
            f"wildtrax: {rows.split[CUT_AT_TASK_END]} detection(s) {CUT_AT_TASK_END} ({rows.split[CONTINUED]} "
            f"{CONTINUED}: a tag there too)"
        )
    if rows.not_in_project:
        listed = ", ".join(f"{c} ({n})" for c, n in sorted(rows.not_in_project.items()))
        total = sum(rows.not_in_project.values())
        out.append(f"wildtrax: {total} tag(s) of species not in the WildTrax project's species list left out: {listed}")
    return out


_SPECIES_HEADERS = ("species_code", "species code", "code", "speciescode")


def parse_species_list(text: str, path: str) -> frozenset[str]:
    """The species codes of a WildTrax project species list (pure): a CSV whose header has a
    ``species_code`` column (WildTrax's species table; ``code`` also taken), else one code a line."""
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ExportError(
            f"--wildtrax-species {path}: no species codes", fix="give the project's species list (species_code column)"
        )
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(h) for h in _SPECIES_HEADERS if h in header), None)
    if column is None and len(header) > 1:
        raise ExportError(
            f"--wildtrax-species {path}: no species_code column (header: {', '.join(rows[0])})",
            fix="give a CSV with a species_code column, or one code a line",
        )
    body = rows[1:] if column is not None else rows
    column = column or 0
    codes = frozenset(r[column].strip().upper() for r in body if len(r) > column and r[column].strip())
    if not codes:
        raise ExportError(
            f"--wildtrax-species {path}: no species codes", fix="give the project's species list (species_code column)"
        )
    return codes


def load_species_list(path: str) -> frozenset[str]:
    """Read and parse ``path`` (ExportError when it cannot be read)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"--wildtrax-species {path}: cannot be read ({exc})", fix="give a UTF-8 CSV file") from None
    return parse_species_list(text, path)
