"""Issue 21, the newcomer's path: `badc-mpi init` (audio annexed, refused without git-annex),
`make infer` twice (resumes, nothing remains), chunk/export inside a dataset leave it clean, and a
Ctrl-C to the whole process group: exit 75, DataLad alive to save, badc-mpi's line last."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_chunk import tone
from test_cli import REPO, this_venv
from test_orchestrate import git, tool_env

from badc_mpi.cli import main
from badc_mpi.orchestrate import datalad as dl

from ci_rules import require_or_skip
from helpers import MPIEXEC, PYTHON, make_dataset, run_own, stop_tree, stopped_exit_ok

DATALAD = Path(PYTHON).parent / "datalad"


@pytest.fixture
def needs_datalad() -> None:
    require_or_skip(DATALAD.exists(), "datalad is not installed in the venv: `make install`")


def badc(args: list[str], cwd: Path, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return run_own([PYTHON, "-m", "badc_mpi", *args], cwd=cwd, env=tool_env(), timeout_s=timeout_s)


def test_init_without_git_annex_refuses_and_leaves_no_git(tmp_path, monkeypatch, capsys):
    data = tmp_path / "field"
    tone(data / "KAK-01_20240601_050000.wav", 1)
    monkeypatch.setattr(dl, "tool_env", lambda: {**os.environ, "PATH": str(tmp_path / "empty")})
    assert main(["init", str(data)]) == 2
    err = capsys.readouterr().err
    assert "no git-annex found" in err and "source .venv/bin/activate" in err
    assert sorted(p.name for p in data.iterdir()) == ["KAK-01_20240601_050000.wav"]


def test_make_infer_twice_resumes_and_orchestrate_writes_no_script_when_nothing_remains(tmp_path, capsys):
    manifest = make_dataset(tmp_path, 2, 2)
    chunks = tmp_path / "artifacts" / "chunks"
    args = f"--dry-run --chunks-dir {chunks} --output-dir {tmp_path / 'out'} --telemetry-dir {tmp_path / 'tel'}"
    make = ["make", "-s", "-C", str(REPO), *this_venv(), "infer", f"MANIFEST={manifest}", f"ARGS={args}"]
    first = run_own(make, timeout_s=90)
    assert first.returncode == 0 and "4 succeeded" in first.stdout, first.stderr[-2000:]
    again = run_own(make, timeout_s=90)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing remains: earlier runs did all 4 chunks" in again.stdout and "make bundle" in again.stdout
    assert len(list((tmp_path / "tel").glob("*.ledger.jsonl"))) == 1  # nothing re-analysed
    resume = run_own(["make", "-n", "-C", str(REPO), *this_venv(), "resume", f"MANIFEST={manifest}"], timeout_s=60)
    assert "orchestrate --manifest" in resume.stdout and "--apply" in resume.stdout  # recorded as make infer is
    script = tmp_path / "job.sbatch"
    rc = main(["orchestrate", "--manifest", str(manifest), "--sockeye-script", str(script), "--run-args", *args.split()])
    assert rc == 0 and "nothing remains" in capsys.readouterr().out and not script.exists()


def _interrupted(cmd: list[str], root: Path, tel: Path) -> tuple[subprocess.Popen[str], str, str]:
    """Start ``cmd`` in its own process group in ``root``, Ctrl-C it (SIGINT to the whole group,
    as a terminal does) once a chunk succeeded, and wait for it."""
    proc = subprocess.Popen(
        cmd, cwd=root, env={**os.environ, **tool_env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any('"success"' in p.read_text() for p in tel.glob("*.jsonl")):
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
        out, err = proc.communicate(timeout=120)
    except BaseException:
        stop_tree(proc)
        raise
    return proc, out, err


def _dataset(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A DataLad dataset of 2 recordings x 4 chunks made by `badc-mpi init`: (root, manifest, telemetry folder)."""
    root = tmp_path / "ds"
    manifest = make_dataset(root, 2, 4)
    assert badc(["init", str(root)], tmp_path).returncode == 0
    return root, manifest, root / "artifacts" / "telemetry" / "infer"


