"""The plan: which manifests form the queue, each recording's chunks and chunk status, and what
earlier runs already did (done, failed, remaining).

:func:`build_plan` is the I/O shell (manifests, ``.chunk_status.json``, earlier runs' ledgers
found by output folder as ``--resume`` finds them); :func:`tally`, :func:`format_plan`,
:func:`plan_rows` and :func:`plan_document` are pure.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.coordinator.resume import load_state
from badc_mpi.errors import UsageError
from badc_mpi.inputs.chunk_status import GuardReport, check_chunk_status
from badc_mpi.inputs.locations import default_locations
from badc_mpi.inputs.manifest import Manifest, load_manifests
from badc_mpi.records import Chunk
from badc_mpi.storage.ledger import LEDGER_SUFFIX, STATUS, read_ledger, record_applies

PLAN_SCHEMA = "badc-mpi.plan/1"
PLAN_COLUMNS = ("manifest", "recording_id", "chunks", "chunk_status", "done", "failed", "remaining", "missing_audio")
#: the line the batch scripts read to decide on --resume: ``earlier runs: N ...``
EARLIER_PREFIX = "earlier runs: "
TABLE_ROWS = 200  #: rows the printed table shows; --plan-csv has them all
SKIP_SUFFIXES = (".failed.csv", ".workers.csv")  #: a run's own CSVs beside its telemetry are not manifests


@dataclass(frozen=True)
class RecordingRow:
    """One recording of one manifest: its chunks and what earlier runs did with them."""

    manifest: str  #: absolute path
    recording_id: str
    chunks: int
    chunk_status: str  #: completed, in_progress, failed, missing, unreadable, invalid, or unchecked
    done: int  #: latest record success (and the sha256 still matches)
    failed: int  #: latest record failed
    missing_audio: int = 0

    @property
    def remaining(self) -> int:
        return self.chunks - self.done


@dataclass(frozen=True)
class Plan:
    """The queue: manifests in order, where the run writes, and one row per recording."""

    dataset: str  #: absolute: the DataLad dataset root, or the folder orchestrate was given
    manifests: tuple[str, ...]  #: absolute paths, in queue order
    output_dir: str  #: absolute; with per-manifest outputs (array jobs) the parent of each manifest's folder
    telemetry_dir: str
    chunks_dir: str
    earlier_runs: tuple[str, ...]  #: ledgers of earlier runs into the same output folder(s), oldest first
    rows: tuple[RecordingRow, ...]
    is_datalad: bool = False
    per_manifest_output: bool = False
    guard: GuardReport | None = field(default=None, compare=False)
    source_dirs: tuple[str, ...] = ()  #: the audio's folders (absolute, symlinks kept): DataLad inputs

    def totals(self) -> dict[str, int]:
        return {
            "manifests": len(self.manifests),
            "recordings": len(self.rows),
            "chunks": sum(r.chunks for r in self.rows),
            "done": sum(r.done for r in self.rows),
            "failed": sum(r.failed for r in self.rows),
            "remaining": sum(r.remaining for r in self.rows),
            "missing_audio": sum(r.missing_audio for r in self.rows),
        }

    def show(self, path: str) -> str:
        """``path`` relative to the dataset when it lies inside it, else as is."""
        return shown(path, self.dataset)


def shown(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel


def manifest_output_dir(output_dir: str, manifest: str) -> str:
    """Array jobs: each manifest's own output folder (one output lock per array task)."""
    return os.path.join(output_dir, os.path.splitext(os.path.basename(manifest))[0])


# -- which manifests -------------------------------------------------------------------------------
def find_manifests(dataset: str, manifest_dir: str, pattern: str) -> list[str]:
    """Manifests in ``<dataset>/<manifest_dir>`` matching ``pattern`` (sorted, absolute)."""
    folder = manifest_dir if os.path.isabs(manifest_dir) else os.path.join(dataset, manifest_dir)
    if not os.path.isdir(folder):
        raise UsageError(
            f"{folder}: no manifest folder", fix="give --manifest-dir (relative to the dataset), --manifest PATH or --plan FILE"
        )
    names = sorted(n for n in os.listdir(folder) if fnmatch.fnmatch(n, pattern) and not n.endswith(SKIP_SUFFIXES))
    found = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    if not found:
        raise UsageError(f"{folder}: no manifest matches {pattern!r}", fix="check --manifest-dir and --pattern")
    return found


