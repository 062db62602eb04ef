#!/usr/bin/env python3
"""Where srun's pmi2 plugin cuts a PMI-1 request: run as one task of ``srun -n1 --mpi=pmi2``.

    srun -n1 --mpi=pmi2 .venv/bin/python scripts/cluster/slurm_pmi1_probe.py 980 981 982

Speaks the PMI-1 wire protocol on the task's ``PMI_FD``, as the MPICH wheel does: puts a value of
each given length (one write per request, as MPICH's client), then reads each back and says
whether it came back intact. With SLURM 22.05 a put line of 1024 bytes round-trips and one of
1025 bytes is answered ``rc=0`` but lost (slurmd logs "value not properly terminated in client
request", then "request not begin with 'cmd='"). docs/howto/testing-slurm.md.
"""

from __future__ import annotations

import os
import socket
import sys


def reply(sock: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def main(lengths: list[int]) -> int:
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    sock.settimeout(10)
    sock.sendall(b"cmd=init pmi_version=1 pmi_subversion=1\n")
    print(reply(sock).strip())
    sock.sendall(b"cmd=get_my_kvsname\n")
    kvs = reply(sock).split("kvsname=")[1].strip()
    for n in lengths:
        line = f"cmd=put kvsname={kvs} key=k{n} value={'A' * n}\n"
        sock.sendall(line.encode())
        print(f"put line of {len(line)} bytes: {reply(sock).strip()}", flush=True)
    sock.sendall(b"cmd=barrier_in\n")
    print(reply(sock).strip())
    lost = 0
    for n in lengths:
        sock.sendall(f"cmd=get kvsname={kvs} key=k{n}\n".encode())
        got = reply(sock).strip()
        value = got.split("value=", 1)[1] if "value=" in got else ""
        intact = value == "A" * n
        lost += not intact
        print(f"value of {n} characters: {'back intact' if intact else f'lost ({got[:60]!r})'}", flush=True)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [980, 981, 982]))
