"""DataLad: the ``datalad run`` command line that records a run (pure), and the checks before it.

A run inside a DataLad dataset is recorded with ``datalad run``: the command, its inputs
(manifests, the audio folders) and outputs (the output and telemetry folders), all relative to
the dataset, become a commit (``[DATALAD RUNCMD]``) that ``datalad rerun`` can replay. Commands
are argv lists from end to end; nothing here builds a shell string from data (``shlex.join`` only
prints one for a person to read).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence

from badc_mpi.errors import UsageError

MAX_INPUT_DIRS = 20  #: more audio folders than this are recorded by their common parents
#: the command's exit code is recorded and passed on, and what it wrote is saved even when it
#: is not 0: a run with failed chunks (1) or stopped at a time limit (75) wrote valid results
ON_CMD_FAILURE = ("--on-cmd-failure", "all")


def datalad_executable() -> str | None:
    """``datalad`` beside this Python (``make install`` puts it in .venv/bin), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "datalad")
    return beside if os.access(beside, os.X_OK) else shutil.which("datalad")


def tool_env() -> dict[str, str]:
    """The environment for datalad and git: this venv's bin first (git-annex from PyPI lives there)."""
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def inside(path: str, root: str) -> bool:
    rel = os.path.relpath(os.path.abspath(path), root)
    return not (rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel))


def relative(path: str, root: str, what: str) -> str:
    """``path`` relative to the dataset ``root``; UsageError when it lies outside."""
    if not inside(path, root):
        raise UsageError(
            f"the {what} {path} lies outside the DataLad dataset {root}: DataLad records only paths inside it",
            fix="keep it inside the dataset (drop the folder option), or pass --no-record-datalad (RECORD_DATALAD=0 for make)",
        )
    return os.path.relpath(os.path.abspath(path), root)


def collapse_dirs(dirs: Iterable[str], limit: int = MAX_INPUT_DIRS) -> list[str]:
    """Dataset-relative folders, each once, none inside another, at most ``limit`` (by moving up
    to common parents): thousands of recording folders become ``artifacts/chunks``."""
    current = sorted({os.path.normpath(d) for d in dirs})
    while True:
        kept: list[str] = []
        for d in current:  # sorted: a parent comes before its children
            if not any(d == k or d.startswith(k + os.sep) or k == "." for k in kept):
                kept.append(d)
        if len(kept) <= limit or all(os.sep not in d for d in kept):
            return kept
        current = sorted({os.path.dirname(d) if os.sep in d else d for d in kept})


def input_paths(root: str, manifests: Sequence[str], source_dirs: Iterable[str]) -> tuple[list[str], list[str]]:
    """(``--input`` paths, folders left out because they lie outside the dataset)."""
    inputs = [relative(m, root, "manifest") for m in manifests]
    outside = sorted({d for d in source_dirs if not inside(d, root)})
    within = [os.path.relpath(d, root) for d in source_dirs if inside(d, root)]
    return inputs + [d for d in collapse_dirs(within) if d not in inputs], outside


def run_argv(
    message: str, inputs: Sequence[str], outputs: Sequence[str], command: Sequence[str], *, datalad: str = "datalad"
) -> list[str]:
    """``datalad run -m MSG --input ... --output ... --on-cmd-failure all -- COMMAND`` (run it in
    the dataset's root: every path is relative to it)."""
    argv = [datalad, "run", "-m", message]
    for path in inputs:
        argv += ["--input", path]
    for path in outputs:
        argv += ["--output", path]
    return argv + [*ON_CMD_FAILURE, "--", *(escape_braces(word) for word in command)]


def escape_braces(word: str) -> str:
    """``datalad run`` fills ``{inputs}``-style placeholders in the command: double every brace so
    that a command's own braces (``--runner-cmd '... {input}'``) reach it unchanged."""
    return word.replace("{", "{{").replace("}", "}}")


def printable(argv: Sequence[str], root: str) -> str:
    """The command a person can paste: ``cd ROOT && datalad run ...``."""
    return f"cd {shlex.quote(root)} && {shlex.join(argv)}"


def unsaved_changes(root: str) -> list[str]:
    """Paths git reports as modified or untracked in the dataset (``datalad run`` refuses them)."""
    done = subprocess.run(
        ["git", "-C", root, "status", "--porcelain", "--untracked-files=normal"],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=300,
    )
    if done.returncode != 0:
        raise UsageError(
            f"{root}: git status failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})",
            fix="check the dataset with `datalad status`, or pass --no-record-datalad",
        )
    return [line[3:] for line in done.stdout.splitlines() if line.strip()]


def require_clean(root: str) -> None:
    """UsageError (exit 2, one line) instead of DataLad's refusal on a dirty dataset."""
    changes = unsaved_changes(root)
    if changes:
        shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise UsageError(
            f"the DataLad dataset {root} has unsaved changes ({shown}); datalad run needs a clean dataset to record the run",
            fix=f"save them first (datalad save -d {shlex.quote(root)} -m '...'), or pass --no-record-datalad (RECORD_DATALAD=0 for make)",
        )


def save_argv(root: str, message: str, paths: Sequence[str], *, datalad: str = "datalad") -> list[str]:
    return [datalad, "save", "-d", root, "-m", message, *paths]
