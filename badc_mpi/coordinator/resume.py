"""Resume: which chunks earlier runs finished, so a rerun does only what is left.

State comes from ledgers (the truth) and, with ``--resume-summary``, from named summaries (a
snapshot) overlaid with their runs' ledgers. ``--resume`` finds every earlier run with the same
output folder in the telemetry folder, whatever its manifests were called or where they lay (a
renamed or re-mounted manifest, a retry through ``X.failed.csv``): chunks are matched by key.
Later records win.

Results are never mixed silently: every run records the fingerprint of what determines its
detections (HawkEars and model versions, options, species lists); a chunk done by a run with
another fingerprint stops the resume with exit 2 naming what differs, unless ``--rerun-changed``
(run such chunks again) or ``--accept-mixed`` (keep them).

A chunk is skipped when its latest record is ``success``, its sha256 still matches the manifest
(when the manifest has one) and its detections still exist (its file, or its run's store segments); ``failed`` chunks run again
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
from badc_mpi.storage.store import run_segments

log = get_logger(__name__)


@dataclass
class ResumeState:
    """Latest known outcome per chunk key, and where it came from."""

    records: dict[str, tuple[Any, ...]] = field(default_factory=dict)  #: key -> ledger.RECORD_FIELDS values
    sources: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    fingerprints: dict[str, dict[str, Any] | None] = field(default_factory=dict)  #: run id -> its fingerprint


@dataclass
class ResumeDecision:
    to_run: list[Any]
    carried: dict[str, tuple[Any, ...]]  #: key -> ledger.RECORD_FIELDS values (see carried_entry)
    skipped: int
    orphans: int
    changed_hash: int
    missing_outputs: int
    changed_settings: int = 0  #: done with another fingerprint, run again (--rerun-changed)
    mixed: int = 0  #: done with another fingerprint, kept (--accept-mixed)

    def note(self) -> str:
        parts = [
            f"resume: {self.skipped} skipped (done earlier), {len(self.to_run)} to run, "
            f"{self.orphans} orphan(s) (in earlier runs, not in the manifest)"
        ]
        if self.changed_hash:
            parts.append(f"{self.changed_hash} rerun because their sha256 changed")
        if self.missing_outputs:
            parts.append(f"{self.missing_outputs} rerun because their outputs are gone")
        if self.changed_settings:
            parts.append(f"{self.changed_settings} rerun because they were done with other settings")
        if self.mixed:
            parts.append(f"{self.mixed} kept although done with other settings (--accept-mixed)")
        return "; ".join(parts)


def _summary_error(path: str, why: str) -> StateError:
    return StateError(
        f"{path}: cannot resume from this summary ({why})",
        fix="name the .summary.json of an earlier badc-mpi run, or drop --resume-summary to start afresh",
    )


def read_summary_state(path: str) -> tuple[dict[str, tuple[Any, ...]], str | None, dict[str, Any]]:
    """A summary's chunk entries as compact records, its run's ledger path (if recorded), and the
    document's head (run id, fingerprint, ...)."""
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
    head = {k: v for k, v in doc.items() if k != "chunks"}
    return out, doc.get("ledger"), head


def _overlay_ledger(state: ResumeState, path: str) -> None:
    contents = read_ledger(path)
    if contents.torn:
        log.warning("%s: the last line was cut short (a run killed mid-write); ignored", path)
        state.torn.append(path)
    state.records.update(contents.records)
    state.sources.append(path)
    if contents.header.get("run_id"):
        state.fingerprints[contents.header["run_id"]] = contents.header.get("fingerprint")


def find_run_ledgers(telemetry_dir: str, output_dir: str) -> list[str]:
    """Ledgers of earlier runs into the same output folder, oldest first (any manifests)."""
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
        if header.get("output_dir") == os.path.abspath(output_dir):
            found.append((header.get("created_at") or "", str(path)))
    return [p for _, p in sorted(found)]


