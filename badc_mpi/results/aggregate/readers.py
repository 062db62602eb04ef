"""Detection sources by output layout (a run's ledger header says which it wrote)."""

from __future__ import annotations

from badc_mpi.results.aggregate.sources import DetectionReader, read_jsonl_detections
from badc_mpi.results.aggregate.store_source import read_store_detections
from badc_mpi.storage.store import PER_CHUNK, STORE

READERS: dict[str, DetectionReader] = {STORE: read_store_detections, PER_CHUNK: read_jsonl_detections}
