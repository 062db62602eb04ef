"""GPU discovery, binding and sampling, with NVML faked at its one seam (BADC_MPI_NVML_BACKEND)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from badc_mpi.errors import BadcError, UsageError
from badc_mpi.gpu import binding as gpu
from badc_mpi.gpu import nvml
from badc_mpi.gpu.binding import (
    BINDING_HELP,
    GpuInfo,
    bind_rank,
    detect,
    gpus_expected,
    parse_visible_devices,
    plan_binding,
    plan_node,
    select_visible,
    sharing_warnings,
)
from badc_mpi.gpu.nvml import BACKEND_ENV, NvmlBackend, NvmlUnavailable, open_backend
from badc_mpi.gpu.report import format_binding_table, format_gpus_report, gpus_report
from badc_mpi.gpu.sampler import GpuSampler
from badc_mpi.options import BindingOptions
from badc_mpi.records import Binding

from ci_rules import require_or_skip
from fakes.nvml import FAKE_ENV, FakeNvmlBackend
from fakes.nvml import fake_env as fake_vars
from helpers import MPIEXEC

FAKES = Path(__file__).parent / "fake_nvml"
U0, U1, U2, U3 = (
    "GPU-a0000000-0000-4000-8000-000000000000",
    "GPU-b1111111-1111-4111-8111-111111111111",
    "GPU-c2222222-2222-4222-8222-222222222222",
    "GPU-d3333333-3333-4333-8333-333333333333",
)
H200 = "GPU-5a1c0e2f-0000-4000-8000-000000000000"
MIG_A = "MIG-11111111-aaaa-5aaa-8aaa-aaaaaaaaaaaa"
MIG_B = "MIG-22222222-bbbb-5bbb-8bbb-bbbbbbbbbbbb"


def fake_env(name: str | None, cvd: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(extra)
    if name is not None:
        env.update(fake_vars(name))
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    return env


def plan_all(host: str, visible, visible_env, local_size: int, options: BindingOptions):
    """Every local rank's binding and all their warnings."""
    out, warns = [], []
    for lr in range(local_size):
        b, w = plan_binding(
            host=host,
            rank=lr,
            local_rank=lr,
            local_size=local_size,
            visible=visible,
            visible_env=visible_env,
            options=options,
        )
        out.append(b)
        warns += w
    return out, warns


def bind_all(name: str, cvd: str | None, local_size: int, options: BindingOptions = BindingOptions()):
    gpus, visible_env, _ = detect(fake_env(name, cvd))
    return plan_all("n1", select_visible(gpus, visible_env), visible_env, local_size, options)


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


# ---------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, None),
        ("", []),
        ("  ", []),
        ("0,1", ["0", "1"]),
        (" 2 , 3 ", ["2", "3"]),
        ("NoDevFiles", []),
        ("-1", []),
        ("0,-1,1", ["0"]),
        ("1,1,0", ["1", "0"]),
        ("01", ["1"]),
        (f"{U0},{MIG_A}", [U0, MIG_A]),
        (f"MIG-{U1}/1/0", [f"MIG-{U1}/1/0"]),
    ],
)
def test_parse_visible_devices(value, expected):
    assert parse_visible_devices(value) == expected


def four() -> list[GpuInfo]:
    return detect(fake_env("four"))[0]


def test_select_visible_indices_uuids_and_prefixes():
    gpus = four()
    assert [g.uuid for g in select_visible(gpus, None)] == [U0, U1, U2, U3]
    assert [g.index for g in select_visible(gpus, ["2", "3"])] == [2, 3]
    assert [g.index for g in select_visible(gpus, [U3, "GPU-b111"])] == [3, 1]
    assert select_visible(gpus, []) == []
    assert select_visible([], ["0"]) == []  # nothing to map against: CPU mode decides


@pytest.mark.parametrize(
    "entries,match",
    [
        (["7"], "matches no GPU"),
        (["GPU-ffff"], "matches no GPU"),
        (["GPU-"], "several"),
        (["banana"], "neither an index"),
        (["MIG-GPU-ffff/1/0"], "matches no GPU"),
    ],
)
def test_select_visible_unknown_entries_raise_with_fix(entries, match):
    with pytest.raises(UsageError, match=match) as info:
        select_visible(four(), entries)
    assert "Fix:" in str(info.value) and "badc-mpi gpus" in str(info.value)


