"""A fake NVML for tests: GPUs read from the JSON file named by ``BADC_MPI_FAKE_NVML``.

Production code never reads ``BADC_MPI_FAKE_NVML``; it loads this class only because the tests
name it in ``BADC_MPI_NVML_BACKEND`` (see :mod:`badc_mpi.gpu.nvml`, the seam). :func:`fake_env`
gives the variables for one of the ready-made files in ``tests/fake_nvml/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.gpu.nvml import BACKEND_ENV, DeviceInfo, DeviceRef, NvmlUnavailable

FAKE_ENV = "BADC_MPI_FAKE_NVML"
FILES = Path(__file__).resolve().parent.parent / "fake_nvml"
BACKEND_SPEC = f"{Path(__file__).resolve()}:FakeNvmlBackend"


def fake_env(name: str | None = None, *, path: str | Path | None = None) -> dict[str, str]:
    """Environment variables that make every process use the fake with ``tests/fake_nvml/<name>.json``."""
    target = Path(path) if path is not None else FILES / f"{name}.json"
    return {BACKEND_ENV: BACKEND_SPEC, FAKE_ENV: str(target)}


#: the GPUs of the ready-made files: four.json (by index), one.json, mig.json's MIG instances
U0, U1, U2, U3 = (
    "GPU-a0000000-0000-4000-8000-000000000000",
    "GPU-b1111111-1111-4111-8111-111111111111",
    "GPU-c2222222-2222-4222-8222-222222222222",
    "GPU-d3333333-3333-4333-8333-333333333333",
)
H200 = "GPU-5a1c0e2f-0000-4000-8000-000000000000"
MIG_A = "MIG-11111111-aaaa-5aaa-8aaa-aaaaaaaaaaaa"
MIG_B = "MIG-22222222-bbbb-5bbb-8bbb-bbbbbbbbbbbb"


def gpus_env(name: str | None, cvd: str | None = None, **extra: str) -> dict[str, str]:
    """``extra``, plus the fake with ``<name>.json`` (none when ``name`` is None), plus
    ``CUDA_VISIBLE_DEVICES=cvd`` when given: a rank's environment as a launcher would set it."""
    env = dict(extra)
    if name is not None:
        env.update(fake_env(name))
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    return env


class FakeNvmlBackend:
    """GPUs read from a JSON file (see the module docstring). For tests and demos."""

    def __init__(self, env: Mapping[str, str]) -> None:
        path = env.get(FAKE_ENV, "")
        self.path = path
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            self._devices: list[dict[str, Any]] = list(data.get("devices", []))
            fail = data.get("fail")
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise UsageError(
                f"{FAKE_ENV}={path}: cannot read the fake NVML file ({exc})",
                fix=f"point {FAKE_ENV} at a JSON file like tests/fake_nvml/four.json, or unset it",
            ) from None
        if fail:
            reason = "NVML Shared Library Not Found" if fail == "no_driver" else str(fail)
            raise NvmlUnavailable(f"{reason} (fake NVML {path})")
        self.shut_down = False

    def _dev(self, dev: DeviceRef) -> dict[str, Any]:
        for d in self._devices:
            if (isinstance(dev, int) and d["index"] == dev) or dev == d["uuid"]:
                return d
            if isinstance(dev, str) and dev in d.get("mig_uuids", ()):
                return d
        raise NvmlUnavailable(f"fake NVML {self.path}: no device {dev!r}")

    def device_count(self) -> int:
        return len(self._devices)

    def devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(
                index=int(d["index"]),
                uuid=str(d["uuid"]),
                name=str(d.get("name", "Fake GPU")),
                memory_total_mib=int(d.get("memory_total_mib", 0)),
                pci_bus_id=str(d.get("pci_bus_id", "")),
                mig=bool(d.get("mig", False)),
                mig_uuids=tuple(d.get("mig_uuids", ())),
            )
            for d in self._devices
        ]

    def process_vram_mib(self, dev: DeviceRef, pids: set[int]) -> float | None:
        value = self._dev(dev).get("process_vram_mib")
        if not pids:
            return 0.0
        return None if value is None else float(value)

    def device_vram_used_mib(self, dev: DeviceRef) -> float:
        return float(self._dev(dev).get("memory_used_mib", 0))

    def utilization_pct(self, dev: DeviceRef) -> float | None:
        value = self._dev(dev).get("utilization_pct")
        return None if value is None else float(value)

    def shutdown(self) -> None:
        self.shut_down = True
