"""Raven Pro selection tables, one per recording, and the lab's detection tables (pure).

Raven: tab-separated ``Selection View Channel Begin Time (s) End Time (s) Low Freq (Hz) High Freq
(Hz) Species Score``, one row per detection in recording time (open the recording, then the
table), ``View`` "Spectrogram 1", ``Channel`` 1, frequencies 200 / 13000 Hz as HawkEars' own Raven
output (20 / 120 Hz for the low-band species, RUGR and SPGR; never above half the recording's
sample rate: :func:`~badc_mpi.results.export.wildtrax.band_hz`), ``Species`` the species code
(else the label), ``Score`` the confidence. Rows are the aggregate's detections, merged only where
overlapping chunks scored one window twice (results/aggregate/overlap.py). Every analysed
recording gets a file; one without detections gets the header alone (analysed, nothing found).

The lab's tables: ``filename, start_time, end_time, class_name, class_code, score, study_area,
location, recording_date_time`` (times in seconds from the recording start).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from badc_mpi.results.export.meta import Recording
from badc_mpi.results.export.wildtrax import band_hz

RAVEN_COLUMNS = [
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species",
    "Score",
]
RAVEN_SUFFIX = ".HawkEars.selections.txt"
TABLE_COLUMNS = [
    "filename",
    "start_time",
    "end_time",
    "class_name",
    "class_code",
    "score",
    "study_area",
    "location",
    "recording_date_time",
]
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name part from an id or study area (other characters become ``_``)."""
    name = _SAFE_RE.sub("_", text).strip("._") or "_"
    return name


def raven_rows(detections: Iterable[dict[str, Any]], sample_rate: str | None = None) -> list[list[Any]]:
    """One recording's detections (sorted by start) -> selection rows (``sample_rate``: Hz, the
    recording's, caps the frequencies)."""
    rows = []
    bands: dict[str, tuple[int, int]] = {}
    for n, d in enumerate(detections, start=1):
        code = d.get("label_code") or d.get("label")
        band = bands.get(code or "")
        if band is None:
            band = bands[code or ""] = band_hz(code or "", sample_rate)
        rows.append(
            [n, "Spectrogram 1", 1, f"{d['start_ms'] / 1000:.3f}", f"{d['end_ms'] / 1000:.3f}", band[0], band[1],
             code, f"{float(d['confidence']):.3f}"]
        )  # fmt: skip
    return rows


def table_rows(detections: Iterable[dict[str, Any]], rec: Recording) -> list[list[Any]]:
    """One recording's detections -> the lab's table rows (its constant fields computed once)."""
    tail = [rec.study_area or "", rec.location or "", rec.recording_date_time()]
    filename = rec.filename
    return [
        [filename, f"{d['start_ms'] / 1000:.3f}", f"{d['end_ms'] / 1000:.3f}", d.get("label_name") or d.get("label") or "",
         d.get("label_code") or d.get("label") or "", f"{float(d['confidence']):.3f}", *tail]
        for d in detections
    ]  # fmt: skip