def load_state(*, summaries: Iterable[str], telemetry_dir: str | None, output_dir: str, discover: bool) -> ResumeState:
    state = ResumeState()
    for summary in summaries:
        records, ledger_path, head = read_summary_state(summary)
        state.records.update(records)
        state.sources.append(summary)
        if head.get("run_id"):
            state.fingerprints[head["run_id"]] = head.get("fingerprint")
        # chunks that run carried from earlier runs were checked against its own settings (unless it
        # was told --accept-mixed): its fingerprint vouches for them, until their own ledgers say more
        vouch = head.get("fingerprint") if not (head.get("options") or {}).get("accept_mixed") else None
        if vouch is not None:
            for rec in records.values():
                state.fingerprints.setdefault(rec[RUN], vouch)
        if ledger_path and os.path.exists(ledger_path):
            _overlay_ledger(state, ledger_path)
    if discover and telemetry_dir and os.path.isdir(telemetry_dir):
        for ledger_path in find_run_ledgers(telemetry_dir, output_dir):
            if ledger_path not in state.sources:
                _overlay_ledger(state, ledger_path)
    return state


def fingerprint_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between two runs' fingerprints, one ``key: old -> new`` each (pure)."""
    if old is None:
        return ["fingerprint: none recorded (a run of an older badc-mpi) -> " + ", ".join(f"{k}={v}" for k, v in new.items())]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def decide(
    chunks: list[Chunk],
    state: ResumeState,
    *,
    output_dir: str,
    skip_failed: bool,
    verify_outputs: bool = True,
    fingerprint: dict[str, Any] | None = None,
    on_change: str = "refuse",
) -> ResumeDecision:
    """Split the manifest's chunks into to-run and skipped (carried into the new summary).

    A chunk done by a run whose fingerprint differs from ``fingerprint``: ``on_change`` is
    ``refuse`` (StateError naming what differs), ``rerun`` or ``accept``."""
    records = state.records
    differs = {run: fingerprint_changes(fp, fingerprint) for run, fp in state.fingerprints.items()} if fingerprint else {}
    differs = {run: changes for run, changes in differs.items() if changes}
    stale_runs: dict[str, int] = {}
    rerun_changed = mixed = 0
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

    segments: dict[str, bool] = {}

    def stored(run: str) -> bool:  # one listing per run: its store segments still there
        found = segments.get(run)
        if found is None:
            found = segments[run] = bool(run_segments(output_dir, run))
        return found

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
            # store runs: the store was synced before the ledger line (storage/store.py); per-chunk: look
            if verify_outputs and rec[HAS_OUTPUTS] and not stored(rec[RUN]) and not has_detections(chunk):
                missing += 1
                to_run.append(chunk)
                continue
            if fingerprint is not None and (rec[RUN] in differs or rec[RUN] not in state.fingerprints):
                stale_runs[rec[RUN]] = stale_runs.get(rec[RUN], 0) + 1
                if on_change == "rerun":
                    rerun_changed += 1
                    to_run.append(chunk)
                    continue
                mixed += 1
        elif not skip_failed:
            to_run.append(chunk)
            continue
        carried[key] = rec
    orphans = len(records) - seen
    if stale_runs and on_change == "refuse":
        run, count = max(stale_runs.items(), key=lambda item: item[1])
        what = "; ".join(differs.get(run, ["no fingerprint found for that run"])[:4])
        raise StateError(
            f"--resume would keep {sum(stale_runs.values())} chunk(s) done with other settings "
            f"(run {run}, {count} chunk(s): {what})",
            fix="pass --rerun-changed to run them again with these settings, or --accept-mixed to keep them "
            "(the results then mix settings)",
        )
    return ResumeDecision(to_run, carried, len(carried), orphans, changed, missing, rerun_changed, mixed)


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
    chunks: list[Chunk], loc: Any, options: Any, fingerprint: dict[str, Any] | None = None
) -> tuple[list[Any], dict[str, tuple[Any, ...]], str]:
    """The planning hook: (chunks to run, carried summary entries, a one-line note)."""
    state = load_state(
        summaries=options.resume_summaries,
        telemetry_dir=loc.telemetry_dir,
        output_dir=os.path.abspath(loc.output_dir),
        discover=options.resume,
    )
    if not state.sources:
        log.warning(
            "resume: no earlier run with output folder %s found in %s; running everything",
            loc.output_dir,
            loc.telemetry_dir,
        )
    on_change = "rerun" if options.rerun_changed else "accept" if options.accept_mixed else "refuse"
    decision = decide(
        chunks,
        state,
        output_dir=os.path.abspath(loc.output_dir),
        skip_failed=options.skip_failed,
        fingerprint=fingerprint,
        on_change=on_change,
    )
    note = decision.note()
    log.info("%s (state from %d file(s))", note, len(state.sources))
    return decision.to_run, decision.carried, note
