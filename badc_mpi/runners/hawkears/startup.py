"""What a rank prepares before any HawkEars process runs: the process environment (GPU mask,
threads, malloc tuning, no ``PYTHONPATH``), whether the low-band classifier is on, the ``-c`` YAML
that gives HawkEars absolute paths (merged with ``--hawkears-config`` inside HawkEars' own
environment), and the HawkEars version the CLI mode reports. Used by
:class:`~badc_mpi.runners.hawkears.adapter.HawkearsRunner` at start; no process is kept here.
"""

from __future__ import annotations

import json
import os
import subprocess

from badc_mpi.errors import RunnerSetupError
from badc_mpi.logs import get_logger
from badc_mpi.records import Binding
from badc_mpi.runners.hawkears import env as hawkears_env
from badc_mpi.runners.hawkears.cli_mode import TAIL_CHARS
from badc_mpi.runners.hawkears.options import HawkearsOptions

log = get_logger(__name__)

#: glibc malloc in the HawkEars process: keep large activation buffers instead of returning them to the
#: kernel after every forward pass and faulting them back in (docs/throughput.md; same output)
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def runner_env(binding: Binding, options: HawkearsOptions) -> dict[str, str]:
    """The environment of every HawkEars process of this rank (resident worker or CLI call)."""
    env = binding.runner_env(dict(os.environ))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # the runner's packages must not leak into HawkEars' env
    if options.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(options.threads)
    if options.malloc_tuning:
        for var, value in MALLOC_TUNING.items():
            env.setdefault(var, value)  # a site's own setting wins
    return env


def low_band_choice(options: HawkearsOptions, data_root: hawkears_env.DataRoot, binding: Binding) -> bool | None:
    """``--low-band`` as HawkEars will get it: refused when asked for without its checkpoints;
    HawkEars' GPU default (on) turned off, with a warning, when they are missing."""
    if options.low_band and not data_root.has_low_band:
        raise RunnerSetupError(
            f"--low-band needs low-band checkpoints in {data_root.path}/data/ckpt-low-band; there are none",
            fix="stage complete models with `make hawkears-models`, or use --no-low-band",
        )
    if options.low_band is None and binding.uses_gpu and not data_root.has_low_band:
        log.warning("no low-band checkpoints in %s: low-band classifier off (HawkEars' GPU default is on)", data_root.path)
        return False
    if options.low_band is None and not binding.uses_gpu and data_root.has_low_band:
        log.warning(
            "low-band (grouse) classifier off: HawkEars' default on CPU; grouse drumming goes undetected "
            "(--low-band turns it on, slower)"
        )
    return options.low_band


def write_config(
    folder: str,
    options: HawkearsOptions,
    data_root: hawkears_env.DataRoot,
    *,
    python: str,
    worker_script: str,
    env: dict[str, str],
) -> str:
    """The ``-c`` YAML in ``folder``: the data root's absolute paths, merged with
    ``--hawkears-config`` by ``worker_script --merge-config`` in HawkEars' environment."""
    base = os.path.join(folder, "badc-hawkears.yaml")
    with open(base, "w", encoding="utf-8") as handle:  # JSON is YAML
        json.dump(data_root.config_overrides(), handle, indent=1)
    if not options.config:
        return base
    merged = os.path.join(folder, "badc-hawkears-merged.yaml")
    argv = [python, worker_script, "--data-root", data_root.path, "--merge-config", merged, base, options.config]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0:
        raise RunnerSetupError(
            f"--hawkears-config {options.config} cannot be merged: {proc.stderr.strip()[-TAIL_CHARS:]}",
            fix="give a valid HawkEars YAML",
        )
    return merged


def query_version(python: str, env: dict[str, str]) -> str | None:
    """The installed hawkears version (the CLI mode's only way to know it), or None."""
    code = "import importlib.metadata as m; print(m.version('hawkears'))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def start_fix(log_path: str | None) -> str:
    """The fix of a resident worker that did not start."""
    return (
        f"read the worker's stderr above{f' or in {log_path}' if log_path else ''}; "
        "check the data root and options; raise --hawkears-start-timeout-s if loading is slow; "
        "or try --hawkears-mode cli"
    )
