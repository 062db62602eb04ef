"""The detection store as a detection source (see :mod:`badc_mpi.storage.store` for the format).

Reads each run's segments in blocks of whole lines (bounded memory), parses them with pyarrow,
keeps the chunk lines the ledgers call done for that run, and explodes their parallel lists into
raw detection records (:data:`~badc_mpi.results.aggregate.schema.RAW_DETECTION_SCHEMA` plus the manifest's
extra keys; chunk-level text as dictionary arrays). Never counted, always named: a torn last line (file and byte offset), a damaged line,
a chunk line no ledger calls done (rank 0 stopped between the store and the ledger), a done
chunk the store lacks, and a record that is not the one its ledger line names (segment, offset,
length and CRC-32, :class:`~badc_mpi.storage.store.StoreRef`: torn by a full disk, or lost in a
node crash).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from badc_mpi.logs import get_logger
from badc_mpi.results.aggregate.schema import METADATA_TEXT_FIELDS, RAW_DETECTION_SCHEMA, extra_key_map
from badc_mpi.results.aggregate.sources import BATCH_BYTES, PARSE_BLOCK_BYTES, DetectionBatch, DoneChunk, _ahead
from badc_mpi.storage.store import line_crc32, run_segments, store_dir

log = get_logger(__name__)

TEXT = pa.string()
_LINE_SCHEMA = pa.schema(
    [
        ("store", TEXT),
        ("versions", TEXT),
        ("hawkears_version", TEXT),
        ("model_version", TEXT),
        ("recording_id", TEXT),
        ("chunk_id", TEXT),
        ("run_id", TEXT),
        ("v", TEXT),
        ("sha256", TEXT),
        ("source_path", TEXT),
        ("chunk_start_ms", pa.int64()),
        ("chunk_end_ms", pa.int64()),
        ("n", pa.int64()),
        ("label", pa.list_(TEXT)),
        ("label_code", pa.list_(TEXT)),
        ("label_name", pa.list_(TEXT)),
        ("confidence", pa.list_(pa.float64())),
        ("start_s", pa.list_(pa.float64())),
        ("end_s", pa.list_(pa.float64())),
        ("meta", pa.struct(METADATA_TEXT_FIELDS)),  #: other keys of ``meta`` are inferred
    ]
)
_LISTS = ("label", "label_code", "label_name", "confidence", "start_s", "end_s")


@dataclass
class _Block:
    """Whole lines of one segment: ``data`` starts at byte ``offset`` of ``path``."""

    path: str
    offset: int
    data: bytes
    torn_at: int | None = None  #: byte offset of a torn last line (only on a segment's last block)
    starts: np.ndarray | None = None  #: the parsed rows' line offsets in ``data`` (set by _parse_block)

    @property
    def seq(self) -> int:
        """The segment's number, from its name ``<run_id>.<seq>.jsonl``."""
        return int(os.path.basename(self.path).rsplit(".", 2)[1])

    def line_offset(self, row: int) -> int:
        """Where row ``row``'s line starts in the segment (a byte offset)."""
        if self.starts is None:
            raise RuntimeError(f"{self.path}: block at byte {self.offset} read before it was parsed (a bug)")
        return self.offset + int(self.starts[row])

    def line(self, row: int) -> bytes:
        """Row ``row``'s line (without its newline)."""
        start = self.line_offset(row) - self.offset
        return self.data[start : self.data.index(b"\n", start)]


@dataclass
class _RunState:
    wanted: dict[str, DoneChunk]
    found: set[str] = field(default_factory=set)
    versions: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


def _blocks(paths: list[str], batch_bytes: int) -> Iterator[_Block]:
    """Each segment in blocks of whole lines of about ``batch_bytes``; the torn tail reported."""
    for path in paths:
        with open(path, "rb") as fh:
            offset, carry = 0, b""
            while True:
                data = fh.read(batch_bytes)
                if not data:
                    if carry:
                        yield _Block(path, offset, b"", torn_at=offset)
                    break
                data = carry + data
                end = data.rfind(b"\n") + 1
                if end == 0:
                    carry = data
                    continue
                yield _Block(path, offset, data[:end])
                offset += end
                carry = data[end:]


def _parse(data: bytes) -> pa.Table:
    return pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(block_size=PARSE_BLOCK_BYTES),
        parse_options=pajson.ParseOptions(explicit_schema=_LINE_SCHEMA, unexpected_field_behavior="infer"),
    )


