"""The exception hierarchy and exit codes.

Library code raises these; only :mod:`badc_mpi.cli` turns them into a one-line message and an
exit code. Every message says what is wrong *and* how to fix it.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of ``badc-mpi`` (documented in ``badc-mpi --help``)."""

    OK = 0  #: every chunk succeeded
    CHUNKS_FAILED = 1  #: some chunks failed permanently (listed in the failed CSV)
    USAGE = 2  #: bad arguments or bad input (manifest, state files); nothing was run
    CHUNKS_NOT_READY = 3  #: the chunk-status guard refused
    LOCKED = 4  #: another run holds the output directory
    INTERRUPTED = 75  #: SIGTERM/SIGINT: stopped cleanly, resume with ``make resume``


class BadcError(Exception):
    """Base class: a problem the user can fix. ``str()`` is the one-line message."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        self.lost_ranks: list[int] = []  #: ranks that may not answer: the CLI ends the job with Abort
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message.rstrip(".")
        return f"{text}. Fix: {self.fix}" if self.fix else text


class UsageError(BadcError):
    """Bad command-line arguments or option combinations."""


class ManifestError(BadcError):
    """A manifest that cannot be used; names the file, line and column."""

    def __init__(
        self,
        path: object,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        self.path = str(path)
        self.line = line
        self.column = column
        super().__init__(f"{where}: {message}", fix=fix)


class ChunkStatusError(BadcError):
    """The chunk-status guard refused: some recordings are not fully chunked."""

    exit_code = ExitCode.CHUNKS_NOT_READY


class StateError(BadcError):
    """A summary, ledger or lock file that cannot be trusted (resume state)."""


class LockError(BadcError):
    """Another run holds the output directory."""

    exit_code = ExitCode.LOCKED


class RunnerSetupError(BadcError):
    """A runner cannot start (HawkEars environment or models missing, bad template)."""


class RecordingsError(BadcError):
    """Recordings that cannot be chunked as asked (names that give no place or time, a bad site
    table, clashing ids). ``problems`` holds one line per file or row, each with its fix."""

    def __init__(self, message: str, *, fix: str | None = None, problems: list[str] | None = None) -> None:
        super().__init__(message, fix=fix)
        self.problems = list(problems or [])
