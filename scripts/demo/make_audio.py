#!/usr/bin/env python3
"""Synthetic bird-like audio for the demo and tests (standard library + numpy).

Usage::

    make_audio.py OUT.wav --seconds S [--sample-rate 22050] [--seed N] [--chirps|--no-chirps]
        [--chunk-s C [--chunk-dir DIR]]

Writes a 16-bit mono WAV of frequency-swept chirps over soft noise; with ``--chunk-s`` it also
cuts it into ``<stem>_chunk_<start_ms>_<end_ms>.wav`` files (the last one short) and prints
``path,start_ms,end_ms`` lines. Importable: :func:`synth_wave`, :func:`write_wav`, :func:`cut_wav`.
"""

from __future__ import annotations

import argparse
import os
import sys
import wave

import numpy as np


def synth_wave(seconds: float, sample_rate: int = 22050, seed: int = 0, *, chirps: bool = True) -> np.ndarray:
    """Float32 samples in [-1, 1]: noise plus random up/down chirps (deterministic per seed)."""
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError("seconds and sample_rate must be positive")
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    samples = (0.02 * rng.standard_normal(n)).astype(np.float64)
    if chirps:
        nyquist_hz = sample_rate / 2.0
        for _ in range(rng.poisson(max(1.0, seconds * 0.8))):
            dur_s = rng.uniform(0.08, 0.4)
            length = int(dur_s * sample_rate)
            if length < 8 or length >= n:
                continue
            start = int(rng.integers(0, n - length))
            f0 = rng.uniform(1500.0, min(6000.0, 0.8 * nyquist_hz))
            f1 = float(np.clip(f0 * rng.uniform(0.5, 2.0), 500.0, 0.9 * nyquist_hz))
            t = np.arange(length) / sample_rate
            phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur_s))
            samples[start : start + length] += rng.uniform(0.2, 0.6) * np.hanning(length) * np.sin(phase)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> str:
    """Write mono samples (float in [-1, 1] or int16) as a 16-bit PCM WAV."""
    data = np.asarray(samples)
    if data.dtype != np.int16:
        data = (np.clip(data.astype(np.float64), -1.0, 1.0) * 32767.0).round().astype(np.int16)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(data.astype("<i2").tobytes())
    return path


def cut_wav(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    chunk_s: float,
    prefix: str | None = None,
    *,
    overlap_s: float = 0.0,
) -> list[tuple[str, int, int]]:
    """Cut a WAV into ``<prefix>_chunk_<start_ms>_<end_ms>.wav`` files; returns (path, start, end)."""
    if chunk_s <= 0 or not 0 <= overlap_s < chunk_s:
        raise ValueError("need chunk_s > 0 and 0 <= overlap_s < chunk_s")
    src = os.fspath(src)
    prefix = prefix or os.path.splitext(os.path.basename(src))[0]
    os.makedirs(out_dir, exist_ok=True)
    with wave.open(src, "rb") as w:
        params = w.getparams()
        frames = w.readframes(params.nframes)
    rate, width = params.framerate, params.sampwidth * params.nchannels
    total = params.nframes
    step = int(round((chunk_s - overlap_s) * rate))
    size = int(round(chunk_s * rate))
    out: list[tuple[str, int, int]] = []
    start = 0
    while start < total:
        end = min(start + size, total)
        start_ms, end_ms = round(start * 1000 / rate), round(end * 1000 / rate)
        path = os.path.join(os.fspath(out_dir), f"{prefix}_chunk_{start_ms}_{end_ms}.wav")
        with wave.open(path, "wb") as piece:
            piece.setnchannels(params.nchannels)
            piece.setsampwidth(params.sampwidth)
            piece.setframerate(rate)
            piece.writeframes(frames[start * width : end * width])
        out.append((path, start_ms, end_ms))
        if end >= total:
            break
        start += step
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write a synthetic bird-like WAV")
    p.add_argument("out")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--sample-rate", type=int, default=22050)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chirps", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--chunk-s", type=float, help="also cut into chunks of this length")
    p.add_argument("--chunk-dir", help="folder for the chunks (default: next to OUT)")
    args = p.parse_args(argv)
    samples = synth_wave(args.seconds, args.sample_rate, args.seed, chirps=args.chirps)
    write_wav(args.out, samples, args.sample_rate)
    if args.chunk_s:
        chunk_dir = args.chunk_dir or os.path.dirname(os.path.abspath(args.out))
        for path, start_ms, end_ms in cut_wav(args.out, chunk_dir, args.chunk_s):
            print(f"{path},{start_ms},{end_ms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
