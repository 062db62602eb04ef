"""Where HawkEars lives: its own Python environment, its data roots, its bundled recording.

Standard library only (``scripts/hawkears/hawkears_env.py`` and the Makefile use it before any venv exists).

HawkEars runs in its own environment, separate from the runner's ``.venv`` (its pins clash with
ours), created by ``make hawkears`` under ``${XDG_CACHE_HOME:-~/.cache}/badc-mpi/`` as
``hawkears-<sha256(vendor/HawkEars/requirements.txt)[:12]>-py<major><minor>/`` and reused across
checkouts while the pins are unchanged. An environment counts only once its completion stamp
(written last) exists, so a killed install is never mistaken for a finished one.

A *data root* is what ``hawkears init`` lays out (``yaml/``, ``data/ckpt``, ``data/ckpt-low-band``,
...). :func:`resolve_data_root` picks one: ``--hawkears-data-root``, then ``HAWKEARS_DATA_ROOT``,
then a real root staged by ``make hawkears-models`` at its default place, then the tiny
random-weight root of ``make hawkears-tiny`` (with a loud banner), else a RunnerSetupError.

``python -m badc_mpi.runners.hawkears.env {python,env-dir,data-root,recording}`` prints one of them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from badc_mpi.errors import RunnerSetupError

SUPPORTED_HAWKEARS_VERSION = "2.3.0"
REPO_ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = REPO_ROOT / "vendor" / "HawkEars" / "requirements.txt"
PYTHON_OVERRIDE_VAR = "BADC_MPI_HAWKEARS_PYTHON"
DATA_ROOT_VAR = "HAWKEARS_DATA_ROOT"
COMPLETE_STAMP = ".badc-hawkears-complete"
TINY_MARKER = "TINY_MODEL_DO_NOT_USE_FOR_SCIENCE"
TINY_DIRNAME = "tiny-data-root"
FIX_ENV = (
    "run `make hawkears` (creates HawkEars' own environment, ~3 min, ~9 GB), or point BADC_MPI_HAWKEARS_PYTHON / "
    "--hawkears-python at a python that has hawkears==2.3.0 (offline, over a python with torch: an overlay's "
    "bin/python, `make hawkears-overlay`, docs/howto/gpu-overlay.md)"
)
FIX_DATA = (
    "stage real models with `make hawkears-models` (needs internet, e.g. on Sockeye's login node) and pass "
    "--hawkears-data-root DIR or set HAWKEARS_DATA_ROOT=DIR; for tests only, `make hawkears-tiny`"
)


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """``${XDG_CACHE_HOME:-$HOME/.cache}/badc-mpi``."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".cache")
    return Path(base).expanduser() / "badc-mpi"


def requirements_sha12(requirements: Path = REQUIREMENTS) -> str:
    """First 12 hex digits of the sha256 of the pins file."""
    try:
        return hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    except OSError as exc:
        raise RunnerSetupError(
            f"cannot read the HawkEars pins {requirements}: {exc}",
            fix="restore vendor/HawkEars/requirements.txt from git",
        ) from exc


def python_tag(version_info: tuple[int, ...] | None = None) -> str:
    major, minor = (version_info or sys.version_info)[:2]
    return f"py{major}{minor}"


def hawkears_env_dir(env: Mapping[str, str] = os.environ, *, version_info: tuple[int, ...] | None = None) -> Path:
    """The environment folder for the current pins and this (or the given) Python version."""
    return cache_root(env) / f"hawkears-{requirements_sha12()}-{python_tag(version_info)}"


