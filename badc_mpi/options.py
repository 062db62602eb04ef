"""Run options: typed records shared by the CLI, the Python API and every rank."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.errors import UsageError

ORDERS = ("manifest", "longest-first")


@dataclass(frozen=True)
class BindingOptions:
    """``--max-gpus``, ``--workers-per-gpu``, ``--cpu-workers``."""

    max_gpus: int | None = None
    workers_per_gpu: int = 1
    cpu_workers: int = 0
    allow_cpu: bool = False  #: run on the CPU even where the job was given GPUs that cannot be used

    def __post_init__(self) -> None:
        if self.max_gpus is not None and self.max_gpus < 0:
            raise UsageError(f"--max-gpus {self.max_gpus} is negative", fix="use 0 or more")
        if self.workers_per_gpu < 1:
            raise UsageError(f"--workers-per-gpu {self.workers_per_gpu} is below 1", fix="use 1 or more")
        if self.cpu_workers < 0:
            raise UsageError(f"--cpu-workers {self.cpu_workers} is negative", fix="use 0 or more")


@dataclass(frozen=True)
class RunOptions:
    """Everything ``badc-mpi run`` accepts (see ``badc-mpi run --help`` for each)."""

    runner: str = "hawkears"  #: ``hawkears`` | ``command`` | ``stub`` (``dry_run`` forces stub)
    dry_run: bool = False
    stub_sleep_s: float = 0.0
    stub_detections: int = 0  #: benchmarks: synthetic detections per dry-run chunk, through the store, never counted
    per_chunk_outputs: bool = False  #: ``<output>/<recording>/<chunk>.*`` files instead of the detection store
    runner_cmd: str | None = None
    output_format: str = "scores2"
    hawkears: Any = None  #: :class:`badc_mpi.runners.hawkears.adapter.HawkearsOptions`
    output_dir: str | None = None
    telemetry_dir: str | None = None
    chunks_dir: str | None = None
    scratch_dir: str | None = None
    allow_missing: bool = False
    allow_partial_chunks: bool = False
    check_chunks: bool = True
    max_retries: int = 2
    backoff_s: float = 5.0
    backoff_max_s: float = 300.0
    timeout_s: float | None = None
    timeout_factor: float = 5.0
    timeout_min_s: float = 120.0
    timeout_default_s: float = 900.0
    order: str = "manifest"
    inflight: int = 2
    max_gpus: int | None = None
    workers_per_gpu: int = 1
    cpu_workers: int = 0
    allow_cpu: bool = False
    summary_interval_s: float = 30.0
    progress_interval_s: float | None = None
    poll_max_s: float | None = None
    seed: int | None = None
    resume: bool = False
    resume_summaries: tuple[str, ...] = field(default_factory=tuple)
    skip_failed: bool = False
    rerun_changed: bool = False  #: resume: rerun chunks done with other settings
    accept_mixed: bool = False  #: resume: keep chunks done with other settings
    grace_s: float = 20.0
    force_unlock: bool = False
    quarantine_after: int = 3  #: chunks failed here that succeeded elsewhere, none here since, that set a rank aside (0 = never)
    silent_after_s: float = 120.0  #: a rank not heard from for this long is lost
    deadline_margin_s: float = 60.0  #: beyond an attempt's timeout before its rank counts as stuck
    startup_timeout_s: float = 600.0  #: ranks that have not said hello by then are lost

    @property
    def runner_kind(self) -> str:
        return "stub" if self.dry_run else self.runner

    def validate(self) -> RunOptions:
        """Raise UsageError (with the fix) for impossible combinations; returns self."""
        checks = [
            (self.max_retries >= 0, "--max-retries must be >= 0", "use 0 to disable retries"),
            (
                0 <= self.stub_detections <= 10_000 and (self.dry_run or not self.stub_detections),
                "--stub-detections needs --dry-run and a count from 0 to 10000",
                "add --dry-run (synthetic detections are for benchmarks only), or drop --stub-detections",
            ),
            (
                1 <= self.inflight <= 8,
                "--inflight must be between 1 and 8",
                "2 hides coordinator latency; more lets a slow worker hoard chunks",
            ),
            (
                self.timeout_s is None or self.timeout_s > 0,
                "--timeout-s must be > 0",
                "omit it to scale the timeout with each chunk's duration",
            ),
            (
                self.backoff_s >= 0 and self.backoff_max_s >= 0,
                "--backoff-s must be >= 0",
                "use 0 for immediate retries",
            ),
            (self.grace_s >= 0, "--grace-s must be >= 0", "use 0 to stop at once"),
            (
                not (self.rerun_changed and self.accept_mixed),
                "--rerun-changed and --accept-mixed exclude each other",
                "choose one",
            ),
            (self.quarantine_after >= 0, "--quarantine-after must be >= 0", "use 0 to never set a rank aside"),
            (self.silent_after_s > 0, "--silent-after-s must be > 0", "the default is 120"),
            (self.deadline_margin_s >= 0, "--deadline-margin-s must be >= 0", "the default is 60"),
            (self.startup_timeout_s > 0, "--startup-timeout-s must be > 0", "the default is 600"),
            (self.order in ORDERS, f"--order must be one of {', '.join(ORDERS)}", "use manifest or longest-first"),
            (
                self.runner_kind in ("hawkears", "command", "stub"),
                f"unknown runner {self.runner!r}",
                "use hawkears, command or stub",
            ),
            (
                self.runner_kind != "command" or bool(self.runner_cmd),
                "--runner command needs --runner-cmd",
                "e.g. --runner-cmd 'python scripts/hawkears/fake_hawkears.py --input {input} --output {output_dir}'",
            ),
        ]
        for ok, message, fix in checks:
            if not ok:
                raise UsageError(message, fix=fix)
        self.binding_options()
        return self

    def binding_options(self) -> BindingOptions:
        """``--max-gpus``, ``--workers-per-gpu``, ``--cpu-workers`` (UsageError when out of range)."""
        return BindingOptions(self.max_gpus, self.workers_per_gpu, self.cpu_workers, self.allow_cpu)

    def timeout_for(self, duration_s: float | None) -> float:
        """The attempt timeout: ``--timeout-s``, else ``max(min, factor x duration)``, else default."""
        if self.timeout_s is not None:
            return self.timeout_s
        if duration_s is None:
            return self.timeout_default_s
        return max(self.timeout_min_s, self.timeout_factor * duration_s)

    def public(self) -> dict[str, Any]:
        """JSON-friendly view for the summary's metadata."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "hawkears" and value is not None:
                is_record = dataclasses.is_dataclass(value) and not isinstance(value, type)
                value = dataclasses.asdict(value) if is_record else repr(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
