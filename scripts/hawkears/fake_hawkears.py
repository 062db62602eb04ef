#!/usr/bin/env python3
"""A test double of ``hawkears analyze`` (HawkEars 2.x, ``--rtype csv``). Standard library only.

Usage::

    fake_hawkears.py [analyze] --input PATH --output DIR [--min-score X] [--label codes|names]
        [--fail-on ID[,ID]] [--crash-on ID] [--hang-on ID] [--silent-on ID] [--flaky-on ID]
        [--attempt-file DIR] [--fail-file FILE] [--sleep-s S] [--crash-signal KILL|SEGV|ABRT]

Behaves like HawkEars where it matters to badc-mpi:

- missing input path: "input path not found" on stderr, exit 2;
- input that is not WAV (RIFF/WAVE) or FLAC (fLaC), or holds no audio: logs
  "Error: ... unsupported audio" and EXITS 0 WRITING NOTHING (as HawkEars does);
- otherwise writes ``DIR/scores.csv`` (``recording,name,start_time,end_time,score``; recording =
  input stem; 3-decimal times) with 0-5 rows derived from the SHA-256 of the input bytes, and
  ``DIR/manifest.yaml``. A folder input scores every WAV/FLAC file in it into one scores.csv.

Fault injection, matched by substring of the input file name (a chunk id is in its file name):
``--fail-on`` (stderr message, exit 3), ``--crash-on`` (kills itself with SIGKILL, or
``--crash-signal``), ``--hang-on`` (sleeps forever), ``--silent-on`` (exit 0, writes nothing),
``--flaky-on`` (fails the first attempt only, counted by marker files in ``--attempt-file DIR``;
``--flaky-times N`` for more). The same faults can come from the environment variable
``FAKE_HAWKEARS_FAULTS`` as JSON ``{"fail": [...], "crash": [...], "hang": [...], "silent": [...],
"flaky": [...], "attempt_dir": "DIR"}`` and from ``--fail-file FILE`` (re-read on each call;
lines ``ID`` = fail, or ``MODE ID``; ``#`` comments). ``FAKE_HAWKEARS_ATTEMPT_DIR`` is the
fallback attempt-marker folder.
"""

import argparse
import csv
import hashlib
import json
import os
import signal
import struct
import sys
import time
import wave

VERSION = "2.3.0-fake"
MODEL_VERSION = "fake-ensemble-1"
MODES = ("fail", "crash", "hang", "silent", "flaky")
AUDIO_EXTENSIONS = (".wav", ".flac")
EXIT_FAIL = 3
SEGMENT_S = 3.0

#: (name, code): includes a comma, quotes, an apostrophe and non-ASCII text on purpose
SPECIES = (
    ("American Robin", "AMRO"),
    ("Warbler, Yellow-rumped", "YRWA"),
    ('Sparrow "White-throated"', "WTSP"),
    ("Swainson's Thrush", "SWTH"),
    ("Ruffed Grouse", "RUGR"),
    ("Spruce Grouse", "SPGR"),
    ("Sharp-tailed Grouse", "STGR"),
    ("Rock Ptarmigan", "ROPT"),
    ("Willow Ptarmigan", "WIPT"),
    ("Mésangeai du Canada", "CAJA"),
)


