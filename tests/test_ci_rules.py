"""The suite's CI rules (tests/ci_rules.py, tests/conftest.py): a skip fails under CI=true unless
CI runs the test elsewhere, golden files are rewritten only with BADC_MPI_UPDATE_GOLDEN=1 and never
in CI, and a session that leaves badc-mpi folders in the system temporary folder fails."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import ci_rules
from helpers import REPO, run_own

CHILD_TESTS = """
import os
from pathlib import Path

import pytest


def test_plain_skip():
    pytest.skip("no frobnicator on PATH")


@pytest.mark.skip(reason="need --with-mpi option to run")
def test_mpi_only():
    pass


def test_leaks():
    if os.environ.get("LEAK_TO"):
        (Path(os.environ["LEAK_TO"]) / "badc-mpi-20260101T000000-leak").mkdir()
    (Path(os.environ["TMPDIR"]) / "badc-mpi-20260101T000000-own").mkdir()  # its own folder: fine
"""


def _child(tmp_path: Path, **env: str):
    """pytest on three tiny tests with tests/conftest.py as a plugin; ``tmp_path/sys`` is its
    system temporary folder."""
    (tmp_path / "child").mkdir(exist_ok=True)
    (tmp_path / "child" / "test_child.py").write_text(CHILD_TESTS)
    system_tmp = tmp_path / "sys"
    system_tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "--rootdir", str(tmp_path / "child"),
           "-c", os.devnull, str(tmp_path / "child")]  # fmt: skip
    child_env = {"PYTHONPATH": str(REPO / "tests"), "TMPDIR": str(system_tmp), "CI": "", **env}
    return run_own(cmd, timeout_s=120, cwd=tmp_path / "child", env=child_env)


def test_under_ci_a_skip_fails_and_so_does_a_session_that_leaves_scratch_behind(tmp_path):
    """One child session under CI=true: the plain skip fails, pytest-mpi's is allowed (CI runs
    that test in the MPI pass), and the folder left in its system temporary folder fails the
    session although every test passed or skipped as allowed."""
    done = _child(tmp_path, CI="true", LEAK_TO=str(tmp_path / "sys"))
    assert done.returncode == 1 and "1 failed, 1 passed, 1 skipped" in done.stdout, done.stdout + done.stderr
    assert "CI=true: a skip is a failure here" in done.stdout and "no frobnicator on PATH" in done.stdout
    assert f"left 1 folder(s) in {tmp_path / 'sys'}" in done.stderr and "badc-mpi-20260101T000000-leak" in done.stderr


def test_scratch_leftovers_are_new_badc_mpi_entries_only(tmp_path):
    (tmp_path / "badc-mpi-old").mkdir()
    before = ci_rules.scratch_entries(tmp_path)
    for name in ("badc-mpi-20260101T000000-abcd", "badc-hawkears-r0-x1", "pytest-of-root", "badc-slurm-x"):
        (tmp_path / name).mkdir()
    assert ci_rules.scratch_leftovers(tmp_path, before) == ["badc-hawkears-r0-x1", "badc-mpi-20260101T000000-abcd"]


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_missing_tool_skips_outside_ci_and_fails_in_it(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="make browser"):
        ci_rules.require_or_skip(False, "no chromium on PATH: `make browser` installs it")
    ci_rules.require_or_skip(True, "never raised")


def test_the_slurm_tests_skip_in_make_test_and_must_run_in_make_test_slurm(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv(ci_rules.SLURM_REQUIRED_ENV, raising=False)
    assert ci_rules.skip_allowed_in_ci(f"Skipped: {ci_rules.SLURM_SKIP}")
    monkeypatch.setenv(ci_rules.SLURM_REQUIRED_ENV, "1")
    assert not ci_rules.skip_allowed_in_ci(ci_rules.SLURM_SKIP)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.fail.Exception, match="make test-slurm"):  # required, even outside CI
        ci_rules.require_or_skip(False, ci_rules.SLURM_SKIP, required=ci_rules.slurm_required())


@pytest.mark.parametrize(("value", "ci", "writes"), [("", "", False), ("0", "", False), ("yes", "", False), ("1", "", True)])
def test_golden_files_are_rewritten_only_with_1(tmp_path, monkeypatch, value, ci, writes):
    monkeypatch.setenv(ci_rules.GOLDEN_ENV, value)
    monkeypatch.setenv("CI", ci)
    golden = tmp_path / "g.txt"
    golden.write_text("old\n")
    if writes:
        ci_rules.check_golden(golden, "new\n")
        assert golden.read_text() == "new\n"
    else:
        with pytest.raises(AssertionError, match="BADC_MPI_UPDATE_GOLDEN=1 rewrites it"):
            ci_rules.check_golden(golden, "new\n")
        assert golden.read_text() == "old\n"


def test_golden_update_is_refused_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv(ci_rules.GOLDEN_ENV, "1")
    monkeypatch.setenv("CI", "true")
    golden = tmp_path / "g.txt"
    golden.write_text("old\n")
    with pytest.raises(pytest.fail.Exception, match="CI checks golden files"):
        ci_rules.check_golden(golden, "new\n")
    assert golden.read_text() == "old\n"