def _parse_block(block: _Block, problems: list[tuple[str, str, str]]) -> pa.Table | None:
    """The block's lines as a table; a damaged line is named (byte offset) and left out."""
    if not block.data:
        return None
    try:
        table = _parse(block.data)
        ends = np.flatnonzero(np.frombuffer(block.data, dtype=np.uint8) == 10)
        block.starts = np.concatenate(([0], ends[:-1] + 1))
        return table
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    good: list[bytes] = []
    starts: list[int] = []
    at = 0
    for raw in block.data.split(b"\n")[:-1]:
        try:
            ok = isinstance(json.loads(raw), dict)
        except ValueError:
            ok = False
        if ok:
            good.append(raw)
            starts.append(at)
        else:
            problems.append((block.path, f"damaged line at byte {block.offset + at} skipped: not a store record", "unreadable"))
        at += len(raw) + 1
    if not good:
        return None
    block.starts = np.array(starts, dtype=np.int64)
    try:
        return _parse(b"\n".join(good) + b"\n")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        problems.append(
            (block.path, f"block at byte {block.offset} unreadable ({str(exc).splitlines()[0]}); skipped", "unreadable")
        )
        return None


def _explode(rows: pa.Table, versions: dict[str, tuple[str | None, str | None]]) -> pa.Table:
    """Chunk lines -> one raw detection record per list element (chunk fields repeated)."""
    parents = pc.list_parent_indices(rows.column("label"))
    flat = {name: pc.list_flatten(rows.column(name)) for name in _LISTS}
    # chunk-level text repeats per detection: dictionary-encode once per chunk, then take indices only
    take = {
        name: pc.dictionary_encode(rows.column(name)).take(parents)
        for name in ("recording_id", "chunk_id", "run_id", "source_path", "sha256")
    }
    base_ms = pc.fill_null(rows.column("chunk_start_ms"), 0).take(parents)
    vids = rows.column("v").to_pylist()
    hv = pc.dictionary_encode(pa.array([versions.get(v, (None, None))[0] for v in vids], TEXT)).take(parents)
    mv = pc.dictionary_encode(pa.array([versions.get(v, (None, None))[1] for v in vids], TEXT)).take(parents)
    columns: dict[str, Any] = {
        "recording_id": take["recording_id"],
        "chunk_id": take["chunk_id"],
        **{name: flat[name] for name in ("label", "label_code", "label_name", "confidence", "start_s", "end_s")},
        "start_ms": pc.add(base_ms, pc.round(pc.multiply(flat["start_s"], 1000.0)).cast(pa.int64())),
        "end_ms": pc.add(base_ms, pc.round(pc.multiply(flat["end_s"], 1000.0)).cast(pa.int64())),
        "chunk_start_ms": rows.column("chunk_start_ms").take(parents),
        "chunk_end_ms": rows.column("chunk_end_ms").take(parents),
        "source_path": take["source_path"],
        "chunk_sha256": take["sha256"],
        "hawkears_version": hv,
        "model_version": mv,
        "run_id": take["run_id"],
    }
    # text columns stay dictionaries (schema.normalise_detections keeps them): no per-row strings
    fields = [
        pa.field(f.name, columns[f.name].type) if pa.types.is_dictionary(columns[f.name].type) else f
        for f in RAW_DETECTION_SCHEMA
    ]
    table = pa.Table.from_arrays(
        [_chunked(columns[f.name]) if pa.types.is_dictionary(f.type) else _chunked(columns[f.name]).cast(f.type) for f in fields],
        schema=pa.schema(fields),
    )
    if "meta" in rows.column_names and pa.types.is_struct(rows.column("meta").type):
        meta = rows.column("meta").combine_chunks()
        names = [meta.type.field(i).name for i in range(meta.type.num_fields)]
        for i, (_column, key) in enumerate(extra_key_map(names)):
            table = table.append_column(key, pc.dictionary_encode(meta.field(i).cast(TEXT)).take(parents))
    return table


def _chunked(values: Any) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


def _with_labels(rows: pa.Table) -> pa.Table:
    """``label_code``/``label_name`` written as null repeat ``label`` (storage/store.py): fill them."""
    labels = rows.column("label")
    for name in ("label_code", "label_name"):
        rows = rows.set_column(rows.schema.get_field_index(name), name, pc.coalesce(rows.column(name), labels))
    return rows


def _consistent(rows: pa.Table) -> np.ndarray:
    """Rows whose lists all have ``n`` elements."""
    n = rows.column("n").to_numpy(zero_copy_only=False)
    ok = np.ones(rows.num_rows, dtype=bool)
    for name in _LISTS:
        lengths = pc.fill_null(pc.list_value_length(rows.column(name)), -1).to_numpy(zero_copy_only=False)
        ok &= lengths == n
    return ok


