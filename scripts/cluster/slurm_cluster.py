#!/usr/bin/env python3
"""A throwaway SLURM cluster on this machine, for `make test-slurm`: munge, slurmctld, two slurmd.

    python scripts/cluster/slurm_cluster.py run -- CMD [ARGS...]   # up, CMD with SLURM_CONF set, always down
    python scripts/cluster/slurm_cluster.py up [--state DIR]       # prints DIR; `export SLURM_CONF=DIR/slurm.conf`
    python scripts/cluster/slurm_cluster.py down DIR               # cancels its jobs, stops its daemons, removes DIR
    python scripts/cluster/slurm_cluster.py prepare                # root? packages (installed when missing)?

Everything lives in one temporary folder (config written from scripts/cluster/slurm_templates/, state,
spools, logs, pid files, munge key and socket) and every daemon listens on free ports of its own,
so a system SLURM or munge on the machine is neither used nor disturbed. Needs root and Debian's
SLURM 22.05 (`apt-get install -y slurmd slurmctld slurm-client munge`, done here when missing).

Stopping touches only what this cluster started: the daemons named by its pid files (each checked
to be running with this cluster's config), and processes whose environment names this cluster's
SLURM_CONF (job steps, slurmstepd). Facts behind the config: shared/notes/slurm.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "slurm_templates"
PACKAGES = ("slurmd", "slurmctld", "slurm-client", "munge")
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol")
NODES = ("n1", "n2")
STATE_ENV = "BADC_MPI_TEST_SLURM"  #: the cluster's folder, exported to the command `run` starts


class Unavailable(Exception):
    """This machine cannot host the test cluster; the message says why, in one line."""


def render(template: str, values: dict[str, object]) -> str:
    """A template with ``${name}`` placeholders, every one of them given. Pure."""
    return string.Template(template).substitute({k: str(v) for k, v in values.items()})


def config_values(
    state: Path, ports: list[int], first_job_id: int, *, cpus: int = 32, mem_mib: int = 131072, gpus: int = 4
) -> dict[str, object]:
    """What the templates need. Pure: ``ports`` = controller, slurmd default, n1, n2."""
    return {
        "first_job_id": first_job_id,
        "cluster": "badctest",
        "host": socket.gethostname(),
        "state": state,
        "ctld_port": ports[0],
        "slurmd_port": ports[1],
        "n1_port": ports[2],
        "n2_port": ports[3],
        "cpus": cpus,
        "mem_mib": mem_mib,
        "gpus": gpus,
        "last_gpu": gpus - 1,
        "min_job_age": 300,
    }


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (held open together, so all differ)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def preflight(install: bool = True) -> None:
    """Root, and SLURM's and munge's programs (installed with apt-get when root and missing)."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (it starts munged, slurmctld and slurmd): run it as root in a throwaway VM or container")
    if all(shutil.which(b) for b in BINARIES):
        return
    if not install or not shutil.which("apt-get"):
        missing = " ".join(b for b in BINARIES if not shutil.which(b))
        raise Unavailable(f"missing {missing}, and no apt-get to install Debian's {' '.join(PACKAGES)}")
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode == 0
    if not ok:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        ok = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode == 0
    if not ok or not all(shutil.which(b) for b in BINARIES):
        raise Unavailable(f"`{' '.join(cmd)}` failed: install Debian's SLURM and munge packages by hand")


