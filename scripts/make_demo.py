#!/usr/bin/env python3
"""Build the bundled example: a DataLad dataset with audio, chunk WAVs, a manifest, chunk status.

    .venv/bin/python scripts/make_demo.py examples/demo

Layout (the lab's dataset layout)::

    examples/demo/                      DataLad dataset (.datalad/), audio annexed by git-annex
      audio/CommonYellowthroat.wav      HawkEars' bundled recording, decoded to WAV
      audio/synthetic_A.wav, ...        synthetic chirps over noise
      artifacts/chunks/<rec>/<chunk>.wav + .chunk_status.json
      manifests/demo.csv                recording_id,chunk_id,source_path,start_ms,end_ms,overlap_ms,sha256,notes,site

Idempotent: a second call finds the finished dataset (a stamp written last) and returns at once.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import make_audio  # noqa: E402

STAMP = ".badc-demo-complete"
CHUNK_S = 30
SAMPLE_RATE = 22050
SYNTHETIC = {"synthetic_A": (120, 11), "synthetic_B": (90, 23)}  # name: (seconds, seed)

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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def decode_bundled(dest: Path) -> bool:
    """Decode HawkEars' Common Yellowthroat MP3 to WAV with HawkEars' own PyAV; False if unavailable."""
    from badc_mpi.errors import BadcError
    from badc_mpi.runners.hawkears import env as hawkears_env

    try:
        python = hawkears_env.find_hawkears_python()
        mp3 = hawkears_env.bundled_recording(python)
    except BadcError as exc:
        say(f"HawkEars' bundled recording unavailable ({exc}); synthetic audio only")
        return False
    subprocess.run([python, "-c", DECODE, str(mp3), str(dest), str(SAMPLE_RATE)], check=True)
    return True


def build(root: Path) -> Path:
    manifest = root / "manifests" / "demo.csv"
    if (root / STAMP).exists():
        say(f"{root} is already built ({manifest})")
        return manifest
    if root.exists():
        say(f"removing an unfinished {root}")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([tool("datalad"), "create", "-c", "text2git", str(root)], check=True, env=env, stdout=subprocess.DEVNULL)
    audio = root / "audio"
    audio.mkdir()
    recordings: dict[str, Path] = {}
    cy = audio / "CommonYellowthroat.wav"
    if decode_bundled(cy):
        recordings["CommonYellowthroat"] = cy
    for name, (seconds, seed) in SYNTHETIC.items():
        path = audio / f"{name}.wav"
        make_audio.write_wav(str(path), make_audio.synth_wave(seconds, SAMPLE_RATE, seed), SAMPLE_RATE)
        recordings[name] = path
    rows = []
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for rec, path in recordings.items():
        out_dir = root / "artifacts" / "chunks" / rec
        pieces = make_audio.cut_wav(str(path), str(out_dir), CHUNK_S, rec)
        for chunk_path, start_ms, end_ms in pieces:
            rows.append(
                {
                    "recording_id": rec,
                    "chunk_id": Path(chunk_path).stem,
                    "source_path": os.path.relpath(chunk_path, manifest.parent),
                    "start_ms": start_ms,
                    "end_ms": end_ms,
                    "overlap_ms": 0,
                    "sha256": sha256(Path(chunk_path)),
                    "notes": "HawkEars bundled recording" if rec == "CommonYellowthroat" else "synthetic chirps",
                    "site": "demo-site",
                }
            )
        status = {
            "recording_id": rec,
            "audio_path": os.path.relpath(path, root),
            "chunk_output_dir": os.path.relpath(out_dir, root),
            "manifest_path": os.path.relpath(manifest, root),
            "chunk_duration": CHUNK_S,
            "overlap": 0,
            "status": "completed",
            "started_at": now,
            "completed_at": now,
            "updated_at": now,
            "manifest_rows": len(pieces),
            "duration_s": pieces[-1][2] / 1000 if pieces else 0,
            "error": None,
        }
        (out_dir / ".chunk_status.json").write_text(json.dumps(status, indent=1) + "\n")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    subprocess.run(
        [tool("datalad"), "save", "-d", str(root), "-m", "demo audio, chunks and manifest"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    (root / STAMP).write_text(now + "\n")
    # the stamp is untracked on purpose: it marks the build of this checkout, not dataset content
    with open(root / ".git" / "info" / "exclude", "a") as fh:
        fh.write(f"{STAMP}\n")
    say(f"built {root}: {len(recordings)} recordings, {len(rows)} chunks of {CHUNK_S} s; manifest {manifest}")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", type=Path, help="dataset folder, e.g. examples/demo")
    args = ap.parse_args()
    build(args.dest.absolute())
    return 0


if __name__ == "__main__":
    sys.exit(main())
