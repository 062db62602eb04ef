"""The "next:" line printed after ``chunk``, ``run`` (``make infer``) and ``bundle``: the one
command to run now (pure; the environment and working folder are passed in). Under ``make`` (or
from the repository folder) it names the make target, else the ``badc-mpi`` command."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # badc_mpi/cli/ -> repo


def _here(path: str, cwd: str) -> str:
    rel = os.path.relpath(os.path.abspath(path), cwd)
    return rel if not rel.startswith("..") else os.path.abspath(path)


def _make(target: str, manifests: Sequence[str], cwd: str) -> str:
    at_repo = os.path.abspath(cwd) == REPO
    value = " ".join(_here(m, cwd) if at_repo else os.path.abspath(m) for m in manifests)
    head = "make" if at_repo else f"make -C {shlex.quote(REPO)}"
    return f"{head} {target} MANIFEST={shlex.quote(value)}"


def _use_make(env: Mapping[str, str], cwd: str) -> bool:
    return bool(env.get("BADC_MPI_VIA_MAKE")) or os.path.abspath(cwd) == REPO


def after_chunk(manifest: str, env: Mapping[str, str], cwd: str) -> str:
    """``make infer`` (resumable, recorded in a dataset) on the manifest just written."""
    return f"next: {_make('infer', [manifest], cwd)}   (run HawkEars on every chunk; `badc-mpi run --help` for options)"


def after_run(manifests: Sequence[str], env: Mapping[str, str], cwd: str, *, failed: bool) -> str:
    """Bundle the results (after failed chunks too: the report lists them)."""
    if _use_make(env, cwd):
        command = _make("bundle", manifests, cwd)
    else:
        command = shlex.join(["badc-mpi", "bundle", *(_here(m, cwd) for m in manifests)])
    why = "the report lists the failed chunks; `--resume` reruns them" if failed else "Parquet, DuckDB and report.html"
    return f"next: {command}   ({why})"


def after_bundle(folder: str, manifests: Sequence[str], env: Mapping[str, str], cwd: str, *, exported: bool) -> str:
    """Open the report; then the exports, unless the bundle wrote them."""
    report = _here(os.path.join(folder, "report.html"), cwd)
    if exported:
        return f"next: open {report} in a browser (its 'Next steps' say what else to do)"
    if _use_make(env, cwd) and manifests:
        command = _make("export", manifests, cwd)
    else:
        command = shlex.join(["badc-mpi", "export", _here(folder, cwd), "--format", "all"])
    return f"next: open {report} in a browser, then write the exports: {command}"
