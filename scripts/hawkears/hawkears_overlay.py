#!/usr/bin/env python3
"""HawkEars as an *overlay* on an existing Python with torch: wheels downloaded here, installed there.

For machines where ``make hawkears`` cannot build HawkEars' own environment (no internet, e.g. a
lent GPU machine whose python3 already has torch). Standard library only, any python >= 3.10
(``packaging``, when present, evaluates markers and version specifiers):

    # there (the target): what it already has
    python3 scripts/hawkears/hawkears_overlay.py have -o have.txt
    # here (internet): the wheels it lacks, for its Python version, in parts of <= 60 MiB
    python3 scripts/hawkears/hawkears_overlay.py download --have have.txt --dest .hawkears-wheels
    # there (offline): install each part (any order), then check; prints OVERLAY/bin/python
    python3 scripts/hawkears/hawkears_overlay.py install --wheels .hawkears-wheels/part1 --overlay /tmp/ov --no-check
    python3 scripts/hawkears/hawkears_overlay.py install --wheels .hawkears-wheels/part2 --overlay /tmp/ov
    BADC_MPI_HAWKEARS_PYTHON=/tmp/ov/bin/python make gpu-check    # or HAWKEARS_PYTHON=/tmp/ov/bin/python

``download`` walks HawkEars' pins (vendor/HawkEars/requirements.txt) and each wheel's
``Requires-Dist``, skipping what the target has and what HawkEars never imports to score audio
(badc_mpi/runners/hawkears/overlay.py ``LEFT_OUT``), with ``pip download --no-deps`` for the target
platform; versions come from the pins, then from a ``make hawkears`` env's ``badc-freeze.txt``
(``--freeze``), else the newest that fits. It writes ``DEST/part<N>/`` and ``DEST/plan.json``.
``install`` runs ``pip install --no-index --no-deps --target`` into a staging folder, merges it into
OVERLAY, writes the wrapper ``OVERLAY/bin/python``, points the console scripts at it, and (unless
``--no-check``) imports torch, hawkears==2.3.0 and britekit through it: one line and exit 2 if not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from badc_mpi.runners.hawkears import env as he  # noqa: E402
from badc_mpi.runners.hawkears import overlay as ov  # noqa: E402

STAMP = ".badc-hawkears-overlay.json"
#: manylinux tags pip is given (it matches each exactly); the target's glibc must be at least the newest one used
PLATFORMS = ("manylinux1_x86_64", "manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, 36)))
HAVE_CODE = (
    "import importlib.metadata as m, json, sys; "
    "print(json.dumps({'python': sys.version.split()[0], "
    "'dists': {d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}}))"
)


class OverlayError(Exception):
    """A problem with the fix in its message; main() prints it as one line and exits 2."""


def _say(message: str) -> None:
    print(f"[hawkears-overlay] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    _say("$ " + " ".join(argv[:12]) + (f" ... ({len(argv) - 12} more)" if len(argv) > 12 else ""))
    done = subprocess.run(argv, text=True, capture_output=True, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise OverlayError(f"`{' '.join(argv[:4])} ...` failed (exit {done.returncode}): {' | '.join(tail)}")
    return done


# ---------------------------------------------------------------------------- have (on the target)
def ask_have(python: str) -> str:
    """The *have* file of ``python``: its Python version and every distribution it can import."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    info = json.loads(_run([python, "-c", HAVE_CODE], env=env, timeout=120).stdout)
    return ov.have_text(info["dists"], info["python"])


# ---------------------------------------------------------------------------- download (here, internet)
def _requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise OverlayError(f"{wheel.name} has no .dist-info/METADATA: a broken download; delete it and run again")
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def _pip_download(reqs: list[str], folder: Path, python_version: str, pip_extra: list[str]) -> None:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    argv += ["--python-version", python_version, "--implementation", "cp", "-d", str(folder)]
    for tag in PLATFORMS:
        argv += ["--platform", tag]
    _run([*argv, *pip_extra, *reqs], timeout=1800)


