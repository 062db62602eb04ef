"""Where resume's state comes from: summaries named by ``--resume-summary`` and the ledgers of
earlier runs into the same output folder (found by their headers, folders compared resolved).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from badc_mpi.errors import StateError
from badc_mpi.storage.ledger import LEDGER_SUFFIX


def _summary_error(path: str, why: str) -> StateError:
    return StateError(
        f"{path}: cannot resume from this summary ({why})",
        fix="name the .summary.json of an earlier badc-mpi run, or drop --resume-summary to start afresh",
    )


def read_summary_state(path: str) -> tuple[dict[str, tuple[Any, ...]], str | None, dict[str, Any]]:
    """A summary's final chunk entries as compact records (a summary/2 lists only the failed and
    unfinished chunks; a summary/1 every chunk), its run's ledger path (if recorded), and the
    document's head (run id, fingerprint, the ledgers its resume read, ...)."""
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


def find_run_ledgers(telemetry_dir: str, output_dir: str) -> list[str]:
    """Ledgers of earlier runs into the same output folder, oldest first (any manifests). Folders
    are compared resolved (``os.path.realpath``): a run through a symlink to the folder, or a run
    of its real path, is a run into the same folder."""
    want = os.path.realpath(output_dir)
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
        if isinstance(header.get("output_dir"), str) and os.path.realpath(header["output_dir"]) == want:
            found.append((header.get("created_at") or "", str(path)))
    return [p for _, p in sorted(found)]
