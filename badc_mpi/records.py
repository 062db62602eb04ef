"""Shared records: the vocabulary every layer uses (chunks, bindings, failure classes, chunk states, ids).

Kept apart from :mod:`badc_mpi.inputs.manifest` (which needs pyarrow to read manifests) so that worker
ranks, which only receive chunks, import nothing heavy. ``badc_mpi.inputs.manifest.Chunk`` is the same
class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STANDARD_COLUMNS = (
    "recording_id",
    "chunk_id",
    "source_path",
    "start_ms",
    "end_ms",
    "overlap_ms",
    "sha256",
    "notes",
)
#: annotation columns badc-mpi writes into failed-chunks CSVs: never chunk metadata when read back
ANNOTATION_PREFIX = "badc_"
FAILED_CSV_COLUMNS = ("badc_failure_class", "badc_failure_reason")
_LEGACY_ANNOTATIONS = ("failure_class", "reason")  #: what failed CSVs of badc-mpi 0.1 wrote


def metadata_columns(header: list[str] | tuple[str, ...]) -> list[str]:
    """The header's per-chunk metadata columns: not standard, not badc-mpi's own annotations
    (``badc_*``; and the ``failure_class, reason`` pair older failed CSVs wrote)."""
    legacy = set(_LEGACY_ANNOTATIONS) if all(c in header for c in _LEGACY_ANNOTATIONS) else set()
    return [c for c in header if c not in STANDARD_COLUMNS and not c.startswith(ANNOTATION_PREFIX) and c not in legacy]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One row of a manifest: one audio chunk to classify."""

    recording_id: str
    chunk_id: str
    source_path: str  #: exactly as written in the manifest
    input_path: str  #: absolute; relative paths joined to the manifest's folder; symlinks kept
    start_ms: int | None
    end_ms: int | None
    overlap_ms: int | None
    sha256: str | None  #: lower-case hex, or None for empty / TODO_HASH / DRY_RUN
    notes: str
    extra: tuple[tuple[str, str], ...]  #: non-standard columns, in header order
    manifest: str  #: absolute path of the manifest file
    line: int  #: 1-based physical line in the manifest (header = line 1)

    @property
    def key(self) -> str:
        return f"{self.recording_id}/{self.chunk_id}"

    @property
    def duration_s(self) -> float | None:
        if self.start_ms is None or self.end_ms is None:
            return None
        return (self.end_ms - self.start_ms) / 1000

    def metadata(self) -> dict[str, str]:
        return dict(self.extra)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # chunks travel to worker ranks with every task: pickle as a plain tuple of fields
        # (the dataclass default for frozen slots classes calls fields() each time: ~3x slower)
        return (
            Chunk,
            (
                self.recording_id,
                self.chunk_id,
                self.source_path,
                self.input_path,
                self.start_ms,
                self.end_ms,
                self.overlap_ms,
                self.sha256,
                self.notes,
                self.extra,
                self.manifest,
                self.line,
            ),
        )

    def to_row(self) -> dict[str, str]:
        """The manifest columns (standard, then extra) as strings, e.g. for a failed-chunks CSV."""
        values = ((name, getattr(self, name)) for name in STANDARD_COLUMNS)
        return {**{name: "" if v is None else str(v) for name, v in values}, **dict(self.extra)}


# -- ids -------------------------------------------------------------------------------------
MAX_ID_BYTES = 200  #: recording and chunk ids become file and folder names
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate_id(value: str, column: str) -> str | None:
    """Why ``value`` cannot be a ``column`` (it becomes a path component), or None when it can."""
    shown = repr(value if len(value) <= 60 else value[:57] + "...")
    if value == "":
        return f"{column} is empty"
    if value in (".", ".."):
        return f"{column} {shown} is not a usable file or folder name"
    if "/" in value or "\\" in value:
        return f"{column} {shown} contains a path separator ('/' or '\\')"
    if _CONTROL.search(value):
        return f"{column} {shown} contains a NUL or control character"
    if value.startswith("-"):
        return f"{column} {shown} starts with '-' (it would read as a command-line option)"
    if value.startswith(" ") or value.endswith(" "):
        return f"{column} {shown} has a leading or trailing space"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{column} {shown} is not valid Unicode text"
    if size > MAX_ID_BYTES:
        return f"{column} is {size} bytes long in UTF-8; the limit is {MAX_ID_BYTES}"
    return None


def check_id(value: str, column: str) -> str:
    """``value`` when it is a valid ``column`` id, else ValueError naming why (ids become paths)."""
    problem = validate_id(value, column)
    if problem is not None:
        raise ValueError(problem)
    return value


# -- failure classes -------------------------------------------------------------------------
#: ``AttemptResult.failure_class``; ``input`` is never retried
TIMEOUT = "timeout"  #: ran past its timeout; process group killed
CRASH = "crash"  #: killed by a signal (segfault, OOM killer, kill -9)
EXIT = "exit"  #: non-zero exit status
NO_OUTPUT = "no_output"  #: exit 0 but outputs missing or invalid
INPUT = "input"  #: missing, unreadable, corrupt or non-audio input: retrying cannot help
OOM = "oom"  #: out of GPU memory; the runner restarts its process before the retry
OUTPUT = "output"  #: a file-system error on this rank (full disk, quota, read-only, name too long)
LOST = "lost"  #: the rank holding the attempt went silent or missed its deadline
FAILURE_CLASSES = (TIMEOUT, CRASH, EXIT, NO_OUTPUT, INPUT, OOM, OUTPUT, LOST)
NOT_RETRIED = frozenset({INPUT})


# -- bindings --------------------------------------------------------------------------------
#: launcher variables: (node-local index, node-local count), in the order they are trusted
LAUNCHER_LOCAL_VARS = (
    ("MPI_LOCALRANKID", "MPI_LOCALNRANKS"),  # MPICH's hydra mpiexec
    ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),  # Open MPI
    ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),  # srun (the count only when the job fixed it)
)


@dataclass(frozen=True)
class Binding:
    """What a worker rank runs on. Built by :mod:`badc_mpi.gpu.binding`."""

    host: str
    rank: int
    local_rank: int
    worker: str  #: ``gpu<idx>@host`` or ``cpu<n>@host``
    cuda_visible_devices: str  #: value for the runner's ``CUDA_VISIBLE_DEVICES`` ("" = CPU only)
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    gpu_memory_total_mib: int | None = None
    problem: str | None = None  #: why this rank must not work (it was given GPUs but cannot use them)

    @property
    def uses_gpu(self) -> bool:
        return self.gpu_uuid is not None

    @property
    def device_kind(self) -> str:
        """``cuda`` or ``cpu``: what HawkEars runs on for this binding (part of a run's fingerprint)."""
        return "cuda" if self.uses_gpu else "cpu"

    def runner_env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this binding's GPU mask applied (a CPU rank sees no GPU at all)."""
        env = dict(base)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        return env


# -- chunk states (rank 0) --------------------------------------------------------------------
PENDING = "pending"
IN_FLIGHT = "in_flight"
BACKOFF = "backoff"
SUCCESS = "success"
FAILED = "failed"
FINAL_STATES = frozenset({SUCCESS, FAILED})


@dataclass
class ChunkState:
    """Everything rank 0 knows about one chunk."""

    chunk: Chunk
    status: str = PENDING
    attempts: int = 0
    retries: int = 0
    worker: str | None = None
    runtime_s: float = 0.0  #: of the last attempt
    last_backoff_s: float = 0.0
    failure_class: str | None = None
    last_error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    detections: int | None = None
