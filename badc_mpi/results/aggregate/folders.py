"""Where an aggregate (bundle) lives: ``<dataset>/artifacts/aggregate/<name>/`` (or ``--dest``),
and how ``export`` finds or makes one from its SOURCEs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.results.aggregate.runs import RunSelection, find_runs

AGGREGATE_DIR = os.path.join("artifacts", "aggregate")


def default_name(sources: Sequence[str], sel: RunSelection) -> str:
    """The first manifest's stem among the sources, else the first run's, else ``all``."""
    for source in sources:
        if source.endswith(".csv") and os.path.isfile(source):
            return Path(source).stem
    if len(sources) == 1 and os.path.isfile(sources[0]) and sel.runs and sel.runs[0].manifests:
        return Path(sel.runs[0].manifests[0]).stem
    return "all"


def bundle_folder(sources: Sequence[str], sel: RunSelection, name: str | None, dest: str | None) -> str:
    if dest:
        return os.path.abspath(dest)
    name = name or default_name(sources, sel)
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"bundle name {name!r} is not a folder name", fix="give --name a plain name such as site1")
    base = sel.dataset_root or os.getcwd()
    return os.path.join(base, AGGREGATE_DIR, name)


def is_aggregate(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in ("detections.parquet", "chunks.parquet"))


def find_aggregate(sources: Sequence[str], **kwargs: Any) -> str:
    """The aggregate folder: SOURCE itself when it is a bundle, else aggregate (reused when
    unchanged); ``kwargs``: ``telemetry_dir, output_dir, name, dest, accept_mixed`` as for
    ``badc-mpi aggregate``."""
    if len(sources) == 1 and is_aggregate(sources[0]):
        return os.path.abspath(sources[0])
    from badc_mpi.results.aggregate.dataset import aggregate

    sel = find_runs(sources, telemetry_dir=kwargs.get("telemetry_dir"))
    folder = bundle_folder(sources, sel, kwargs.get("name"), kwargs.get("dest"))
    accept_mixed = bool(kwargs.get("accept_mixed"))
    aggregate(sources, folder, output_dir=kwargs.get("output_dir"), reuse=True, selection=sel, accept_mixed=accept_mixed)
    return folder
