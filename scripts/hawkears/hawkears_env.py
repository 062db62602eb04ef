#!/usr/bin/env python3
"""Create or reuse HawkEars' own Python environment; build the tiny model; stage real models.

Standard library only; run with any python >= 3.10 (the one that will own the venv):

    python scripts/hawkears/hawkears_env.py create        # make hawkears
    python scripts/hawkears/hawkears_env.py tiny          # make hawkears-tiny
    python scripts/hawkears/hawkears_env.py python        # make hawkears-python
    python scripts/hawkears/hawkears_env.py models [--dest DIR]   # make hawkears-models [DEST=DIR]

The env lives in ``${XDG_CACHE_HOME:-~/.cache}/badc-mpi/hawkears-<sha12 of
vendor/HawkEars/requirements.txt>-py<XY>/``. A completion stamp written last marks it usable;
a folder without one (a killed install) is removed and rebuilt. A lock file serialises
concurrent ``make hawkears`` runs (e.g. two checkouts on one login node).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from badc_mpi.errors import RunnerSetupError  # noqa: E402
from badc_mpi.runners.hawkears import env as he  # noqa: E402

TINY_BUILDER = he.REPO_ROOT / "scripts" / "hawkears" / "build_tiny_model.py"


def _say(message: str) -> None:
    print(f"[hawkears-env] {message}", flush=True)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another install holding {path} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _pins(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    for name in ("torch", "torchvision", "torchaudio", "hawkears"):
        if name not in pins:
            raise SystemExit(f"{requirements}: no '{name}==' pin")
    return pins


def _run(argv: list[str], **kwargs) -> None:
    _say("$ " + " ".join(argv))
    subprocess.run(argv, check=True, **kwargs)


def create() -> Path:
    env_dir = he.hawkears_env_dir()
    if he.env_is_complete(env_dir):
        _say(f"reusing {env_dir}")
        print(env_dir)
        return env_dir
    with _locked(env_dir.with_name(env_dir.name + ".lock")):
        if he.env_is_complete(env_dir):  # another process finished it while we waited
            print(env_dir)
            return env_dir
        if env_dir.exists():
            _say(f"removing incomplete environment {env_dir} (no completion stamp)")
            shutil.rmtree(env_dir)
        pins = _pins(he.REQUIREMENTS)
        start = time.monotonic()
        _run([sys.executable, "-m", "venv", str(env_dir)])
        pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        torch = f"torch=={pins['torch']}"
        _run([*pip, torch, f"torchvision=={pins['torchvision']}"])
        _run([*pip, torch, f"torchaudio=={pins['torchaudio']}"])
        _run([*pip, "-r", str(he.REQUIREMENTS)])
        py = str(env_dir / "bin" / "python")
        probe = "import hawkears, britekit, torch, torchaudio; print(hawkears.__version__, torch.__version__)"
        out = subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
        if out[0] != pins["hawkears"]:
            raise SystemExit(f"installed hawkears {out[0]}, pinned {pins['hawkears']}")
        freeze = subprocess.run([py, "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
        (env_dir / "badc-freeze.txt").write_text(freeze, encoding="utf-8")
        stamp = {
            "requirements_sha12": he.requirements_sha12(),
            "python": sys.version.split()[0],
            "hawkears": out[0],
            "torch": out[1],
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "install_s": round(time.monotonic() - start, 1),
        }
        tmp = env_dir / (he.COMPLETE_STAMP + ".tmp")
        tmp.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, env_dir / he.COMPLETE_STAMP)  # written last: the env is usable from now on
        _say(f"created in {stamp['install_s']} s (hawkears {out[0]}, torch {out[1]})")
    print(env_dir)
    return env_dir


def _python_or_exit() -> str:
    try:
        return he.find_hawkears_python()
    except RunnerSetupError as exc:
        raise SystemExit(f"badc-mpi: {exc}") from exc


def tiny(force: bool = False) -> Path:
    python = _python_or_exit()
    dest = he.tiny_data_root(python=python)
    if (dest / he.TINY_MARKER).is_file() and not force:
        _say(f"tiny data root already built: {dest}")
        print(dest)
        return dest
    with _locked(dest.with_name(dest.name + ".lock")):
        argv = [python, str(TINY_BUILDER), str(dest)] + (["--force"] if force else [])
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        _run(argv, env=env)
    print(dest)
    return dest


def models(dest: str | None) -> Path:
    """``hawkears init --dest DEST`` inside the env: downloads the real model bundles (internet)."""
    python = _python_or_exit()
    target = Path(dest).expanduser().absolute() if dest else he.default_models_dir()
    hawkears = Path(python).parent / "hawkears"
    argv = [str(hawkears)] if hawkears.exists() else [python, "-c", "import sys; from hawkears.cli import cli; sys.exit(cli())"]
    _run([*argv, "init", "--dest", str(target)])
    root = he.describe_data_root(target, "staged")
    _say(f"staged HawkEars data root {root.path}")
    _say(f"models: {root.model_version}")
    if dest:
        _say(f"on compute nodes: --hawkears-data-root {root.path}  (or export {he.DATA_ROOT_VAR}={root.path})")
    else:
        _say("this is the default location: badc-mpi finds it without any flag")
    print(root.path)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("create", help="create or reuse the env; print its path")
    t = sub.add_parser("tiny", help="build the tiny random-weight data root; print its path")
    t.add_argument("--force", action="store_true")
    sub.add_parser("python", help="print the env's python")
    m = sub.add_parser("models", help="stage a real data root with `hawkears init` (internet)")
    m.add_argument("--dest", default=None)
    args = parser.parse_args(argv)
    if args.what == "create":
        create()
    elif args.what == "tiny":
        tiny(args.force)
    elif args.what == "python":
        print(_python_or_exit())
    else:
        models(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