def log_error(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def split_ids(values):
    out = []
    for value in values or ():
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="fake_hawkears.py", description="HawkEars 2.x test double")
    p.add_argument("positional", nargs="*", help="optional 'analyze', then the input path")
    p.add_argument("--input", "-i", dest="input")
    p.add_argument("--output", "-o", dest="output")
    p.add_argument("--min-score", "--min_score", "-m", dest="min_score", type=float, default=0.7)
    p.add_argument("--label", choices=("codes", "names", "alt-codes", "alt-names"), default="names")
    for mode in MODES:
        p.add_argument("--%s-on" % mode, dest=mode, action="append", default=[], metavar="ID[,ID]")
    p.add_argument("--flaky-times", type=int, default=1, help="failing attempts before success")
    p.add_argument("--attempt-file", "--attempt-dir", dest="attempt_dir")
    p.add_argument("--fail-file", dest="fail_file")
    p.add_argument("--sleep-s", type=float, default=0.0)
    p.add_argument("--crash-signal", choices=("KILL", "SEGV", "ABRT"), default="KILL")
    p.add_argument(
        "--fail-if-output-contains",
        dest="fail_output",
        default=None,
        metavar="TEXT",
        help="fail every call whose --output folder contains TEXT (e.g. '-r1/': one bad rank)",
    )
    # real HawkEars options a command template may pass; accepted and ignored
    p.add_argument("--rtype", default="csv")
    for opt in ("--region", "--lat", "--lon", "--date", "--filelist", "--seg", "--models", "--threads", "-c"):
        p.add_argument(opt)
    p.add_argument("--low-band", "--no-low-band", dest="low_band", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def load_faults(args):
    faults = dict((mode, split_ids(getattr(args, mode))) for mode in MODES)
    attempt_dir = args.attempt_dir
    env = os.environ.get("FAKE_HAWKEARS_FAULTS", "").strip()
    if env:
        try:
            data = json.loads(env)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            log_error("fake_hawkears: FAKE_HAWKEARS_FAULTS is not valid JSON (%s)" % exc)
            sys.exit(2)
        for mode in MODES:
            value = data.get(mode) or []
            faults[mode].extend(split_ids([value] if isinstance(value, str) else value))
        attempt_dir = attempt_dir or data.get("attempt_dir")
    if args.fail_file and os.path.exists(args.fail_file):
        with open(args.fail_file, encoding="utf-8") as handle:
            for raw in handle:
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split(None, 1)
                if len(parts) == 2 and parts[0] in MODES:
                    faults[parts[0]].extend(split_ids([parts[1]]))
                else:
                    faults["fail"].extend(split_ids([line]))
    attempt_dir = attempt_dir or os.environ.get("FAKE_HAWKEARS_ATTEMPT_DIR")
    return faults, attempt_dir


def matches(ids, name):
    for chunk_id in ids:
        if chunk_id and chunk_id in name:
            return chunk_id
    return None


def attempt_number(attempt_dir, name):
    """1-based attempt count for this input, race-free (one marker file per attempt)."""
    os.makedirs(attempt_dir, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    n = 1
    while True:
        marker = os.path.join(attempt_dir, "%s.attempt-%d" % (safe, n))
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return n
        except FileExistsError:
            n += 1


def apply_faults(faults, attempt_dir, name, flaky_times, crash_signal):
    if matches(faults["hang"], name):
        sys.stdout.write("Analyzing %s\n" % name)
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    if matches(faults["crash"], name):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), getattr(signal, "SIG" + crash_signal))
        time.sleep(60)  # the signal is asynchronous on some platforms
        os._exit(1)
    hit = matches(faults["fail"], name)
    if hit:
        log_error("Error: injected failure for chunk %r (fake_hawkears --fail-on)" % hit)
        sys.exit(EXIT_FAIL)
    hit = matches(faults["flaky"], name)
    if hit:
        if not attempt_dir:
            log_error("fake_hawkears: --flaky-on needs --attempt-file DIR (or FAKE_HAWKEARS_ATTEMPT_DIR)")
            sys.exit(2)
        n = attempt_number(attempt_dir, name)
        if n <= flaky_times:
            log_error("Error: injected flaky failure for chunk %r, attempt %d" % (hit, n))
            sys.exit(EXIT_FAIL)
    if matches(faults["silent"], name):
        sys.exit(0)


