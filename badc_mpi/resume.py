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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from badc_mpi.errors import StateError
from badc_mpi.ledger import LEDGER_SUFFIX, read_ledger
from badc_mpi.logs import get_logger

log = get_logger(__name__)


@dataclass
class ResumeState:
    """Latest known outcome per chunk key, and where it came from."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)  #: key -> compact record
    sources: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)


@dataclass
class ResumeDecision:
    to_run: list[Any]
    carried: dict[str, dict[str, Any]]
    skipped: int
    orphans: int
    changed_hash: int
    missing_outputs: int

    def note(self) -> str:
        parts = [f"resume: {self.skipped} skipped (done earlier), {len(self.to_run)} to run, "
                 f"{self.orphans} orphan(s) (in earlier runs, not in the manifest)"]
        if self.changed_hash:
            parts.append(f"{self.changed_hash} rerun because their sha256 changed")
        if self.missing_outputs:
            parts.append(f"{self.missing_outputs} rerun because their outputs are gone")
        return "; ".join(parts)


def _summary_error(path: str, why: str) -> StateError:
    return StateError(f"{path}: cannot resume from this summary ({why})",
                      fix="name the .summary.json of an earlier badc-mpi run, or drop --resume-summary to start afresh")


def read_summary_state(path: str) -> tuple[dict[str, dict[str, Any]], str | None]:
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
    out: dict[str, dict[str, Any]] = {}
    for key, e in doc["chunks"].items():
        if not isinstance(e, dict) or "status" not in e:
            raise _summary_error(path, f"entry {key!r} has no status")
        status = e["status"]
        if status not in ("success", "failed"):
            continue  # pending / in flight / backoff: not done
        out[key] = {"s": status, "h": e.get("sha256"), "a": e.get("attempts", 0), "f": e.get("failure_class"),
                    "e": e.get("last_error", ""), "t": e.get("finished_at"), "run": e.get("run_id"),
                    "o": bool(e.get("outputs"))}
    return out, doc.get("ledger")


def _overlay_ledger(state: ResumeState, path: str) -> None:
    contents = read_ledger(path)
    if contents.torn:
        log.warning("%s: the last line was cut short (a run killed mid-write); ignored", path)
        state.torn.append(path)
    records = state.records
    for e in contents.entries:
        records[f"{e['r']}/{e['c']}"] = e
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
            raise StateError(f"{path}, line 1: unreadable ledger header ({exc})",
                             fix="move the damaged ledger aside (its run's chunks then run again)") from exc
        if sorted(header.get("manifests", [])) == want and header.get("output_dir") == os.path.abspath(output_dir):
            found.append((header.get("created_at") or "", str(path)))
    return [p for _, p in sorted(found)]


def load_state(*, summaries: Iterable[str], telemetry_dir: str | None, manifests: list[str],
               output_dir: str, discover: bool) -> ResumeState:
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


def decide(chunks: list[Any], state: ResumeState, *, output_dir: str, skip_failed: bool,
           verify_outputs: bool = True) -> ResumeDecision:
    """Split the manifest's chunks into to-run and skipped (carried into the new summary)."""
    records = state.records
    to_run: list[Any] = []
    carried: dict[str, dict[str, Any]] = {}
    changed = missing = 0
    seen = 0
    for chunk in chunks:
        key = chunk.key
        rec = records.get(key)
        if rec is None:
            to_run.append(chunk)
            continue
        seen += 1
        status = rec["s"]
        if chunk.sha256 is not None and rec.get("h") != chunk.sha256:
            changed += 1
            to_run.append(chunk)
            continue
        if status == "success":
            if verify_outputs and rec.get("o") and not os.path.exists(
                    os.path.join(output_dir, chunk.recording_id, chunk.chunk_id + ".detections.jsonl")):
                missing += 1
                to_run.append(chunk)
                continue
        elif not skip_failed:
            to_run.append(chunk)
            continue
        carried[key] = {
            "recording_id": chunk.recording_id, "chunk_id": chunk.chunk_id, "sha256": chunk.sha256,
            "status": status, "attempts": rec.get("a", 0), "failure_class": rec.get("f"),
            "last_error": rec.get("e", ""), "finished_at": rec.get("t"), "run_id": rec.get("run"),
            "carried": True,
        }
    orphans = len(records) - seen
    return ResumeDecision(to_run, carried, len(carried), orphans, changed, missing)


def apply_resume(chunks: list[Any], manifest_paths: list[str], loc: Any, options: Any) -> tuple[list[Any], dict[str, dict[str, Any]], str]:
    """The planning hook: (chunks to run, carried summary entries, a one-line note)."""
    state = load_state(summaries=options.resume_summaries, telemetry_dir=loc.telemetry_dir,
                       manifests=[os.path.abspath(m) for m in manifest_paths],
                       output_dir=os.path.abspath(loc.output_dir), discover=options.resume)
    if not state.sources:
        log.warning("resume: no earlier run of %s with output folder %s found in %s; running everything",
                    ", ".join(manifest_paths), loc.output_dir, loc.telemetry_dir)
    decision = decide(chunks, state, output_dir=os.path.abspath(loc.output_dir), skip_failed=options.skip_failed)
    note = decision.note()
    log.info("%s (state from %d file(s))", note, len(state.sources))
    return decision.to_run, decision.carried, note
