"""The NVML seam: the ONLY module in badc-mpi that imports ``pynvml``.

Everything else asks NVML questions through :class:`NvmlBackend`, obtained from
:func:`open_backend`. There are two implementations:

* :class:`PynvmlBackend` talks to the real driver. Any NVML error, a missing ``pynvml`` package,
  a missing ``libnvidia-ml.so`` or no driver becomes :class:`NvmlUnavailable` carrying the reason;
  callers fall back to CPU mode.
* Any other backend, named by ``BADC_MPI_NVML_BACKEND=module:Class`` or
  ``BADC_MPI_NVML_BACKEND=/path/to/file.py:Class`` and built as ``Class(environ)``: an operator
  option (docs/gpu.md, "The GPU inventory backend"): a site whose nodes reach their GPUs through
  another inventory (a container without the NVML library, a site wrapper), or a rehearsal of a
  node's layout on a login node. A run names the backend it used (``badc-mpi gpus``, a log line).
  The tests name their fake here too (``tests/fakes/nvml.py:FakeNvmlBackend``, which reads GPUs
  from the JSON file its own variable names, a variable only that test module reads). Every
  process that calls :func:`open_backend` reads the variables, so the backend also reaches ranks
  started by a real ``mpiexec``. The fake's format::

      {"devices": [{"index": 0, "uuid": "GPU-...", "name": "NVIDIA H200",
                    "memory_total_mib": 143771, "pci_bus_id": "00000000:17:00.0",
                    "utilization_pct": 37, "memory_used_mib": 1200, "process_vram_mib": 512,
                    "mig": false, "mig_uuids": []}],
       "fail": null}

  ``"fail": "no_driver"`` (or any other text) makes opening it raise :class:`NvmlUnavailable`,
  as on a machine without a driver. ``process_vram_mib`` is returned whenever the asked-for PID
  set is non-empty (``null`` = per-process accounting unsupported); ``utilization_pct: null`` =
  unsupported (as on MIG). Examples: ``tests/fake_nvml/*.json``.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from badc_mpi.errors import BadcError, UsageError

BACKEND_ENV = "BADC_MPI_NVML_BACKEND"
_MIB = 1024 * 1024

DeviceRef = int | str  #: an NVML index, or a ``GPU-``/``MIG-`` UUID


class NvmlUnavailable(BadcError):
    """NVML cannot be used here (no driver, no library, NVML error). ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"NVML unavailable: {reason}",
            fix="run on a GPU node with the NVIDIA driver loaded, or accept CPU mode",
        )


@dataclass(frozen=True)
class DeviceInfo:
    """One physical GPU as NVML reports it."""

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    pci_bus_id: str
    mig: bool = False  #: MIG mode enabled
    mig_uuids: tuple[str, ...] = ()  #: UUIDs of its MIG instances (``MIG-...``), if any


