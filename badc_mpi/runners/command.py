"""The command runner: a user argv template run once per chunk, without a shell.

The template is split into tokens once (``shlex.split`` of the *template*, which the user wrote);
placeholders are then substituted token by token, so a manifest value can never become shell
syntax or split into extra arguments. Placeholders: ``{input} {output_dir} {chunk_id}
{recording_id} {start_ms} {end_ms}`` (and ``{{``/``}}`` for literal braces).

Each attempt runs in its own process group with stdout/stderr captured to files in the attempt's
scratch folder (no pipe can fill up and deadlock); a timeout kills the whole group.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass

from badc_mpi.errors import UsageError
from badc_mpi.records import CRASH, EXIT, NO_OUTPUT, TIMEOUT, Binding, Chunk
from badc_mpi.runners.base import AttemptResult, Runner, Task
from badc_mpi.runners.process import die_with_parent, kill_group

PLACEHOLDERS = ("input", "output_dir", "chunk_id", "recording_id", "start_ms", "end_ms")
RAW_FILES = {"scores2": "scores.csv", "labels1": "HawkEars_labels.csv"}
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass(frozen=True)
class CommandOptions:
    template: str
    output_format: str = "scores2"  #: raw output format: ``scores2`` (2.x) or ``labels1`` (1.x)
    stderr_tail_chars: int = 2000


def parse_template(template: str) -> list[str]:
    """Split and check a template; raises UsageError naming an unknown placeholder."""
    try:
        tokens = shlex.split(template)
    except ValueError as exc:
        raise UsageError(f"--runner-cmd {template!r} cannot be split: {exc}", fix="balance the quotes") from exc
    if not tokens:
        raise UsageError(
            "--runner-cmd is empty",
            fix="give a command, e.g. 'python scripts/hawkears/fake_hawkears.py --input {input} --output {output_dir}'",
        )
    for token in tokens:
        for match in _FIELD.finditer(token):
            name = match.group(1)
            if name is not None and name not in PLACEHOLDERS:
                raise UsageError(
                    f"--runner-cmd has an unknown placeholder {{{name}}}",
                    fix="use only " + ", ".join("{" + p + "}" for p in PLACEHOLDERS),
                )
    if not any("{input}" in t for t in tokens):
        raise UsageError("--runner-cmd never uses {input}", fix="pass the chunk's audio with {input}")
    return tokens


def render_argv(tokens: list[str], values: dict[str, str]) -> list[str]:
    """Substitute placeholders inside each token; values never create or split tokens."""

    def one(token: str) -> str:
        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "{{":
                return "{"
            if match.group(0) == "}}":
                return "}"
            return values[match.group(1)]

        return _FIELD.sub(sub, token)

    return [one(t) for t in tokens]


def tail(path: str, chars: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars * 4))
            return fh.read().decode("utf-8", "replace")[-chars:].strip()
    except OSError:
        return ""


class CommandRunner(Runner):
    name = "command"

    def __init__(self, options: CommandOptions) -> None:
        if options.output_format not in RAW_FILES:
            raise UsageError(f"unknown --output-format {options.output_format!r}", fix="use scores2 or labels1")
        self.options = options
        self.tokens = parse_template(options.template)
        self._env: dict[str, str] = dict(os.environ)
        self._proc: subprocess.Popen[bytes] | None = None
        self._guard = threading.Lock()  #: between run() starting a process and interrupt()
        self._stopping = False

    def start(self, binding: Binding) -> None:
        self._env = binding.runner_env(dict(os.environ))

    def values(self, chunk: Chunk, output_dir: str) -> dict[str, str]:
        c = chunk
        return {
            "input": c.input_path,
            "output_dir": output_dir,
            "chunk_id": c.chunk_id,
            "recording_id": c.recording_id,
            "start_ms": "" if c.start_ms is None else str(c.start_ms),
            "end_ms": "" if c.end_ms is None else str(c.end_ms),
        }

    def command(self, chunk: Chunk, scratch_dir: str = "") -> list[str]:
        return render_argv(self.tokens, self.values(chunk, scratch_dir or "{output_dir}"))

    def command_template(self) -> list[str]:
        keys = ("input", "output_dir", "chunk_id", "recording_id", "start_ms", "end_ms")
        return render_argv(self.tokens, {k: "{" + k + "}" for k in keys})

    def run(self, task: Task) -> AttemptResult:
        argv = self.command(task.chunk, task.scratch_dir)
        out_log = os.path.join(task.scratch_dir, "runner.stdout.log")
        err_log = os.path.join(task.scratch_dir, "runner.stderr.log")
        raw = os.path.join(task.scratch_dir, RAW_FILES[self.options.output_format])
        with open(out_log, "wb") as out, open(err_log, "wb") as err:
            with self._guard:
                if self._stopping:
                    return AttemptResult(ok=False, failure_class=EXIT, reason="not started: the run is stopping", command=argv)
                try:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        env=self._env,
                        start_new_session=True,
                        close_fds=True,
                        preexec_fn=die_with_parent(),  # a prctl only: the child dies with this rank
                    )
                except OSError as exc:
                    return AttemptResult(ok=False, failure_class=EXIT, reason=f"cannot start {argv[0]}: {exc}", command=argv)
                self._proc = proc
            try:
                code = proc.wait(timeout=task.timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(proc, grace_s=0)  # a timed-out attempt gets no grace
                self._proc = None
                reason = f"timed out after {task.timeout_s:g} s; process group killed"
                stderr = tail(err_log, self.options.stderr_tail_chars)
                return AttemptResult(
                    ok=False,
                    failure_class=TIMEOUT,
                    reason=f"{reason} | {stderr}" if stderr else reason,
                    command=argv,
                    pid=proc.pid,
                    signal=int(signal.SIGKILL),
                )
            finally:
                # a runner that exits may leave children in its group: never leave them behind
                kill_group(proc, grace_s=0, reap_s=0)
        self._proc = None
        stderr = tail(err_log, self.options.stderr_tail_chars)
        ended = functools.partial(AttemptResult, command=argv, pid=proc.pid, raw_format=self.options.output_format)
        if code < 0:
            return ended(ok=False, failure_class=CRASH, signal=-code, reason=f"killed by signal {-code} | {stderr}")
        if code > 0:
            return ended(ok=False, failure_class=EXIT, exit_code=code, reason=stderr or f"exit status {code}")
        if not os.path.isfile(raw):
            why = f"exit 0 but no {RAW_FILES[self.options.output_format]} written"
            return ended(ok=False, failure_class=NO_OUTPUT, exit_code=0, reason=f"{why} | {stderr}" if stderr else why)
        return ended(ok=True, exit_code=0, raw_output=raw, reason=stderr)

    def active_pids(self) -> list[int]:
        proc = self._proc
        return [proc.pid] if proc is not None else []

    def interrupt(self) -> None:
        """From another thread (the run stops): kill what runs now and start nothing more."""
        with self._guard:
            self._stopping = True
            proc = self._proc
        if proc is not None:
            kill_group(proc, grace_s=0)

    def describe(self) -> dict[str, object]:
        return {"runner": self.name, "template": self.options.template, "output_format": self.options.output_format}

    def fingerprint(self) -> dict[str, object]:
        return self.describe()
