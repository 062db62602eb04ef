"""Which GPU (or CPU) each rank gets: CUDA_VISIBLE_DEVICES read, the binding rules (narrowed
masks, --max-gpus, --workers-per-gpu, --cpu-workers), never a silent oversubscription, never a
silent CPU run; NVML faked at its seam (``test_gpu.py``)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from badc_mpi.errors import UsageError
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
from badc_mpi.gpu.report import format_binding_table
from badc_mpi.options import BindingOptions

from ci_rules import require_or_skip
from fakes.nvml import H200, MIG_A, MIG_B, U0, U1, U2, U3
from fakes.nvml import gpus_env as fake_env
from helpers import MPIEXEC


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
