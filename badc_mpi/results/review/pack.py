"""``badc-mpi review BUNDLE``: write a review pack under ``<bundle>/review/<round>/``.

Order: check the options and the bundle; draw (:mod:`select`: never a detection drawn in another
round or given a verdict there); read the drawn detections' rows; cut each clip and spectrogram
(:mod:`clips`; a source recording that is not here is listed with ``datalad get PATH`` and the rest
goes on); then ``review.csv``, ``raven/<species>.review.selections.txt``, ``review.html`` and
``review.json`` (last: a pack with it is complete), each to a temporary name renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from badc_mpi.logs import get_logger
from badc_mpi.results.calibrate.verdicts import stored_paths
from badc_mpi.results.export.meta import ExportError
from badc_mpi.results.export.thresholds import read_thresholds
from badc_mpi.results.review import raven
from badc_mpi.results.review.clips import SourceMissing, cut_clip, resolve
from badc_mpi.results.review.errors import ReviewError
from badc_mpi.results.review.page import review_html
from badc_mpi.results.review.select import Candidate, Selection, draw
from badc_mpi.storage.atomic import atomic_write_text

log = get_logger(__name__)

PACK_SCHEMA = "badc-mpi.review/1"
REVIEW_DIR = "review"
REVIEW_COLUMNS = [
    "detection_id", "species_code", "species_name", "score", "location", "local_time", "clip", "image", "verdict",
    "recording_id", "start_s", "end_s", "source", "problem",
]  # fmt: skip
VERDICT_COLUMNS = ["detection_id", "species_code", "verdict"]
POOL_FROM = 200  #: clips from which the cutting runs in ``jobs`` processes


@dataclass
class ReviewOptions:
    selection: Selection
    round: int = 1
    pad_s: float = 1.5
    thresholds: str | None = None  #: thresholds.csv (default: the bundle's, if any)
    force: bool = False  #: replace an existing pack of this round
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)  #: processes cutting clips


@dataclass
class PackResult:
    folder: str
    drawn: int
    written: int
    missing: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def earlier_ids(bundle: str, this_round: int) -> set[int]:
    """Detection ids drawn in other rounds (their review.csv), given a verdict there (verdicts.csv),
    or kept by ``badc-mpi calibrate`` (``<bundle>/verdicts/*.csv``, which the bundle's ``verdicts``
    table is made from). Files are read as ``calibrate`` reads verdicts: UTF-8 with or without a
    byte-order mark (a spreadsheet's), headers in any case."""
    root = os.path.join(bundle, REVIEW_DIR)
    paths = [
        os.path.join(root, name, fname)
        for name in (sorted(os.listdir(root)) if os.path.isdir(root) else [])
        if name != str(this_round)
        for fname in ("review.csv", "verdicts.csv")
    ]
    ids: set[int] = set()
    for path in [*paths, *stored_paths(bundle)]:
        if os.path.isfile(path):
            ids.update(_ids_in(path))
    return ids


def _ids_in(path: str) -> set[int]:
    """The integer ``detection_id`` values of a CSV file (rows without one are skipped)."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReviewError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): its detections cannot be left out of this draw",
            fix="save it as UTF-8 CSV (a spreadsheet's 'CSV UTF-8'), or move it out of the bundle",
        ) from None
    rows = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(rows, [])]
    if "detection_id" not in header:
        return set()
    at = header.index("detection_id")
    return {int(r[at].strip()) for r in rows if len(r) > at and r[at].strip().isdigit()}


def _thresholds(path: str) -> dict[str, float]:
    """``thresholds.csv`` read as the exports read it (one reader, one set of checks)."""
    try:
        return read_thresholds(path).by_species
    except ExportError as exc:
        raise ReviewError(exc.message.replace("--thresholds ", "", 1), fix=exc.fix) from None


def _default_threshold(bundle: str, parquet: str) -> float:
    try:
        with open(os.path.join(bundle, "summary.json"), encoding="utf-8") as fh:
            value = json.load(fh).get("min_confidence")
        if value:
            return float(value)
    except (OSError, ValueError):
        pass
    import duckdb

    con = duckdb.connect()
    try:
        row = con.execute("SELECT min(confidence) FROM read_parquet(?)", [parquet]).fetchall()
    finally:
        con.close()
    return float(row[0][0] or 0.0)


def _rows(parquet: str, picks: Sequence[Candidate]) -> dict[int, dict[str, Any]]:
    import duckdb
    import pyarrow.parquet as pq

    names = set(pq.read_schema(parquet).names)
    optional = [c for c in ("chunk_start_ms", "chunk_end_ms", "source_path", "location", "detection_start_local") if c in names]
    cols = ["detection_id", "recording_id", "label", "label_code", "label_name", "confidence", "start_ms", "end_ms", *optional]
    sql = f"SELECT {', '.join(cols)} FROM read_parquet(?) WHERE detection_id IN (SELECT unnest(?::BIGINT[]))"
    con = duckdb.connect()
    try:
        table = con.sql(sql, params=[parquet, [p.detection_id for p in picks]]).to_arrow_table()
    finally:
        con.close()
    return {int(r["detection_id"]): r for r in table.to_pylist()}


def _roots(bundle: str) -> list[str]:
    """Where relative source paths are looked up: the manifests' folders, then the dataset root."""
    try:
        with open(os.path.join(bundle, "aggregate.json"), encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return [bundle]
    roots = [os.path.dirname(os.path.abspath(m)) for m in doc.get("manifests") or []]
    if doc.get("dataset_root"):
        roots.append(doc["dataset_root"])
    return list(dict.fromkeys(roots)) or [bundle]


def _row(pick: Candidate, d: dict[str, Any]) -> dict[str, Any]:
    stem = f"{raven.safe_name(pick.species_code)}/{pick.detection_id}"
    return {
        "detection_id": str(pick.detection_id), "species_code": pick.species_code, "species_name": d.get("label_name") or "",
        "score": f"{float(d['confidence']):.4f}", "location": d.get("location") or "",
        "local_time": d.get("detection_start_local") or "", "clip": f"clips/{stem}.flac", "image": f"images/{stem}.png",
        "verdict": "", "recording_id": d["recording_id"], "start_s": f"{d['start_ms'] / 1000:.3f}",
        "end_s": f"{d['end_ms'] / 1000:.3f}", "source": d.get("source_path") or "", "problem": "",
    }  # fmt: skip


def _det(d: dict[str, Any]) -> tuple[int, int, int | None, int | None]:
    return int(d["start_ms"]), int(d["end_ms"]), d.get("chunk_start_ms"), d.get("chunk_end_ms")


Task = tuple[str, list[str], tuple[int, int, int | None, int | None], float, str, str]


def cut_one(task: Task) -> tuple[dict[str, Any], dict[str, str] | None]:
    """One clip and spectrogram: (review.csv fields to update, the missing source's facts or None)."""
    source_path, roots, det, pad_s, flac, png = task
    try:
        cut, _ = cut_clip(resolve(source_path, roots), det, pad_s, flac, png)
    except SourceMissing as exc:
        update = {"clip": "", "image": "", "problem": f"{exc.reason}: {exc.path}; fix: {exc.fix}"}
        return update, {"path": exc.path, "reason": exc.reason, "fix": exc.fix}
    span = cut.detection_end_s - cut.detection_start_s
    return {"offset_s": cut.detection_start_s, "length_s": span, "clip_s": cut.frames / cut.sample_rate}, None


def _cut_all(tasks: list[Task], jobs: int) -> list[tuple[dict[str, Any], dict[str, str] | None]]:
    """Every task, in order: in this process for a small pack, else ``jobs`` processes (spawned)."""
    if jobs <= 1 or len(tasks) < POOL_FROM:
        return [cut_one(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(cut_one, tasks, chunksize=32))


def _csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def build_pack(bundle: str, opts: ReviewOptions) -> PackResult:
    """Write the pack (see the module doc); raises :class:`ReviewError` before writing anything."""
    t0 = time.monotonic()
    bundle = os.path.abspath(bundle)
    parquet = os.path.join(bundle, "detections.parquet")
    if not os.path.isfile(parquet):
        raise ReviewError(
            f"{bundle}: no detections.parquet here: not a bundle", fix="build it with `badc-mpi bundle` (make bundle)"
        )
    if opts.round < 1:
        raise ReviewError(f"--round {opts.round} is below 1", fix="give 1 for the first round, 2 for the next")
    if opts.pad_s < 0:
        raise ReviewError(f"--pad-s {opts.pad_s} is negative", fix="give seconds such as 1.5")
    opts.selection.check()
    folder = os.path.join(bundle, REVIEW_DIR, str(opts.round))
    if os.path.exists(os.path.join(folder, "review.json")) and not opts.force:
        raise ReviewError(f"{folder}: a pack of round {opts.round} is already there",
                          fix=f"give --round {opts.round + 1} for a new round, or --force to replace it")  # fmt: skip
    sel = opts.selection
    if sel.near_threshold:
        path = opts.thresholds or os.path.join(bundle, "thresholds.csv")
        found = _thresholds(path) if os.path.isfile(path) else {}
        if opts.thresholds and not found:
            raise ReviewError(f"{opts.thresholds}: no thresholds read", fix="give the thresholds.csv `badc-mpi calibrate` wrote")
        sel = Selection(**{**asdict(sel), "thresholds": tuple(sorted(found.items())),
                           "default_threshold": _default_threshold(bundle, parquet)})  # fmt: skip
    exclude = earlier_ids(bundle, opts.round)
    picks = draw(parquet, sel, sorted(exclude))
    t_draw = time.monotonic()
    details = _rows(parquet, picks)
    roots = _roots(bundle)
    os.makedirs(folder, exist_ok=True)
    rows = [_row(pick, details[pick.detection_id]) for pick in picks]
    tasks = [
        (str(details[p.detection_id].get("source_path") or ""), roots, _det(details[p.detection_id]), opts.pad_s,
         os.path.join(folder, r["clip"]), os.path.join(folder, r["image"]))
        for p, r in zip(picks, rows)
    ]  # fmt: skip
    missing = []
    for row, (update, problem) in zip(rows, _cut_all(tasks, opts.jobs)):
        row.update(update)
        if problem:
            missing.append({"detection_id": row["detection_id"], **problem})
    t_cut = time.monotonic()
    _write(folder, bundle, opts, sel, rows, missing, len(exclude))
    seconds = {"draw": t_draw - t0, "cut": t_cut - t_draw, "write": time.monotonic() - t_cut}
    log.debug("review pack: %d drawn, %d missing", len(rows), len(missing))
    return PackResult(folder, len(rows), len(rows) - len(missing), missing, {k: round(v, 3) for k, v in seconds.items()})


def _write(
    folder: str, bundle: str, opts: ReviewOptions, sel: Selection, rows: list[dict[str, Any]],
    missing: list[dict[str, str]], excluded: int,
) -> None:  # fmt: skip
    atomic_write_text(os.path.join(folder, "review.csv"), _csv(REVIEW_COLUMNS, rows))
    species: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        species.setdefault(row["species_code"], []).append(row)
    for code, items in species.items():
        atomic_write_text(os.path.join(folder, "raven", f"{raven.safe_name(code)}{raven.SUFFIX}"), raven.selection_table(items))
    pack_id = f"{os.path.basename(bundle)}/{opts.round}/{sel.seed}"
    note = (
        f"Round {opts.round} of {os.path.basename(bundle)}: {len(rows)} detections, {len(species)} species, "
        f"strata {sel.strata}, seed {sel.seed}" + (", near the thresholds" if sel.near_threshold else "")
        + (f"; {len(missing)} clip(s) missing (review.json lists the fix)" if missing else "")
    )  # fmt: skip
    atomic_write_text(os.path.join(folder, "review.html"), review_html(pack_id, "Review: listen and judge", rows, note))
    doc = {
        "schema": PACK_SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle": bundle,
        "round": opts.round,
        "selection": asdict(sel),
        "pad_s": opts.pad_s,
        "excluded_earlier": excluded,
        "detections": len(rows),
        "species": {code: len(items) for code, items in species.items()},
        "missing": missing,
        "verdicts_format": VERDICT_COLUMNS,
    }
    atomic_write_text(os.path.join(folder, "review.json"), json.dumps(doc, indent=1) + "\n")
