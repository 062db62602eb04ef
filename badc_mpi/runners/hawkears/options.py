"""HawkEars runner options: the CLI argument group, their validation, per-chunk overrides from
manifest columns, and the HawkEars command lines they become. Pure: no processes, no NVML.

:mod:`badc_mpi.runners.hawkears.adapter` (the runner) re-exports :class:`HawkearsOptions` and
:func:`add_hawkears_arguments`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from badc_mpi.errors import UsageError
from badc_mpi.records import Chunk
from badc_mpi.runners.hawkears.env import SUPPORTED_HAWKEARS_VERSION

MODES = ("resident", "cli")
LABELS = ("codes", "names", "alt-codes", "alt-names")
CHUNK_OPTION_COLUMNS = ("lat", "lon", "date", "region")  #: manifest columns read per chunk
BATCH_FORWARD = ("auto", "joint", "per-chunk")
MAX_BATCH = 64  #: chunks per batched forward pass (16 is plenty on a large GPU: docs/throughput.md)
DATE_RE = re.compile(r"^(\d{8}|\d{4}|\d{4}-\d{2}-\d{2}|file)$")


@dataclass(frozen=True)
class HawkearsOptions:
    """HawkEars runner options (picklable: the MPI runtime broadcasts them)."""

    mode: str = "resident"  #: ``resident`` | ``cli``
    data_root: str | None = None  #: else HAWKEARS_DATA_ROOT, staged default, tiny root
    python: str | None = None  #: HawkEars env python; else BADC_MPI_HAWKEARS_PYTHON, ``make hawkears`` env
    min_score: float | None = None  #: HawkEars ``-m`` (default 0.7 from its YAML)
    models: int | None = None  #: ensemble size 1..6 (HawkEars default: 6 on GPU, 3 on CPU)
    low_band: bool | None = None  #: None = HawkEars default (on with a GPU, off on CPU)
    label: str | None = None  #: codes | names | alt-codes | alt-names
    region: str | None = None
    lat: float | None = None
    lon: float | None = None
    date: str | None = None
    include: str | None = None  #: species list file (absolute)
    exclude: str | None = None
    seg: float | None = None  #: fixed label length, seconds
    config: str | None = None  #: extra HawkEars YAML merged over the generated one
    threads: int | None = None  #: CPU threads for torch in the HawkEars process
    start_timeout_s: float = 600.0
    log_dir: str | None = None  #: per-rank worker stderr logs go here (else only an in-memory tail)
    allow_tiny_model: bool = False  #: without a data root, run the tiny random-weight model (tests, demos)
    malloc_tuning: bool = True  #: glibc malloc kept from returning activation buffers (docs/throughput.md)
    pipeline: bool = True  #: decode the next chunks while one is scored; finalise outputs off the scoring path
    batch: int = 1  #: chunks whose windows go through one forward pass per model (1: HawkEars' own per-file path)
    batch_forward: str = "auto"  #: a batch's forward passes: joint (GPU default), per-chunk (CPU default)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> HawkearsOptions:
        """From :func:`add_hawkears_arguments`'s parser; missing attributes keep the defaults."""
        names = {
            "mode": "hawkears_mode",
            "data_root": "hawkears_data_root",
            "python": "hawkears_python",
            "min_score": "min_score",
            "models": "models",
            "low_band": "low_band",
            "label": "label",
            "region": "region",
            "lat": "lat",
            "lon": "lon",
            "date": "date",
            "include": "include",
            "exclude": "exclude",
            "seg": "seg",
            "config": "hawkears_config",
            "threads": "hawkears_threads",
            "start_timeout_s": "hawkears_start_timeout_s",
            "log_dir": "hawkears_log_dir",
            "allow_tiny_model": "allow_tiny_model",
            "malloc_tuning": "hawkears_malloc_tuning",
            "pipeline": "hawkears_pipeline",
            "batch": "hawkears_batch",
            "batch_forward": "hawkears_batch_forward",
        }
        values = {f: getattr(args, a) for f, a in names.items() if getattr(args, a, None) is not None}
        return cls(**values).validate()

    def validate(self) -> HawkearsOptions:
        """UsageError (with the fix) for bad values; returns a copy with absolute file and log paths."""

        def need(ok: bool, message: str, fix: str) -> None:
            if not ok:
                raise UsageError(message, fix=fix)

        need(
            self.mode in MODES,
            f"--hawkears-mode {self.mode!r} is not one of {', '.join(MODES)}",
            "use resident (fast) or cli (baseline)",
        )
        need(self.models is None or 1 <= self.models <= 6, f"--models {self.models} is out of range", "use 1..6")
        need(
            self.min_score is None or 0.0 <= self.min_score <= 1.0,
            f"--min-score {self.min_score} is out of range",
            "use 0..1",
        )
        label = self.label.replace("_", "-") if self.label else None
        need(label is None or label in LABELS, f"--label {self.label!r} is not valid", "use " + ", ".join(LABELS))
        need((self.lat is None) == (self.lon is None), "--lat and --lon go together", "give both, or use --region")
        need(self.region is None or self.lat is None, "--region and --lat/--lon exclude each other", "give one of them")
        need(self.lat is None or -90 <= self.lat <= 90, f"--lat {self.lat} is out of range", "use -90..90")
        need(self.lon is None or -180 <= self.lon <= 180, f"--lon {self.lon} is out of range", "use -180..180")
        need(
            self.date is None or bool(DATE_RE.match(self.date)),
            f"--date {self.date!r} is not valid",
            "use yyyymmdd, yyyy-mm-dd, mmdd or 'file'",
        )
        need(self.seg is None or self.seg > 0, "--seg must be > 0", "omit it for variable-length labels")
        need(self.threads is None or self.threads >= 1, "--hawkears-threads must be >= 1", "omit it for torch's default")
        need(
            1 <= self.batch <= MAX_BATCH,
            f"--hawkears-batch {self.batch} is out of range",
            f"use 1 (HawkEars' own per-chunk path) to {MAX_BATCH}",
        )
        need(
            self.batch_forward in BATCH_FORWARD,
            f"--hawkears-batch-forward {self.batch_forward!r} is not one of {', '.join(BATCH_FORWARD)}",
            "use auto (joint on a GPU, per chunk on a CPU)",
        )
        need(self.batch == 1 or self.mode == "resident", "--hawkears-batch needs the resident worker", "drop --hawkears-mode cli")
        need(self.start_timeout_s > 0, "--hawkears-start-timeout-s must be > 0", "the default is 600")
        files = {}
        for name, flag in (("include", "--include"), ("exclude", "--exclude"), ("config", "--hawkears-config")):
            value = getattr(self, name)
            if value is not None:
                path = os.path.abspath(os.path.expanduser(value))
                need(os.path.isfile(path), f"{flag} {value}: no such file", "give an existing file")
                files[name] = path
        if self.log_dir is not None:
            files["log_dir"] = os.path.abspath(os.path.expanduser(self.log_dir))
        return dataclasses.replace(self, label=label, **files)