def env_is_complete(env_dir: Path) -> bool:
    """True once ``make hawkears`` finished there (its stamp names the same pins)."""
    try:
        stamp = json.loads((env_dir / COMPLETE_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp.get("requirements_sha12") == requirements_sha12() and (env_dir / "bin" / "python").exists()


def _complete_env_dirs(env: Mapping[str, str]) -> list[Path]:
    """Complete environments for the current pins: this Python's first, then any other version."""
    own = hawkears_env_dir(env)
    others = sorted(Path(p) for p in glob.glob(str(cache_root(env) / f"hawkears-{requirements_sha12()}-py*")))
    return [d for d in [own, *[o for o in others if o != own]] if env_is_complete(d)]


def find_hawkears_python(env: Mapping[str, str] = os.environ) -> str:
    """The HawkEars environment's python: ``BADC_MPI_HAWKEARS_PYTHON``, else the cached env's."""
    override = env.get(PYTHON_OVERRIDE_VAR)
    if override:
        if not os.access(override, os.X_OK):
            raise RunnerSetupError(f"{PYTHON_OVERRIDE_VAR}={override} is not an executable python", fix=FIX_ENV)
        return override
    found = _complete_env_dirs(env)
    if not found:
        raise RunnerSetupError(f"no HawkEars environment at {hawkears_env_dir(env)}", fix=FIX_ENV)
    return str(found[0] / "bin" / "python")


def env_dir_of_python(python: str) -> Path:
    """The venv folder holding ``python`` (``.../bin/python`` -> ``...``)."""
    return Path(python).absolute().parent.parent


def tiny_data_root(env: Mapping[str, str] = os.environ, python: str | None = None) -> Path:
    """Where ``make hawkears-tiny`` builds the tiny data root (inside the HawkEars env folder)."""
    if python is None:
        found = _complete_env_dirs(env)
        base = found[0] if found else hawkears_env_dir(env)
    else:
        base = env_dir_of_python(python)
    return base / TINY_DIRNAME


def default_models_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where ``make hawkears-models`` stages real models when no DEST is given."""
    return cache_root(env) / f"hawkears-data-{SUPPORTED_HAWKEARS_VERSION}"


def bundled_recording(python: str | None = None, env: Mapping[str, str] = os.environ) -> Path:
    """HawkEars' packaged test recording (``hawkears/install/canada/recordings/CommonYellowthroat.mp3``)."""
    python = python or find_hawkears_python(env)
    pattern = "lib/python*/site-packages/hawkears/install/*/recordings/*.mp3"
    overlay = "hawkears/install/*/recordings/*.mp3"  # an overlay (scripts/hawkears/hawkears_overlay.py): OVERLAY/bin/python
    hits = sorted(env_dir_of_python(python).glob(pattern)) or sorted(env_dir_of_python(python).glob(overlay))
    if not hits:  # a python outside a standard venv layout: ask it
        code = "import hawkears, pathlib; print(pathlib.Path(hawkears.__file__).parent)"
        try:
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=True)
            hits = sorted(Path(out.stdout.strip()).glob("install/*/recordings/*.mp3"))
        except (OSError, subprocess.SubprocessError):
            hits = []
    if not hits:
        raise RunnerSetupError(f"HawkEars' bundled recording not found for {python}", fix=FIX_ENV)
    preferred = [h for h in hits if h.name == "CommonYellowthroat.mp3"]
    return (preferred or hits)[0]


@dataclass(frozen=True)
class DataRoot:
    """A HawkEars data root and what identifies its models."""

    path: str
    is_tiny: bool
    model_version: str  #: ``main=[file:sha12,...];low_band=[...]`` (``tiny:`` prefix for tiny)
    source: str  #: ``cli`` | ``env`` | ``cache`` | ``tiny``
    main_models: tuple[str, ...] = ()
    low_band_models: tuple[str, ...] = ()

    @property
    def has_low_band(self) -> bool:
        return bool(self.low_band_models)

    def config_overrides(self) -> dict[str, dict[str, str]]:
        """Absolute paths for a ``-c`` YAML, so HawkEars works from any current directory."""
        root = Path(self.path)
        return {
            "misc": {"ckpt_folder": str(root / "data" / "ckpt")},
            "hawkears": {
                "low_band_ckpt_folder": str(root / "data" / "ckpt-low-band"),
                "exclude_list": str(root / "data" / "exclude.txt"),
                "occurrence_pickle": str(root / "data" / "occurrence.pkl"),
                "taxonomy_file": str(root / "data" / "taxonomy.csv"),
            },
        }


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.ckpt") if p.is_file()) if folder.is_dir() else []


def file_sha12(path: Path) -> str:
    """The first 12 hex digits of a file's SHA-256 (checkpoints, species lists, configs)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:12]


def describe_data_root(path: str | os.PathLike[str], source: str) -> DataRoot:
    """Validate a data root and identify its checkpoints; RunnerSetupError when unusable."""
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise RunnerSetupError(f"HawkEars data root {root} ({source}) does not exist", fix=FIX_DATA)
    main = _checkpoints(root / "data" / "ckpt")
    if not main or not (root / "yaml" / "default.yaml").is_file():
        raise RunnerSetupError(
            f"{root} ({source}) is not a HawkEars data root: need yaml/default.yaml and data/ckpt/*.ckpt", fix=FIX_DATA
        )
    low = _checkpoints(root / "data" / "ckpt-low-band")
    is_tiny = (root / TINY_MARKER).exists()

    def ids(ckpts: list[Path]) -> str:
        return ",".join(f"{p.name}:{file_sha12(p)}" for p in ckpts)

    version = f"main=[{ids(main)}];low_band=[{ids(low)}]"
    return DataRoot(
        path=str(root),
        is_tiny=is_tiny,
        model_version=("tiny:" if is_tiny else "") + version,
        source=source,
        main_models=tuple(p.name for p in main),
        low_band_models=tuple(p.name for p in low),
    )


def resolve_data_root(
    cli_value: str | None = None,
    env: Mapping[str, str] = os.environ,
    *,
    python: str | None = None,
    allow_tiny: bool = False,
) -> DataRoot:
    """CLI flag, then ``HAWKEARS_DATA_ROOT``, then the staged default. The tiny random-weight root
    is used only when asked for: named explicitly, or ``allow_tiny`` (``--allow-tiny-model``)."""
    if cli_value:
        return describe_data_root(cli_value, "cli")
    if env.get(DATA_ROOT_VAR):
        return describe_data_root(env[DATA_ROOT_VAR], "env")
    staged = default_models_dir(env)
    if (staged / "data" / "ckpt").is_dir():
        return describe_data_root(staged, "cache")
    tiny = tiny_data_root(env, python)
    if allow_tiny and (tiny / TINY_MARKER).exists():
        return describe_data_root(tiny, "tiny")
    raise RunnerSetupError(
        f"no HawkEars models: no --hawkears-data-root, no {DATA_ROOT_VAR}, nothing staged at {staged}",
        fix="stage them with `make hawkears-models` or pass --hawkears-data-root DIR "
        "(--allow-tiny-model runs the meaningless tiny test model, for tests and demos only)",
    )


def tiny_banner(root: DataRoot) -> str:
    """The loud warning printed whenever a run uses the tiny random-weight models."""
    line = "!" * 78
    return (
        f"\n{line}\n!!! TINY RANDOM-WEIGHT HAWKEARS MODEL ({root.path})\n"
        "!!! Detections are MEANINGLESS: for tests and demos only, never for science.\n"
        f"!!! Real models: {FIX_DATA}.\n{line}"
    )


def main(argv: list[str] | None = None) -> int:
    what = (argv if argv is not None else sys.argv[1:]) or ["python"]
    try:
        if what[0] == "python":
            print(find_hawkears_python())
        elif what[0] == "env-dir":
            print(hawkears_env_dir())
        elif what[0] == "data-root":
            root = resolve_data_root(what[1] if len(what) > 1 else None, allow_tiny=True)
            print(root.path)
        elif what[0] == "recording":
            print(bundled_recording())
        else:
            print(
                "usage: python -m badc_mpi.runners.hawkears.env {python|env-dir|data-root [DIR]|recording}",
                file=sys.stderr,
            )
            return 2
    except RunnerSetupError as exc:
        print(f"badc-mpi: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