def read_plan_file(path: str, dataset: str) -> list[str]:
    """The manifests of a plan written by ``--plan-csv`` / ``--plan-json`` (relative to the dataset)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise UsageError(
            f"{path}: cannot read the plan ({exc.strerror})", fix="name a file written by --plan-csv or --plan-json"
        ) from None
    if path.endswith(".json"):
        try:
            doc = json.loads(text)
            names = [str(m) for m in doc["manifests"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}: not a plan JSON ({exc})", fix="name a file written by --plan-json") from None
    else:
        reader = csv.DictReader(io.StringIO(text))
        if "manifest" not in (reader.fieldnames or []):
            raise UsageError(f"{path}, line 1: no 'manifest' column", fix="name a file written by --plan-csv")
        names = list(dict.fromkeys(row["manifest"] for row in reader if row.get("manifest")))
    if not names:
        raise UsageError(f"{path}: the plan names no manifest", fix="write it again with --plan-csv")
    return [n if os.path.isabs(n) else os.path.join(dataset, n) for n in names]


# -- pure ------------------------------------------------------------------------------------------
def tally(chunks: Iterable[Chunk], records: dict[str, tuple[Any, ...]]) -> dict[str, list[int]]:
    """Per recording (in first-seen order): [chunks, done, failed] from the latest ledger records.

    A record counts only when it was made from the chunk's audio (the manifest's sha256, if any,
    and the record's source path: :func:`~badc_mpi.storage.ledger.record_applies`), as resume
    decides."""
    out: dict[str, list[int]] = {}
    for chunk in chunks:
        counts = out.setdefault(chunk.recording_id, [0, 0, 0])
        counts[0] += 1
        rec = records.get(chunk.key)
        if rec is None or not record_applies(rec, chunk):
            continue
        if rec[STATUS] == "success":
            counts[1] += 1
        elif rec[STATUS] == "failed":
            counts[2] += 1
    return out


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    """One dict per recording (the CSV's rows; paths relative to the dataset)."""
    return [
        {
            "manifest": plan.show(r.manifest),
            "recording_id": r.recording_id,
            "chunks": r.chunks,
            "chunk_status": r.chunk_status,
            "done": r.done,
            "failed": r.failed,
            "remaining": r.remaining,
            "missing_audio": r.missing_audio,
        }
        for r in plan.rows
    ]


def plan_csv(plan: Plan) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(PLAN_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(plan_rows(plan))
    return buf.getvalue()


def plan_document(plan: Plan) -> dict[str, Any]:
    return {
        "plan": PLAN_SCHEMA,
        "dataset": plan.dataset,
        "datalad": plan.is_datalad,
        "manifests": [plan.show(m) for m in plan.manifests],
        "output_dir": plan.show(plan.output_dir),
        "per_manifest_output": plan.per_manifest_output,
        "telemetry_dir": plan.show(plan.telemetry_dir),
        "chunks_dir": plan.show(plan.chunks_dir),
        "earlier_runs": [plan.show(p) for p in plan.earlier_runs],
        "totals": plan.totals(),
        "recordings": plan_rows(plan),
    }


def earlier_line(plan: Plan) -> str:
    """``earlier runs: N (latest: ...)`` or ``earlier runs: none (...)``; the batch scripts read it."""
    if plan.earlier_runs:
        return f"{EARLIER_PREFIX}{len(plan.earlier_runs)} (latest: {plan.show(plan.earlier_runs[-1])})"
    return f"{EARLIER_PREFIX}none (no ledger in {plan.show(plan.telemetry_dir)} for output {plan.show(plan.output_dir)})"


def format_plan(plan: Plan, limit: int | None = TABLE_ROWS) -> str:
    """The plan table: a head, one aligned line per recording, totals, the earlier runs' line."""
    t = plan.totals()
    head = [
        f"plan: {t['manifests']} manifest(s), {t['recordings']} recording(s), {t['chunks']} chunks in "
        f"{plan.dataset}{' (DataLad dataset)' if plan.is_datalad else ''}",
        f"  output {plan.show(plan.output_dir)}{'/<manifest>' if plan.per_manifest_output else ''}  "
        f"telemetry {plan.show(plan.telemetry_dir)}  chunk status {plan.show(plan.chunks_dir)}",
    ]
    header = ("manifest", "recording", "chunks", "chunk status", "done", "failed", "remaining")
    body = [
        (plan.show(r.manifest), r.recording_id, str(r.chunks), r.chunk_status, str(r.done), str(r.failed), str(r.remaining))
        for r in plan.rows
    ]
    shown_rows = body if limit is None else body[:limit]
    total = ("total", "", str(t["chunks"]), "", str(t["done"]), str(t["failed"]), str(t["remaining"]))
    widths = [max(len(row[i]) for row in [header, total, *shown_rows]) for i in range(len(header))]
    numeric = {2, 4, 5, 6}

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    lines = [*head, line(header), *(line(row) for row in shown_rows)]
    if len(shown_rows) < len(body):
        lines.append(f"... and {len(body) - len(shown_rows)} more recording(s) (all in --plan-csv)")
    lines.append(line(total))
    if t["missing_audio"]:
        lines.append(f"missing audio: {t['missing_audio']} chunk(s) (`datalad get` them, or the run fails them as 'input')")
    lines.append(earlier_line(plan))
    return "\n".join(lines)


# -- the I/O shell ---------------------------------------------------------------------------------
def build_plan(
    dataset: str,
    manifests: Sequence[str],
    *,
    output_dir: str | None = None,
    telemetry_dir: str | None = None,
    chunks_dir: str | None = None,
    check_chunks: bool = True,
    per_manifest_output: bool = False,
) -> Plan:
    """Load ``manifests`` (missing audio counted, not refused), read their chunk status and the
    ledgers of earlier runs into the same output folder(s). Raises ManifestError/StateError."""
    paths = [os.path.abspath(m) for m in manifests]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise UsageError(f"{duplicates[0]} is named twice", fix="name each manifest once")
    if per_manifest_output:
        stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        clash = sorted({s for s in stems if stems.count(s) > 1})
        if clash:
            raise UsageError(
                f"two manifests are called {clash[0]!r}: array tasks would share one output folder",
                fix="rename one of them, or run them as one queue (no --sockeye-array)",
            )
    # outside a DataLad dataset the defaults lie under ``dataset`` (the folder the job runs in);
    # folder options given relative are taken from the current directory, as ``run`` does
    given = {k: os.path.abspath(v) if v else None for k, v in (("o", output_dir), ("t", telemetry_dir), ("c", chunks_dir))}
    loc = default_locations(paths[0], output_dir=given["o"], telemetry_dir=given["t"], chunks_dir=given["c"], cwd=dataset)
    loaded: list[Manifest] = load_manifests(paths, check_sources=True, allow_missing=True)
    guard = check_chunk_status(loaded, loc.chunks_dir) if check_chunks else None
    status = {s.recording_id: s.status for s in guard.statuses} if guard else {}
    outputs = [manifest_output_dir(loc.output_dir, p) for p in paths] if per_manifest_output else [loc.output_dir]
    records: dict[str, dict[str, tuple[Any, ...]]] = {}
    earlier: list[str] = []
    for out in outputs:
        state = load_state(summaries=(), telemetry_dir=loc.telemetry_dir, output_dir=out, discover=True)
        merged: dict[str, tuple[Any, ...]] = {}
        for source in state.sources:  # the ledgers, oldest first: later records win
            merged.update(read_ledger(source).records)
        records[out] = merged
        earlier += [s for s in state.sources if s not in earlier]
    rows: list[RecordingRow] = []
    for number, manifest in enumerate(loaded):
        out = outputs[number] if per_manifest_output else outputs[0]
        missing: dict[str, int] = {}
        for chunk in manifest.missing:
            missing[chunk.recording_id] = missing.get(chunk.recording_id, 0) + 1
        for recording, (n, done, failed) in tally(manifest.chunks, records[out]).items():
            rows.append(
                RecordingRow(
                    manifest.path, recording, n, status.get(recording, "unchecked"), done, failed, missing.get(recording, 0)
                )
            )
    root = loc.dataset_root or os.path.abspath(dataset)
    return Plan(
        dataset=root,
        manifests=tuple(paths),
        output_dir=loc.output_dir,
        telemetry_dir=loc.telemetry_dir,
        chunks_dir=loc.chunks_dir,
        earlier_runs=tuple(earlier),
        rows=tuple(rows),
        is_datalad=loc.dataset_root is not None,
        per_manifest_output=per_manifest_output,
        guard=guard,
        source_dirs=tuple(sorted({os.path.dirname(c.input_path) for m in loaded for c in m.chunks})),
    )


#: the run options that decide what a chunk's detections are (RunOptions.public() keys): an earlier
#: run's "done" counts here only when it was started with the same values
RESULT_OPTIONS = ("runner", "dry_run", "stub_detections", "runner_cmd", "output_format", "hawkears")


def settings_change(earlier: Sequence[dict[str, Any] | None], now: dict[str, Any]) -> str | None:
    """Why earlier runs' results may not be this run's (pure): their recorded options (each run's
    summary's ``options``; None: not found) against ``now`` (``RunOptions.public()``), on
    :data:`RESULT_OPTIONS`, and ``--rerun-changed``/``--accept-mixed`` given now. None: the same."""
    if now.get("rerun_changed") or now.get("accept_mixed"):
        return "--rerun-changed or --accept-mixed was given"
    for options in earlier:
        if options is None:
            return "an earlier run's options were not found"
        differ = [k for k in RESULT_OPTIONS if options.get(k) != now.get(k)]
        if differ:
            return f"an earlier run was started with other {', '.join(differ)} options"
    return None


def earlier_options(plan: Plan) -> list[dict[str, Any] | None]:
    """Each earlier run's recorded options: the ``options`` of the summary beside its ledger
    (``<run>.summary.json``, which rank 0 writes from its start; None when unreadable)."""
    out: list[dict[str, Any] | None] = []
    for ledger in plan.earlier_runs:
        summary = ledger[: -len(LEDGER_SUFFIX)] + ".summary.json" if ledger.endswith(LEDGER_SUFFIX) else ""
        try:
            with open(summary, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            doc = None
        options = doc.get("options") if isinstance(doc, dict) else None
        out.append(options if isinstance(options, dict) else None)
    return out