class RenamedOption(argparse.Action):
    """An old option name kept working (hidden from --help): stores as its new name does and
    says, once, on rank 0's stderr, which name to use (``--min-score`` -> ``--min-confidence``)."""

    NEW = {"--min-score": "--min-confidence"}

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        setattr(namespace, self.dest, values)
        rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("SLURM_PROCID") or "0"
        if rank == "0":
            new = self.NEW.get(option or "", "the new name")
            print(f"badc-mpi: warning: {option} is now called {new} (the same threshold); use {new}", file=sys.stderr)


def add_hawkears_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "HawkEars runner" argument group (read back with :meth:`HawkearsOptions.from_namespace`)."""
    g = parser.add_argument_group("HawkEars runner", "how HawkEars 2.x is run (see vendor/HawkEars/README.md)")
    g.add_argument(
        "--hawkears-mode",
        choices=MODES,
        default=None,
        help="resident: one HawkEars process per rank keeps the models loaded (default); cli: one `hawkears analyze` per chunk (slow baseline)",
    )
    g.add_argument(
        "--hawkears-data-root",
        metavar="DIR",
        default=None,
        help="HawkEars data root (yaml/, data/ckpt, ...); default: $HAWKEARS_DATA_ROOT, then models staged by `make hawkears-models`, then the tiny test model",
    )
    g.add_argument(
        "--hawkears-python",
        metavar="PATH",
        default=None,
        help="python of the HawkEars environment (default: $BADC_MPI_HAWKEARS_PYTHON, then the `make hawkears` env)",
    )
    g.add_argument(
        "--min-confidence",
        dest="min_score",
        type=float,
        default=None,
        metavar="X",
        help="leave out detections below confidence X, 0..1 (HawkEars' score threshold; HawkEars default 0.7); "
        "export and bundle take the same option",
    )
    g.add_argument("--min-score", dest="min_score", type=float, default=None, action=RenamedOption, help=argparse.SUPPRESS)
    g.add_argument("--models", type=int, default=None, help="ensemble size 1..6 (HawkEars default: 6 on GPU, 3 on CPU)")
    g.add_argument(
        "--low-band",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="low-band (grouse) classifier (default: on with a GPU, off on CPU)",
    )
    g.add_argument("--label", default=None, help="label field: " + ", ".join(LABELS) + " (HawkEars default: codes)")
    g.add_argument(
        "--region",
        default=None,
        help="eBird region code (e.g. CA-AB) for occurrence filtering; per chunk from the manifest column 'region'",
    )
    g.add_argument("--lat", type=float, default=None, help="latitude (with --lon); per chunk from manifest columns 'lat','lon'")
    g.add_argument("--lon", type=float, default=None, help="longitude (with --lat)")
    g.add_argument("--date", default=None, help="recording date yyyymmdd|mmdd|file; per chunk from manifest column 'date'")
    g.add_argument("--include", metavar="FILE", default=None, help="species list: report only these")
    g.add_argument("--exclude", metavar="FILE", default=None, help="species list: never report these")
    g.add_argument("--seg", type=float, default=None, help="fixed label length in seconds (default: variable-length labels)")
    g.add_argument("--hawkears-config", metavar="YAML", default=None, help="extra HawkEars config YAML merged over badc-mpi's")
    g.add_argument("--hawkears-threads", type=int, default=None, help="CPU threads for torch inside HawkEars (default: torch's)")
    g.add_argument(
        "--hawkears-start-timeout-s",
        type=float,
        default=None,
        help="seconds to wait for the resident worker to load its models (default 600)",
    )
    g.add_argument(
        "--hawkears-log-dir",
        metavar="DIR",
        default=None,
        help="write each rank's HawkEars worker stderr to DIR/hawkears-rank<N>.log (default: only its last lines, in failure reasons)",
    )
    g.add_argument(
        "--allow-tiny-model",
        action="store_true",
        default=None,
        help="without --hawkears-data-root, $HAWKEARS_DATA_ROOT or staged models, run the tiny random-weight "
        "test model (its detections are meaningless: tests and demos only); otherwise such a run stops with exit 2",
    )
    g.add_argument(
        "--no-hawkears-malloc-tuning",
        dest="hawkears_malloc_tuning",
        action="store_false",
        default=None,
        help="leave glibc malloc's defaults in the HawkEars process (default: tuned, ~25%% faster on CPU, same output)",
    )
    g.add_argument(
        "--no-hawkears-pipeline",
        dest="hawkears_pipeline",
        action="store_false",
        default=None,
        help="one chunk at a time, decode to outputs (default: the next chunks are decoded while one is "
        "scored, outputs are finalised off the scoring path; same output)",
    )
    g.add_argument(
        "--hawkears-batch",
        type=int,
        default=None,
        metavar="K",
        help="score the windows of up to K chunks in one forward pass per model (default 1: HawkEars' own "
        "per-chunk path; K>1 pays off on a GPU; scores may differ in the last bits: docs/throughput.md)",
    )
    g.add_argument(
        "--hawkears-batch-forward",
        choices=BATCH_FORWARD,
        default=None,
        help="with --hawkears-batch K>1: one forward pass per model over the batch (joint) or per chunk; "
        "default auto: joint on a GPU, per chunk on a CPU (where larger passes are slower)",
    )
    return g


# ------------------------------------------------------------ per chunk
def chunk_options(chunk: Chunk) -> tuple[dict[str, Any], str | None]:
    """Per-chunk ``lat``/``lon``/``date``/``region`` from manifest columns; an error message if bad."""
    extra = {k: (v or "").strip() for k, v in (getattr(chunk, "extra", None) or ())}
    opts: dict[str, Any] = {}
    try:
        if extra.get("lat") or extra.get("lon"):
            opts["lat"], opts["lon"] = float(extra["lat"]), float(extra["lon"])
            if not (-90 <= opts["lat"] <= 90 and -180 <= opts["lon"] <= 180):
                raise ValueError("out of range")
    except (KeyError, ValueError) as exc:
        return (
            {},
            f"manifest line {getattr(chunk, 'line', '?')}: bad lat/lon {extra.get('lat')!r},{extra.get('lon')!r} ({exc}); give both, in degrees",
        )
    if extra.get("region"):
        opts["region"] = extra["region"]
        opts.pop("lat", None)
        opts.pop("lon", None)
    if extra.get("date"):
        if not DATE_RE.match(extra["date"]):
            return (
                {},
                f"manifest line {getattr(chunk, 'line', '?')}: bad date {extra['date']!r}; use yyyymmdd, yyyy-mm-dd or mmdd",
            )
        opts["date"] = extra["date"]
    return opts, None


def resolve_location(o: HawkearsOptions, chunk_opts: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(region, lat, lon, date): the chunk's own values override the global ones. The one place this
    rule lives: the CLI mode's argv and the resident process's requests both use it."""
    region, lat, lon, date = o.region, o.lat, o.lon, o.date
    if chunk_opts.get("region") or chunk_opts.get("lat") is not None:
        region = chunk_opts.get("region")
        lat = None if region else chunk_opts.get("lat")
        lon = None if region else chunk_opts.get("lon")
    return region, lat, lon, chunk_opts.get("date") or date


