"""What the HawkEars runner tells about itself: its description (telemetry, summaries), its
fingerprint (what determines its detections: resume never mixes runs that differ), and the check
that HawkEars runs on the device the rank is bound to."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from badc_mpi.errors import RunnerSetupError
from badc_mpi.records import Binding
from badc_mpi.runners.hawkears import env as hawkears_env

#: options that change detections (the mode, threads, logs and throughput options do not)
DETECTION_OPTIONS = ("min_score", "models", "low_band", "label", "region", "lat", "lon", "date", "seg")


def describe(runner: Any, worker_script: str) -> dict[str, Any]:
    """Static facts of a :class:`~badc_mpi.runners.hawkears.adapter.HawkearsRunner`."""
    worker = runner._worker
    hello = worker.hello if worker else {}
    return {
        "runner": runner.name,
        "mode": runner.options.mode,
        "python": runner.python,
        "worker_script": worker_script,
        "data_root": runner.data_root.path,
        "data_root_source": runner.data_root.source,
        "tiny_model": runner.data_root.is_tiny,
        "model_version": runner.data_root.model_version,
        "hawkears_version": runner.hawkears_version,
        "worker_starts": runner.worker_starts,
        "worker_pid": worker.proc.pid if worker else None,
        "device": hello.get("device"),
        "load_s": hello.get("load_s"),
        # with --hawkears-batch K > 1: how far a batch's scores were from the per-chunk path's at start-up
        "batch_max_score_diff": hello.get("batch_max_score_diff"),
        "models_loaded": hello.get("models"),
        "low_band_models_loaded": hello.get("low_band_models"),
        "options": dataclasses.asdict(runner.options),
    }


def fingerprint(runner: Any, hawkears_version: str | None) -> dict[str, Any]:
    o = runner.options
    files = {name: file_sha12(getattr(o, name)) for name in ("include", "exclude", "config")}
    return {
        "runner": runner.name,
        "hawkears_version": hawkears_version,
        "model_version": runner.data_root.model_version,
        **{name: getattr(o, name) for name in DETECTION_OPTIONS},
        **files,
        # batched scores may differ in the last bits: a run never mixes them with per-chunk ones
        **({"batch": o.batch} if runner.batch_size > 1 else {}),
    }


def check_device(device: str, binding: Binding) -> None:
    """The device HawkEars reports must be the one this rank is bound to: never a silent CPU run
    on a GPU rank (a CUDA/driver mismatch), never a GPU that the binding hid."""
    on_gpu = device.startswith("cuda")
    if binding.uses_gpu and not on_gpu:
        raise RunnerSetupError(
            f"HawkEars runs on {device} although {binding.worker} is bound to GPU {binding.gpu_index} ({binding.gpu_uuid})",
            fix="check that torch in HawkEars' environment sees CUDA (driver and CUDA versions, "
            "`make hawkears` on a GPU node), or run this rank on the CPU on purpose with --max-gpus 0",
        )
    if on_gpu and not binding.uses_gpu:
        raise RunnerSetupError(
            f"HawkEars runs on {device} although {binding.worker} is a CPU rank",
            fix="report this: the rank's CUDA_VISIBLE_DEVICES should hide every GPU",
        )


def file_sha12(path: str | None) -> str | None:
    """``name:sha12`` of a file's content (a species list, a config), None without one."""
    return f"{os.path.basename(path)}:{hawkears_env.file_sha12(Path(path))}" if path else None
