"""Test configuration: make tests/ importable (helpers), keep MPI ranks > 0 quiet, pin every
test (and every process it starts) to a GPU-less host, so the suite means the same on a GPU node,
and hold the suite to what CI is promised (tests/ci_rules.py): under ``CI=true`` a skip is a
failure; every test's temporary files (a killed run's scratch included) go under its own folder,
and the session fails if badc-mpi left anything in the system temporary folder."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ci_rules  # noqa: E402
from fakes.nvml import fake_env  # noqa: E402

#: the system temporary folder as the suite found it, and badc-mpi's entries there before any test
SYSTEM_TMP = tempfile.gettempdir()
TMP_BEFORE = ci_rules.scratch_entries(SYSTEM_TMP)


def pin_no_gpu(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """No GPU, whatever the host has: the fake NVML seam with ``zero.json`` and no
    ``CUDA_VISIBLE_DEVICES`` or SLURM GPU variables (a scheduler's mask would name a GPU the fake
    does not have, and a rank given GPUs it cannot use refuses to start). Tests
    that want GPUs name another fake (``fake_env("one")``), which overrides this in their env."""
    from badc_mpi.gpu.binding import SLURM_GPU_COUNTS, SLURM_GPU_LISTS

    environ.update(fake_env("zero"))
    for name in ("CUDA_VISIBLE_DEVICES", *SLURM_GPU_LISTS, *SLURM_GPU_COUNTS):  # a GPU job's: not ours to use
        environ.pop(name, None)


pin_no_gpu()  # at import: before any test, fixture or subprocess reads the environment


class _RankLog(io.TextIOBase):
    """sys.stdout of an MPI rank > 0: held in memory until its file is known, then that file."""

    def __init__(self) -> None:
        self._held: list[str] = []
        self._file: io.TextIOBase | None = None

    def attach(self, path: Path) -> None:
        self._file = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives for the session; line-buffered
        self._file.write("".join(self._held))
        self._held = []

    def write(self, text: str) -> int:
        if self._file is None:
            self._held.append(text)
        else:
            self._file.write(text)
        return len(text)

    def flush(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
        super().close()


RANK_LOG = pytest.StashKey[_RankLog]()


def _mpi_rank(config) -> int:  # noqa: ANN001
    if config.getoption("with_mpi", default=False) or config.getoption("only_mpi", default=False):
        return int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    return 0


def pytest_configure(config):  # noqa: ANN001 - pytest hook
    # ranks > 0 run the same session; their failures still make mpiexec exit non-zero, and their
    # full report goes to a per-rank log instead of interleaving with rank 0's. sys.stdout is
    # replaced here, before pytest's terminal reporter takes it; the file is opened below.
    if _mpi_rank(config) > 0:
        sys.stdout = config.stash[RANK_LOG] = _RankLog()


def pytest_unconfigure(config):  # noqa: ANN001 - pytest hook
    if RANK_LOG in config.stash:  # after the terminal summary; pytest has put its own sys.stdout back
        config.stash[RANK_LOG].close()


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path plugin has made its factory
def pytest_sessionstart(session):  # noqa: ANN001 - pytest hook
    """The rank's log goes in the rank's own pytest folder (pytest-of-USER/pytest-N/rankR.log):
    concurrent sessions never share it."""
    rank = _mpi_rank(session.config)
    if rank > 0 and RANK_LOG in session.config.stash:
        log = session.config._tmp_path_factory.getbasetemp() / f"rank{rank}.log"
        session.config.stash[RANK_LOG].attach(log)
        sys.stderr.write(f"pytest-mpi rank {rank}: report in {log}\n")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201 - pytest hook
    """Under CI=true a skip is a failure, unless CI runs the test elsewhere or lacks its hardware
    (ci_rules.SKIPS_CI_ALLOWS): a test of something the README promises must run in CI."""
    report = yield
    return _strict_in_ci(report)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):  # noqa: ANN001, ANN201 - pytest hook (a module-level skip)
    report = yield
    return _strict_in_ci(report)


def _strict_in_ci(report):  # noqa: ANN001, ANN202
    if not (report.skipped and ci_rules.in_ci()) or hasattr(report, "wasxfail"):
        return report
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if not ci_rules.skip_allowed_in_ci(reason):
        report.outcome = "failed"
        report.longrepr = f"CI=true: a skip is a failure here (make test installs what tests need): {reason}"
    return report


@pytest.fixture(autouse=True)
def _own_tmpdir(tmp_path_factory, monkeypatch):  # noqa: ANN001, ANN202
    """Every test's temporary files, and those of every process it starts (a run's scratch
    folders, killed runs' included), go under its own folder: TMPDIR for the children, tempfile's
    folder in-process. SLURM_TMPDIR, preferred over TMPDIR for scratch, is not ours to fill."""
    own = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(own))
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(own))
    yield


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001 - pytest hook
    """Fail the session when it left badc-mpi folders in the system temporary folder."""
    left = ci_rules.scratch_leftovers(SYSTEM_TMP, TMP_BEFORE)
    if left:
        sys.stderr.write(
            f"\nbadc-mpi tests left {len(left)} folder(s) in {SYSTEM_TMP} (each test writes under its own "
            f"temporary folder: tests/conftest.py _own_tmpdir): {', '.join(left[:10])}. On a shared machine "
            "another badc-mpi run writing there meanwhile shows up too: give the suite a TMPDIR of its own\n"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


#: the ``badc_mpi`` logger as the session found it (no handler, propagating): what every test ends with
_PRISTINE_LOGGING = (
    list(logging.getLogger("badc_mpi").handlers),
    logging.getLogger("badc_mpi").propagate,
    logging.getLogger("badc_mpi").level,
)


@pytest.fixture(autouse=True)
def _restore_badc_logging():
    """Tests that call the CLI in-process configure logging; give every test the same start.

    Restored to the session's first state, not to what the test found: a module-scoped fixture
    that called the CLI ran before this fixture saved anything, and pytest attaches its capture
    handlers to every non-propagating logger when a test phase begins (a test that then lets
    ``badc_mpi`` propagate would see each record twice)."""
    logger = logging.getLogger("badc_mpi")
    yield
    logger.handlers[:] = _PRISTINE_LOGGING[0]
    logger.propagate, logger.level = _PRISTINE_LOGGING[1], _PRISTINE_LOGGING[2]
