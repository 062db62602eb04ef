"""What an export checks about its aggregate before writing, and the tiny model's mark after.

- **species**: the focus species are checked against the taxonomy of the data root the runs used
  (``runs.parquet``'s runner facts; else the data root a run here would use), so a typo is an
  error with the nearest codes, never an all-0 history; common names are mapped to codes.
- **tiny model**: detections of the random-weight test model are meaningless: exporting them
  needs ``allow_tiny_model``, and then every file says so in itself (:func:`mark_tiny`): the
  WildTrax comments, a ``model_warning`` column elsewhere, ``tiny_model`` in ``export.json``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from badc_mpi.results.export.meta import ExportError
from badc_mpi.runners.hawkears.species import Taxonomy, load_taxonomy, resolve_species

TINY_WARNING = "TINY TEST MODEL: meaningless detections, never for science"
WARNING_COLUMN = "model_warning"
#: columns that carry a person's comment: the warning goes in front of their text
COMMENT_COLUMNS = ("species_individual_comments", "task_comments")


@dataclass(frozen=True)
class AggregateFacts:
    tiny: bool
    data_roots: tuple[str, ...]


def aggregate_facts(folder: str) -> AggregateFacts:
    """Whether the tiny model made any run of the aggregate ``folder``, and the data roots used."""
    path = os.path.join(folder, "runs.parquet")
    if not os.path.exists(path):
        return AggregateFacts(False, ())
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=["tiny_model", "model_version", "options"]).to_pylist()
    tiny = any(r["tiny_model"] or str(r["model_version"] or "").startswith("tiny:") for r in rows)
    detections = os.path.join(folder, "detections.parquet")
    if not tiny and os.path.exists(detections):  # each detection names its model too (one column read)
        models = pq.read_table(detections, columns=["model_version"]).column(0).unique().to_pylist()
        tiny = any(str(m or "").startswith("tiny:") for m in models)
    roots: list[str] = []
    for row in rows:
        try:
            runner = (json.loads(row["options"] or "{}") or {}).get("runner") or {}
        except ValueError:
            continue
        root = runner.get("data_root") if isinstance(runner, dict) else None
        if isinstance(root, str) and root not in roots:
            roots.append(root)
    return AggregateFacts(tiny, tuple(roots))


def find_taxonomy(data_roots: Sequence[str]) -> Taxonomy | None:
    """The taxonomy of the first data root that has one; else that of the data root a run here
    would use (``HAWKEARS_DATA_ROOT``, staged models, the tiny root's HawkEars class list)."""
    for root in data_roots:
        found = load_taxonomy(root) if os.path.isdir(root) else None
        if found:
            return found
    from badc_mpi.errors import BadcError
    from badc_mpi.runners.hawkears.env import resolve_data_root

    try:
        return load_taxonomy(resolve_data_root(None, allow_tiny=True).path)
    except BadcError:
        return None


def check_focus_species(species: Sequence[str], facts: AggregateFacts) -> tuple[tuple[str, ...], list[str]]:
    """(the focus species as codes, notes); UsageError for an unknown one."""
    if not species:
        return (), []
    taxonomy = find_taxonomy(facts.data_roots)
    if taxonomy is None:
        return tuple(species), [
            "--focus-species not checked: no HawkEars taxonomy found (stage models, or set HAWKEARS_DATA_ROOT)"
        ]
    codes, notes = resolve_species(species, taxonomy, "--focus-species")
    return tuple(codes), notes


def require_tiny_allowed(facts: AggregateFacts, allowed: bool, folder: str) -> None:
    if facts.tiny and not allowed:
        raise ExportError(
            f"the detections of {folder} come from the tiny random-weight test model: they are meaningless",
            fix="pass --allow-tiny-model to export them anyway (tests, demos: every file then says so); "
            "for results, run again with real models (make hawkears-models, --hawkears-data-root)",
        )


def checked(options: Any, folder: str) -> tuple[Any, AggregateFacts, list[str]]:
    """``options`` with the focus species as codes, the aggregate's facts, and the notes to say."""
    facts = aggregate_facts(folder)
    require_tiny_allowed(facts, bool(getattr(options, "allow_tiny_model", False)), folder)
    codes, notes = check_focus_species(options.focus_species, facts)
    if facts.tiny:
        notes.append(f"tiny test model: every file says so ({WARNING_COLUMN} column, WildTrax comments, export.json)")
    return replace(options, focus_species=codes), facts, notes


def mark_tiny(staging: str, names: Sequence[str]) -> None:
    """Rewrite every staged table under ``staging`` so that it says it holds tiny-model results."""
    for rel in names:
        if not rel.endswith((".csv", ".txt")):
            continue
        path = os.path.join(staging, rel)
        delimiter = "\t" if rel.endswith(".txt") else ","
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter=delimiter))
        if not rows:
            continue
        header = rows[0]
        comments = [i for i, name in enumerate(header) if name in COMMENT_COLUMNS]
        out = [header if comments else [*header, WARNING_COLUMN]]
        for row in rows[1:]:
            if comments:
                row = list(row)
                for i in comments:
                    if i < len(row):  # a short row has no comment to mark
                        row[i] = f"{TINY_WARNING}. {row[i]}".rstrip(". ")
                out.append(row)
            else:
                out.append([*row, TINY_WARNING])
        tmp = path + ".tiny"
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter=delimiter, lineterminator="\n").writerows(out)
        os.replace(tmp, path)
