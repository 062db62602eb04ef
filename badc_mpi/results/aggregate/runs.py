"""Which runs to aggregate, and what each run's files say: ledger, summary, telemetry.

A run is its ledger ``<stem>_<UTC>.ledger.jsonl`` plus the sidecars beside it (telemetry
``.jsonl``, ``.summary.json``, ``.workers.csv``). Sources name runs in four ways
(:func:`find_runs`): a manifest (its runs in its default telemetry folder), a DataLad dataset
folder (every run in ``artifacts/telemetry/infer``), a telemetry folder (every run in it), or one
run's file. Every file that cannot be read becomes a :class:`Problem` (path and reason), never a
silent gap.

A manifest's runs are found as ``--resume`` finds them (:mod:`badc_mpi.coordinator.resume`): the
runs whose ledger names the manifest, and the runs into the same output folder whose ledger holds
any of its chunks' keys (a retry through ``X.failed.csv``, a renamed or moved manifest). Those
found by keys only lend their records of the manifest's chunks (``matched_by_keys``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from badc_mpi.errors import BadcError, StateError, UsageError
from badc_mpi.inputs.key_index import KeyIndex
from badc_mpi.inputs.locations import DATASET_TELEMETRY, default_locations, find_dataset_root
from badc_mpi.inputs.manifest import load_manifest
from badc_mpi.storage.jsonl import complete_lines
from badc_mpi.storage.ledger import LEDGER_SUFFIX, LedgerContents, read_ledger

RUN_SUFFIXES = (LEDGER_SUFFIX, ".summary.json", ".workers.csv", ".failed.csv", ".jsonl")


@dataclass(frozen=True)
class Problem:
    """A file skipped or read in part, and why (reported in the aggregate's summary and report)."""

    path: str
    reason: str
    kind: str = "unreadable"  #: ``unreadable`` | ``torn`` | ``orphan_output`` | ``missing_output`` | ``note``


@dataclass
class RunFiles:
    """One run: its ledger (the truth) and the sidecars that exist."""

    base: str  #: path without suffix: ``<telemetry>/<stem>_<UTC>``
    ledger: LedgerContents
    telemetry: str | None
    summary: str | None
    matched_by_keys: bool = False  #: found by output folder and chunk keys, not by a manifest's path

    @property
    def run_id(self) -> str:
        return str(self.ledger.header.get("run_id") or os.path.basename(self.base))

    @property
    def created_at(self) -> str:
        return str(self.ledger.header.get("created_at") or "")

    @property
    def manifests(self) -> list[str]:
        return [str(m) for m in self.ledger.header.get("manifests") or []]

    @property
    def output_dir(self) -> str:
        return str(self.ledger.header.get("output_dir") or "")

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """What determines its detections (None: a run of an older badc-mpi)."""
        value = self.ledger.header.get("fingerprint")
        return value if isinstance(value, dict) else None


@dataclass
class RunSelection:
    """The runs found, oldest first, and the files that could not be used."""

    runs: list[RunFiles] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    dataset_root: str | None = None
    manifest_filter: list[str] | None = None  #: absolute manifests named as sources (None: every run)


def distinct_files(paths: Iterable[str]) -> list[str]:
    """``paths`` sorted, one per file: a manifest named through a symlink by one run and by its
    real path by another is read once."""
    seen: dict[str, str] = {}
    for path in sorted(set(paths)):
        seen.setdefault(os.path.realpath(path), path)
    return sorted(seen.values())


def run_base(path: str) -> str:
    """``x.ledger.jsonl`` / ``x.summary.json`` / ``x.workers.csv`` / ``x.jsonl`` -> ``x``."""
    for suffix in RUN_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    raise UsageError(
        f"{path}: not a run file",
        fix="name a run's .ledger.jsonl, .jsonl, .summary.json or .workers.csv, a manifest (.csv), a telemetry folder or a dataset",
    )


def load_run(base: str, problems: list[Problem]) -> RunFiles | None:
    """The run at ``base``; None (and a problem) when its ledger is missing or unreadable."""
    ledger_path = base + LEDGER_SUFFIX
    if not os.path.exists(ledger_path):
        problems.append(Problem(ledger_path, "no resume ledger beside this run's files: its chunks are not counted"))
        return None
    try:
        contents = read_ledger(ledger_path)
    except StateError as exc:
        problems.append(Problem(ledger_path, str(exc)))
        return None
    if contents.torn:
        problems.append(Problem(ledger_path, "last line cut short (run killed mid-write); ignored", "torn"))
    telemetry = base + ".jsonl"
    summary = base + ".summary.json"
    return RunFiles(
        base=base,
        ledger=contents,
        telemetry=telemetry if os.path.exists(telemetry) else None,
        summary=summary if os.path.exists(summary) else None,
    )


def runs_in_folder(folder: str, problems: list[Problem]) -> list[RunFiles]:
    """Every run of a telemetry folder (by ledger); telemetry files without a ledger are reported."""
    names = sorted(os.listdir(folder))
    bases = [os.path.join(folder, n[: -len(LEDGER_SUFFIX)]) for n in names if n.endswith(LEDGER_SUFFIX)]
    known = {os.path.basename(b) + ".jsonl" for b in bases}
    for name in names:
        plain = name.endswith(".jsonl") and not name.endswith(LEDGER_SUFFIX)
        if plain and name not in known and not name.startswith("."):
            problems.append(Problem(os.path.join(folder, name), "telemetry without a ledger: its chunks are not counted"))
    return [run for run in (load_run(b, problems) for b in bases) if run is not None]


def find_runs(sources: Iterable[str], *, telemetry_dir: str | None = None) -> RunSelection:
    """Runs named by ``sources`` (manifests, dataset folders, telemetry folders, run files),
    oldest first (ledger ``created_at``), each once. ``telemetry_dir`` overrides where a
    manifest's runs are looked for."""
    sel = RunSelection()
    by_base: dict[str, RunFiles] = {}
    manifests: list[str] = []
    for source in sources:
        path = os.path.abspath(source)
        if os.path.isdir(path):
            root = find_dataset_root(path)  # a dataset, or a telemetry folder inside one
            is_dataset = os.path.isdir(os.path.join(path, ".datalad"))
            folder = os.path.join(path, DATASET_TELEMETRY) if is_dataset else path
            sel.dataset_root = sel.dataset_root or root
            if not os.path.isdir(folder):
                raise UsageError(
                    f"{folder}: no telemetry folder in this dataset", fix="run `badc-mpi run` on its manifests first"
                )
            found = runs_in_folder(folder, sel.problems)
        elif path.endswith(".csv") and not path.endswith(".workers.csv") and not path.endswith(".failed.csv"):
            if not os.path.isfile(path):
                raise UsageError(f"{source}: no such manifest", fix="check the path")
            loc = default_locations(path, telemetry_dir=telemetry_dir)
            sel.dataset_root = sel.dataset_root or loc.dataset_root
            manifests.append(path)
            found = runs_in_folder(loc.telemetry_dir, sel.problems) if os.path.isdir(loc.telemetry_dir) else []
            found = runs_of_manifest(path, found, loc.output_dir, sel.problems)
        elif os.path.isfile(path):
            sel.dataset_root = sel.dataset_root or find_dataset_root(path)
            run = load_run(run_base(path), sel.problems)
            found = [run] if run else []
        else:
            raise UsageError(
                f"{source}: no such file or folder", fix="name a manifest, a dataset, a telemetry folder or a run's file"
            )
        for run in found:
            kept = by_base.setdefault(run.base, run)
            kept.matched_by_keys = kept.matched_by_keys and run.matched_by_keys
    if manifests:
        sel.manifest_filter = manifests
    sel.runs = sorted(by_base.values(), key=lambda r: (r.created_at, os.path.basename(r.base)))
    if not sel.runs:
        first = next((s for s in sources if s.endswith(".csv")), "<manifest.csv>")
        raise BadcError(
            f"not run yet: no run found for {', '.join(sources)}",
            fix=f"run it first: `make infer MANIFEST={first}` (or `badc-mpi run {first}`); "
            "if it ran elsewhere, name its telemetry folder (--telemetry-dir) or a run's .ledger.jsonl",
        )
    return sel


def _folder(path: str) -> str:
    return os.path.realpath(path) if path else ""


def runs_of_manifest(path: str, runs: list[RunFiles], default_output: str, problems: list[Problem]) -> list[RunFiles]:
    """The runs of ``runs`` (one telemetry folder) that belong to the manifest ``path``: those whose
    ledger names it, and those into the same output folder (the manifest's default one, or one
    of the naming runs') whose ledger records any of its chunks (marked ``matched_by_keys``)."""
    real = os.path.realpath(path)  # a run of the manifest through a symlink is its run too
    named = [r for r in runs if real in {os.path.realpath(m) for m in r.manifests}]
    folders = {_folder(default_output)} | {_folder(r.output_dir) for r in named}
    others = [r for r in runs if r not in named and r.output_dir and _folder(r.output_dir) in folders]
    if not others:
        return named
    try:
        index = KeyIndex(load_manifest(path, check_sources=False).chunks)
    except (BadcError, OSError) as exc:
        problems.append(Problem(path, f"manifest unreadable ({exc}); only the runs that name it are read"))
        return named
    for run in others:
        if run.ledger.records:
            found, _ = index.find(pa.array(list(run.ledger.records), pa.large_string()))
            if found.any():
                run.matched_by_keys = True
                named.append(run)
    return named


def read_summary(path: str | None, problems: list[Problem]) -> dict[str, Any]:
    """A run summary's head (everything but its chunk table); {} when absent or unreadable."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        problems.append(Problem(path, f"summary unreadable ({exc}); run details left empty"))
        return {}
    if not isinstance(doc, dict):
        problems.append(Problem(path, "summary is not a JSON object; run details left empty"))
        return {}
    doc.pop("chunks", None)
    return doc


def telemetry_bytes(path: str, problems: list[Problem]) -> bytes:
    """A telemetry file's complete lines (a torn tail is dropped and reported)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        problems.append(Problem(path, f"telemetry unreadable ({exc.strerror}); worker figures left out"))
        return b""
    body, torn = complete_lines(data)
    if torn:
        problems.append(Problem(path, "telemetry's last line cut short (run killed mid-write); ignored", "torn"))
    return body