def _chunk_batch(
    block: _Block, table: pa.Table, run: _RunState, everyone: set[str], problems: list[tuple[str, str, str]]
) -> DetectionBatch | None:
    """The block's done chunks (of this run, first record each) as a batch."""
    if "versions" in table.column_names:
        vmask = pc.is_valid(table.column("versions"))
        for vid, hv, mv in zip(
            *(table.filter(vmask).column(n).to_pylist() for n in ("versions", "hawkears_version", "model_version"))
        ):
            run.versions[vid] = (hv, mv)
    is_chunk = pc.fill_null(pc.is_valid(table.column("recording_id")), False)
    rows = table.filter(is_chunk)
    if not rows.num_rows:
        return None
    positions = np.flatnonzero(is_chunk.to_numpy(zero_copy_only=False))  #: each chunk row's row in the block
    keys = pc.binary_join_element_wise(rows.column("recording_id"), rows.column("chunk_id"), "/").to_pylist()
    rows = _with_labels(rows)
    good = _consistent(rows)
    keep = np.zeros(rows.num_rows, dtype=bool)
    chunks: list[DoneChunk] = []
    unknown = 0
    for i, key in enumerate(keys):
        chunk = run.wanted.get(key)
        if chunk is None:
            unknown += key not in everyone
            continue
        if key in run.found:
            problems.append((block.path, f"{key}: a second record in one run; the first counts", "note"))
            continue
        if not good[i]:
            problems.append((block.path, f"{key}: detection lists of unequal length; not counted", "unreadable"))
            continue
        if chunk.ref is not None and not _matches(block, int(positions[i]), chunk.ref):
            problems.append(
                (
                    block.path,
                    f"{key}: the record at byte {block.line_offset(int(positions[i]))} is not the one its "
                    "ledger line names (torn or written over); not counted",
                    "unreadable",
                )
            )
            continue
        run.found.add(key)
        keep[i] = True
        chunks.append(chunk)
    if unknown:
        problems.append(
            (
                block.path,
                f"{unknown} chunk record(s) from byte {block.offset} without a success in any ledger read "
                "(rank 0 stopped between the store and the ledger, or a run not aggregated): not counted",
                "orphan_output",
            )
        )
    if not chunks:
        return None
    rows = rows.filter(pa.array(keep))
    counts = rows.column("n").to_pylist()
    return DetectionBatch(chunks, counts, _explode(rows, run.versions), keyed=True)


def _matches(block: _Block, row: int, ref: tuple[int, int, int, int]) -> bool:
    """Whether the block's row is the record (segment, offset, length, CRC-32) a ledger names."""
    seq, offset, length, crc = ref
    if block.starts is None or block.seq != seq or block.line_offset(row) != offset:
        return False
    data = block.line(row)
    return len(data) == length and line_crc32(data) == crc


def read_store_detections(chunks: Iterable[DoneChunk], *, batch_bytes: int = BATCH_BYTES) -> Iterator[DetectionBatch]:
    """The detection store's records of ``chunks`` (grouped by run; batches in store order)."""
    runs: dict[tuple[str, str], _RunState] = {}
    for chunk in chunks:
        runs.setdefault((chunk.output_dir, chunk.run_id), _RunState({})).wanted[chunk.key] = chunk
    everyone = {key for run in runs.values() for key in run.wanted}
    for (output_dir, run_id), run in runs.items():
        problems: list[tuple[str, str, str]] = []
        for block in _ahead(_blocks(run_segments(output_dir, run_id), batch_bytes), depth=2):
            if block.torn_at is not None:
                reason = f"torn last line at byte {block.torn_at} skipped (rank 0 stopped mid-write; that chunk was never done)"
                log.warning("%s: %s", block.path, reason)
                problems.append((block.path, reason, "torn"))
                continue
            table = _parse_block(block, problems)
            batch = _chunk_batch(block, table, run, everyone, problems) if table is not None else None
            if batch is not None:
                batch.problems, problems = problems, []
                yield batch
        where = os.path.join(store_dir(output_dir), f"{run_id}.*.jsonl")
        missing = [
            (c, where, "no record in the detection store although the ledger records a success")
            for key, c in run.wanted.items()
            if key not in run.found
        ]
        if missing or problems:
            yield DetectionBatch([], [], RAW_DETECTION_SCHEMA.empty_table(), missing, problems)
