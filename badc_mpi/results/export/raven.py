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
from typing import Any

from badc_mpi.results.export.meta import Recording
from badc_mpi.results.export.staging import field_text
from badc_mpi.results.export.stream import Detections
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
RAVEN_HEADER = "\t".join(RAVEN_COLUMNS) + "\n"
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


def raven_text(detections: Detections, sample_rate: str | None = None) -> str:
    """One recording's detections (sorted by start, with the :data:`~badc_mpi.results.export.stream.DETECTION_TEXT`
    columns) -> its selection table, header and rows, as tab-separated text (``sample_rate``: Hz,
    the recording's, caps the frequencies)."""
    bands: dict[str | None, str] = {}
    lines = [RAVEN_HEADER]
    for n, (code, begin, end, score) in enumerate(
        zip(detections.codes(), detections.column("begin_s3"), detections.column("end_s3"), detections.column("score3")),
        start=1,
    ):
        middle = bands.get(code)
        if middle is None:
            low, high = band_hz(code or "", sample_rate)
            middle = bands[code] = f"\t{low}\t{high}\t{field_text(code, chr(9))}\t"
        lines.append(f"{n}\tSpectrogram 1\t1\t{begin}\t{end}{middle}{score}\n")
    return "".join(lines)


def table_text(detections: Detections, rec: Recording) -> str:
    """One recording's detections -> the lab's table rows as CSV text (its constant fields
    computed once)."""
    head = field_text(rec.filename) + ","
    tail = "," + ",".join(field_text(v) for v in (rec.study_area or "", rec.location or "", rec.recording_date_time())) + "\n"
    names: dict[tuple[Any, Any], str] = {}
    lines = []
    for name, label, code, begin, end, score in zip(
        detections.column("label_name"),
        detections.column("label"),
        detections.column("label_code"),
        detections.column("begin_s3"),
        detections.column("end_s3"),
        detections.column("score3"),
    ):
        key = (name or label, code or label)
        shown = names.get(key)
        if shown is None:
            shown = names[key] = f"{field_text(key[0] or '')},{field_text(key[1] or '')}"
        lines.append(f"{head}{begin},{end},{shown},{score}{tail}")
    return "".join(lines)
