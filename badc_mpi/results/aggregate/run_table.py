"""The aggregate's ``runs`` and ``attempts`` tables: one row per run (its ledger, summary and
fingerprint), one per finished attempt (its telemetry)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.results.aggregate import fingerprints as F
from badc_mpi.results.aggregate import schema as S
from badc_mpi.results.aggregate.runs import Problem, RunFiles, read_summary, telemetry_bytes
from badc_mpi.results.aggregate.verdicts import Verdict


def attempt_table(runs: Sequence[RunFiles], problems: list[Problem]) -> pa.Table:
    tables = []
    for run in runs:
        if run.telemetry is None:
            problems.append(Problem(run.base + ".jsonl", "telemetry missing: worker figures of this run left out"))
            continue
        try:
            tables.append(S.parse_attempts(telemetry_bytes(run.telemetry, problems)))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            problems.append(Problem(run.telemetry, f"telemetry unreadable ({str(exc).splitlines()[0]}); worker figures left out"))
    return pa.concat_tables(tables) if tables else S.ATTEMPT_SCHEMA.empty_table()


def final_attempts(attempts: pa.Table) -> dict[tuple[str, str], tuple[str | None, float | None]]:
    """(run_id, key) -> (worker, runtime_s) of the final attempt."""
    cols = [attempts.column(n).to_pylist() for n in ("run_id", "event", "recording_id", "chunk_id", "worker", "runtime_s")]
    return {(r, f"{rec}/{c}"): (w, t) for r, e, rec, c, w, t in zip(*cols) if e != "retry"}


def _most_common(values: list[Any]) -> Any:
    values = [v for v in values if v]
    return Counter(values).most_common(1)[0][0] if values else None


def run_rows(
    runs: Sequence[RunFiles], verdicts: list[Verdict], attempts: pa.Table, problems: list[Problem]
) -> list[dict[str, Any]]:
    won = Counter(v.run_id for v in verdicts if v.run_id)
    by_run: dict[str, dict[str, list[Any]]] = {}
    succ = attempts.filter(pc.equal(attempts.column("event"), "success"))
    for r, mv, hv in zip(*(succ.column(n).to_pylist() for n in ("run_id", "model_version", "hawkears_version"))):
        entry = by_run.setdefault(r, {"model": [], "hawkears": []})
        entry["model"].append(mv)
        entry["hawkears"].append(hv)
    rows = []
    for run in runs:
        head = read_summary(run.summary, problems)
        runner = head.get("runner") or {}
        seen = by_run.get(run.run_id, {"model": [], "hawkears": []})
        model = runner.get("model_version") or _most_common(seen["model"])
        statuses = Counter(rec[0] for rec in run.ledger.records.values())
        finished = [rec[6] for rec in run.ledger.records.values() if rec[6]]
        rows.append(
            {
                "run_id": run.run_id,
                "created_at": run.created_at or head.get("created_at"),
                "finished_at": max(finished) if finished else None,
                "state": head.get("state"),
                "host": head.get("host"),
                "badc_mpi_version": head.get("badc_mpi_version"),
                "hawkears_version": runner.get("hawkears_version") or _most_common(seen["hawkears"]),
                "model_version": model,
                "tiny_model": bool(runner.get("tiny_model")) or bool(model and str(model).startswith("tiny:")),
                "runner": runner.get("runner"),
                "manifests": json.dumps(run.manifests),
                "output_dir": run.output_dir,
                "ledger": run.ledger.path,
                "telemetry": run.telemetry,
                "summary": run.summary,
                "ledger_success": statuses.get("success", 0),
                "ledger_failed": statuses.get("failed", 0),
                "chunks_won": won.get(run.run_id, 0),
                "options": json.dumps({"options": head.get("options"), "runner": runner}, default=str),
                "fingerprint": F.fingerprint_id(run.fingerprint),
                "settings": F.settings_text(run.fingerprint),
            }
        )
    return rows
