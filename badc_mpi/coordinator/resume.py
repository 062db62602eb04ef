"""Resume: which chunks earlier runs finished, so a rerun does only what is left.

State comes from ledgers (the truth) and, with ``--resume-summary``, from named summaries (a
snapshot) overlaid with their runs' ledgers. ``--resume`` finds every earlier run of the same
manifest(s) with the same output folder in the telemetry folder. Later records win.

A chunk is skipped when its latest record is ``success``, its sha256 still matches the manifest
(when the manifest has one) and its detections file still exists; ``failed`` chunks run again
unless ``--skip-failed``. Identity is ``(recording_id, chunk_id)`` plus sha256, never row position.
Unreadable state is a loud :class:`~badc_mpi.errors.StateError`, never "nothing to skip".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from badc_mpi.errors import StateError
from badc_mpi.logs import get_logger
from badc_mpi.records import Chunk
from badc_mpi.storage.ledger import (
    ATTEMPTS,
    ERROR,
    FAILURE_CLASS,
    FINISHED_AT,
    HAS_OUTPUTS,
    LEDGER_SUFFIX,
    RUN,
    SHA256,
    STATUS,
    read_ledger,
)

log = get_logger(__name__)


@dataclass
class ResumeState:
    """Latest known outcome per chunk key, and where it came from."""

    records: dict[str, tuple[Any, ...]] = field(default_factory=dict)  #: key -> ledger.RECORD_FIELDS values
    sources: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)


@dataclass
class ResumeDecision:
    to_run: list[Any]
    carried: dict[str, tuple[Any, ...]]  #: key -> ledger.RECORD_FIELDS values (see carried_entry)
    skipped: int
    orphans: int
    changed_hash: int
    missing_outputs: int

    def note(self) -> str:
        parts = [
            f"resume: {self.skipped} skipped (done earlier), {len(self.to_run)} to run, "
            f"{self.orphans} orphan(s) (in earlier runs, not in the manifest)"
        ]
        if self.changed_hash:
            parts.append(f"{self.changed_hash} rerun because their sha256 changed")
        if self.missing_outputs:
            parts.append(f"{self.missing_outputs} rerun because their outputs are gone")
        return "; ".join(parts)


def _summary_error(path: str, why: str) -> StateError:
    return StateError(
        f"{path}: cannot resume from this summary ({why})",
        fix="name the .summary.json of an earlier badc-mpi run, or drop --resume-summary to start afresh",
    )


def read_summary_state(path: str) -> tuple[dict[str, tuple[Any, ...]], str | None]:
    """A summary's chunk entries as compact records, and its run's ledger path (if recorded)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise _summary_error(path, exc.strerror or str(exc)) from exc
    except ValueError as exc:
        raise _summary_error(path, f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("chunks"), dict):
        raise _summary_error(path, "no 'chunks' table: not a badc-mpi summary")
    out: dict[str, tuple[Any, ...]] = {}
    run_id = doc.get("run_id")
    for key, e in doc["chunks"].items():
        if not isinstance(e, dict) or "status" not in e:
            raise _summary_error(path, f"entry {key!r} has no status")
        status = e["status"]
        if status not in ("success", "failed"):
            continue  # pending / in flight / backoff: not done
        out[key] = (
            status,
            e.get("sha256"),
            bool(e.get("outputs")) or e.get("has_outputs", False),
            e.get("attempts", 0),
            e.get("failure_class"),
            e.get("last_error", ""),
            e.get("finished_at"),
            e.get("run_id", run_id),
        )
    return out, doc.get("ledger")


def _overlay_ledger(state: ResumeState, path: str) -> None:
    contents = read_ledger(path)
    if contents.torn:
        log.warning("%s: the last line was cut short (a run killed mid-write); ignored", path)
        state.torn.append(path)
    state.records.update(contents.records)
    state.sources.append(path)