def test_select_visible_mig():
    gpus = detect(fake_env("mig"))[0]
    unset = select_visible(gpus, None)  # MIG parent stands for its instances
    assert [(g.index, g.uuid) for g in unset] == [(0, MIG_A), (0, MIG_B), (1, gpus[1].uuid)]
    old_style = f"MIG-{gpus[0].uuid}/1/0"
    got = select_visible(gpus, [MIG_B, old_style])
    assert [(g.index, g.uuid, g.name) for g in got] == [
        (0, MIG_B, "NVIDIA H100 80GB HBM3 MIG"),
        (0, old_style, "NVIDIA H100 80GB HBM3 MIG"),
    ]
    # an unlisted new-style MIG id goes to the only MIG-enabled GPU
    assert select_visible(gpus, ["MIG-99999999-0000-5000-8000-000000000000"])[0].index == 0


# ---------------------------------------------------------------------------- binding rules


def test_four_gpus_four_ranks_one_each():
    bs, warns = bind_all("four", None, 4)
    assert [b.worker for b in bs] == ["gpu0@n1", "gpu1@n1", "gpu2@n1", "gpu3@n1"]
    assert [b.cuda_visible_devices for b in bs] == [U0, U1, U2, U3]
    assert warns == [] and sharing_warnings(bs, BindingOptions()) == []
    env = bs[2].runner_env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert env == {"PATH": "/bin", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": U2}
    assert bs[0].gpu_name == "NVIDIA A100-SXM4-40GB" and bs[0].gpu_memory_total_mib == 40960


def test_slurm_mask_indices():
    bs, warns = bind_all("four", "2,3", 2)
    assert [(b.gpu_index, b.cuda_visible_devices) for b in bs] == [(2, U2), (3, U3)]
    assert [b.worker for b in bs] == ["gpu2@n1", "gpu3@n1"] and warns == []


def test_slurm_mask_uuids():
    bs, _ = bind_all("four", f"{U3},{U1}", 2)
    assert [b.gpu_index for b in bs] == [3, 1]


def test_slurm_mask_mig():
    bs, _ = bind_all("mig", f"{MIG_A},{MIG_B}", 2)
    assert [(b.worker, b.cuda_visible_devices) for b in bs] == [("gpu0@n1", MIG_A), ("gpu0@n1", MIG_B)]
    assert sharing_warnings(bs, BindingOptions()) == []  # two MIG instances are two devices


@pytest.mark.parametrize("cvd,index", [("2", 2), (U1, 1), ("GPU-d333", 3)])
def test_narrowed_single_device_used_as_is(cvd, index):
    bs, warns = bind_all("four", cvd, 3, BindingOptions(workers_per_gpu=1))
    assert all(b.cuda_visible_devices == cvd and b.gpu_index == index for b in bs)
    assert warns == []
    # ranks of one process tree on one narrowed GPU: the cross-rank check catches it
    assert len(sharing_warnings(bs, BindingOptions())) == 1


def test_narrowed_under_srun_each_rank_own_gpu():
    # srun --gpus-per-task=1: each rank's own environment names a different single GPU
    bs = [
        bind_rank(host="n1", rank=i, local_rank=i, local_size=2, options=BindingOptions(), env=fake_env("four", cvd))[0]
        for i, cvd in enumerate(["0", "1"])
    ]
    assert [b.cuda_visible_devices for b in bs] == ["0", "1"]
    assert sharing_warnings(bs, BindingOptions()) == []


def test_narrowed_warns_that_cpu_workers_do_not_apply():
    _, warns = bind_all("four", "1", 2, BindingOptions(cpu_workers=1))
    assert warns and "--cpu-workers" in warns[0]


def test_empty_mask_means_cpu():
    bs, warns = bind_all("four", "", 3)
    assert [b.worker for b in bs] == ["cpu0@n1", "cpu1@n1", "cpu2@n1"]
    assert all(b.cuda_visible_devices == "" and not b.uses_gpu for b in bs) and warns == []


@pytest.mark.parametrize("name", ["zero", "no_driver"])
def test_no_gpus_every_rank_cpu(name):
    bs, warns = bind_all(name, None, 3)
    assert [b.worker for b in bs] == ["cpu0@n1", "cpu1@n1", "cpu2@n1"] and warns == []
    assert bs[1].runner_env({})["CUDA_VISIBLE_DEVICES"] == ""


def test_max_gpus():
    bs, warns = bind_all("four", None, 2, BindingOptions(max_gpus=2))
    assert [b.gpu_index for b in bs] == [0, 1] and warns == []
    bs, _ = bind_all("four", None, 2, BindingOptions(max_gpus=0))
    assert [b.worker for b in bs] == ["cpu0@n1", "cpu1@n1"]
    bs, _ = bind_all("four", "3,2,1", 2, BindingOptions(max_gpus=2))
    assert [b.gpu_index for b in bs] == [3, 2]


def test_workers_per_gpu_two_eight_ranks_four_gpus():
    opts = BindingOptions(workers_per_gpu=2)
    bs, warns = bind_all("four", None, 8, opts)
    assert [b.gpu_index for b in bs] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert warns == [] and sharing_warnings(bs, opts) == []
    assert len(sharing_warnings(bs, BindingOptions())) == 4  # the same layout without the option


def test_cpu_workers_after_gpu_slots():
    bs, warns = bind_all("four", "0,1", 5, BindingOptions(cpu_workers=2))
    assert [b.worker for b in bs] == ["gpu0@n1", "gpu1@n1", "cpu0@n1", "cpu1@n1", "gpu0.1@n1"]
    assert len(warns) == 1 and "local rank 4" in warns[0] and "NP=4" in warns[0]


def test_oversubscribed_without_option_warns_and_round_robins():
    bs, warns = bind_all("one", None, 3)
    assert [b.cuda_visible_devices for b in bs] == [H200] * 3
    assert len(warns) == 2 and "NP=1" in warns[0] and "--workers-per-gpu 3" in warns[0]
    (shared,) = sharing_warnings(bs, BindingOptions())
    assert "ranks 0, 1, 2" in shared and "--workers-per-gpu 3" in shared


def test_binding_options_validated():
    for bad in ({"max_gpus": -1}, {"workers_per_gpu": 0}, {"cpu_workers": -2}):
        with pytest.raises(UsageError):
            BindingOptions(**bad)


def test_plan_node_and_table():
    gpus, visible_env, _ = detect(fake_env("one"))
    node = plan_node("n7", 2, select_visible(gpus, visible_env), visible_env, BindingOptions(cpu_workers=1), first_rank=4)
    assert [(b.rank, b.local_rank, b.worker) for b in node] == [(4, 0, "gpu0@n7"), (5, 1, "cpu0@n7")]
    table = format_binding_table(node).splitlines()
    assert table[0].split() == ["host", "rank", "local", "worker", "gpu", "uuid", "name"]
    assert table[1].split() == ["n7", "4", "0", "gpu0@n7", "0", H200, "NVIDIA", "H200"]
    assert table[2].split() == ["n7", "5", "1", "cpu0@n7", "-", "-", "CPU"]


def test_binding_help_mentions_every_rule():
    for word in (
        "narrowed",
        "--max-gpus",
        "--workers-per-gpu",
        "--cpu-workers",
        "PCI_BUS_ID",
        'CUDA_VISIBLE_DEVICES=""',
        "cpu<local rank>@host",
    ):
        assert word in BINDING_HELP
    assert "cpu_workers" in plan_binding.__doc__


@settings(max_examples=300, deadline=None)
@given(
    n_gpus=st.sampled_from(["zero", "one", "four"]),
    cvd=st.sampled_from([None, "", "0", "2,3", "3,1,0", U2, f"{U0},{U3}"]),
    local_size=st.integers(1, 24),
    max_gpus=st.one_of(st.none(), st.integers(0, 6)),
    wpg=st.integers(1, 4),
    cpus=st.integers(0, 6),
)
def test_property_no_silent_oversubscription(n_gpus, cvd, local_size, max_gpus, wpg, cpus):
    gpus = detect(fake_env(n_gpus))[0]
    visible_env = parse_visible_devices(cvd)
    try:
        visible = select_visible(gpus, visible_env)
    except UsageError:
        assert n_gpus != "four"  # masks here only name GPUs of four.json
        return
    opts = BindingOptions(max_gpus=max_gpus, workers_per_gpu=wpg, cpu_workers=cpus)
    bindings, warns = plan_all("h", visible, visible_env, local_size, opts)
    warns += sharing_warnings(bindings, opts)
    per_gpu: dict[str, int] = {}
    for b in bindings:
        if b.uses_gpu:
            per_gpu[b.gpu_uuid] = per_gpu.get(b.gpu_uuid, 0) + 1
            # the mask names exactly one visible device, and it is the bound one
            named = select_visible(gpus, parse_visible_devices(b.cuda_visible_devices))
            assert [g.uuid for g in named] == [b.gpu_uuid] and named[0] in visible
            assert re.fullmatch(rf"gpu{b.gpu_index}(\.[1-9][0-9]*)?@h", b.worker), b.worker
        else:
            assert b.cuda_visible_devices == "" and b.worker.startswith("cpu")
    if any(count > wpg for count in per_gpu.values()):
        assert warns
    if visible_env is None or len(visible_env) != 1:  # (a narrowed mask: each rank may own its device)
        labels = [b.worker for b in bindings]
        assert len(labels) == len(set(labels)), "worker labels are unique on a node"
    cpu_labels = [b.worker for b in bindings if not b.uses_gpu]
    assert len(cpu_labels) == len(set(cpu_labels))


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


# ---------------------------------------------------------------------------- no silent CPU


@pytest.mark.parametrize(
    "env,options,expected",
    [
        ({}, BindingOptions(), None),
        ({"CUDA_VISIBLE_DEVICES": ""}, BindingOptions(), None),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, BindingOptions(), "CUDA_VISIBLE_DEVICES=0,1"),
        ({"SLURM_JOB_GPUS": "0,1,2,3"}, BindingOptions(), "SLURM_JOB_GPUS=0,1,2,3"),
        ({"SLURM_GPUS_ON_NODE": "0"}, BindingOptions(), None),
        ({"SLURM_STEP_GPUS": "0"}, BindingOptions(), "SLURM_STEP_GPUS=0"),  # a list: GPU index 0
        ({"SLURM_JOB_GPUS": "0"}, BindingOptions(max_gpus=0), None),
        ({}, BindingOptions(max_gpus=2), "--max-gpus 2"),
    ],
)
def test_gpus_expected(env, options, expected):
    assert gpus_expected(env, options) == expected


