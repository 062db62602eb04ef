"""A Raven Pro selection table per species of a review pack, and its ``Verdict`` column read back (pure).

Multi-file table: each row names its clip (``Begin Path``, relative to the pack's folder: open the
table with the pack as Raven's working folder) and ``File Offset (s)`` (the detection's start in the clip);
``Begin Time (s)`` runs on across the clips in order, as Raven lays a file list end to end.
Columns after the standard ones: ``detection_id``, ``Species``, ``Score`` and an empty
``Verdict`` the reviewer fills with correct / wrong / unsure; :func:`read_verdicts` turns a
filled table into ``verdicts.csv`` rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from badc_mpi.results.export.raven import RAVEN_COLUMNS, safe_name
from badc_mpi.results.export.wildtrax import HIGH_FREQ_HZ, LOW_FREQ_HZ
from badc_mpi.results.review.errors import ReviewError

COLUMNS = [*RAVEN_COLUMNS[:7], "Begin Path", "File Offset (s)", "detection_id", "Species", "Score", "Verdict"]
SUFFIX = ".review.selections.txt"
__all__ = ["COLUMNS", "SUFFIX", "read_verdicts", "safe_name", "selection_table"]
VERDICTS = ("correct", "wrong", "unsure")


def selection_table(rows: Iterable[dict[str, Any]]) -> str:
    """One species' rows (review.csv rows with ``clip_s``, ``offset_s``, ``length_s``) -> table text."""
    out = io.StringIO()
    w = csv.writer(out, delimiter="\t", lineterminator="\n")
    w.writerow(COLUMNS)
    elapsed = 0.0
    n = 0
    for row in rows:
        if row.get("problem"):
            continue
        n += 1
        begin = elapsed + float(row["offset_s"])
        w.writerow(
            [n, "Spectrogram 1", 1, f"{begin:.3f}", f"{begin + float(row['length_s']):.3f}", LOW_FREQ_HZ, HIGH_FREQ_HZ,
             row["clip"], f"{float(row['offset_s']):.3f}", row["detection_id"], row["species_code"],
             f"{float(row['score']):.3f}", ""]
        )  # fmt: skip
        elapsed += float(row["clip_s"])
    return out.getvalue()


def read_verdicts(path: str) -> list[dict[str, str]]:
    """A filled table -> ``detection_id, species_code, verdict`` rows (empty verdicts skipped);
    an unknown verdict word raises :class:`ReviewError` naming the row."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not reader.fieldnames or "Verdict" not in reader.fieldnames or "detection_id" not in reader.fieldnames:
            raise ReviewError(f"{path}: no detection_id and Verdict columns", fix="use a table `badc-mpi review` wrote")
        for n, row in enumerate(reader, start=2):
            word = (row.get("Verdict") or "").strip().lower()
            if not word:
                continue
            if word not in VERDICTS:
                raise ReviewError(f"{path}, row {n}: verdict {word!r} is not a verdict", fix="write correct, wrong or unsure")
            out.append({"detection_id": row["detection_id"], "species_code": row.get("Species") or "", "verdict": word})
    return out
