"""NVML at its one seam (BADC_MPI_NVML_BACKEND), GPU detection, sampling during attempts and
``badc-mpi gpus``, with NVML faked. Which GPU each rank gets: ``test_gpu_binding.py``."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from badc_mpi.errors import BadcError, UsageError
from badc_mpi.gpu import binding as gpu
from badc_mpi.gpu import nvml
from badc_mpi.gpu.binding import bind_rank, detect, plan_node, select_visible
from badc_mpi.gpu.nvml import BACKEND_ENV, NvmlBackend, NvmlUnavailable, open_backend
from badc_mpi.gpu.report import format_gpus_report, gpus_report
from badc_mpi.gpu.sampler import GpuSampler
from badc_mpi.options import BindingOptions
from badc_mpi.records import Binding

from fakes.nvml import FAKE_ENV, U0, U1, U2, U3, FakeNvmlBackend
from fakes.nvml import fake_env as fake_vars
from fakes.nvml import gpus_env as fake_env
from helpers import MPIEXEC

# ---------------------------------------------------------------------------- the seam


def test_fake_backend_reads_fixture():
    nv = open_backend(fake_env("four"))
    assert isinstance(nv, FakeNvmlBackend) and isinstance(nv, NvmlBackend)
    assert nv.device_count() == 4
    assert {d.uuid for d in nv.devices()} == {U0, U1, U2, U3}
    assert nv.process_vram_mib(U2, {123}) == 2048.0
    assert nv.process_vram_mib(2, set()) == 0.0
    assert nv.process_vram_mib(3, {1}) is None  # per-process accounting unsupported
    assert nv.device_vram_used_mib(0) == 1000.0
    assert nv.utilization_pct(U1) == 20.0 and nv.utilization_pct(3) is None
    nv.shutdown()


def test_fake_no_driver_raises_unavailable():
    with pytest.raises(NvmlUnavailable) as info:
        open_backend(fake_env("no_driver"))
    assert "Library Not Found" in info.value.reason
    assert isinstance(info.value, BadcError) and "Fix:" in str(info.value)


def test_fake_file_unreadable_is_usage_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match=FAKE_ENV):
        open_backend(fake_vars(path=bad))
    with pytest.raises(UsageError):
        open_backend(fake_vars(path=tmp_path / "missing.json"))


def test_backend_that_cannot_be_loaded_is_usage_error(tmp_path):
    for spec in ("no_such_module_xyz:Backend", f"{tmp_path / 'missing.py'}:Backend", "nocolon"):
        with pytest.raises(UsageError, match=BACKEND_ENV):
            open_backend({BACKEND_ENV: spec})


def test_production_code_never_reads_the_fake_variable():
    pkg = Path(gpu.__file__).parents[1]
    readers = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py") if FAKE_ENV in p.read_text()]
    assert readers == []


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="a real NVIDIA driver is present")
def test_real_pynvml_without_gpu_raises_unavailable(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    with pytest.raises(NvmlUnavailable) as info:
        open_backend()
    assert info.value.reason  # e.g. "nvmlInit: NVML Shared Library Not Found"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_pynvml_raises_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NvmlUnavailable, match="pynvml is not installed"):
        nvml.PynvmlBackend()


def test_only_nvml_module_imports_pynvml():
    pkg = Path(gpu.__file__).parents[1]
    users = [
        p.relative_to(pkg).as_posix()
        for p in pkg.rglob("*.py")
        if "import pynvml" in p.read_text() or "from pynvml" in p.read_text()
    ]
    assert users == ["gpu/nvml.py"]


# ---------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name,count", [("zero", 0), ("one", 1), ("four", 4)])
def test_detect_counts(name, count):
    gpus, visible_env, reason = detect(fake_env(name))
    assert len(gpus) == count and visible_env is None and reason is None


def test_detect_sorts_by_pci_bus_id():
    gpus, _, _ = detect(fake_env("four"))
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.uuid for g in gpus] == [U0, U1, U2, U3]


def test_detect_no_driver_is_cpu_mode_with_one_log_line(caplog):
    logger = logging.getLogger("badc_mpi")
    logger.propagate = True  # let caplog see it even if configure_logging ran
    with caplog.at_level(logging.INFO, logger="badc_mpi"):
        gpus, visible_env, reason = detect(fake_env("no_driver", "0,1"))
    assert gpus == [] and visible_env == ["0", "1"] and "Library Not Found" in reason
    records = [r for r in caplog.records if r.name.startswith("badc_mpi")]
    assert len(records) == 1 and records[0].exc_info is None and records[0].levelno == logging.WARNING
    assert "CPU" in records[0].getMessage()
    b, w, r = bind_rank(host="n1", rank=0, local_rank=0, local_size=2, options=BindingOptions(), env=fake_env("no_driver", "0,1"))
    assert b.worker == "cpu0@n1" and b.cuda_visible_devices == "" and not b.uses_gpu and r


# ---------------------------------------------------------------------------- sampling


def gpu_binding(name: str, index: int) -> Binding:
    gpus, visible_env, _ = detect(fake_env(name))
    return plan_node("n1", index + 1, select_visible(gpus, visible_env), visible_env, BindingOptions())[index]


def test_sampler_values_from_fake():
    nv = open_backend(fake_env("four"))
    sampler = GpuSampler(nv, gpu_binding("four", 2), interval_s=0.01)
    sampler.begin(lambda: [4242])
    time.sleep(0.08)
    result = sampler.end()
    assert result == {
        "vram_used_mib": 2048.0,
        "vram_device_mib": 30000.0,
        "gpu_util_pct_mean": 90.0,
        "gpu_util_pct_max": 90.0,
    }
    assert sampler.samples >= 3
    assert not any(t.name == "badc-gpu-sampler" for t in threading.enumerate())


def test_sampler_short_attempt_still_sampled_and_reusable():
    nv = open_backend(fake_env("one"))
    sampler = GpuSampler(nv, gpu_binding("one", 0), interval_s=60)
    for _ in range(2):
        start = time.monotonic()
        sampler.begin(lambda: [1])
        result = sampler.end()
        assert time.monotonic() - start < 5  # the thread sleeps on an event: end() wakes it
        assert result["vram_used_mib"] == 512.0 and result["gpu_util_pct_max"] == 37.0
        assert sampler.samples == 2  # one at begin, one at end


def test_sampler_unsupported_and_no_pids_give_none():
    nv = open_backend(fake_env("four"))
    result = GpuSampler(nv, gpu_binding("four", 3), interval_s=60)
    result.begin(lambda: [7])
    assert result.end() == {
        "vram_used_mib": None,
        "vram_device_mib": 4000.0,
        "gpu_util_pct_mean": None,
        "gpu_util_pct_max": None,
    }
    s = GpuSampler(nv, gpu_binding("four", 0), interval_s=60)
    s.begin(list)
    assert s.end()["vram_used_mib"] is None


def test_sampler_none_on_cpu_binding_or_no_backend():
    nv = open_backend(fake_env("four"))
    cpu = Binding(host="n1", rank=0, local_rank=0, worker="cpu0@n1", cuda_visible_devices="")
    none = dict.fromkeys(GpuSampler.KEYS)
    for sampler in (GpuSampler(nv, cpu), GpuSampler(None, gpu_binding("four", 0))):
        sampler.begin(lambda: [1])
        assert sampler.end() == none and sampler.samples == 0
    assert GpuSampler(nv, cpu).end() == none  # end without begin


def test_sampler_survives_backend_errors():
    class Broken(FakeNvmlBackend):
        def device_vram_used_mib(self, dev):
            raise NvmlUnavailable("GPU fell off the bus")

    nv = Broken(fake_vars("one"))
    s = GpuSampler(nv, gpu_binding("one", 0), interval_s=60)
    s.begin(lambda: 1 / 0)  # a broken pids_fn too
    assert s.end() == {
        "vram_used_mib": None,
        "vram_device_mib": None,
        "gpu_util_pct_mean": 37.0,
        "gpu_util_pct_max": 37.0,
    }


# ---------------------------------------------------------------------------- `badc-mpi gpus`


@pytest.mark.parametrize(
    "name,worker,available",
    [
        ("zero", "cpu0@", True),
        ("one", "gpu0@", True),
        ("four", "gpu0@", True),
        ("no_driver", "cpu0@", False),
    ],
)
def test_gpus_report_each_fixture(name, worker, available):
    report = gpus_report(fake_env(name))
    assert report["nvml"]["available"] is available
    assert report["binding"]["worker"].startswith(worker) and report["error"] is None
    assert report["local_rank"] == 0 and report["local_rank_source"] == "default"
    json.dumps(report)  # --json must serialise
    text = format_gpus_report(report)
    assert ("unavailable" in text) is (not available) and "node plan:" in text


def test_gpus_report_local_rank_from_launcher_env():
    env = fake_env("four", "1,2", MPI_LOCALRANKID="1", MPI_LOCALNRANKS="3", PMI_RANK="5")
    report = gpus_report(env, BindingOptions(cpu_workers=1))
    assert report["local_rank"] == 1 and report["local_rank_source"] == "MPI_LOCALRANKID"
    assert report["rank"] == 5 and report["local_size"] == 3
    assert report["binding"]["cuda_visible_devices"] == U2
    assert [b["worker"] for b in report["node_bindings"]][2].startswith("cpu0@")
    assert [b["rank"] for b in report["node_bindings"]] == [4, 5, 6]
    env = fake_env("four", None, OMPI_COMM_WORLD_LOCAL_RANK="3", SLURM_LOCALID="0")
    report = gpus_report(env)
    assert report["local_rank"] == 3 and report["binding"]["gpu_index"] == 3
    assert gpus_report(env, local_rank=2, local_size=8)["local_size"] == 8


def test_gpus_report_bad_mask_is_reported_not_raised():
    report = gpus_report(fake_env("four", "9"))
    assert report["binding"] is None and "'9'" in report["error"]
    assert "error:" in format_gpus_report(report)


def test_gpus_report_sharing_warning_in_report():
    report = gpus_report(fake_env("one"), local_size=2)
    assert report["warnings"] and "share GPU 0" in " ".join(report["warnings"])
    assert "warning:" in format_gpus_report(report)


def test_fake_reaches_ranks_of_a_real_mpiexec():
    import subprocess

    probe = (
        "import json, os; from badc_mpi.gpu.report import gpus_report; r = gpus_report(); "  # one write per rank:
        "os.write(1, (json.dumps([r['local_rank'], r['binding']['cuda_visible_devices']]) + '\\n').encode())"
    )
    env = {**os.environ, **fake_env("four", "3,1"), "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("MPI_LOCALRANKID", None)
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line) for line in done.stdout.splitlines()) == [[0, U3], [1, U1]]
