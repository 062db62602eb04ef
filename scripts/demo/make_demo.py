#!/usr/bin/env python3
"""Build the bundled example: a DataLad dataset holding a recording tree named as recorders and the
lab name their files, a site table, and the manifest ``badc-mpi chunk`` writes for it.

    .venv/bin/python scripts/demo/make_demo.py examples/demo

Layout (the lab's ``Study/Station`` folders; WildTrax ``LOCATION_YYYYMMDD_HHMMSS`` file names)::

    examples/demo/                       DataLad dataset (.datalad/), audio annexed by git-annex
      sites.csv                          location -> latitude, longitude, region, time_zone, study_area
      recordings/Kakisa/KAK-01/KAK-01_20240601_050000.wav          synthetic chirps over noise
      recordings/Kakisa/KAK-01/KAK-01_20240602_050000.wav          (62 s: its 2-s tail joins the chunk before)
      recordings/Kakisa/KAK-02/KAK-02_20240601_053000.flac         FLAC
      recordings/CallingLake/CL-03/A/Data/CL-03_20240601_043000.wav  HawkEars' bundled recording, decoded
      manifests/demo.csv                 virtual chunks (no audio copied), written by `badc-mpi chunk`
      artifacts/chunks/<recording_id>/.chunk_status.json

Steps: ``datalad create``; write the tree and ``sites.csv``; ``datalad save`` (the audio goes to the
annex); ``badc-mpi chunk recordings --layout lab --sites sites.csv --chunk-s 30 --out
manifests/demo.csv`` (it reads the annexed files through their links); ``datalad save`` again, so
``make infer``'s ``datalad run`` finds a clean dataset. ``--layout wildtrax`` reads the same tree
(location from the file name, study area from ``sites.csv``).

Idempotent: a second call finds the finished dataset (a stamp written last, naming this layout) and
returns at once; a dataset left unfinished, or built by an older version of this script, is rebuilt.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "demo"))

import make_audio  # noqa: E402

STAMP = ".badc-demo-complete"
LAYOUT_VERSION = "recording-tree-1"  #: first word of the stamp; another value: rebuild
SAMPLE_RATE = 22050
CHUNK_S = 30
RECORDINGS_DIR = "recordings"
SITES_FILE = "sites.csv"
MANIFEST = "manifests/demo.csv"

#: plausible boreal sites: the Dehcho near Kakisa (NWT) and Calling Lake (Alberta); both on Mountain time
SITES_CSV = (
    "location,latitude,longitude,region,time_zone,study_area\n"
    "KAK-01,60.9312,-117.4021,CA-NT,America/Yellowknife,Kakisa\n"
    "KAK-02,60.9487,-117.4530,CA-NT,America/Yellowknife,Kakisa\n"
    "CL-03,55.2231,-113.2812,CA-AB,America/Edmonton,CallingLake\n"
)


@dataclass(frozen=True)
class DemoRecording:
    rel: str  #: path under recordings/
    seconds: float
    seed: int
    bundled: bool = False  #: HawkEars' Common Yellowthroat (synthetic of ``seconds`` when unavailable)


TREE = (
    DemoRecording("Kakisa/KAK-01/KAK-01_20240601_050000.wav", 75, 11),
    DemoRecording("Kakisa/KAK-01/KAK-01_20240602_050000.wav", 62, 17),
    DemoRecording("Kakisa/KAK-02/KAK-02_20240601_053000.flac", 45, 23),
    DemoRecording("CallingLake/CL-03/A/Data/CL-03_20240601_043000.wav", 6, 29, bundled=True),
)

DECODE = """
import sys, wave
import av, numpy as np
src, dst, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
with av.open(src) as box:
    res = av.AudioResampler(format="s16", layout="mono", rate=rate)
    parts = []
    for frame in box.decode(audio=0):
        for out in res.resample(frame):
            parts.append(out.to_ndarray().reshape(-1))
    for out in res.resample(None):
        parts.append(out.to_ndarray().reshape(-1))
