"""WildTrax tag (and task) upload rows from detections (pure; docs/results.md, "WildTrax").

Columns are WildTrax's tag template. Fields WildTrax leaves to the uploader, and what we write:
``observer`` "Not Assigned" (classifier tags), ``individual_number`` 1, ``vocalization`` "SONG"
(HawkEars does not tell song from call), ``abundance`` 1, ``min_tag_freq``/``max_tag_freq`` 200 /
13000 Hz (HawkEars' own Raven output), ``species_individual_comments`` "HawkEars <version>
Confidence: 0.93", ``tag_is_hidden_for_verification`` "FALSE", ``recording_sample_frequency``
from a ``sample_rate`` manifest column (else empty), ``internal_tag_id`` empty.

WildTrax's rules: ``task_duration`` is whole seconds in 1..1800 (the recording's length, capped at
1800, or ``--task-duration``); tags that start at or after it do not sync and are left out
(counted); a tag at 0 s moves to 0.1 s; ``1SPT`` keeps a species' first tag per task, ``1SPM`` its
first per minute, ``None`` every tag. Species codes other than four capital letters (HawkEars'
``FROG-WOOD``, ``TOAD-AMER``...) have no confirmed WildTrax code: left out and counted, never invented.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.results.export_meta import ExportError, Recording

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
METHODS = ("None", "1SPT", "1SPM")
MAX_TASK_S = 1800
LOW_FREQ_HZ, HIGH_FREQ_HZ = 200, 13000
_CODE_RE = re.compile(r"^[A-Z]{4}$")


@dataclass
class WildTraxExport:
    tags: list[list[Any]]
    tasks: list[list[Any]]
    left_out: Counter[str] = field(default_factory=Counter)  #: reason -> tags
    codes_left_out: Counter[str] = field(default_factory=Counter)  #: species code -> tags


def task_duration_s(rec: Recording, requested: int | None) -> int:
    if requested is not None:
        if not 1 <= requested <= MAX_TASK_S:
            raise ExportError(
                f"--task-duration {requested} is outside WildTrax's 1..{MAX_TASK_S} s", fix="give seconds in 1..1800"
            )
        return requested
    length = (rec.duration_ms or 0) // 1000
    return max(1, min(MAX_TASK_S, int(length) if length else MAX_TASK_S))


def _seconds(ms: float) -> float:
    return round(ms / 1000.0, 3)


def wildtrax_rows(
    detections: Iterable[dict[str, Any]],
    recs: dict[str, Recording],
    *,
    method: str = "None",
    task_duration: int | None = None,
    incomplete: set[str] | frozenset[str] = frozenset(),
) -> WildTraxExport:
    """Tag and task rows. ``detections``: dicts with ``recording_id, label_code, label,
    confidence, start_ms, end_ms, hawkears_version``, already filtered by confidence and sorted
    by recording and start. ``incomplete``: recordings with chunks not analysed (task not complete)."""
    if method not in METHODS:
        raise ExportError(f"--task-method {method!r} is not a WildTrax method", fix=f"use one of: {', '.join(METHODS)}")
    out = WildTraxExport([], [])
    seen: set[tuple[Any, ...]] = set()
    durations = {rid: task_duration_s(r, task_duration) for rid, r in recs.items()}
    for d in detections:
        rec = recs[d["recording_id"]]
        code = d.get("label_code") or d.get("label") or ""
        if not _CODE_RE.match(code):
            out.codes_left_out[code] += 1
            continue
        duration = durations[rec.recording_id]
        start_s = _seconds(d["start_ms"])
        if start_s >= duration:
            out.left_out["start at or after task_duration"] += 1
            continue
        if method != "None":
            key = (rec.recording_id, code) if method == "1SPT" else (rec.recording_id, code, int(start_s // 60))
            if key in seen:
                out.left_out[f"not the first of its species ({method})"] += 1
                continue
            seen.add(key)
        version = d.get("hawkears_version") or "?"
        out.tags.append(
            [
                rec.location, rec.recording_date_time(), duration, method, "Not Assigned", code, 1, "SONG", 1,
                max(0.1, start_s), _seconds(d["end_ms"] - d["start_ms"]), LOW_FREQ_HZ, HIGH_FREQ_HZ,
                f"HawkEars {version} Confidence: {float(d['confidence']):.2f}", "FALSE", rec.sample_rate or "", "",
            ]
        )  # fmt: skip
    for rid in sorted(recs):
        rec = recs[rid]
        complete = "f" if rid in incomplete else "t"
        out.tasks.append([rec.location, rec.recording_date_time(), method, rec.sample_rate or "", durations[rid], complete,
                          "Not Assigned", "", ""])  # fmt: skip
    return out
