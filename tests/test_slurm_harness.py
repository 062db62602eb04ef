"""The test-slurm harness's pure parts, without a cluster (scripts/cluster/slurm_cluster.py, tests/slurm_jobs.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import REPO  # puts scripts/' folders on sys.path
from slurm_jobs import Budget, parse_repeats, parse_scontrol, signal_option

# isort: split
import slurm_cluster


def rendered(tmp_path: Path) -> tuple[str, str]:
    values = slurm_cluster.config_values(tmp_path / "state", [16817, 16818, 17001, 17002], 123456)
    conf = slurm_cluster.render((slurm_cluster.TEMPLATES / "slurm.conf.in").read_text(), values)
    gres = slurm_cluster.render((slurm_cluster.TEMPLATES / "gres.conf.in").read_text(), values)
    return conf, gres


def test_the_config_is_all_under_its_folder_with_its_own_ports_and_munge_socket(tmp_path):
    conf, gres = rendered(tmp_path)
    state = str(tmp_path / "state")
    assert "${" not in conf + gres
    assert f"AuthInfo=socket={state}/munge/munge.socket" in conf
    paths = re.findall(r"^(?:StateSaveLocation|SlurmdSpoolDir|Slurm\w*(?:Log|Pid)File)=(\S+)", conf, re.M)
    assert len(paths) == 6 and all(p.startswith(state + "/") for p in paths)
    assert "FirstJobId=123456" in conf and "SlurmctldPort=16817" in conf and "Port=17001" in conf and "Port=17002" in conf
    nodes = re.findall(r"^NodeName=(\S+) .*Gres=gpu:4", conf, re.M)
    assert nodes == ["n1", "n2"] and "Nodes=n1,n2" in conf
    assert f"File={state}/dev/nvidia[0-3]" in gres
    with pytest.raises(KeyError):  # a placeholder without a value is an error, never left in
        slurm_cluster.render("x=${missing}", {})


def test_signal_option_keeps_the_scripts_kind_of_signal_with_a_test_lead(tmp_path):
    (real,) = signal_option(REPO / "slurm" / "infer.sbatch", 10)
    assert re.fullmatch(r"--signal=(B:)?TERM@10", real)
    steps = tmp_path / "s.sbatch"
    steps.write_text("#!/bin/bash\n#SBATCH --signal=TERM@300\nsrun true\n")
    assert signal_option(steps, 10) == ["--signal=TERM@10"]
    batch = tmp_path / "b.sbatch"
    batch.write_text("#!/bin/bash\n#SBATCH --time=1:00:00\n#SBATCH --signal=B:USR1@600\necho\n")
    assert signal_option(batch, 15) == ["--signal=B:USR1@15"]
    batch.write_text("#!/bin/bash\n#SBATCH --time=1:00:00\n")
    assert signal_option(batch, 15) == []


def test_parse_scontrol_one_line():
    line = "JobId=12 JobName=badc-infer UserId=root(0) JobState=FAILED Reason=NonZeroExitCode ExitCode=75:0 NumTasks=4"
    info = parse_scontrol(line)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "75:0" and info["NumTasks"] == "4" and info["JobId"] == "12"


def test_without_root_it_says_so_in_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    assert slurm_cluster.main(["prepare"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]
    assert slurm_cluster.main(["run", "--", "true"]) == 2


def test_processes_with_env_finds_only_the_process_holding_that_value():
    marker = uuid.uuid4().hex
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={"BADC_TEST_MARK": marker})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={"BADC_TEST_MARK": "other"})
    try:
        assert slurm_cluster.processes_with_env("BADC_TEST_MARK", marker) == [child.pid]
    finally:
        for proc in (child, other):
            proc.kill()
            proc.wait()


def test_repeats_name_tests_and_counts_and_refuse_anything_else():
    assert parse_repeats("") == {}
    assert parse_repeats("test_a=20, test_b=1") == {"test_a": 20, "test_b": 1}
    for bad in ("test_a", "test_a=0", "test_a=x", "=3"):
        with pytest.raises(ValueError, match="NAME=COUNT"):
            parse_repeats(bad, "BADC_MPI_SLURM_REPEAT")


def test_a_budget_cuts_waits_to_the_tests_timeout_less_its_cleanup_and_says_so():
    budget = Budget(timeout_s=300, reserve_s=75, started=1000.0)
    assert budget.end == 1225.0
    assert budget.why(100, 100) == ""
    assert "the test's budget of 225 s" in budget.why(240, 30) and "300 s timeout" in budget.why(240, 30)


def test_waits_end_inside_the_budget_with_their_own_message():
    import time

    import slurm_jobs

    slurm_jobs.set_budget(Budget(timeout_s=1.0, reserve_s=0.5, started=time.monotonic()))
    try:
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"not within 0 s \(cut from 30 s: .*\): the thing"):
            slurm_jobs.wait_until(lambda: False, 30, "the thing", interval_s=0.05)
        assert time.monotonic() - started < 2
        assert slurm_jobs.capped(30) <= 0.5
    finally:
        slurm_jobs.set_budget(None)
    assert slurm_jobs.capped(30) == 30


@pytest.mark.parametrize(
    ("env", "wheel", "expected"),
    [
        ({"SLURM_STEP_NUM_NODES": "2"}, True, "ofi"),  # srun -N2 with the MPICH wheel
        ({"SLURM_NNODES": "4"}, True, "ofi"),  # a batch step over 4 nodes
        ({"SLURM_STEP_NUM_NODES": "1", "SLURM_NNODES": "2"}, True, None),  # the step is on one node
        ({"SLURM_STEP_NUM_NODES": "2"}, False, None),  # a site MPI: never touched
        ({"SLURM_STEP_NUM_NODES": "2", "MPIR_CVAR_CH4_NETMOD": "ucx"}, True, None),  # the user's choice
        ({}, True, None),  # mpiexec on one machine
    ],
)
def test_a_multi_node_step_of_the_mpich_wheel_gets_ofi_unless_told_otherwise(env, wheel, expected):
    from badc_mpi.transport.netmod import netmod_for

    assert netmod_for(env, wheel) == expected


def test_the_network_module_is_set_before_mpi_starts_and_said_once():
    """``python -m badc_mpi`` under a two-node step: the variable is in the environment MPI reads
    (checked in a child where mpi4py.MPI was never imported), and rank 0 says so."""
    code = (
        "import os, sys; sys.argv = ['badc-mpi', '--version']\n"
        "from badc_mpi.transport import netmod\n"
        "netmod.apply(); assert 'mpi4py.MPI' not in sys.modules; print(os.environ.get('MPIR_CVAR_CH4_NETMOD'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPIR_CVAR_CH4_NETMOD"}
    env.update(SLURM_STEP_NUM_NODES="2", SLURM_PROCID="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ofi" and "MPIR_CVAR_CH4_NETMOD=ofi" in proc.stderr