class Cluster:
    """One test cluster in ``state``: :meth:`up` starts it, :meth:`down` removes every trace."""

    def __init__(self, state: Path) -> None:
        self.state = Path(state)
        self.conf = self.state / "slurm.conf"
        self.socket = self.state / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """The environment for clients of this cluster: its SLURM_CONF, and no outer job's SLURM_*
        variables (inside a real job, srun would otherwise try to join that job)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        return {**env, "SLURM_CONF": str(self.conf), STATE_ENV: str(self.state)}

    # ---- up
    def up(self, timeout_s: float = 60, first_job_id: int | None = None) -> None:
        for sub in ("munge", "ctld", "log", "pid", "dev", *(f"spool-{n}" for n in NODES)):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        # job ids unlike any earlier cluster's: MPICH names its /dev/shm segments after the PMI job
        # (job.step), and a killed job's leftover segment under a reused id breaks MPI_Init
        # ("Invalid GenQ flag", or a hang)
        values = config_values(self.state, free_ports(4), first_job_id or random.randrange(100_000, 60_000_000))
        for i in range(int(values["gpus"])):
            dev = self.state / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, as /dev/null
        self.conf.write_text(render((TEMPLATES / "slurm.conf.in").read_text(), values))
        (self.state / "gres.conf").write_text(render((TEMPLATES / "gres.conf.in").read_text(), values))
        self._start_munge()
        env = self.env
        self._daemon(["slurmctld", "-f", str(self.conf)], env, self.pidfile("slurmctld"))
        for node in NODES:
            self._daemon(["slurmd", "-N", node, "-f", str(self.conf)], env, self.pidfile(f"slurmd-{node}"))
        self._wait_idle(timeout_s)

    def pidfile(self, name: str) -> Path:
        return self.state / "pid" / f"{name}.pid"

    def _start_munge(self) -> None:
        key = self.state / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.state / "munge").chmod(0o755)
        m = self.state / "munge"
        cmd = ["munged", "--force", f"--socket={self.socket}", f"--key-file={key}", f"--log-file={m / 'munged.log'}"]
        cmd += [f"--pid-file={self.pidfile('munged')}", f"--seed-file={m / 'munged.seed'}"]
        self._daemon(cmd, dict(os.environ), self.pidfile("munged"))

    def _daemon(self, cmd: list[str], env: dict[str, str], pidfile: Path, timeout_s: float = 15) -> None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while proc.returncode == 0 and not _pid_of(pidfile, self.state) and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.returncode != 0 or not _pid_of(pidfile, self.state):
            raise RuntimeError(
                f"{cmd[0]} did not start (exit {proc.returncode}): {proc.stderr.strip()[-500:]}\n{self.log_tail()}"
            )

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        out = ""
        while time.monotonic() < deadline:
            out = self.client(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if sorted(states) == sorted(NODES) and set(states.values()) == {"idle"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"nodes not idle after {timeout_s:.0f} s: {out.strip()!r}\n{self.log_tail()}")

    def client(self, cmd: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for log in sorted((self.state / "log").glob("*.log")) + [self.state / "munge" / "munged.log"]:
            if log.exists():
                parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    # ---- down
    def down(self, *, remove: bool = True, wait_jobs_s: float = 45) -> list[str]:
        """Cancel this cluster's jobs, stop its daemons and any process left with its SLURM_CONF,
        remove its folder. Returns what had to be killed (empty when everything ended by itself)."""
        killed: list[str] = []
        if _pid_of(self.pidfile("slurmctld"), self.state):
            self._cancel_jobs(wait_jobs_s)
        for name in [f"slurmd-{n}" for n in NODES] + ["slurmctld"]:
            killed += _stop(self.pidfile(name), self.state)
        killed += [f"job process {pid}: {_cmdline(pid)}" for pid in _kill_with_env("SLURM_CONF", str(self.conf))]
        killed += _stop(self.pidfile("munged"), self.state)
        if remove:
            shutil.rmtree(self.state, ignore_errors=True)
        return killed

    def _cancel_jobs(self, wait_s: float) -> None:
        try:
            self.client(["scancel", "--quiet", "--user", "root"], timeout_s=15)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                out = self.client(["squeue", "-h", "-t", "PD,R,CG,S", "-o", "%A"], timeout_s=15).stdout
                if not out.strip():
                    return
                time.sleep(1)
        except (OSError, subprocess.SubprocessError):
            pass  # the controller is gone or hangs: its daemons and job processes are killed next


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pid_of(pidfile: Path, state: Path) -> int | None:
    """The pid in ``pidfile`` if that process runs with this cluster's folder in its command line."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if str(state) in _cmdline(pid) else None