def audio_duration_s(path):
    """Duration of a WAV/FLAC file; raises ValueError for anything else or no audio."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        try:
            with wave.open(path, "rb") as w:
                frames, rate = w.getnframes(), w.getframerate()
        except (wave.Error, EOFError, struct.error) as exc:
            raise ValueError("corrupt WAV (%s)" % exc)
        if frames <= 0 or rate <= 0:
            raise ValueError("WAV holds no audio")
        return frames / float(rate)
    if head[:4] == b"fLaC":
        # first metadata block must be STREAMINFO (type 0), 34 bytes
        if len(head) < 42 or (head[4] & 0x7F) != 0:
            raise ValueError("corrupt FLAC (no STREAMINFO)")
        info = head[8:42]
        bits = int.from_bytes(info[10:18], "big")
        rate = bits >> 44
        total = bits & ((1 << 36) - 1)
        if rate <= 0:
            raise ValueError("corrupt FLAC (sample rate 0)")
        return total / float(rate) if total else 30.0  # 0 = unknown length in FLAC
    raise ValueError("not a WAV or FLAC file")


def rows_for(path, data, duration_s, label, min_score):
    """Deterministic detections from the SHA-256 of the input bytes."""
    digest = hashlib.sha256(data).digest()
    count = digest[0] % 6
    segments = max(1, int(duration_s // SEGMENT_S))
    stem = os.path.splitext(os.path.basename(path))[0]
    rows = []
    for i in range(count):
        a, b, c = digest[1 + 3 * i], digest[2 + 3 * i], digest[3 + 3 * i]
        name, code = SPECIES[a % len(SPECIES)]
        start = (b % segments) * SEGMENT_S
        end = min(start + SEGMENT_S, duration_s) if duration_s > start else start + SEGMENT_S
        score = round(0.5 + 0.5 * c / 255.0, 3)
        if score < min_score:
            continue
        shown = code if label in ("codes", "alt-codes") else name
        rows.append((stem, shown, "%.3f" % start, "%.3f" % end, "%.3f" % score))
    rows.sort(key=lambda r: (float(r[2]), r[1]))
    return rows


def input_files(path):
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(AUDIO_EXTENSIONS))
        return [os.path.join(path, n) for n in names]
    return [path]


def write_outputs(out_dir, rows, args):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "scores.csv"), "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["recording", "name", "start_time", "end_time", "score"])
        writer.writerows(rows)
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    with open(os.path.join(out_dir, "manifest.yaml"), "w", encoding="utf-8") as handle:
        handle.write("hawkears_version: %s\n" % json.dumps(VERSION))
        handle.write("model_version: %s\n" % json.dumps(MODEL_VERSION))
        handle.write("device: %s\n" % ("cuda" if cuda not in (None, "") else "cpu"))
        handle.write("cuda_visible_devices: %s\n" % json.dumps(cuda))
        handle.write("pid: %d\n" % os.getpid())
        handle.write("label: %s\nmin_score: %s\nrtype: %s\n" % (args.label, args.min_score, args.rtype))
        handle.write("classes: %s\n" % json.dumps([code for _, code in SPECIES]))


def main(argv=None):
    args = build_parser().parse_args(argv)
    positional = list(args.positional)
    if positional and positional[0] == "analyze":
        positional.pop(0)
    input_path = args.input or (positional[0] if positional else None)
    if not input_path or not args.output:
        log_error("fake_hawkears: --input PATH and --output DIR are required")
        return 2
    if not os.path.exists(input_path):
        log_error("Error: input path not found: %s" % input_path)
        return 2
    name = os.path.basename(os.path.normpath(input_path))
    faults, attempt_dir = load_faults(args)
    if args.fail_output and args.fail_output in args.output:
        log_error("Error: injected failure for output folder %r (fake_hawkears --fail-if-output-contains)" % args.output)
        return EXIT_FAIL
    apply_faults(faults, attempt_dir, name, args.flaky_times, args.crash_signal)
    if args.sleep_s > 0:
        time.sleep(args.sleep_s)
    rows = []
    for path in input_files(input_path):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            duration_s = audio_duration_s(path)
        except (OSError, ValueError) as exc:
            # exactly like HawkEars: log, write nothing, exit 0
            log_error("Error: cannot read %s: unsupported audio (%s)" % (path, exc))
            return 0
        rows.extend(rows_for(path, data, duration_s, args.label, args.min_score))
    if not args.quiet:
        sys.stdout.write("Analyzed %s: %d detections\n" % (input_path, len(rows)))
    write_outputs(args.output, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
