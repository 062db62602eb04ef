"""Per-attempt GPU sampling: peak VRAM of the runner's processes and GPU utilisation.

NVML is reached only through :mod:`badc_mpi.gpu.nvml`; :mod:`badc_mpi.gpu.binding` re-exports
:class:`GpuSampler` and :func:`badc_mpi.worker.loop` builds one per worker rank from its binding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from badc_mpi.gpu.nvml import NvmlBackend
from badc_mpi.logs import get_logger
from badc_mpi.records import Binding

log = get_logger(__name__)


class GpuSampler:
    """Samples the binding's GPU about every ``interval_s`` during an attempt (daemon thread,
    sleeping between samples), plus one sample at :meth:`begin` and one at :meth:`end`.

    ``vram_used_mib`` counts only the runner's processes (``pids_fn()``); it is ``None`` when
    NVML has no per-process accounting (MIG) or no runner process was seen. A MIG binding
    reads device-wide figures from its parent GPU. Sampling errors never reach the caller.
    """

    KEYS = ("vram_used_mib", "vram_device_mib", "gpu_util_pct_mean", "gpu_util_pct_max")

    def __init__(self, backend: NvmlBackend | None, binding: Binding, interval_s: float = 1.0) -> None:
        self.backend = backend if binding.uses_gpu else None
        uuid = binding.gpu_uuid or ""
        self.device: int | str | None = uuid if uuid.startswith("GPU-") else binding.gpu_index
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pids_fn: Callable[[], list[int]] = list
        self._proc: list[float] = []
        self._used: list[float] = []
        self._util: list[float] = []
        self._errors_logged = 0
        self.samples = 0

    def _try(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a sampler must never break an attempt
            if self._errors_logged < 3:
                self._errors_logged += 1
                log.debug("GPU sample failed on %s: %s", self.device, exc)
            return None

    def sample(self) -> None:
        """Take one sample now (called by the thread; public for tests)."""
        nv, dev = self.backend, self.device
        if nv is None or dev is None:
            return
        pids = self._try(lambda: {int(p) for p in self._pids_fn()}) or set()
        proc = self._try(lambda: nv.process_vram_mib(dev, pids)) if pids else None
        used = self._try(lambda: nv.device_vram_used_mib(dev))
        util = self._try(lambda: nv.utilization_pct(dev))
        with self._lock:
            self.samples += 1
            for store, value in ((self._proc, proc), (self._used, used), (self._util, util)):
                if value is not None:
                    store.append(float(value))

    def _loop(self) -> None:
        wait_s = min(0.1, self.interval_s)  # first sample soon: the runner process has just started
        while not self._stop.wait(wait_s):
            self.sample()
            wait_s = self.interval_s

    def begin(self, pids_fn: Callable[[], list[int]]) -> None:
        """Start sampling one attempt; ``pids_fn`` lists the runner's PIDs at each sample."""
        self._halt()
        with self._lock:
            self._proc, self._used, self._util, self.samples = [], [], [], 0
        self._pids_fn = pids_fn
        if self.backend is None:
            return
        self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="badc-gpu-sampler", daemon=True)
        self._thread.start()

    def _halt(self) -> bool:
        thread, self._thread = self._thread, None
        if thread is None:
            return False
        self._stop.set()
        thread.join(timeout=self.interval_s + 10)
        return True

    def end(self) -> dict[str, float | None]:
        """Stop sampling; peaks and means of the attempt (all ``None`` on a CPU binding)."""
        if self._halt():
            self.sample()
        with self._lock:
            proc, used, util = list(self._proc), list(self._used), list(self._util)
        return {
            "vram_used_mib": round(max(proc), 1) if proc else None,
            "vram_device_mib": round(max(used), 1) if used else None,
            "gpu_util_pct_mean": round(sum(util) / len(util), 1) if util else None,
            "gpu_util_pct_max": round(max(util), 1) if util else None,
        }