pcm = np.concatenate(parts).astype("<i2")
with wave.open(dst, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate); w.writeframes(pcm.tobytes())
"""


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else name


def chunk_argv(root: Path) -> list[str]:
    """``badc-mpi chunk`` words (after the program) for the demo dataset at ``root``."""
    return [
        "chunk",
        str(root / RECORDINGS_DIR),
        "--layout",
        "lab",
        "--sites",
        str(root / SITES_FILE),
        "--chunk-s",
        str(CHUNK_S),
        "--out",
        str(root / MANIFEST),
    ]


def write_synthetic(path: Path, seconds: float, seed: int) -> None:
    """Chirps over noise as 16-bit PCM, WAV or FLAC by the extension (written to a temporary name)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    samples = make_audio.synth_wave(seconds, SAMPLE_RATE, seed)
    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    sf.write(tmp, samples, SAMPLE_RATE, subtype="PCM_16", format=fmt)
    os.replace(tmp, path)


def decode_bundled(dest: Path) -> bool:
    """Decode HawkEars' Common Yellowthroat MP3 to WAV with HawkEars' own PyAV; False if unavailable."""
    from badc_mpi.errors import BadcError
    from badc_mpi.runners.hawkears import env as hawkears_env

    try:
        python = hawkears_env.find_hawkears_python()
        mp3 = hawkears_env.bundled_recording(python)
    except BadcError as exc:
        say(f"HawkEars' bundled recording unavailable ({exc}); synthetic audio in its place")
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    subprocess.run([python, "-c", DECODE, str(mp3), str(tmp), str(SAMPLE_RATE)], check=True)
    os.replace(tmp, dest)
    return True


def write_tree(root: Path, *, bundled: bool = True) -> list[Path]:
    """The recordings under ``root/recordings`` and ``root/sites.csv``; ``bundled=False``: no
    HawkEars needed (synthetic audio in place of its recording). Returns the recordings."""
    written = []
    for rec in TREE:
        path = root / RECORDINGS_DIR / rec.rel
        if not (rec.bundled and bundled and decode_bundled(path)):
            write_synthetic(path, rec.seconds, rec.seed)
        written.append(path)
    (root / SITES_FILE).write_text(SITES_CSV)
    return written


def read_stamp(root: Path) -> str | None:
    try:
        words = (root / STAMP).read_text().split()
    except OSError:
        return None
    return words[0] if words else ""


def remove_dataset(root: Path) -> None:
    """Remove a generated dataset, git-annex's read-only object folders included."""
    for folder, dirs, _files in os.walk(root):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)
    shutil.rmtree(root)


def run(argv: list[str], env: dict[str, str], *, quiet: bool = True) -> None:
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL if quiet else None)


def build(root: Path) -> Path:
    manifest = root / MANIFEST
    stamp = read_stamp(root)
    if stamp == LAYOUT_VERSION:
        say(f"{root} is already built ({manifest})")
        return manifest
    if root.exists():
        why = "unfinished" if stamp is None else "built by an older make_demo.py"
        say(f"removing {root} ({why})")
        remove_dataset(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    datalad = tool("datalad")
    run([datalad, "create", "-c", "text2git", str(root)], env)
    recordings = write_tree(root)
    run([datalad, "save", "-d", str(root), "-m", "demo recordings (annexed) and site table"], env)
    chunk = [sys.executable, "-m", "badc_mpi", *chunk_argv(root)]
    say(f"$ badc-mpi {shlex.join(chunk_argv(Path(os.path.relpath(root))))}")
    run(chunk, env, quiet=False)
    run([datalad, "save", "-d", str(root), "-m", "badc-mpi chunk: manifest of virtual chunks, chunk status"], env)
    (root / STAMP).write_text(f"{LAYOUT_VERSION}\n")
    # the stamp is untracked on purpose: it marks the build of this checkout, not dataset content
    with open(root / ".git" / "info" / "exclude", "a") as fh:
        fh.write(f"{STAMP}\n")
    say(f"built {root}: {len(recordings)} recordings in {root / RECORDINGS_DIR}, chunks of {CHUNK_S} s in {manifest}")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", type=Path, help="dataset folder, e.g. examples/demo")
    args = ap.parse_args()
    try:
        build(args.dest.absolute())
    except subprocess.CalledProcessError as exc:
        print(
            f"[demo] error: {shlex.join(map(str, exc.cmd))} exited {exc.returncode} (above); rerun make demo after fixing it",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
