"""Where outputs go: DataLad dataset root detection and the default directories.

One rule, decided here only: inside a DataLad dataset (the nearest folder above the manifest that
holds ``.datalad/``) everything goes under ``<dataset>/artifacts/``, so that ``datalad run`` and
``datalad save`` can record it; outside a dataset, under the current directory. Flags override.
Paths are made absolute but symlinks are never resolved (git-annex content lives behind them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from badc_mpi.errors import UsageError
from badc_mpi.records import Chunk

if TYPE_CHECKING:  # not at run time: the CLI's start-up reads this module without pyarrow
    from badc_mpi.inputs.chunk_table import ChunkTable

# relative to the dataset root, or to the current directory outside a dataset
DATASET_OUTPUT = os.path.join("artifacts", "infer")
DATASET_TELEMETRY = os.path.join("artifacts", "telemetry", "infer")
DATASET_CHUNKS = os.path.join("artifacts", "chunks")
PLAIN_OUTPUT = os.path.join("artifacts", "infer")
PLAIN_TELEMETRY = os.path.join("data", "telemetry", "infer")
PLAIN_CHUNKS = os.path.join("artifacts", "chunks")

LOCATIONS_HELP = (
    "Where files go: if the (first) manifest lies inside a DataLad dataset (the nearest folder "
    "above it holding .datalad/), outputs go to <dataset>/artifacts/infer/, telemetry to "
    "<dataset>/artifacts/telemetry/infer/ and the chunk-status guard reads "
    "<dataset>/artifacts/chunks/<recording>/.chunk_status.json. Outside a dataset they are "
    "./artifacts/infer, ./data/telemetry/infer and ./artifacts/chunks under the current "
    "directory. --output-dir, --telemetry-dir and --chunks-dir override each one (relative "
    "values are taken from the current directory). Relative source_path values in a manifest "
    "always resolve against the manifest's own folder, and symlinks (git-annex) are never "
    "resolved."
)


@dataclass(frozen=True)
class Locations:
    """Absolute folders for one run; ``dataset_root`` is None outside a DataLad dataset."""

    dataset_root: str | None
    output_dir: str
    telemetry_dir: str
    chunks_dir: str


def _absolute(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None) -> str:
    """Absolute, normalised, symlinks kept (never ``Path.resolve()``)."""
    path = os.fspath(path)
    base = os.fspath(cwd) if cwd is not None else os.getcwd()
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def find_dataset_root(path: str | os.PathLike[str]) -> str | None:
    """The nearest folder at or above ``path``'s folder that holds ``.datalad/``, or None.

    ``path`` is a manifest file (its folder is the start) or a folder. Symlinks are not resolved,
    so a manifest reached through a link belongs to the dataset the link lies in.
    """
    current = _absolute(path, None)
    if not os.path.isdir(current):
        current = os.path.dirname(current)
    while True:
        if os.path.isdir(os.path.join(current, ".datalad")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def default_locations(
    manifest_path: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    telemetry_dir: str | os.PathLike[str] | None = None,
    chunks_dir: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Locations:
    """Where a run over ``manifest_path`` writes (see :data:`LOCATIONS_HELP`).

    ``cwd`` (default: the current directory) anchors relative flags, a relative manifest path
    and the defaults outside a dataset. With several manifests, pass the first.
    """
    here = _absolute(cwd, None) if cwd is not None else os.getcwd()
    root = find_dataset_root(_absolute(manifest_path, here))
    if root is not None:
        base, defaults = root, (DATASET_OUTPUT, DATASET_TELEMETRY, DATASET_CHUNKS)
    else:
        base, defaults = here, (PLAIN_OUTPUT, PLAIN_TELEMETRY, PLAIN_CHUNKS)

    def pick(flag: str | os.PathLike[str] | None, default: str) -> str:
        return _absolute(flag, here) if flag is not None else os.path.join(base, default)

    return Locations(
        dataset_root=root,
        output_dir=pick(output_dir, defaults[0]),
        telemetry_dir=pick(telemetry_dir, defaults[1]),
        chunks_dir=pick(chunks_dir, defaults[2]),
    )


#: node-local scratch, in this order of preference (SLURM's per-job folder first)
SCRATCH_VARS = ("SLURM_TMPDIR", "TMPDIR")


def default_scratch_root(env: dict[str, str] | None = None) -> str:
    """Node-local scratch: ``$SLURM_TMPDIR``, then ``$TMPDIR``, then the system temporary folder.

    Evaluated on each rank (each node has its own). A run never removes this folder itself, only
    the ``badc-mpi-<run_id>`` folder it creates inside it.
    """
    import tempfile

    env = dict(os.environ) if env is None else env
    for name in SCRATCH_VARS:
        value = env.get(name, "").strip()
        if value and os.path.isdir(value):
            return os.path.abspath(value)
    return tempfile.gettempdir()


def run_scratch_dir(root: str, run_id: str) -> str:
    """The folder a run creates inside a scratch root (and removes when its ranks are done)."""
    return os.path.join(root, f"badc-mpi-{run_id}")


#: what badc-mpi adds to a chunk id in the longest name it writes: ``.<chunk_id>.detections.jsonl``
#: plus an atomic write's ``.tmp-<pid>-<8 hex>`` (pid up to 7 digits)
CHUNK_NAME_EXTRA_BYTES = len(".") + len(".detections.jsonl") + len(".tmp-") + 7 + len("-") + 8
#: the same for the run's files beside the telemetry: ``.<stem>_<run id>.summary.json.tmp-...``
RUN_NAME_EXTRA_BYTES = len(".") + len("_20261201T000000Z-0123abcd") + len(".summary.json") + len(".tmp-") + 7 + 1 + 8


def name_max(folder: str) -> int:
    """The longest file name the file system holding ``folder`` (or its nearest existing parent) takes."""
    probe = os.path.abspath(folder)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_name_lengths(chunks: Iterable[Chunk | ChunkTable], output_dir: str, telemetry_dir: str, stem: str) -> None:
    """UsageError (before anything is written) when a chunk id or the manifest's name would make a
    file name longer than its file system takes: ENAMETOOLONG mid-run instead would fail chunks.
    ``chunks``: records, or the manifests' chunk tables (one longest id each, vectorised)."""
    limit = name_max(output_dir)
    longest = max(_longest_ids(chunks), key=lambda c: len(c.chunk_id.encode()), default=None)
    if longest is not None:
        size = len(longest.chunk_id.encode()) + CHUNK_NAME_EXTRA_BYTES
        if size > limit:
            raise UsageError(
                f"{longest.manifest}, line {longest.line}: chunk_id {longest.chunk_id[:40]!r}... makes file names of "
                f"{size} bytes in {output_dir}, over that file system's limit of {limit}",
                fix=f"shorten chunk ids to at most {limit - CHUNK_NAME_EXTRA_BYTES} UTF-8 bytes",
            )
    limit = name_max(telemetry_dir)
    size = len(stem.encode()) + RUN_NAME_EXTRA_BYTES
    if size > limit:
        raise UsageError(
            f"the manifest name {stem[:40]!r}... makes telemetry file names of {size} bytes in {telemetry_dir}, "
            f"over that file system's limit of {limit}",
            fix=f"rename the manifest to at most {limit - RUN_NAME_EXTRA_BYTES} bytes before '.csv'",
        )


def _longest_ids(chunks: Iterable[Chunk | ChunkTable]) -> Iterable[Chunk]:
    for item in chunks:
        if isinstance(item, Chunk):
            yield item
        else:  # a manifest's table: its longest id, found vectorised
            row = item.longest_chunk_id()
            if row is not None:
                yield item[row]


def check_writable(folder: str, what: str, flag: str) -> None:
    """Create ``folder`` if needed and prove a file can be written in it (a probe file, removed at
    once): a read-only or uncreatable output or telemetry folder is a one-line error before the run."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".badc-mpi-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"the {what} {folder} cannot be written ({exc.strerror or exc})",
            fix=f"give a writable folder with {flag}, or fix its permissions, quota or mount",
        ) from None
