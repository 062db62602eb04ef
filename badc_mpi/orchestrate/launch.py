"""Starting things: the MPI launcher of the current allocation, a child with signals passed on,
and ``sbatch`` through one wrapper (:func:`submit`).

``BADC_MPI_SBATCH`` names the sbatch to call (default ``sbatch`` on PATH): a site's wrapper, or a
fake one in tests. It is the only place badc-mpi calls sbatch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from badc_mpi.errors import BadcError, UsageError

SBATCH_VAR = "BADC_MPI_SBATCH"


def launcher(np: int, *, env: Mapping[str, str], mpi_plugin: str = "pmi2", mpiexec: str | None = None) -> list[str]:
    """``srun --mpi=P -n N`` inside a SLURM allocation, ``mpiexec -n N`` elsewhere, nothing for one rank."""
    if env.get("SLURM_JOB_ID"):
        return ["srun", f"--mpi={mpi_plugin}", "--kill-on-bad-exit=1", "-n", str(np)]
    if np <= 1:
        return []
    if mpiexec is None:
        local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        mpiexec = local if os.access(local, os.X_OK) else "mpiexec"
    return [mpiexec, "-n", str(np)]


def default_ranks(env: Mapping[str, str]) -> int:
    """The allocation's tasks under SLURM, else the usable local GPUs (or 2), as ``make infer``."""
    tasks = env.get("SLURM_NTASKS", "")
    if tasks.isdigit() and int(tasks) > 0:
        return int(tasks)
    from badc_mpi.gpu.binding import default_np

    return default_np()


def run_command(python: str, manifests: Sequence[str], run_args: Sequence[str]) -> list[str]:
    return [python, "-m", "badc_mpi", "run", *manifests, *run_args]


def execute(argv: Sequence[str], *, cwd: str, env: Mapping[str, str] | None = None, shield_sigint: bool = False) -> int:
    """Run ``argv`` and return its exit status. SIGTERM to this process is passed on to it; a
    terminal's Ctrl-C reaches it directly (this process ignores SIGINT meanwhile).

    ``shield_sigint`` (``datalad run``): the child starts with SIGINT ignored, which a Python
    such as DataLad keeps, so a Ctrl-C stops only the ranks (``mpiexec`` and badc-mpi set their
    own handlers), and DataLad lives on to record and save what they wrote."""
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if shield_sigint else None
    try:
        child = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None)
    except OSError as exc:
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
        raise UsageError(f"cannot start {argv[0]} ({exc.strerror})", fix="check that it is installed and on PATH") from None
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum)),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN) if previous_int is None else previous_int,
    }
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def sbatch_executable(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get(SBATCH_VAR) or "sbatch"


def submit(script: str, *, cwd: str, env: Mapping[str, str] | None = None) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id (the text before ``;``)."""
    argv = [sbatch_executable(env), "--parsable", script]
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise BadcError(
            f"cannot run {argv[0]} ({exc.strerror})",
            fix=f"submit from a SLURM login node, or name sbatch with {SBATCH_VAR}; the script is {script}",
        ) from None
    except subprocess.TimeoutExpired:
        raise BadcError(f"{argv[0]} did not answer in 120 s", fix=f"submit it yourself: sbatch {script}") from None
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        raise BadcError(f"sbatch refused {script}: {why}", fix="check the --sockeye-* options (account, partition, gres, time)")
    job = done.stdout.strip().splitlines()[-1].split(";")[0].strip() if done.stdout.strip() else ""
    if not job:
        raise BadcError(f"sbatch printed no job id for {script}", fix="check squeue; submit it yourself if needed")
    return job
