"""Starting a rank's worker: its GPU binding, its run config and its supervisor (every rank)."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

from badc_mpi.gpu import binding as gpu_binding
from badc_mpi.gpu import nvml
from badc_mpi.gpu.sampler import GpuSampler
from badc_mpi.inputs.locations import default_scratch_root, run_scratch_dir
from badc_mpi.logs import get_logger
from badc_mpi.options import RunOptions
from badc_mpi.records import Binding
from badc_mpi.runners import build_runner
from badc_mpi.transport.mailbox import node_local
from badc_mpi.transport.messages import WorkerConfig
from badc_mpi.worker.supervisor import Supervisor

log = get_logger(__name__)


def bind_rank(comm: Any, options: RunOptions) -> tuple[Binding, list[str], str | None]:
    """This rank's GPU binding from its node-local rank (``COMM_TYPE_SHARED``) and NVML."""
    rank = comm.Get_rank()
    local_rank, local_size = node_local(comm)
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    bopts = options.binding_options()
    binding, warnings, reason = gpu_binding.bind_rank(
        host=socket.gethostname(),
        rank=rank,
        local_rank=local_rank,
        local_size=local_size,
        options=bopts,
        quiet=rank != 0,
    )
    return binding, warnings, reason


def make_sampler(binding: Binding) -> Any:
    """A GPU sampler for a GPU binding (None on CPU ranks or without NVML)."""
    if not binding.uses_gpu:
        return None
    try:
        backend = nvml.open_backend()
    except nvml.NvmlUnavailable as exc:
        log.info("GPU sampling off: %s", exc)
        return None
    return GpuSampler(backend, binding)


def rank_config(config: WorkerConfig, binding: Binding) -> WorkerConfig:
    """The per-rank copy of the run's worker config: its own scratch folder, inside the run's
    folder under ``--scratch-dir`` or this node's own scratch (``$SLURM_TMPDIR``, ``$TMPDIR``, /tmp)."""
    root = config.scratch_root or default_scratch_root()
    scratch = os.path.join(run_scratch_dir(root, config.run_id), f"{binding.host}-r{binding.rank}")
    return dataclasses.replace(config, scratch_dir=scratch)


def start_worker(config: WorkerConfig, binding: Binding) -> Supervisor:
    runner = build_runner(config.runner_kind, config.runner_options)
    worker = Supervisor(config, binding, runner, make_sampler(binding))
    worker.start()
    return worker