def _saved_after_the_summary(out: str, err: str, root: Path, resume: str) -> None:
    """badc-mpi's stop summary and resume command end stdout, no traceback, and DataLad saved the run."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-2].startswith("badc-mpi: stopped (exit 75); what the ranks wrote is saved"), out[-2000:]
    assert lines[-1].strip().startswith(resume), out[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert git(["status", "--porcelain"], root) == ""  # DataLad lived on and saved what the ranks wrote
    assert git(["log", "-1", "--format=%s"], root).startswith("[DATALAD RUNCMD] badc-mpi run")


@pytest.mark.usefixtures("needs_datalad")
def test_ctrl_c_to_the_process_group_exits_75_with_outputs_saved_and_badc_mpi_last(tmp_path):
    root, manifest, tel = _dataset(tmp_path)
    cmd = [PYTHON, "-m", "badc_mpi", "orchestrate", "--manifest", str(manifest), "--apply", "--np", "2",
           "--mpiexec", MPIEXEC, "--run-args", "--dry-run", "--stub-sleep-s", "1.5"]  # fmt: skip
    proc, out, err = _interrupted(cmd, root, tel)
    assert stopped_exit_ok(proc.returncode), (proc.returncode, out[-2000:], err[-2000:])
    _saved_after_the_summary(out, err, root, "badc-mpi orchestrate --manifest")
    assert "--apply" in out.strip().splitlines()[-1]
    exported = badc(["export", str(manifest), "--format", "tables", "--record-datalad"], root)
    assert exported.returncode == 0, exported.stderr
    assert git(["status", "--porcelain"], root) == ""  # the export and the aggregate it made, both saved
    assert "artifacts/aggregate/chunks/chunks.parquet" in git(["ls-files"], root)


@pytest.mark.usefixtures("needs_datalad")
def test_ctrl_c_during_make_infer_saves_the_outputs_and_make_only_adds_its_own_line(tmp_path):
    # GNU make, hit by the same Ctrl-C, waits for its recipe and then dies of the signal (status 130 in
    # a shell) after one line of its own on stderr; badc-mpi's summary and `make resume` end stdout
    root, manifest, tel = _dataset(tmp_path)
    cmd = ["make", "-s", "-C", str(REPO), *this_venv(), "infer", f"MANIFEST={manifest}", "NP=2",
           "ARGS=--dry-run --stub-sleep-s 1.5"]  # fmt: skip
    proc, out, err = _interrupted(cmd, root, tel)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, out[-2000:], err[-2000:])
    _saved_after_the_summary(out, err, root, f"make resume MANIFEST={manifest}")
    make_lines = [line for line in err.splitlines() if line.startswith("make")]
    assert len(make_lines) == 1 and "infer]" in make_lines[0], err[-2000:]


def test_nothing_remains_only_for_the_same_settings_else_the_run_decides(tmp_path):
    # `make infer` after a full run with another result setting is not "nothing remains": the run's
    # own resume compares fingerprints (refuses naming what differs; here the dry-run stub's results do
    # not depend on HawkEars' threshold, so it skips all 4)
    manifest = make_dataset(tmp_path, 2, 2)
    chunks = tmp_path / "artifacts" / "chunks"
    args = f"--dry-run --chunks-dir {chunks} --output-dir {tmp_path / 'out'} --telemetry-dir {tmp_path / 'tel'}"
    make = ["make", "-s", "-C", str(REPO), *this_venv(), "infer", f"MANIFEST={manifest}"]
    assert run_own([*make, f"ARGS={args}"], timeout_s=90).returncode == 0
    other = run_own([*make, f"ARGS={args} --min-confidence 0.5"], timeout_s=90)
    assert other.returncode == 0, other.stderr[-2000:]
    assert "nothing remains" not in other.stdout
    assert "earlier runs did all 4 chunks, but an earlier run was started with other hawkears options" in other.stdout
    assert "resume: 4 skipped (done earlier), 0 to run" in other.stdout


def test_settings_change_names_what_keeps_an_earlier_run_from_counting():
    from badc_mpi.orchestrate.plan import settings_change

    now = {"runner": "hawkears", "dry_run": False, "hawkears": {"min_score": 0.7}, "rerun_changed": False, "max_retries": 3}
    assert settings_change([{**now, "max_retries": 1}], now) is None  # not a result setting
    assert (
        settings_change([{**now, "hawkears": {"min_score": 0.5}}], now)
        == "an earlier run was started with other hawkears options"
    )
    assert settings_change([None], now) == "an earlier run's options were not found"
    assert settings_change([now], {**now, "rerun_changed": True}) == "--rerun-changed or --accept-mixed was given"
