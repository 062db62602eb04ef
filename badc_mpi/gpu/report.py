"""``badc-mpi gpus``: what this node sees and the binding each local rank would get.

Built on :mod:`badc_mpi.gpu.binding` (detection and the pure binding plan); :func:`gpus_report` does the
I/O, :func:`format_gpus_report` and :func:`format_binding_table` are pure. :mod:`badc_mpi.gpu.binding`
re-exports all three.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.gpu.binding import (
    LOCAL_RANK_VARS,
    LOCAL_SIZE_VARS,
    RANK_VARS,
    BindingOptions,
    detect,
    plan_binding,
    plan_node,
    select_visible,
    sharing_warnings,
)
from badc_mpi.gpu.nvml import backend_name
from badc_mpi.records import Binding


def _env_int(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[int | None, str | None]:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value), name
    return None, None


def _binding_dict(b: Binding) -> dict[str, Any]:
    return {**asdict(b), "uses_gpu": b.uses_gpu}


def gpus_report(
    env: Mapping[str, str] = os.environ,
    options: BindingOptions = BindingOptions(),  # noqa: B008 - frozen, so a safe default
    local_rank: int | None = None,
    local_size: int | None = None,
) -> dict[str, Any]:
    """What ``badc-mpi gpus [--json]`` shows: GPUs, ``CUDA_VISIBLE_DEVICES``, NVML status, the
    binding a rank here would get and the whole node's plan. ``error`` holds a bad-mask message
    (then ``binding`` is ``None``); the caller decides the exit code."""
    host = socket.gethostname()
    source = "argument"
    if local_rank is None:
        found, name = _env_int(env, LOCAL_RANK_VARS)
        local_rank, source = (0, "default") if found is None or name is None else (found, name)
    if local_size is None:
        local_size = _env_int(env, LOCAL_SIZE_VARS)[0] or 1
    local_size = max(local_size, local_rank + 1)
    rank = _env_int(env, RANK_VARS)[0]
    rank = local_rank if rank is None else rank
    gpus, visible_env, reason = detect(env, quiet=True)  # the report states the NVML status itself
    report: dict[str, Any] = {
        "host": host,
        "nvml": {"available": reason is None, "reason": reason, "backend": backend_name(env)},
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "cuda_visible_devices_parsed": visible_env,
        "gpus": [asdict(g) for g in gpus],
        "visible": [],
        "options": asdict(options),
        "rank": rank,
        "local_rank": local_rank,
        "local_rank_source": source,
        "local_size": local_size,
        "binding": None,
        "node_bindings": [],
        "warnings": [],
        "error": None,
    }
    try:
        visible = select_visible(gpus, visible_env)
    except UsageError as exc:
        report["error"] = str(exc)
        return report
    binding, warnings = plan_binding(
        host=host,
        rank=rank,
        local_rank=local_rank,
        local_size=local_size,
        visible=visible,
        visible_env=visible_env,
        options=options,
    )
    node = plan_node(host, local_size, visible, visible_env, options, first_rank=rank - local_rank)
    extra = [w for w in sharing_warnings(node, options) if w not in warnings]
    report.update(
        visible=[asdict(g) for g in visible],
        binding=_binding_dict(binding),
        node_bindings=[_binding_dict(b) for b in node],
        warnings=warnings + extra,
    )
    return report


def format_binding_table(bindings: list[Binding]) -> str:
    """Aligned table: host, rank, local index, worker, GPU index, UUID, name."""
    rows = [("host", "rank", "local", "worker", "gpu", "uuid", "name")]
    for b in bindings:
        rows.append(
            (
                b.host,
                str(b.rank),
                str(b.local_rank),
                b.worker,
                "-" if b.gpu_index is None else str(b.gpu_index),
                b.gpu_uuid or "-",
                b.gpu_name or "CPU",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_gpus_report(report: dict[str, Any]) -> str:
    """Human-readable form of :func:`gpus_report`."""
    nv = report["nvml"]
    lines = [f"host: {report['host']}"]
    if nv["available"]:
        lines.append(f"NVML: available ({nv['backend']}), {len(report['gpus'])} GPU(s)")
    else:
        lines.append(f"NVML: unavailable ({nv['reason']}); ranks here run on CPU")
    cvd = report["cuda_visible_devices"]
    lines.append("CUDA_VISIBLE_DEVICES: " + ("unset" if cvd is None else repr(cvd)))
    for g in report["gpus"]:
        mig = " MIG" if g["mig"] else ""
        lines.append(f"  GPU {g['index']}  {g['uuid']}  {g['name']}  {g['memory_total_mib']} MiB  {g['pci_bus_id']}{mig}")
    if report["error"]:
        lines.append(f"error: {report['error']}")
        return "\n".join(lines)
    b = report["binding"]
    lines.append(f"visible to badc-mpi: {len(report['visible'])} device(s)")
    lines.append(
        f"this rank (local rank {report['local_rank']} of {report['local_size']}, from "
        f"{report['local_rank_source']}): {b['worker']}, "
        f"CUDA_VISIBLE_DEVICES={b['cuda_visible_devices']!r}"
    )
    keys = (
        "host",
        "rank",
        "local_rank",
        "worker",
        "cuda_visible_devices",
        "gpu_index",
        "gpu_uuid",
        "gpu_name",
        "gpu_memory_total_mib",
    )
    node = [Binding(**{k: d[k] for k in keys}) for d in report["node_bindings"]]
    lines += ["node plan:", format_binding_table(node)]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
