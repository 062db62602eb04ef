"""The command line as a user meets it: subcommands, exit codes, one-line errors, man page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import badc_mpi
from badc_mpi.cli import main
from badc_mpi.cli.parser import build_parser

from fakes.nvml import fake_env
from helpers import MPIEXEC, REPO, make_dataset, run_own


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "badc_mpi", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_version_and_help():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"badc-mpi {badc_mpi.__version__}"
    run_help = cli("run", "--help").stdout
    for needle in (
        "--dry-run",
        "--runner-cmd",
        "--resume",
        "--max-retries",
        "--workers-per-gpu",
        "where outputs go",
        "exit codes",
        "75",
        "srun",
    ):
        assert needle in run_help, needle
    assert set(build_parser()._subparsers._group_actions[0].choices) == {
        "run",
        "check-chunks",
        "validate",
        "gpus",
        "monitor",
        "aggregate",
        "bundle",
        "export",
        "review",
        "calibrate",
        "orchestrate",
        "chunk",
        "init",
    }


def test_validate_and_check_chunks_exit_codes(tmp_path):
    manifest = make_dataset(tmp_path, 2, 3)
    ok = cli("validate", str(manifest))
    assert ok.returncode == 0 and "6 chunks, 2 recordings" in ok.stdout
    guard = cli("check-chunks", str(manifest), cwd=tmp_path)
    assert guard.returncode == 0, guard.stderr
    status = tmp_path / "artifacts" / "chunks" / "rec001" / ".chunk_status.json"
    status.write_text(json.dumps({"status": "failed", "error": "disk full"}))
    refused = cli("check-chunks", str(manifest), cwd=tmp_path)
    assert refused.returncode == 3 and "rec001" in refused.stderr and "failed" in refused.stderr
    # make infer passes its ARGS through --run-args: their --chunks-dir and overrides apply
    elsewhere = cli("check-chunks", str(manifest), "--run-args", "--max-retries", "3", "--allow-partial-chunks", cwd=tmp_path)
    assert elsewhere.returncode == 0
    status.unlink()
    missing = cli("check-chunks", str(manifest), "--json", cwd=tmp_path)
    assert missing.returncode == 3
    statuses = {s["recording_id"]: s["status"] for s in json.loads(missing.stdout)["statuses"]}
    assert statuses == {"rec000": "completed", "rec001": "missing"}


def test_bad_manifest_is_one_line_naming_file_line_column_and_fix(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("recording_id,chunk_id,source_path,start_ms\nrec1,c1,a.wav,-5\n")
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    proc = cli("validate", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0] and "line 2" in lines[0] and "start_ms" in lines[0] and "Fix:" in lines[0]


def test_gpus_command_with_the_fake_nvml_seam(tmp_path):
    fake = REPO / "tests" / "fake_nvml" / "four.json"
    proc = cli("gpus", "--json", env={**fake_env(path=fake), "CUDA_VISIBLE_DEVICES": "1,3"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    text = json.dumps(report)
    devices = json.loads(fake.read_text())["devices"]
    assert devices[1]["uuid"] in text and devices[3]["uuid"] in text
    plain = cli("gpus", env=fake_env("no_driver"))
    assert plain.returncode == 0 and "Traceback" not in plain.stderr


def test_main_returns_exit_codes_in_process(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv" in capsys.readouterr().err


def test_man_page_builds_from_the_parser(tmp_path):
    out = tmp_path / "badc-mpi.1"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "argparse-manpage"),
            "--module",
            "badc_mpi.cli.parser",
            "--function",
            "build_parser",
            "--prog",
            "badc-mpi",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert page.startswith(".TH") and "check\\-chunks" in page and "resume" in page and "monitor" in page
    # the commands in workflow order, run's everyday options first (cli/helpgroups.py)
    sections = [line.split("'badc\\-mpi ")[1].split("'")[0] for line in page.splitlines() if line.startswith(".SH COMMAND")]
    assert sections[:8] == ["init", "chunk", "validate", "check\\-chunks", "orchestrate", "run", "monitor", "bundle"], sections
    run_groups = [line for line in page.splitlines() if line.startswith(".SH ") and "'badc\\-mpi run'" in line]
    assert run_groups[1].startswith(".SH EVERYDAY OPTIONS"), run_groups


@pytest.mark.parametrize("target", ["help"])
def test_make_help_lists_every_target(target):
    proc = subprocess.run(["make", "-s", target], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0
    for name in (
        "install",
        "test",
        "man",
        "chunk",
        "check-chunks",
        "infer",
        "resume",
        "monitor",
        "demo",
        "bench",
        "hawkears",
        "hawkears-tiny",
        "hawkears-models",
    ):
        assert f"make {name} " in proc.stdout, name


def this_venv() -> list[str]:
    """make variables for the venv that runs these tests and its MPI (pypi | system, from the
    install stamp), so `make infer` here uses them and not another venv or launcher."""
    venv = Path(sys.executable).parent.parent
    stamps = [p.name.rsplit("-", 1)[1] for p in venv.glob(".badc-installed-*")]
    assert len(stamps) == 1, f"{venv}: not made by `make install` ({stamps})"
    return [f"VENV={venv}", f"MPI={stamps[0]}", f"MPIEXEC={MPIEXEC}"]


def test_make_check_chunks_and_make_infer_with_a_dry_run(tmp_path):
    manifest = make_dataset(tmp_path, 2, 3)
    chunks = tmp_path / "artifacts" / "chunks"
    guard = run_own(
        ["make", "-s", "-C", str(REPO), *this_venv(), "check-chunks", f"MANIFEST={manifest}", f"ARGS=--chunks-dir {chunks}"],
        timeout_s=90,
    )
    assert guard.returncode == 0, guard.stderr
    args = f"--dry-run --chunks-dir {chunks} --output-dir {tmp_path / 'out'} --telemetry-dir {tmp_path / 'tel'}"
    infer = run_own(["make", "-s", "-C", str(REPO), *this_venv(), "infer", f"MANIFEST={manifest}", f"ARGS={args}"], timeout_s=90)
    assert infer.returncode == 0, infer.stderr[-2000:]
    assert "6 succeeded" in infer.stdout and "on 2 ranks" in infer.stdout  # NP: no GPU (conftest pins a GPU-less fake NVML), so 2
    (chunks / "rec000" / ".chunk_status.json").write_text('{"status": "in_progress"}')
    refused = run_own(
        ["make", "-s", "-C", str(REPO), *this_venv(), "infer", f"MANIFEST={manifest}", f"ARGS={args}"], timeout_s=90
    )
    assert refused.returncode != 0 and "in_progress" in refused.stderr
    assert len(list((tmp_path / "tel").glob("*.jsonl"))) == 2  # the refused run wrote nothing


@pytest.mark.hawkears
def test_run_without_models_exits_2_naming_the_fix(tmp_path):
    """After `make demo` a real `make infer` without staged models must not fall back to the tiny model."""
    from badc_mpi.runners.hawkears import env as hawkears_env

    manifest = make_dataset(tmp_path, 1, 2)
    python = hawkears_env.find_hawkears_python()
    env = {"XDG_CACHE_HOME": str(tmp_path / "empty-cache"), "HAWKEARS_DATA_ROOT": ""}
    proc = cli("run", str(manifest), "--no-chunk-check", "--hawkears-python", python, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("badc-mpi: error")]
    assert len(lines) == 1 and "no HawkEars models" in lines[0] and "make hawkears-models" in lines[0]
    written = [p for p in tmp_path.rglob("*") if "infer" in p.parts or "telemetry" in p.parts]
    assert written == []  # nothing was written