def pack(wheel: Path, folder: Path, preset: int = 6) -> Path:
    """``NAME.whl`` -> ``folder/NAME.whl.xz``: the wheel rewritten uncompressed (same members, same
    RECORD), then xz: compiled libraries shrink by a third more than in the wheel's own deflate."""
    out = folder / (wheel.name + ".xz")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        stored = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                plain = zipfile.ZipInfo(info.filename, info.date_time)
                plain.external_attr, plain.compress_type = info.external_attr, zipfile.ZIP_STORED
                with zin.open(info) as src, zout.open(plain, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        with open(stored, "rb") as src, lzma.open(out.with_name(out.name + ".tmp"), "wb", preset=preset) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(out.with_name(out.name + ".tmp"), out)
    return out


def unpack(packed: Path, folder: Path) -> Path:
    """``NAME.whl.xz`` -> ``folder/NAME.whl`` (a wheel pip installs as it is)."""
    out = folder / packed.name[: -len(".xz")]
    with lzma.open(packed, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return out


def _walk(
    raw: Path, pinned: dict[str, str], pins: dict[str, str], have: dict, python_version: str, args
) -> tuple[dict[str, Path], list[str]]:
    """Download the pinned roots, then each wheel's missing dependencies, round by round."""
    fetched: dict[str, str] = {}
    files: dict[str, Path] = {}
    notes: list[str] = []
    pending = [("requirements.txt", ov.Req(name, "")) for name in pinned]
    pending += [("--include", ov.Req(ov.canonical(n), "")) for n in args.include]
    while pending:
        step = ov.to_fetch(pending, have, fetched, include=args.include)
        notes += [n for n in step.notes if n not in notes]
        if not step.fetch:
            break
        before = set(raw.iterdir())
        _pip_download([r.pip_arg(pins) for r in step.fetch], raw, python_version, args.pip_arg)
        pending = []
        for wheel in sorted(set(raw.iterdir()) - before):
            name, version = ov.wheel_name(wheel.name)
            fetched[name], files[name] = version, wheel
            pending += [(name, r) for r in ov.parse_requires(_requires_dist(wheel), python_version)]
    return files, notes


def _default_freeze() -> str | None:
    """A `make hawkears` env's ``badc-freeze.txt`` (the versions HawkEars was tested with), if any."""
    found = sorted(he.cache_root().glob(f"hawkears-{he.requirements_sha12()}-py*/badc-freeze.txt"))
    return str(found[0]) if found else None


def download(args: argparse.Namespace) -> Path:
    dest = Path(args.dest).absolute()
    if args.have:
        have, have_python = ov.parse_have(Path(args.have).read_text(encoding="utf-8"))
        source = args.have
    else:
        have, have_python = ov.parse_have(ask_have(args.have_python))
        source = f"asked {args.have_python}"
    python_version = args.python_version or have_python
    if not python_version:
        raise OverlayError(f"{source}: no '# python=X.Y' line. Fix: pass --python-version 3.12")
    pinned = ov.parse_pins(he.REQUIREMENTS.read_text(encoding="utf-8"))
    freeze = args.freeze or _default_freeze()
    pins = ov.parse_pins(Path(freeze).read_text(encoding="utf-8")) if freeze and freeze != "none" else {}
    pins.update(pinned)
    _say(
        f"target python {python_version}; have {len(have)} distributions ({source}); versions from {he.REQUIREMENTS.name}, then {freeze or 'the newest that fit'}"
    )
    raw = dest / ".download"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    files, notes = _walk(raw, pinned, pins, have, python_version, args)
    if args.pack:
        _say(f"packing {len(files)} wheels (uncompressed zip, then xz) ...")
        packed = raw / "packed"
        packed.mkdir()
        ready = {name: pack(wheel, packed) for name, wheel in files.items()}
    else:
        ready = files
    sizes = {f.name: f.stat().st_size for f in ready.values()}
    wheel_bytes = {f.name: files[n].stat().st_size for n, f in ready.items()}
    try:
        parts = ov.split_parts(sizes, args.part_mib * ov.MIB)
    except ValueError as exc:
        raise OverlayError(str(exc)) from exc
    for old in dest.glob("part*"):
        shutil.rmtree(old)
    plan = {
        "python_version": python_version,
        "have": source,
        "left_out": sorted(ov.LEFT_OUT - {ov.canonical(n) for n in args.include}),
        "include": sorted(ov.canonical(n) for n in args.include),
        "part_mib": args.part_mib,
        "packed": bool(args.pack),
        "wheel_bytes": sum(wheel_bytes.values()),
        "total_bytes": sum(sizes.values()),
        "parts": [],
        "notes": notes,
    }
    by_file = {f.name: f for f in ready.values()}
    for i, names in enumerate(parts, 1):
        folder = dest / f"part{i}"
        folder.mkdir()
        entries = []
        for fname in names:
            os.replace(by_file[fname], folder / fname)
            digest = hashlib.sha256((folder / fname).read_bytes()).hexdigest()
            entries.append({"file": fname, "bytes": sizes[fname], "wheel_bytes": wheel_bytes[fname], "sha256": digest})
        plan["parts"].append({"dir": folder.name, "bytes": sum(sizes[n] for n in names), "wheels": entries})
    shutil.rmtree(raw)
    tmp = dest / "plan.json.tmp"
    tmp.write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, dest / "plan.json")
    for note in notes:
        _say(note)
    for part in plan["parts"]:
        _say(f"{dest / part['dir']}: {len(part['wheels'])} wheels, {part['bytes'] / ov.MIB:.1f} MiB")
    _say(
        f"{len(sizes)} wheels, {plan['wheel_bytes'] / ov.MIB:.1f} MiB as wheels, {plan['total_bytes'] / ov.MIB:.1f} MiB "
        f"{'packed ' if args.pack else ''}in {len(parts)} part(s) of <= {args.part_mib} MiB; plan: {dest / 'plan.json'}"
    )
    print(dest)
    return dest


# ---------------------------------------------------------------------------- install (on the target, offline)
def _merge(src: Path, dst: Path) -> None:
    """Move ``src``'s entries into ``dst``, merging folders that both have (``bin``, namespaces)."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def _point_scripts(bin_dir: Path, python: str, wrapper: Path) -> None:
    """pip wrote console scripts (``hawkears``) for the bare python: run them through the wrapper."""
    header = ov.script_header(str(wrapper))
    for script in bin_dir.iterdir():
        if script == wrapper or not script.is_file():
            continue
        try:
            text = script.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        first, _, rest = text.partition("\n")
        if first.startswith("#!") and "python" in first and not first.startswith("#!/bin/sh"):
            script.write_text(header + rest, encoding="utf-8")


def _write_exec(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, path)


def _python_tag(python: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys; print(f'py{sys.version_info[0]}{sys.version_info[1]}')"
    return _run([python, "-c", code], env=env, timeout=120).stdout.strip()


def default_overlay(python: str) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/badc-mpi/hawkears-overlay-<sha12 of the pins>-py<XY>``."""
    return he.cache_root() / f"hawkears-overlay-{he.requirements_sha12()}-{_python_tag(python)}"


def install(args: argparse.Namespace) -> Path:
    python = shutil.which(args.python) or args.python
    python = str(Path(python).absolute())
    wheels = []
    for item in args.wheels:
        path = Path(item)
        if not path.is_dir():
            wheels.append(path)
            continue
        here = sorted([*path.glob("*.whl"), *path.glob("*.whl.xz")])  # a part, or a folder of parts:
        wheels += here or sorted([*path.glob("part*/*.whl"), *path.glob("part*/*.whl.xz")])
    if not wheels:
        raise OverlayError(f"no wheels in {' '.join(args.wheels)}. Fix: carry a part from `make hawkears-wheels` there")
    overlay = Path(args.overlay).absolute() if args.overlay else default_overlay(python)
    overlay.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=overlay))
    try:
        (stage / "wheels").mkdir()
        plain = [unpack(w, stage / "wheels") if w.name.endswith(".xz") else w for w in wheels]
        argv = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
        argv += ["--disable-pip-version-check", "--quiet", "--target", str(stage / "site"), *map(str, plain)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        _run(argv, env=env, timeout=1800)
        _merge(stage / "site", overlay)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    wrapper = overlay / "bin" / "python"
    wrapper.parent.mkdir(exist_ok=True)
    _write_exec(wrapper, ov.wrapper_text(python, str(overlay)))
    _point_scripts(wrapper.parent, python, wrapper)
    stamp_path = overlay / STAMP
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {"python": python, "wheels": []}
    stamp["wheels"] = sorted(set(stamp["wheels"]) | {w.name.removesuffix(".xz") for w in wheels})
    stamp["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (overlay / (STAMP + ".tmp")).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    os.replace(overlay / (STAMP + ".tmp"), stamp_path)
    _say(f"installed {len(wheels)} wheels into {overlay} ({len(stamp['wheels'])} in all)")
    if not args.no_check:
        check(wrapper)
    print(wrapper)
    return wrapper


def check(wrapper: Path) -> dict:
    """Import torch, hawkears (the pinned version), britekit and what badc-mpi uses, through the wrapper."""
    if not os.access(wrapper, os.X_OK):
        raise OverlayError(f"{wrapper} is not an executable wrapper. Fix: run hawkears_overlay.py install first")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as the runner starts HawkEars
    argv = [str(wrapper), "-c", ov.CHECK_CODE, he.SUPPORTED_HAWKEARS_VERSION, *ov.CHECK_MODULES]
    done = subprocess.run(argv, text=True, capture_output=True, env=env, timeout=600)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise OverlayError(
            f"{wrapper} did not run the import check (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        ) from None
    verdict = ov.check_verdict(result, str(wrapper), he.SUPPORTED_HAWKEARS_VERSION)
    if verdict:
        raise OverlayError(verdict)
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    _say(f"ok: {wrapper} (Python {result['python']}) imports {versions}")
    return result


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    h = sub.add_parser("have", help="write what this (or --python's) python has, for `download --have`")
    h.add_argument("--python", default=sys.executable)
    h.add_argument("-o", "--out", default=None, help="file to write (default: stdout)")
    d = sub.add_parser("download", help="download the missing wheels for the target into DEST/part<N>/ (internet)")
    d.add_argument("--dest", required=True)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--have", help="the target's have file (`have` run there)")
    src.add_argument("--have-python", help="ask this python what it has (a stand-in for the target)")
    d.add_argument("--python-version", default=None, help="the target's X.Y (default: from the have file)")
    d.add_argument("--part-mib", type=int, default=ov.DEFAULT_PART_MIB, help="largest part, MiB (default 60)")
    d.add_argument("--include", nargs="*", default=[], help="fetch these even if the target has them or they are left out")
    d.add_argument(
        "--freeze",
        default=None,
        help="versions for unpinned dependencies (default: a `make hawkears` env's badc-freeze.txt; 'none': newest)",
    )
    d.add_argument("--no-pack", dest="pack", action="store_false", help="keep plain .whl files (default: .whl.xz, ~30%% smaller)")
    d.add_argument("--pip-arg", action="append", default=[], help="passed to pip download (e.g. --pip-arg=--no-index)")
    i = sub.add_parser("install", help="install wheels into OVERLAY and write OVERLAY/bin/python (offline)")
    i.add_argument("--wheels", nargs="+", required=True, help="wheel files or folders of them (parts)")
    i.add_argument("--python", default=sys.executable, help="the python with torch to overlay (default: this one)")
    i.add_argument("--overlay", default=None, help="default: ~/.cache/badc-mpi/hawkears-overlay-<sha12>-py<XY>")
    i.add_argument("--no-check", action="store_true", help="skip the import check (a part of several)")
    c = sub.add_parser("check", help="import torch, hawkears and britekit through OVERLAY/bin/python")
    c.add_argument("--overlay", required=True)
    args = parser.parse_args(argv)
    try:
        if args.what == "have":
            text = ask_have(args.python)
            if args.out:
                Path(args.out).write_text(text, encoding="utf-8")
            else:
                print(text, end="")
        elif args.what == "download":
            download(args)
        elif args.what == "install":
            install(args)
        else:
            check(Path(args.overlay).absolute() / "bin" / "python")
    except (OverlayError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"hawkears-overlay: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