def test_a_rank_given_gpus_it_cannot_use_gets_a_problem_not_a_cpu_run():
    env = {**fake_env("no_driver"), "CUDA_VISIBLE_DEVICES": "0"}
    binding, _, reason = bind_rank(host="n1", rank=0, local_rank=0, local_size=1, options=BindingOptions(), env=env)
    assert not binding.uses_gpu and reason and "NVML is unavailable" in binding.problem
    assert "CUDA_VISIBLE_DEVICES=0" in binding.problem
    allowed, _, _ = bind_rank(host="n1", rank=0, local_rank=0, local_size=1, options=BindingOptions(allow_cpu=True), env=env)
    assert allowed.problem is None
    plain, _, _ = bind_rank(host="n1", rank=0, local_rank=0, local_size=1, options=BindingOptions(), env=fake_env("no_driver"))
    assert plain.problem is None  # no GPU was given: CPU is what this machine has
    zero = {**fake_env("zero"), "SLURM_STEP_GPUS": "0"}
    none_seen, _, _ = bind_rank(host="n1", rank=0, local_rank=0, local_size=1, options=BindingOptions(), env=zero)
    assert "NVML sees no usable GPU" in none_seen.problem
    gpu, _, _ = bind_rank(
        host="n1", rank=0, local_rank=0, local_size=1, options=BindingOptions(), env={**fake_env("one"), "SLURM_JOB_GPUS": "0"}
    )
    assert gpu.uses_gpu and gpu.problem is None


def test_run_with_gpus_it_cannot_use_stops_with_exit_2_unless_allow_cpu(tmp_path):
    require_or_skip(shutil.which(MPIEXEC) is not None, f"no mpiexec ({MPIEXEC}): `make install` puts MPICH's in .venv")
    import subprocess

    from helpers import make_dataset

    manifest = make_dataset(tmp_path, 1, 3, seconds=0.2)
    env = {**os.environ, **fake_env("no_driver"), "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    base = [
        str(MPIEXEC),
        "-n",
        "2",
        sys.executable,
        "-m",
        "badc_mpi",
        "run",
        str(manifest),
        "--dry-run",
        "--output-dir",
        str(tmp_path / "out"),
        "--telemetry-dir",
        str(tmp_path / "tel"),
    ]
    refused = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("badc-mpi: error")]
    assert len(errors) == 1 and "no rank can work" in errors[0] and "NVML is unavailable" in errors[0]
    assert "--allow-cpu" in errors[0]
    allowed = subprocess.run([*base, "--allow-cpu"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
