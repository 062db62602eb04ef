"""Batch scripts: golden files, the shipped scripts, shellcheck, and the scripts run in a fake job
(a fake `srun` on PATH that runs the command as one task; SLURM's variables set by hand).

Regenerate the golden files after a deliberate change: BADC_MPI_UPDATE_GOLDEN=1 pytest tests/test_sbatch.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from badc_mpi.errors import UsageError
from badc_mpi.orchestrate.sbatch import JobSpec, SbatchOptions, render, shipped_scripts

from ci_rules import check_golden, require_or_skip
from helpers import FAKE, PYTHON, REPO, make_dataset

GOLDEN = Path(__file__).parent / "golden"
FAKES = Path(__file__).parent / "fakes"
SHELLCHECK = shutil.which("shellcheck")

QUEUE_SPEC = JobSpec(
    dataset="/arc/project/st-lab-1/ds one",
    manifests=("manifests/site1.csv", "manifests/site 2 $(touch pwned).csv"),
    run_args=("--hawkears-data-root", "/scratch/st-lab-1/hawkears-data", "--max-retries", "3"),
    python="/arc/project/st-lab-1/badc-mpi/.venv/bin/python",
    script_path="/scratch/st-lab-1/jobs/ds.sbatch",
)
CASES = {
    "queue.sbatch": (
        QUEUE_SPEC,
        SbatchOptions(account="st-lab-1-gpu", nodes=2, time="1-00:00:00", log_dir="/scratch/st-lab-1/logs"),
    ),
    "array.sbatch": (
        QUEUE_SPEC,
        SbatchOptions(array=True, gres="none", mpi="pmix", bundle_aggregate_dir="/scratch/agg", bundle_bucket_minutes=30),
    ),
    "minimal.sbatch": (
        JobSpec(dataset="/data/ds", manifests=("m.csv",), python="/opt/py", script_path="/data/job.sbatch"),
        SbatchOptions(resume_completed=False, bundle=False, record_datalad=False, signal_s=60),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_scripts_match_their_golden_files(name):
    spec, options = CASES[name]
    text = render(spec, options)
    check_golden(GOLDEN / name, text, f"pytest {__file__}")
    assert render(spec, options) == text  # pure: the same inputs, the same bytes


def test_the_shipped_scripts_are_the_generator_s():
    for name, text in shipped_scripts().items():
        check_golden(REPO / "slurm" / name, text, f"the generator's; pytest {__file__}")


def test_what_the_golden_scripts_say():
    queue = (GOLDEN / "queue.sbatch").read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --signal=B:TERM@120",
        "#SBATCH --account=st-lab-1-gpu",
        "#SBATCH --output=/scratch/st-lab-1/logs/%x-%j.out",
        "DATASET='/arc/project/st-lab-1/ds one'",
        "    'manifests/site 2 $(touch pwned).csv'",  # quoted: never run
        "MPI_PLUGIN=${BADC_SRUN_MPI:-pmi2}",
        "trap forward_term TERM",
        'cd "$DATASET"',
    ):
        assert line in queue.splitlines(), line
    array = (GOLDEN / "array.sbatch").read_text()
    assert "#SBATCH --array=0-1" in array and "--gres" not in array.split("set -euo")[0].replace("--gres=none", "")
    assert "MPI_PLUGIN=${BADC_SRUN_MPI:-pmix}" in array and "%x-%A_%a.out" in array
    minimal = (GOLDEN / "minimal.sbatch").read_text()
    assert "RESUME_COMPLETED=${BADC_RESUME:-0}" in minimal and "BUNDLE=${BADC_BUNDLE:-0}" in minimal


@pytest.mark.parametrize(
    "options,needle",
    [
        (SbatchOptions(log_dir="/scratch/my logs"), "--sockeye-log-dir"),
        (SbatchOptions(account="st;rm -rf"), "--sockeye-account"),
        (SbatchOptions(signal_s=30), "--sockeye-signal-s"),
        (SbatchOptions(nodes=0), "--sockeye-nodes"),
    ],
)
def test_bad_values_are_refused_with_the_option_s_name(options, needle):
    with pytest.raises(UsageError) as err:
        render(CASES["minimal.sbatch"][0], options)
    assert needle in str(err.value) and "Fix:" in str(err.value)


def _shellcheck(paths):
    require_or_skip(SHELLCHECK is not None, "shellcheck is not installed: `make shellcheck` installs Debian's (as root)")
    done = subprocess.run([SHELLCHECK, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shellcheck_passes_on_the_golden_and_shipped_scripts():
    _shellcheck(sorted(GOLDEN.glob("*.sbatch")) + sorted((REPO / "slurm").glob("*.sbatch")))


# -- the scripts run in a fake job -----------------------------------------------------------------
def job_env(tmp_path, **extra):
    env = {
        **os.environ,
        "PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "badc-infer",
        "SLURM_SUBMIT_DIR": str(REPO),
        "BADC_FAKE_SRUN_LOG": str(tmp_path / "srun.log"),
        "BADC_PYTHON": PYTHON,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("SLURM_ARRAY_TASK_ID", None)
    return {**env, **extra}


def run_args(*extra):
    return ["--runner", "command", "--runner-cmd", f"{PYTHON} {FAKE} --input {{input}} --output {{output_dir}} {' '.join(extra)}"]


def sbatch_like(script, args, env, timeout_s=180):
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


@pytest.mark.slow
def test_shipped_script_runs_resumes_and_bundles(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 2, 2)
    env = job_env(tmp_path, DATASET=str(tmp_path / "ds"))
    first = sbatch_like(REPO / "slurm" / "infer.sbatch", [str(manifest), "--", *run_args()], env)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "badc-mpi: resume: no (earlier runs: none" in out
    assert "badc-mpi: running: srun --mpi=pmi2 --kill-on-bad-exit=1" in out
    assert "the run finished: every chunk succeeded" in out
    assert "report   " in out and (tmp_path / "ds" / "artifacts" / "aggregate" / "chunks" / "report.html").exists()
    assert "--mpi=pmi2 --kill-on-bad-exit=1" in (tmp_path / "srun.log").read_text()
    second = sbatch_like(REPO / "slurm" / "infer.sbatch", [str(manifest), "--", *run_args()], {**env, "BADC_SRUN_MPI": "pmix"})
    assert second.returncode == 0, second.stdout + second.stderr
    assert "badc-mpi: resume: yes, earlier runs: 1 (latest: " in second.stdout
    assert "--resume" in second.stdout.split("badc-mpi: running: ")[1].splitlines()[0]
    assert "4 skipped" in second.stdout + second.stderr  # the resume note: nothing ran twice
    assert "--mpi=pmix" in (tmp_path / "srun.log").read_text().splitlines()[-1]


def test_shipped_script_refuses_unchunked_recordings_before_running(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 1, 1, status="in_progress")
    env = job_env(tmp_path, DATASET=str(tmp_path / "ds"))
    done = sbatch_like(REPO / "slurm" / "infer.sbatch", [str(manifest), "--", *run_args()], env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the plan was refused (exit 3" in done.stdout and "rec000 (in_progress" in done.stderr
    assert not (tmp_path / "srun.log").exists() and not (tmp_path / "ds" / "artifacts" / "infer").exists()


def test_shipped_script_without_manifests_says_how_to_submit(tmp_path):
    done = sbatch_like(REPO / "slurm" / "infer.sbatch", [], job_env(tmp_path))
    assert done.returncode == 2 and "usage: sbatch slurm/infer.sbatch MANIFEST" in done.stderr


@pytest.mark.slow
def test_log_dir_keeps_the_dataset_untouched(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 1, 2)
    log_dir = tmp_path / "scratch" / "logs"
    env = job_env(tmp_path, DATASET=str(tmp_path / "ds"), LOG_DIR=str(log_dir), RECORD_DATALAD="0")
    done = sbatch_like(REPO / "slurm" / "infer.sbatch", [str(manifest), "--", *run_args()], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"LOG_DIR={log_dir}" in done.stdout
    assert list((log_dir / "telemetry").glob("*.ledger.jsonl")) and (log_dir / "infer" / "detections").is_dir()
    assert (log_dir / "aggregate" / "chunks" / "report.html").exists()
    assert not (tmp_path / "ds" / "artifacts" / "infer").exists() and not (tmp_path / "ds" / "data").exists()


@pytest.mark.slow
def test_array_task_runs_its_own_manifest_into_its_own_folder(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 1, 2)
    other = manifest.with_name("other.csv")
    other.write_text(manifest.read_text())
    env = job_env(tmp_path, DATASET=str(tmp_path / "ds"), SLURM_ARRAY_TASK_ID="1")
    done = sbatch_like(REPO / "slurm" / "infer-array.sbatch", [str(manifest), str(other), "--", *run_args()], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "manifests (one queue): " + str(other) in done.stdout
    assert (tmp_path / "ds" / "artifacts" / "infer" / "other" / "detections").is_dir()
    assert not (tmp_path / "ds" / "artifacts" / "infer" / "chunks").exists()
    missing = sbatch_like(REPO / "slurm" / "infer-array.sbatch", [str(manifest)], {**env, "SLURM_ARRAY_TASK_ID": "5"})
    assert missing.returncode == 2 and "array task 5 has no manifest" in missing.stdout


@pytest.mark.slow
def test_sigterm_to_the_batch_shell_reaches_the_run_which_stops_cleanly(tmp_path):
    """--signal=B:TERM signals the batch shell only: it must forward TERM to the step and wait."""
    manifest = make_dataset(tmp_path / "ds", 1, 6)
    env = job_env(tmp_path, DATASET=str(tmp_path / "ds"))
    args = [str(manifest), "--", *run_args("--sleep-s", "30"), "--grace-s", "1"]
    proc = subprocess.Popen(
        ["bash", str(REPO / "slurm" / "infer.sbatch"), *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        telemetry = tmp_path / "ds" / "data" / "telemetry" / "infer"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (telemetry.is_dir() and any(telemetry.glob("*.jsonl"))):
            time.sleep(0.2)
        time.sleep(2)  # the run is inside its first chunk
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out
    assert time.monotonic() - started < 30, "the stop must fit SLURM's KillWait"
    assert "SIGTERM (the time limit is near, or scancel): stopping the run cleanly" in out
    assert "the run stopped before the end" in out
    resubmit = [line for line in out.splitlines() if line.startswith("badc-mpi: resubmit")]
    assert resubmit and f"cd {REPO} && sbatch slurm/infer.sbatch {manifest} --" in resubmit[0]
    summaries = list((tmp_path / "ds" / "data" / "telemetry" / "infer").glob("*.summary.json"))
    assert summaries and '"interrupted"' in summaries[0].read_text()
