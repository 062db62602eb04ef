"""``badc-mpi init DIR``: a folder of recordings into a DataLad dataset, audio annexed, text in git.

``datalad create --force -c text2git`` (binary files go to git-annex, text such as ``sites.csv``
and manifests to git), then ``datalad save``. git-annex is looked for first, on the PATH the
tools get (this venv's ``bin`` first, where ``make install`` puts it): without it DataLad would
leave a bare ``.git`` behind and the next ``datalad save`` would put the WAVs into plain git, so
init refuses before anything is made, and removes what a failed ``create`` left.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess

from badc_mpi.errors import UsageError
from badc_mpi.inputs.locations import find_dataset_root
from badc_mpi.orchestrate import datalad as dl

AUDIO_SUFFIXES = (".wav", ".flac")


def add_init_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="make a folder of recordings a DataLad dataset (audio annexed, text in git), saved",
        description="Make DIR (your recordings, sites.csv, ...) a DataLad dataset: `datalad create --force -c text2git`, "
        "then `datalad save`: WAV/FLAC go to git-annex, text files to git. Refuses without git-annex.",
    )
    p.add_argument("folder", metavar="DIR", help="the folder of recordings")


def _tool(name: str, env: dict[str, str]) -> str | None:
    return shutil.which(name, path=env.get("PATH"))


def _run(argv: list[str], cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)


def count_audio(folder: str) -> int:
    n = 0
    for _parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for f in files if f.lower().endswith(AUDIO_SUFFIXES))
    return n


def init_dataset(folder: str) -> str:
    """Create and save the dataset; returns the summary line. UsageError before anything is made
    when git-annex or datalad is missing, or the folder is another git repository."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: no such folder", fix="give the folder that holds your recordings")
    env = dl.tool_env()
    datalad = dl.datalad_executable()
    if datalad is None or _tool("git-annex", env) is None:
        missing = "datalad" if datalad is None else "git-annex"
        raise UsageError(
            f"no {missing} found (PATH: {env.get('PATH', '')[:200]}); nothing was created in {folder}",
            fix="run `make install` in the badc-mpi checkout and `source .venv/bin/activate` (it puts datalad and git-annex on PATH)",
        )
    root = find_dataset_root(folder)
    made_git = not os.path.exists(os.path.join(folder, ".git"))
    if root is None:
        if not made_git:
            raise UsageError(
                f"{folder} is a git repository but not a DataLad dataset (no .datalad/)",
                fix=f"make a copy without .git, or turn it into a dataset yourself: datalad create --force -c text2git {shlex.quote(folder)}",
            )
        done = _run([datalad, "create", "--force", "-c", "text2git", folder], folder, env)
        if done.returncode != 0:
            if made_git:  # never leave a bare .git: the next save would put the audio into git
                shutil.rmtree(os.path.join(folder, ".git"), ignore_errors=True)
                shutil.rmtree(os.path.join(folder, ".datalad"), ignore_errors=True)
            why = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
            raise UsageError(f"datalad create {folder} failed: {why}", fix="see the line above; nothing was left behind")
        root = folder
    saved = _run([datalad, "save", "-d", root, "-m", "badc-mpi init: recordings and site table", folder], root, env)
    if saved.returncode != 0:
        why = (saved.stderr.strip() or saved.stdout.strip() or f"exit {saved.returncode}").splitlines()[-1]
        raise UsageError(f"datalad save {folder} failed: {why}", fix=f"run it yourself: datalad save -d {shlex.quote(root)}")
    audio = count_audio(folder)
    return (
        f"init: {root} is a DataLad dataset{'' if root == folder else f' (holding {folder})'}, saved: {audio} recording(s) "
        "annexed, text files in git\n"
        f"next: badc-mpi chunk {shlex.quote(folder)} --layout wildtrax --sites {shlex.quote(os.path.join(folder, 'sites.csv'))}"
    )
