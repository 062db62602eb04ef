"""Runners: how one attempt of one chunk is executed (stub, command, HawkEars)."""

from __future__ import annotations

from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.runners.base import Runner

RUNNER_KINDS = ("hawkears", "command", "stub")


def build_runner(kind: str, options: Any) -> Runner:
    """A runner of ``kind`` from its options object (imports only what that kind needs)."""
    if kind == "stub":
        from badc_mpi.runners.stub import StubRunner

        return StubRunner(options)
    if kind == "command":
        from badc_mpi.runners.command import CommandRunner

        return CommandRunner(options)
    if kind == "hawkears":
        from badc_mpi.runners.hawkears.adapter import build_hawkears_runner

        return build_hawkears_runner(options)
    raise UsageError(f"unknown runner {kind!r}", fix="use one of " + ", ".join(RUNNER_KINDS))