def _stop(pidfile: Path, state: Path, wait_s: float = 10) -> list[str]:
    pid = _pid_of(pidfile, state)
    if pid is None:
        return []
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _pid_of(pidfile, state) == pid and _cmdline(pid):
        time.sleep(0.1)
    if _pid_of(pidfile, state) == pid and _cmdline(pid):
        os.kill(pid, signal.SIGKILL)
        return [f"{pidfile.stem} {pid} (SIGKILL after {wait_s:.0f} s)"]
    return []


def processes_with_env(name: str, value: str) -> list[int]:
    """Living processes whose environment holds ``name=value`` (this cluster's own: its steps inherit it)."""
    needle = f"{name}={value}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _kill_with_env(name: str, value: str) -> list[int]:
    pids = processes_with_env(name, value)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def run(cmd: list[str], state: Path | None = None) -> int:
    """Up, ``cmd`` with the cluster's environment, then down whatever happened (signals included).
    The exit status is ``cmd``'s; 2 when the cluster would not start; 1 when ``cmd`` passed but
    something of the cluster outlived the teardown."""
    preflight()
    state = Path(state) if state else Path(tempfile.mkdtemp(prefix="badc-slurm-"))
    cluster = Cluster(state)
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    child: subprocess.Popen[bytes] | None = None
    rc = 2
    try:
        started = time.monotonic()
        cluster.up()
        print(f"slurm-cluster: up in {time.monotonic() - started:.1f} s: SLURM_CONF={cluster.conf}", flush=True)
        child = subprocess.Popen(cmd, env=cluster.env)
        rc = child.wait()
    except KeyboardInterrupt:
        rc = 130
        if child is not None:
            # Ctrl-C reached the child too (same process group); another signal is passed on
            if received and received[0] != signal.SIGINT:
                child.send_signal(received[0])
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        print(f"slurm-cluster: interrupted by signal {received[0] if received else '?'}", file=sys.stderr)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"slurm-cluster: the cluster did not start: {exc}", file=sys.stderr)
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # the teardown itself is not interrupted
        keep = os.environ.get("BADC_MPI_SLURM_KEEP") == "1"
        killed = cluster.down(remove=not keep)
        leftovers = processes_with_env("SLURM_CONF", str(cluster.conf))
        where = f" (kept {state})" if keep else ""
        print(f"slurm-cluster: down{where}; had to kill: {'; '.join(killed) or 'nothing'}", flush=True)
        if leftovers:
            print(f"slurm-cluster: still alive after the teardown: {leftovers}", file=sys.stderr)
            rc = rc or 1
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm_cluster.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="up, run CMD with SLURM_CONF set, always down")
    p_run.add_argument("--state", type=Path, help="folder for everything (default: a new temporary one)")
    p_run.add_argument("cmd", nargs=argparse.REMAINDER)
    p_up = sub.add_parser("up", help="start a cluster and print its folder")
    p_up.add_argument("--state", type=Path)
    p_up.add_argument("--first-job-id", type=int, help="default: random (job ids never repeat an earlier cluster's)")
    p_down = sub.add_parser("down", help="stop the cluster in STATE and remove STATE")
    p_down.add_argument("state", type=Path)
    p_down.add_argument("--keep", action="store_true", help="keep the folder (logs)")
    p_prep = sub.add_parser("prepare", help="check root, install Debian's SLURM and munge when missing")
    p_prep.add_argument("--no-install", action="store_true", help="only check")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            preflight(install=not args.no_install)
            print("slurm-cluster: this machine can host the test cluster")
            return 0
        if args.command == "run":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                parser.error("run needs a command: run -- pytest ...")
            return run(cmd, args.state)
        if args.command == "up":
            preflight()
            cluster = Cluster(args.state or Path(tempfile.mkdtemp(prefix="badc-slurm-")))
            try:
                cluster.up(first_job_id=args.first_job_id)
            except BaseException:
                cluster.down(remove=False)
                raise
            print(cluster.state)
            return 0
        killed = Cluster(args.state).down(remove=not args.keep)
        print(f"slurm-cluster: down; killed: {killed or 'nothing'}")
        return 0
    except Unavailable as exc:
        print(f"slurm-cluster: cannot run here: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