# --------------------------------------------------------- command lines
def _flags(pairs: tuple[tuple[str, Any], ...]) -> list[str]:
    """``[flag, value, ...]`` for the pairs whose value is set."""
    return [str(x) for flag, value in pairs if value is not None for x in (flag, value)]


def worker_argv(o: HawkearsOptions, data_root: str, cfg_path: str, low_band: bool | None) -> list[str]:
    """Start options of the resident HawkEars process ``resident.py`` (also its telemetry description)."""
    argv = [
        "--data-root",
        data_root,
        "--require-version",
        SUPPORTED_HAWKEARS_VERSION,
        "--cfg",
        cfg_path,
        "--low-band",
        {None: "auto", True: "on", False: "off"}[low_band],
    ]
    return argv + _flags(
        (
            ("--min-score", o.min_score),
            ("--models", o.models),
            ("--label", o.label),
            ("--region", o.region),
            ("--lat", o.lat),
            ("--lon", o.lon),
            ("--date", o.date),
            ("--include", o.include),
            ("--exclude", o.exclude),
            ("--seg", o.seg),
            ("--threads", o.threads),
            ("--batch", o.batch if o.batch > 1 else None),
            ("--batch-forward", o.batch_forward if o.batch > 1 and o.batch_forward != "auto" else None),
            ("--prefetch", "on" if o.pipeline else None),
        )
    )


def analyze_argv(
    o: HawkearsOptions, cfg_path: str, low_band: bool | None, input_path: str, out_dir: str, chunk_opts: dict[str, Any]
) -> list[str]:
    """``hawkears analyze`` arguments for one chunk (after the ``hawkears`` executable)."""
    region, lat, lon, date = resolve_location(o, chunk_opts)
    argv = ["analyze", input_path, "-o", out_dir, "--rtype", "csv", "--quiet", "-c", cfg_path]
    argv += _flags(
        (
            ("-m", o.min_score),
            ("--models", o.models),
            ("--label", o.label),
            ("--region", region),
            ("--lat", lat),
            ("--lon", lon),
            ("--date", date),
            ("--include", o.include),
            ("--exclude", o.exclude),
            ("--seg", o.seg),
        )
    )
    if low_band is not None:
        argv.append("--low-band" if low_band else "--no-low-band")
    return argv
