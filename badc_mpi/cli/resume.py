"""The resume command printed when a run stops early: the ``run`` options as given (the folders
pinned, ``--resume`` added), in the launcher the user used. Built from the parsed options, never
from ``sys.argv``."""

from __future__ import annotations

import argparse
import os
import sys

from badc_mpi.cli.parser import build_parser

#: ``run`` options a resume must not copy: it pins the folders and adds --resume itself
_RESUME_OWN = frozenset({"manifests", "output_dir", "telemetry_dir", "chunks_dir", "resume", "help", "print_datalad_run", "np"})


def own_flags(args: argparse.Namespace) -> list[str]:
    """The folder options and --resume that :func:`run_flags` leaves out, as given (``--print-datalad-run``)."""
    words: list[str] = []
    for dest in ("output_dir", "telemetry_dir", "chunks_dir"):
        if getattr(args, dest, None):
            words += ["--" + dest.replace("_", "-"), getattr(args, dest)]
    return words + (["--resume"] if args.resume else [])


def run_flags(args: argparse.Namespace) -> list[str]:
    """The ``run`` options of ``args`` that differ from their defaults, as command-line words
    (manifests, output folders and ``--resume`` left out)."""
    parser = build_parser()
    run_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    words: list[str] = []
    for action in run_parser._actions:
        if not action.option_strings or action.dest in _RESUME_OWN or action.help == argparse.SUPPRESS:
            continue  # a hidden old name (--min-score) shares its dest with the new one
        value = getattr(args, action.dest, action.default)
        if value == action.default or (isinstance(value, list) and not value):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):  # --low-band / --no-low-band
            words.append(action.option_strings[0] if value else action.option_strings[1])
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_false
            words.append(flag)
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return words


def resume_command(args: argparse.Namespace, dirs: dict[str, str], ranks: int, env: dict[str, str] | None = None) -> str:
    """The command that resumes an interrupted run, runnable from any folder, in the launcher
    the user used: ``make resume`` under make, ``srun`` inside a SLURM job, else ``mpiexec``
    (or plain ``python`` for one rank). Built from the parsed options, never from ``sys.argv``."""
    import shlex

    env = dict(os.environ) if env is None else env
    manifests = [os.path.abspath(m) for m in args.manifests]
    pinned = [
        "--output-dir",
        dirs["output_dir"],
        "--telemetry-dir",
        dirs["telemetry_dir"],
        "--chunks-dir",
        dirs["chunks_dir"],
    ]
    flags = run_flags(args) + pinned
    if env.get("BADC_MPI_VIA_MAKE"):  # set by `make infer` and `make resume`
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # badc_mpi/cli/
        return (
            f"make -C {shlex.quote(repo)} resume MANIFEST={shlex.quote(' '.join(manifests))} NP={ranks} "
            f"ARGS={shlex.quote(shlex.join(flags))}"
        )
    python = [sys.executable, "-m", "badc_mpi", "run", *manifests, *flags, "--resume"]
    if env.get("SLURM_JOB_ID"):
        # the step's MPI plugin (srun exports it): the MPICH wheel's ranks see each other only with pmi2
        mpi = [f"--mpi={env['SLURM_MPI_TYPE']}"] if env.get("SLURM_MPI_TYPE") else []
        launcher = ["srun", "-n", str(ranks), *mpi]
    elif ranks > 1:
        local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        launcher = [local if os.access(local, os.X_OK) else "mpiexec", "-n", str(ranks)]
    else:
        launcher = []
    return shlex.join(launcher + python)
