"""What the suite promises CI (``.ci/run``: ``CI=true``, root, a fresh Debian machine): no skip of
anything the README promises, golden files rewritten only on request and never in CI, and nothing
left in the system temporary folder. docs/howto/testing.md lists the rules and the time budgets.

- :func:`skip_or_fail`, :func:`require_or_skip`: a missing tool (Chromium, shellcheck, DataLad,
  HawkEars, the SLURM test cluster) skips with its fix outside CI and fails with it under CI.
  ``conftest.py`` turns any other skip into a failure under CI too, except :data:`SKIPS_CI_ALLOWS`.
- :func:`update_golden`: ``BADC_MPI_UPDATE_GOLDEN=1`` (exactly ``1``) rewrites golden files.
- :func:`scratch_leftovers`: badc-mpi's folders that appeared in a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

GOLDEN_ENV = "BADC_MPI_UPDATE_GOLDEN"
#: set by `make test-slurm`: the SLURM tests must run (a missing test cluster fails them)
SLURM_REQUIRED_ENV = "BADC_MPI_SLURM_REQUIRED"
SLURM_SKIP = "needs the SLURM test cluster: make test-slurm"

#: skip reasons CI accepts, each with why: the test runs elsewhere in CI, or not on CI's hardware
SKIPS_CI_ALLOWS = {
    "need --with-mpi option to run": "pytest-mpi: runs in make test's second pass (mpiexec -n 3 pytest --only-mpi)",
    "test does not use mpi": "pytest-mpi's second pass: the test ran in the first",
    "a real NVIDIA driver is present": "a GPU machine: the no-GPU case cannot be checked there",
    "this machine has a working NVML: the real check would run": "a GPU machine, as above",
}


def in_ci() -> bool:
    """``CI=true`` (or ``1``), as set by CI services and by the one who runs ``.ci/run`` by hand."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def slurm_required() -> bool:
    return os.environ.get(SLURM_REQUIRED_ENV) == "1"


def skip_allowed_in_ci(reason: str) -> bool:
    """Whether a skip with ``reason`` (pytest's text, ``Skipped: `` prefix or not) is fine under CI."""
    reason = reason.removeprefix("Skipped: ").strip()
    if reason == SLURM_SKIP:
        return not slurm_required()  # make test: the SLURM tests run in make test-slurm
    return reason in SKIPS_CI_ALLOWS


def skip_or_fail(reason: str, *, required: bool | None = None, why: str = "CI=true") -> NoReturn:
    """Skip with ``reason`` (it names the fix); fail with it instead under CI, or when ``required``
    says the caller promised this test runs (``why``: who promised; default: :func:`in_ci`)."""
    if required is None:
        required, why = in_ci(), "CI=true"
    if required:
        pytest.fail(f"{reason} (a skip is a failure here: {why})", pytrace=False)
    pytest.skip(reason)


def require_or_skip(condition: bool, reason: str, *, required: bool | None = None, why: str = "CI=true") -> None:
    """Go on when ``condition`` holds; else :func:`skip_or_fail` with ``reason``."""
    if not condition:
        skip_or_fail(reason, required=required, why=why)


def update_golden() -> bool:
    """``BADC_MPI_UPDATE_GOLDEN=1`` rewrites golden files (any other value does not); under CI it
    is refused: CI checks the files, it never writes them."""
    if os.environ.get(GOLDEN_ENV) != "1":
        return False
    if in_ci():
        pytest.fail(f"{GOLDEN_ENV}=1 under CI=true: CI checks golden files, it never rewrites them; unset it", pytrace=False)
    return True


def check_golden(path: Path, text: str, hint: str = "") -> None:
    """``text`` equals the golden file ``path``; with ``BADC_MPI_UPDATE_GOLDEN=1`` rewrite it first."""
    if update_golden():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    where = f" ({hint})" if hint else ""
    assert path.exists(), f"no golden file {path}{where}: {GOLDEN_ENV}=1 writes it"
    assert text == path.read_text(), f"{path.name} differs from {path}{where}: if on purpose, {GOLDEN_ENV}=1 rewrites it"


def scratch_prefixes() -> tuple[str, ...]:
    """Names badc-mpi gives what it creates in a temporary folder: a run's scratch folder
    (``badc-mpi-<run_id>``; export and merge spills share the prefix) and HawkEars' per-rank folders."""
    from badc_mpi.inputs.locations import run_scratch_dir

    return (os.path.basename(run_scratch_dir("/", "")), "badc-hawkears-")


def scratch_entries(folder: str | os.PathLike[str]) -> set[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return set()
    return {name for name in names if name.startswith(scratch_prefixes())}


def scratch_leftovers(folder: str | os.PathLike[str], before: set[str]) -> list[str]:
    """badc-mpi's entries in ``folder`` that were not there in ``before``, sorted."""
    return sorted(scratch_entries(folder) - before)
