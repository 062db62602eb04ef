"""The HawkEars test double (scripts/hawkears/fake_hawkears.py) and the audio maker (scripts/demo/make_audio.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import wave

import numpy as np
import pytest

from badc_mpi.storage.detections import parse_scores_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(ROOT, "scripts", "hawkears", "fake_hawkears.py")


def _load(folder, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_audio = _load("demo", "make_audio")
fake = _load("hawkears", "fake_hawkears")


def run_fake(*args, env=None, timeout=20):
    full_env = dict(os.environ)
    full_env.pop("FAKE_HAWKEARS_FAULTS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, FAKE, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    src = make_audio.write_wav(folder / "rec1.wav", make_audio.synth_wave(20.0, 8000, seed=3), 8000)
    return make_audio.cut_wav(src, folder / "chunks", 6.0, "rec1")


def test_make_audio(tmp_path, chunks):
    a = make_audio.synth_wave(2.0, 8000, seed=1)
    assert a.dtype == np.float32 and a.shape == (16000,) and np.abs(a).max() <= 1.0
    assert np.array_equal(a, make_audio.synth_wave(2.0, 8000, seed=1))
    assert not np.array_equal(a, make_audio.synth_wave(2.0, 8000, seed=2))
    assert [(os.path.basename(p), s, e) for p, s, e in chunks] == [
        ("rec1_chunk_0_6000.wav", 0, 6000),
        ("rec1_chunk_6000_12000.wav", 6000, 12000),
        ("rec1_chunk_12000_18000.wav", 12000, 18000),
        ("rec1_chunk_18000_20000.wav", 18000, 20000),
    ]
    with wave.open(chunks[-1][0]) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 8000, 16000)
    out = tmp_path / "cli.wav"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "demo", "make_audio.py"),
            str(out),
            "--seconds",
            "1",
            "--sample-rate",
            "8000",
            "--seed",
            "4",
            "--chunk-s",
            "0.5",
            "--chunk-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].endswith("cli_chunk_500_1000.wav,500,1000")


def test_success_deterministic_and_parseable(tmp_path, chunks):
    wav = chunks[1][0]
    first = run_fake("--input", wav, "--output", tmp_path / "a", "--min-score", 0)
    second = run_fake("analyze", wav, "-o", tmp_path / "b", "--min-score", 0)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a = (tmp_path / "a" / "scores.csv").read_bytes()
    assert a == (tmp_path / "b" / "scores.csv").read_bytes()
    assert a.startswith(b"recording,name,start_time,end_time,score\n")
    assert (tmp_path / "a" / "manifest.yaml").is_file()
    dets = parse_scores_csv(tmp_path / "a" / "scores.csv")
    assert dets and all(d.recording == "rec1_chunk_6000_12000" for d in dets)
    assert all(0 <= d.start_s < d.end_s <= 6.0 for d in dets)


def test_rows_cover_awkward_names():
    """Across inputs, names with commas and quotes do come out, and parse back."""
    labels = set()
    for i in range(200):
        for row in fake.rows_for("x.wav", b"seed%d" % i, 30.0, "names", 0.0):
            labels.add(row[1])
    assert "Warbler, Yellow-rumped" in labels and 'Sparrow "White-throated"' in labels
    codes = {r[1] for i in range(50) for r in fake.rows_for("x.wav", b"%d" % i, 30.0, "codes", 0.0)}
    assert codes <= {code for _, code in fake.SPECIES}


def test_min_score_filters(tmp_path, chunks):
    assert run_fake("--input", chunks[1][0], "--output", tmp_path, "--min-score", 1.01).returncode == 0
    assert (tmp_path / "scores.csv").read_text() == "recording,name,start_time,end_time,score\n"


def test_missing_input_exits_2(tmp_path):
    proc = run_fake("--input", tmp_path / "nope.wav", "--output", tmp_path / "o")
    assert proc.returncode == 2 and "input path not found" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", b"RIFF\x00\x00\x00\x00WAVEjunk", b"fLaC\x00"])
def test_non_audio_exits_0_writing_nothing(tmp_path, content):
    bad = tmp_path / "rec1_chunk_0_6000.wav"
    bad.write_bytes(content)
    proc = run_fake("--input", bad, "--output", tmp_path / "o")
    assert proc.returncode == 0
    assert "unsupported audio" in proc.stderr and "Error" in proc.stderr
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_flac_header_accepted(tmp_path):
    info = struct.pack(">HH", 4096, 4096) + b"\x00" * 6
    bits = (22050 << 44) | (0 << 41) | (15 << 36) | (22050 * 30)
    flac = b"fLaC" + bytes([0x80, 0, 0, 34]) + info + bits.to_bytes(8, "big") + b"\x00" * 16
    path = tmp_path / "r.flac"
    path.write_bytes(flac)
    assert fake.audio_duration_s(str(path)) == pytest.approx(30.0)
    assert run_fake("--input", path, "--output", tmp_path / "o").returncode == 0
    assert (tmp_path / "o" / "scores.csv").exists()


def test_fail_on(tmp_path, chunks):
    proc = run_fake("--input", chunks[1][0], "--output", tmp_path, "--fail-on", "zzz,chunk_6000_12000")
    assert proc.returncode == 3 and "injected failure" in proc.stderr
    assert not (tmp_path / "scores.csv").exists()
    # other chunks are unaffected
    other = run_fake("--input", chunks[0][0], "--output", tmp_path, "--fail-on", "chunk_6000_12000")
    assert other.returncode == 0


def test_crash_on(tmp_path, chunks):
    proc = run_fake("--input", chunks[0][0], "--output", tmp_path, "--crash-on", "chunk_0_")
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "scores.csv").exists()


def test_hang_on(tmp_path, chunks):
    with pytest.raises(subprocess.TimeoutExpired):
        run_fake("--input", chunks[0][0], "--output", tmp_path, "--hang-on", "chunk_0_", timeout=1.0)


def test_silent_on(tmp_path, chunks):
    proc = run_fake("--input", chunks[0][0], "--output", tmp_path / "o", "--silent-on", "rec1_chunk_0_6000")
    assert proc.returncode == 0 and not (tmp_path / "o").exists()


def test_flaky_on_then_succeeds(tmp_path, chunks):
    args = (
        "--input",
        chunks[2][0],
        "--output",
        tmp_path / "o",
        "--flaky-on",
        "chunk_12000",
        "--attempt-file",
        tmp_path / "attempts",
    )
    first = run_fake(*args)
    assert first.returncode == 3 and "flaky" in first.stderr
    assert not (tmp_path / "o" / "scores.csv").exists()
    assert run_fake(*args).returncode == 0
    assert (tmp_path / "o" / "scores.csv").exists()
    assert run_fake(*args).returncode == 0


def test_flaky_without_attempt_dir_is_usage_error(tmp_path, chunks):
    proc = run_fake("--input", chunks[2][0], "--output", tmp_path, "--flaky-on", "chunk_12000")
    assert proc.returncode == 2 and "--attempt-file" in proc.stderr


def test_faults_from_env(tmp_path, chunks):
    faults = {
        "fail": ["chunk_0_"],
        "crash": [],
        "silent": ["chunk_6000_"],
        "flaky": ["chunk_12000"],
        "attempt_dir": str(tmp_path / "att"),
    }
    env = {"FAKE_HAWKEARS_FAULTS": json.dumps(faults)}
    assert run_fake("--input", chunks[0][0], "--output", tmp_path / "a", env=env).returncode == 3
    assert run_fake("--input", chunks[1][0], "--output", tmp_path / "b", env=env).returncode == 0
    assert not (tmp_path / "b").exists()
    assert run_fake("--input", chunks[2][0], "--output", tmp_path / "c", env=env).returncode == 3
    assert run_fake("--input", chunks[2][0], "--output", tmp_path / "c", env=env).returncode == 0
    bad = run_fake("--input", chunks[0][0], "--output", tmp_path / "d", env={"FAKE_HAWKEARS_FAULTS": "{nope"})
    assert bad.returncode == 2 and "FAKE_HAWKEARS_FAULTS" in bad.stderr


def test_fail_file(tmp_path, chunks):
    fail_file = tmp_path / "faults.txt"

    def rc(index, out):
        args = ("--input", chunks[index][0], "--output", tmp_path / out, "--fail-file", fail_file)
        return run_fake(*args).returncode

    fail_file.write_text("# comment\nchunk_0_\nsilent chunk_6000_\n")
    assert rc(0, "a") == 3
    assert rc(1, "b") == 0
    assert not (tmp_path / "b").exists()
    assert rc(3, "c") == 0
    assert (tmp_path / "c" / "scores.csv").exists()
    fail_file.write_text("")
    assert rc(0, "a") == 0
