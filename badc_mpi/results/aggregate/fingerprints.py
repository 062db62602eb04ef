"""One fingerprint per aggregate: which settings its detections were made with.

Every run records in its ledger's header the fingerprint of what determines its detections
(:mod:`badc_mpi.coordinator.resume`: versions, models, ``--min-score``, the command template...).
Resume never mixes them silently, and neither does an aggregate: it holds the **newest run's**
fingerprint; a chunk whose only success was made with another one is ``stale`` (not counted),
unless ``--accept-mixed`` keeps it (the report then says so in a banner). Each detection row
carries its run's fingerprint id: the first 12 hex digits of the SHA-256 of the fingerprint as
canonical JSON (``runs.parquet`` has the settings themselves).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

FINGERPRINT_COLUMN = "fingerprint"


def fingerprint_id(fingerprint: dict[str, Any] | None) -> str | None:
    """The short id of a run's fingerprint (None: the run recorded none, an older badc-mpi)."""
    if fingerprint is None:
        return None
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def settings_text(fingerprint: dict[str, Any] | None) -> str | None:
    return None if fingerprint is None else json.dumps(fingerprint, sort_keys=True, default=str)


@dataclass(frozen=True)
class Choice:
    """The aggregate's fingerprint (the newest run's) and what the other runs used."""

    id: str | None
    run_id: str | None  #: the newest run, whose fingerprint this is
    settings: dict[str, Any] | None
    accept_mixed: bool
    others: dict[str, dict[str, Any] | None] = field(default_factory=dict)  #: other ids -> settings

    def as_dict(self, *, stale: int, mixed: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "settings": self.settings,
            "accept_mixed": self.accept_mixed,
            "stale": stale,
            "mixed": mixed,
            "others": self.others,
        }


def choose(runs: Sequence[tuple[str, dict[str, Any] | None]], *, accept_mixed: bool) -> Choice:
    """``runs``: (run id, fingerprint), oldest first (pure)."""
    if not runs:
        return Choice(None, None, None, accept_mixed)
    run_id, newest = runs[-1]
    chosen = fingerprint_id(newest)
    others = {fingerprint_id(fp): fp for _, fp in runs if fingerprint_id(fp) != chosen}
    return Choice(chosen, run_id, newest, accept_mixed, {str(k): v for k, v in others.items()})


def differences(old: dict[str, Any] | None, new: dict[str, Any] | None, limit: int = 3) -> str:
    """``key: old -> new`` for the first ``limit`` settings that differ (pure)."""
    if old is None or new is None:
        return "no fingerprint recorded by one of the runs (an older badc-mpi)"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit]) or "none"


def with_fingerprints(table: pa.Table, ids: dict[str, str | None]) -> pa.Table:
    """``table`` (detections) with its ``fingerprint`` column set from each row's ``run_id``."""
    if FINGERPRINT_COLUMN not in table.column_names or not table.num_rows:
        return table
    runs = list(ids)
    values = pa.array([ids[r] for r in runs], pa.string())
    where = pc.index_in(table.column("run_id").cast(pa.string()), value_set=pa.array(runs, pa.string()))
    column = pc.take(values, where).dictionary_encode()
    at = table.schema.get_field_index(FINGERPRINT_COLUMN)
    return table.set_column(at, table.schema.field(at), column.cast(table.schema.field(at).type))