def find_run_ledgers(telemetry_dir: str, manifests: list[str], output_dir: str) -> list[str]:
    """Ledgers of earlier runs of the same manifest set and output folder, oldest first."""
    want = sorted(os.path.abspath(m) for m in manifests)
    found = []
    for path in sorted(Path(telemetry_dir).glob(f"*{LEDGER_SUFFIX}")):
        try:
            with open(path, "rb") as fh:
                header = json.loads(fh.readline() or b"{}")
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{path}, line 1: unreadable ledger header ({exc})",
                fix="move the damaged ledger aside (its run's chunks then run again)",
            ) from exc
        if sorted(header.get("manifests", [])) == want and header.get("output_dir") == os.path.abspath(output_dir):
            found.append((header.get("created_at") or "", str(path)))
    return [p for _, p in sorted(found)]


def load_state(
    *, summaries: Iterable[str], telemetry_dir: str | None, manifests: list[str], output_dir: str, discover: bool
) -> ResumeState:
    state = ResumeState()
    for summary in summaries:
        records, ledger_path = read_summary_state(summary)
        state.records.update(records)
        state.sources.append(summary)
        if ledger_path and os.path.exists(ledger_path):
            _overlay_ledger(state, ledger_path)
    if discover and telemetry_dir and os.path.isdir(telemetry_dir):
        for ledger_path in find_run_ledgers(telemetry_dir, manifests, output_dir):
            if ledger_path not in state.sources:
                _overlay_ledger(state, ledger_path)
    return state


def decide(
    chunks: list[Chunk], state: ResumeState, *, output_dir: str, skip_failed: bool, verify_outputs: bool = True
) -> ResumeDecision:
    """Split the manifest's chunks into to-run and skipped (carried into the new summary)."""
    records = state.records
    listings: dict[str, set[str]] = {}

    def has_detections(chunk: Chunk) -> bool:  # one listing per recording folder, not a stat per chunk
        names = listings.get(chunk.recording_id)
        if names is None:
            try:
                names = set(os.listdir(os.path.join(output_dir, chunk.recording_id)))
            except OSError:
                names = set()
            listings[chunk.recording_id] = names
        return chunk.chunk_id + ".detections.jsonl" in names

    to_run: list[Any] = []
    carried: dict[str, tuple[Any, ...]] = {}
    changed = missing = 0
    seen = 0
    for chunk in chunks:
        key = chunk.key
        rec = records.get(key)
        if rec is None:
            to_run.append(chunk)
            continue
        seen += 1
        status = rec[STATUS]
        if chunk.sha256 is not None and rec[SHA256] != chunk.sha256:
            changed += 1
            to_run.append(chunk)
            continue
        if status == "success":
            if verify_outputs and rec[HAS_OUTPUTS] and not has_detections(chunk):
                missing += 1
                to_run.append(chunk)
                continue
        elif not skip_failed:
            to_run.append(chunk)
            continue
        carried[key] = rec
    orphans = len(records) - seen
    return ResumeDecision(to_run, carried, len(carried), orphans, changed, missing)


def carried_entry(rec: tuple[Any, ...]) -> dict[str, Any]:
    """The summary entry of a chunk an earlier run finished (skipped by this run)."""
    return {
        "status": rec[STATUS],
        "attempts": rec[ATTEMPTS],
        "failure_class": rec[FAILURE_CLASS],
        "last_error": rec[ERROR] or "",
        "finished_at": rec[FINISHED_AT],
        "run_id": rec[RUN],
        "sha256": rec[SHA256],
        "has_outputs": bool(rec[HAS_OUTPUTS]),
        "carried": True,
    }


def apply_resume(
    chunks: list[Chunk], manifest_paths: list[str], loc: Any, options: Any
) -> tuple[list[Any], dict[str, tuple[Any, ...]], str]:
    """The planning hook: (chunks to run, carried summary entries, a one-line note)."""
    state = load_state(
        summaries=options.resume_summaries,
        telemetry_dir=loc.telemetry_dir,
        manifests=[os.path.abspath(m) for m in manifest_paths],
        output_dir=os.path.abspath(loc.output_dir),
        discover=options.resume,
    )
    if not state.sources:
        log.warning(
            "resume: no earlier run of %s with output folder %s found in %s; running everything",
            ", ".join(manifest_paths),
            loc.output_dir,
            loc.telemetry_dir,
        )
    decision = decide(chunks, state, output_dir=os.path.abspath(loc.output_dir), skip_failed=options.skip_failed)
    note = decision.note()
    log.info("%s (state from %d file(s))", note, len(state.sources))
    return decision.to_run, decision.carried, note