@runtime_checkable
class NvmlBackend(Protocol):
    """What badc-mpi asks of NVML. ``dev`` is an NVML index or a device UUID."""

    def device_count(self) -> int: ...

    def devices(self) -> list[DeviceInfo]: ...

    def process_vram_mib(self, dev: DeviceRef, pids: set[int]) -> float | None:
        """Sum of GPU memory used on ``dev`` by ``pids``; ``None`` if NVML cannot tell."""
        ...

    def device_vram_used_mib(self, dev: DeviceRef) -> float: ...

    def utilization_pct(self, dev: DeviceRef) -> float | None: ...

    def shutdown(self) -> None: ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PynvmlBackend:
    """The real NVML through ``pynvml``; initialised once per instance, ``shutdown()`` to end."""

    def __init__(self) -> None:
        try:
            with warnings.catch_warnings():  # pynvml 12+ warns that it is deprecated
                warnings.simplefilter("ignore")
                import pynvml
        except ImportError as exc:
            raise NvmlUnavailable(f"pynvml is not installed ({exc})") from None
        self._nv = pynvml
        self._lock = threading.Lock()
        self._handles: dict[DeviceRef, Any] = {}
        self._open = False
        self._call("nvmlInit")
        self._open = True

    def _call(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self._nv, fn)(*args)
        except self._nv.NVMLError as exc:
            raise NvmlUnavailable(f"{fn}: {exc}") from None
        except OSError as exc:  # library present but unloadable
            raise NvmlUnavailable(f"{fn}: {exc}") from None

    def _supported(self, fn: str, *args: Any) -> tuple[bool, Any]:
        """Call ``fn``; ``(False, None)`` when NVML says it is not supported on this device."""
        try:
            return True, getattr(self._nv, fn)(*args)
        except self._nv.NVMLError as exc:
            if getattr(exc, "value", None) == self._nv.NVML_ERROR_NOT_SUPPORTED:
                return False, None
            raise NvmlUnavailable(f"{fn}: {exc}") from None

    def _handle(self, dev: DeviceRef) -> Any:
        with self._lock:
            if dev not in self._handles:
                if isinstance(dev, int):
                    self._handles[dev] = self._call("nvmlDeviceGetHandleByIndex", dev)
                else:
                    self._handles[dev] = self._call("nvmlDeviceGetHandleByUUID", dev)
            return self._handles[dev]

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def _mig_uuids(self, handle: Any) -> tuple[bool, tuple[str, ...]]:
        ok, mode = self._supported("nvmlDeviceGetMigMode", handle)
        if not ok or not mode or mode[0] != self._nv.NVML_DEVICE_MIG_ENABLE:
            return False, ()
        uuids = []
        for i in range(int(self._call("nvmlDeviceGetMaxMigDeviceCount", handle))):
            try:
                mig = self._nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except self._nv.NVMLError:  # slot not populated
                continue
            uuids.append(_text(self._call("nvmlDeviceGetUUID", mig)))
        return True, tuple(uuids)

    def devices(self) -> list[DeviceInfo]:
        out = []
        for i in range(self.device_count()):
            h = self._handle(i)
            mig, mig_uuids = self._mig_uuids(h)
            out.append(
                DeviceInfo(
                    index=i,
                    uuid=_text(self._call("nvmlDeviceGetUUID", h)),
                    name=_text(self._call("nvmlDeviceGetName", h)),
                    memory_total_mib=int(self._call("nvmlDeviceGetMemoryInfo", h).total // _MIB),
                    pci_bus_id=_text(self._call("nvmlDeviceGetPciInfo", h).busId),
                    mig=mig,
                    mig_uuids=mig_uuids,
                )
            )
        return out

    def process_vram_mib(self, dev: DeviceRef, pids: set[int]) -> float | None:
        if not pids:
            return 0.0
        ok, procs = self._supported("nvmlDeviceGetComputeRunningProcesses", self._handle(dev))
        if not ok:
            return None
        total = 0
        for proc in procs:
            if proc.pid in pids:
                if proc.usedGpuMemory is None:  # not available (MIG, WDDM)
                    return None
                total += int(proc.usedGpuMemory)
        return total / _MIB

    def device_vram_used_mib(self, dev: DeviceRef) -> float:
        return self._call("nvmlDeviceGetMemoryInfo", self._handle(dev)).used / _MIB

    def utilization_pct(self, dev: DeviceRef) -> float | None:
        ok, rates = self._supported("nvmlDeviceGetUtilizationRates", self._handle(dev))
        return float(rates.gpu) if ok else None

    def shutdown(self) -> None:
        if self._open:
            self._open = False
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError:
                pass


def load_backend_class(spec: str) -> type:
    """The class named by ``module.path:Class`` or ``/path/to/file.py:Class``."""
    import importlib
    import importlib.util

    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise UsageError(f"{BACKEND_ENV}={spec!r} names no class", fix="write module:Class or /path/file.py:Class, or unset it")
    try:
        if target.endswith(".py"):
            mod_name = "badc_mpi_nvml_backend_" + os.path.basename(target)[:-3]
            real = os.path.realpath(target)
            loaded = next(
                (
                    m
                    for m in list(sys.modules.values())  # already imported under its own name
                    if (path := getattr(m, "__file__", None)) and os.path.realpath(path) == real
                ),
                None,
            )
            if loaded is None:
                mod_spec = importlib.util.spec_from_file_location(mod_name, target)
                if mod_spec is None or mod_spec.loader is None:
                    raise ImportError(f"cannot load {target}")
                loaded = importlib.util.module_from_spec(mod_spec)
                sys.modules[mod_name] = loaded
                mod_spec.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(target)
        return getattr(loaded, name)
    except (ImportError, OSError, AttributeError, SyntaxError) as exc:
        raise UsageError(
            f"{BACKEND_ENV}={spec!r}: cannot load the NVML backend ({exc})",
            fix="point it at an existing module and class, or unset it",
        ) from None


def open_backend(env: Mapping[str, str] | None = None) -> NvmlBackend:
    """The backend named by ``BADC_MPI_NVML_BACKEND`` (in ``env``, default ``os.environ``), called
    with ``env``; else the real NVML.

    Raises :class:`NvmlUnavailable` when NVML cannot be used and
    :class:`~badc_mpi.errors.UsageError` for a backend that cannot be loaded or set up.
    """
    env = os.environ if env is None else env
    spec = env.get(BACKEND_ENV)
    if spec:
        return load_backend_class(spec)(env)
    return PynvmlBackend()


def backend_name(env: Mapping[str, str] | None = None) -> str:
    """What :func:`open_backend` would use: ``pynvml`` or the ``BADC_MPI_NVML_BACKEND`` value."""
    env = os.environ if env is None else env
    return env.get(BACKEND_ENV) or "pynvml"
