"""GPU discovery and the per-rank binding plan.

NVML is reached only through :mod:`badc_mpi.gpu.nvml` (``BADC_MPI_NVML_BACKEND``, an operator option, swaps it there).
Planning (:func:`parse_visible_devices`, :func:`select_visible`, :func:`plan_binding`,
:func:`plan_node`, :func:`sharing_warnings`) is pure; :func:`detect` and :func:`bind_rank` do the
I/O. Per-attempt sampling lives in :mod:`badc_mpi.gpu.sampler`, the ``badc-mpi gpus`` report in
:mod:`badc_mpi.gpu.report`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.gpu.nvml import BACKEND_ENV, NvmlBackend, NvmlUnavailable, backend_name, open_backend
from badc_mpi.logs import get_logger
from badc_mpi.options import BindingOptions
from badc_mpi.records import LAUNCHER_LOCAL_VARS, Binding

log = get_logger(__name__)

BINDING_HELP = """\
How ranks get GPUs (per node; "local rank" = the rank's index among the ranks on its node):
  - If the launcher already narrowed CUDA_VISIBLE_DEVICES to exactly one device (e.g. srun
    --gpus-per-task=1), every rank on that node uses it as is.
  - Otherwise the usable GPUs are those in CUDA_VISIBLE_DEVICES (indices, GPU-/MIG- UUIDs; all
    GPUs when unset), in that order, capped by --max-gpus. With n usable GPUs there are
    n x --workers-per-gpu GPU slots: local rank r < slots gets GPU r mod n, passed to the runner
    as CUDA_VISIBLE_DEVICES=<its UUID> (with CUDA_DEVICE_ORDER=PCI_BUS_ID); worker gpu<idx>@host
    (gpu<idx>.<k>@host for the k-th further rank on the same GPU).
  - Local ranks beyond the slots: the first --cpu-workers of them are CPU workers (cpu<k>@host,
    CUDA_VISIBLE_DEVICES=""); any others share GPUs round-robin, with a warning (use fewer ranks
    per node, or raise --workers-per-gpu).
  - No GPU (none found, NVML unavailable, --max-gpus 0 or CUDA_VISIBLE_DEVICES=""): every rank
    is a CPU worker cpu<local rank>@host.
`badc-mpi gpus` shows what this node sees and the binding each local rank would get."""

#: launcher variables giving a rank's node-local index / node-local count / world rank
LOCAL_RANK_VARS = tuple(rank_var for rank_var, _ in LAUNCHER_LOCAL_VARS)
LOCAL_SIZE_VARS = tuple(size_var for _, size_var in LAUNCHER_LOCAL_VARS)
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")

_NO_DEVICE_WORDS = {"nodevfiles", "none", "void", "no"}

#: SLURM's variables that say the job (step) was given GPUs: lists of GPU indices, then counts
SLURM_GPU_LISTS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
SLURM_GPU_COUNTS = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_TASK", "SLURM_GPUS")


@dataclass(frozen=True)
class GpuInfo:
    """A GPU (or MIG instance: ``uuid`` = the MIG id, ``index`` = its parent's NVML index)."""

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    pci_bus_id: str = ""
    mig: bool = False  #: MIG-enabled parent, or a MIG instance
    mig_uuids: tuple[str, ...] = ()  #: a MIG-enabled parent's instances


# ---------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Parse ``CUDA_VISIBLE_DEVICES``: ``None`` when unset, ``[]`` when it hides every GPU.

    Entries are indices (``"0"``), UUIDs or prefixes (``"GPU-8f3a"``) or MIG ids
    (``"MIG-GPU-<uuid>/1/0"``, ``"MIG-<uuid>"``); spaces and duplicates are dropped. As in CUDA,
    a negative index or ``NoDevFiles`` ends the list (``"-1"`` and ``"NoDevFiles"`` give ``[]``).
    """
    if value is None:
        return None
    out: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.lower() in _NO_DEVICE_WORDS:
            break
        if entry.lstrip("+-").isdigit():
            if int(entry) < 0:
                break
            entry = str(int(entry))
        if entry not in out:
            out.append(entry)
    return out


def _describe(gpus: list[GpuInfo]) -> str:
    return ", ".join(f"{g.index}={g.uuid}" for g in gpus) or "none"


def _unknown(entry: str, gpus: list[GpuInfo], why: str = "matches no GPU") -> UsageError:
    return UsageError(
        f"CUDA_VISIBLE_DEVICES entry {entry!r} {why} (NVML sees {_describe(gpus)})",
        fix="unset CUDA_VISIBLE_DEVICES or list indices/UUIDs shown by `badc-mpi gpus`",
    )


def _by_uuid(entry: str, gpus: list[GpuInfo]) -> GpuInfo:
    key = entry.lower()
    exact = [g for g in gpus if g.uuid.lower() == key]
    hits = exact or [g for g in gpus if g.uuid.lower().startswith(key)]
    if len(hits) > 1:
        raise _unknown(entry, gpus, "is a prefix of several GPU UUIDs")
    if not hits:
        raise _unknown(entry, gpus)
    return hits[0]


def _mig_instance(mig_id: str, parent: GpuInfo) -> GpuInfo:
    return GpuInfo(parent.index, mig_id, f"{parent.name} MIG", parent.memory_total_mib, parent.pci_bus_id, mig=True)


def _mig_parent(entry: str, gpus: list[GpuInfo]) -> GpuInfo:
    if entry.upper().startswith("MIG-GPU-"):  # MIG-GPU-<parent uuid>/<gi>/<ci>
        return _by_uuid(entry[4:].split("/")[0], gpus)
    owners = [g for g in gpus if entry in g.mig_uuids]
    if not owners:
        owners = [g for g in gpus if g.mig] or gpus
    if len(owners) != 1:
        raise _unknown(entry, gpus, "belongs to no GPU NVML can tell")
    return owners[0]


def _resolve(entry: str, gpus: list[GpuInfo]) -> GpuInfo:
    if entry.isdigit():
        for g in gpus:
            if g.index == int(entry):
                return g
        raise _unknown(entry, gpus)
    if entry.upper().startswith("MIG-"):
        return _mig_instance(entry, _mig_parent(entry, gpus))
    if entry.upper().startswith("GPU-"):
        return _by_uuid(entry, gpus)
    raise _unknown(entry, gpus, "is neither an index nor a GPU-/MIG- UUID")


def select_visible(gpus: list[GpuInfo], visible: list[str] | None) -> list[GpuInfo]:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` lets us use, in its order (all of ``gpus`` when unset).

    Indices map to NVML indices, ``GPU-`` UUIDs (or unique prefixes) to UUIDs; MIG ids become
    their own entries (``uuid`` = the MIG id, ``name`` = parent name + " MIG"). When unset, a
    MIG-enabled GPU stands for its MIG instances. Returns ``[]`` when NVML saw no GPU.
    Raises :class:`UsageError` for an entry that names no GPU here.
    """
    if not gpus:
        return []
    if visible is None:
        out: list[GpuInfo] = []
        for g in gpus:
            if g.mig and g.mig_uuids:
                out.extend(_mig_instance(m, g) for m in g.mig_uuids)
            else:
                out.append(g)
        return out
    chosen: list[GpuInfo] = []
    for entry in visible:
        g = _resolve(entry, gpus)
        if g not in chosen:
            chosen.append(g)
    return chosen


# ---------------------------------------------------------------------------- binding plan


def _gpu_binding(host: str, rank: int, local_rank: int, g: GpuInfo, mask: str, share: int = 0) -> Binding:
    """``share`` k > 0 marks the k-th extra rank on one GPU: worker ``gpu<idx>.<k>@host``."""
    label = f"gpu{g.index}@{host}" if share == 0 else f"gpu{g.index}.{share}@{host}"
    return Binding(
        host=host,
        rank=rank,
        local_rank=local_rank,
        worker=label,
        cuda_visible_devices=mask,
        gpu_index=g.index,
        gpu_uuid=g.uuid,
        gpu_name=g.name,
        gpu_memory_total_mib=g.memory_total_mib,
    )


def _cpu_binding(host: str, rank: int, local_rank: int, k: int) -> Binding:
    return Binding(host=host, rank=rank, local_rank=local_rank, worker=f"cpu{k}@{host}", cuda_visible_devices="")


def plan_binding(
    *,
    host: str,
    rank: int,
    local_rank: int,
    local_size: int,
    visible: list[GpuInfo],
    visible_env: list[str] | None,
    options: BindingOptions,
) -> tuple[Binding, list[str]]:
    """The binding of one rank, and warnings. Pure.

    ``visible`` is :func:`select_visible`'s result; ``visible_env`` the parsed
    ``CUDA_VISIBLE_DEVICES`` (``None`` = unset). Rules:

    1. The launcher narrowed ``CUDA_VISIBLE_DEVICES`` to exactly one device: every rank on the
       node uses it, ``cuda_visible_devices`` = that entry unchanged (``--workers-per-gpu`` and
       ``--cpu-workers`` do not apply; cross-rank sharing is caught by :func:`sharing_warnings`).
    2. Otherwise ``usable = visible[:max_gpus]``, ``n = len(usable)``, ``slots = n *
       workers_per_gpu``. ``local_rank < slots``: GPU ``usable[local_rank % n]``,
       ``cuda_visible_devices`` = its UUID (or MIG id), worker ``gpu<NVML index>@host`` (a MIG
       instance uses its parent's index).
    3. Local ranks beyond the slots: the first ``cpu_workers`` are CPU workers ``cpu<k>@host``
       (``k`` counts CPU workers on the node from 0, ``cuda_visible_devices=""``); the rest share
       ``usable[local_rank % n]`` and get a warning.
    4. No GPU (``n == 0``: none found, NVML unavailable, ``max_gpus == 0`` or
       ``CUDA_VISIBLE_DEVICES=""``): CPU worker ``cpu<local_rank>@host``.

    :meth:`Binding.runner_env` adds ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
    """
    if not 0 <= local_rank < max(local_size, 1):
        raise ValueError(f"local_rank {local_rank} outside 0..{local_size - 1}")
    warnings: list[str] = []
    if options.max_gpus == 0:
        visible = []
    if visible_env is not None and len(visible_env) == 1 and len(visible) == 1:
        if options.cpu_workers:
            warnings.append(
                f"{host}: --cpu-workers {options.cpu_workers} ignored: the launcher "
                f"narrowed CUDA_VISIBLE_DEVICES to {visible_env[0]}"
            )
        return _gpu_binding(host, rank, local_rank, visible[0], visible_env[0]), warnings
    usable = visible if options.max_gpus is None else visible[: options.max_gpus]
    n = len(usable)
    if n == 0:
        return _cpu_binding(host, rank, local_rank, local_rank), warnings
    wpg, cpus = options.workers_per_gpu, options.cpu_workers
    slots = n * wpg
    if local_rank < slots:
        g = usable[local_rank % n]
        return _gpu_binding(host, rank, local_rank, g, g.uuid, local_rank // n), warnings
    if local_rank - slots < cpus:
        return _cpu_binding(host, rank, local_rank, local_rank - slots), warnings
    g = usable[local_rank % n]
    on_gpu = [r for r in range(local_size) if (r < slots or r >= slots + cpus) and r % n == local_rank % n]
    need = math.ceil((local_size - cpus) / n)
    warnings.append(
        f"{host}: local rank {local_rank} shares GPU {g.index} ({g.uuid}) with "
        f"{len(on_gpu) - 1} other rank(s) beyond --workers-per-gpu {wpg}: {local_size} ranks on "
        f"this node for {n} GPU(s); use NP={slots + cpus} per node, --workers-per-gpu {need} "
        f"or --cpu-workers {local_size - slots}"
    )
    return _gpu_binding(host, rank, local_rank, g, g.uuid, len([r for r in on_gpu if r < local_rank])), warnings


def plan_node(
    host: str,
    local_size: int,
    visible: list[GpuInfo],
    visible_env: list[str] | None,
    options: BindingOptions,
    first_rank: int = 0,
) -> list[Binding]:
    """Bindings of all ``local_size`` ranks of one node (ranks ``first_rank``...)."""
    return [
        plan_binding(
            host=host,
            rank=first_rank + i,
            local_rank=i,
            local_size=local_size,
            visible=visible,
            visible_env=visible_env,
            options=options,
        )[0]
        for i in range(local_size)
    ]


def sharing_warnings(bindings: list[Binding], options: BindingOptions) -> list[str]:
    """One warning per GPU used by more ranks than ``--workers-per-gpu`` (e.g. 2 with the default 1)."""
    users: dict[tuple[str, str], list[Binding]] = {}
    for b in bindings:
        if b.uses_gpu:
            users.setdefault((b.host, str(b.gpu_uuid)), []).append(b)
    out = []
    for (host, uuid), group in users.items():
        if len(group) > options.workers_per_gpu:
            ranks = ", ".join(str(b.rank) for b in group)
            out.append(
                f"{host}: ranks {ranks} share GPU {group[0].gpu_index} ({uuid}) but "
                f"--workers-per-gpu is {options.workers_per_gpu}; start fewer ranks per node "
                f"or pass --workers-per-gpu {len(group)} if this is deliberate"
            )
    return out


# ---------------------------------------------------------------------------- detection (I/O)


def _gpu_from_device(d: Any) -> GpuInfo:
    return GpuInfo(d.index, d.uuid, d.name, d.memory_total_mib, d.pci_bus_id, d.mig, tuple(d.mig_uuids))


def detect(
    env: Mapping[str, str] = os.environ, backend: NvmlBackend | None = None, *, quiet: bool = False
) -> tuple[list[GpuInfo], list[str] | None, str | None]:
    """NVML's GPUs sorted by PCI bus id, parsed ``CUDA_VISIBLE_DEVICES``, and why NVML is
    unavailable (``None`` when it works). Without NVML: one log line, no GPUs (CPU mode).
    A given ``backend`` is used and left open; otherwise one is opened and shut down."""
    visible_env = parse_visible_devices(env.get("CUDA_VISIBLE_DEVICES"))
    try:
        nv = open_backend(env) if backend is None else backend
        try:
            devices = nv.devices()
        finally:
            if backend is None:
                nv.shutdown()
    except NvmlUnavailable as exc:
        level = 30 if visible_env else 20  # WARNING when GPUs were expected, else INFO
        if not quiet:  # under MPI only rank 0 says it: one line per job, not one per rank
            log.log(level, "no GPU: NVML unavailable (%s); ranks run on CPU", exc.reason)
        return [], visible_env, exc.reason
    if backend is None and not quiet and backend_name(env) != "pynvml":  # the operator's choice, said once
        log.info("GPU inventory from %s=%s, not the driver's NVML (docs/gpu.md)", BACKEND_ENV, backend_name(env))
    gpus = sorted((_gpu_from_device(d) for d in devices), key=lambda g: (g.pci_bus_id.lower(), g.index))
    return gpus, visible_env, None


def gpus_expected(env: Mapping[str, str], options: BindingOptions) -> str | None:
    """Why this rank should have a GPU (the job was given some), or None. Pure.

    ``--max-gpus N`` (N > 0), a non-empty ``CUDA_VISIBLE_DEVICES``, or SLURM's GPU variables
    (other than 0 / empty). ``CUDA_VISIBLE_DEVICES=""`` and ``--max-gpus 0`` mean CPU on purpose.
    """
    if options.max_gpus == 0:
        return None
    if options.max_gpus:
        return f"--max-gpus {options.max_gpus}"
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return f"CUDA_VISIBLE_DEVICES={cvd}" if parse_visible_devices(cvd) else None
    for name in SLURM_GPU_LISTS + SLURM_GPU_COUNTS:
        value = env.get(name, "").strip()
        if value and value not in ("(null)", "N/A") and (name in SLURM_GPU_LISTS or value != "0"):
            return f"{name}={value}"
    return None


def gpu_problem(binding: Binding, env: Mapping[str, str], options: BindingOptions, nvml_reason: str | None) -> str | None:
    """Why a CPU binding must not work: the job was given GPUs and this rank cannot use any. Pure."""
    if binding.uses_gpu or options.allow_cpu or binding.worker.startswith("cpu") and options.cpu_workers:
        return None
    why = gpus_expected(env, options)
    if why is None:
        return None
    cause = f"NVML is unavailable ({nvml_reason})" if nvml_reason else "NVML sees no usable GPU"
    return f"this job was given GPUs ({why}) but {cause}, so {binding.worker} would run HawkEars on the CPU"


def bind_rank(
    *,
    host: str,
    rank: int,
    local_rank: int,
    local_size: int,
    options: BindingOptions,
    env: Mapping[str, str] = os.environ,
    backend: NvmlBackend | None = None,
    quiet: bool = False,
) -> tuple[Binding, list[str], str | None]:
    """:func:`detect` + :func:`select_visible` + :func:`plan_binding`: (binding, warnings, NVML
    reason or ``None``). Raises :class:`UsageError` for a bad ``CUDA_VISIBLE_DEVICES``."""
    gpus, visible_env, reason = detect(env, backend, quiet=quiet)
    visible = select_visible(gpus, visible_env)
    binding, warnings = plan_binding(
        host=host,
        rank=rank,
        local_rank=local_rank,
        local_size=local_size,
        visible=visible,
        visible_env=visible_env,
        options=options,
    )
    problem = gpu_problem(binding, env, options, reason)
    if problem:
        binding = dataclasses.replace(binding, problem=problem)
    return binding, warnings, reason


def default_np(env: Mapping[str, str] = os.environ, backend: NvmlBackend | None = None) -> int:
    """``make infer``'s default rank count: the usable local GPUs, or 2 when there is none."""
    try:
        gpus, visible_env, _ = detect(env, backend, quiet=True)
        usable = select_visible(gpus, visible_env) if gpus else []
    except UsageError:
        usable = []
    return len(usable) or 2
