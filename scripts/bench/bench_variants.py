"""``bench_hawkears.py --variants``: the resident worker's throughput options, each through a rank's
real :class:`~badc_mpi.worker.supervisor.Supervisor` (decode ahead, batches, outputs finalised).

Variants (``--variants`` picks some, by name):

- ``plain``: malloc tuning off, pipeline off, K=1 (the worker as it was before these options);
- ``malloc``: malloc tuning on;
- ``pipeline``: malloc tuning and the pipeline on (the default);
- ``batch4``, ``batch16``: the default plus ``--hawkears-batch 4`` / ``16`` (forward passes: auto,
  i.e. joint on a GPU, per chunk on a CPU);
- ``batch16-joint``: K=16 with one forward pass per model over the batch, whatever the device.

Every variant has its own resident process, started once. They take turns round by round
(``--rounds``, each ``--round-chunks`` chunks submitted at once, as a rank's queue would hold
them), the order rotating, so that other load on the machine hits each alike. Per-chunk time is
a round's wall time over its chunks; the median round is reported, with the CPU time of every
process of the variant, and whether its outputs equal ``plain``'s byte for byte (labels for K>1).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from badc_mpi.records import Binding, Chunk
from badc_mpi.runners.base import TEMPLATE_CHUNK
from badc_mpi.runners.hawkears.adapter import build_hawkears_runner
from badc_mpi.runners.hawkears.options import HawkearsOptions
from badc_mpi.transport.messages import ResultEvent, WireTask, WorkerConfig
from badc_mpi.worker.supervisor import Supervisor

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"malloc_tuning": False, "pipeline": False, "batch": 1},
    "malloc": {"malloc_tuning": True, "pipeline": False, "batch": 1},
    "pipeline": {"malloc_tuning": True, "pipeline": True, "batch": 1},
    "batch4": {"malloc_tuning": True, "pipeline": True, "batch": 4},
    "batch16": {"malloc_tuning": True, "pipeline": True, "batch": 16},
    "batch16-joint": {"malloc_tuning": True, "pipeline": True, "batch": 16, "batch_forward": "joint"},
}


def _process_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its reaped children (the resident process and its decoders)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            kids = []
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


@dataclass
class Variant:
    name: str
    supervisor: Supervisor
    rounds_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    chunks: int = 0
    outputs: dict[str, tuple[tuple, list[float]]] = field(default_factory=dict)  #: chunk key -> labels, confidences
    failures: list[str] = field(default_factory=list)
    start_s: float = 0.0
    hello: dict[str, Any] = field(default_factory=dict)

    def cpu_now(self) -> float:
        worker = self.supervisor.runner._worker  # type: ignore[attr-defined]
        if worker is None:
            return 0.0
        pid = worker.proc.pid
        return sum(_process_cpu_s(p) for p in [pid, *_descendants(pid)])


def start_variant(name: str, options: HawkearsOptions, binding: Binding, scratch: Path) -> Variant:
    runner = build_hawkears_runner(replace(options, **VARIANTS[name]))
    config = WorkerConfig(
        run_id=f"bench-{name}",
        runner_kind="hawkears",
        runner_options=None,
        output_dir=str(scratch / name / "out"),
        scratch_root=None,
        capacity=2,
        scratch_dir=str(scratch / name / "scratch"),
    )
    supervisor = Supervisor(config, binding, runner)
    t0 = time.perf_counter()
    supervisor.start()
    while not supervisor.ready and not supervisor.fatal:
        time.sleep(0.05)
    if supervisor.fatal:
        raise RuntimeError(f"variant {name}: {supervisor.fatal}")
    variant = Variant(name, supervisor, start_s=time.perf_counter() - t0)
    variant.hello = dict(runner._worker.hello) if runner._worker else {}  # type: ignore[attr-defined]
    return variant


def run_round(variant: Variant, chunks: list[Chunk], round_no: int) -> None:
    sup = variant.supervisor
    cpu0, t0 = variant.cpu_now(), time.perf_counter()
    sup.submit([WireTask(c, round_no, 600.0) for c in chunks])
    done = 0
    while done < len(chunks):
        for event in sup.drain_events():
            if isinstance(event, ResultEvent):
                done += 1
                if not event.ok:
                    variant.failures.append(f"{event.key}: {event.failure_class}: {event.reason[:160]}")
                elif event.record:
                    variant.outputs[event.key] = _labels(event.record)
        time.sleep(0.002)
    variant.rounds_s.append(time.perf_counter() - t0)
    variant.cpu_s += variant.cpu_now() - cpu0
    variant.chunks += len(chunks)


def _labels(record: str) -> tuple[tuple, list[float]]:
    """(labels with their start and end, confidences) of a store line."""
    import json

    line = json.loads(record)
    return tuple(zip(line["label"], line["start_s"], line["end_s"], strict=True)), list(line["confidence"])


def summary(variant: Variant, round_chunks: int, reference: Variant | None) -> dict[str, Any]:
    per_chunk = [r / round_chunks for r in variant.rounds_s]
    out: dict[str, Any] = {
        "options": VARIANTS[variant.name],
        "start_s": round(variant.start_s, 2),
        "per_chunk_s_median": round(statistics.median(per_chunk), 4),
        "per_chunk_s_min": round(min(per_chunk), 4),
        "per_chunk_s_max": round(max(per_chunk), 4),
        "chunks_per_s": round(round_chunks / statistics.median(variant.rounds_s), 3),
        "cpu_s_per_chunk": round(variant.cpu_s / max(1, variant.chunks), 4),
        "failures": variant.failures[:5],
    }
    if "batch_max_score_diff" in variant.hello:
        out["batch_max_score_diff"] = variant.hello["batch_max_score_diff"]
    if reference is not None and reference is not variant:
        pairs = [(variant.outputs.get(k), v) for k, v in reference.outputs.items()]
        out["labels_equal_plain"] = f"{sum(1 for got, want in pairs if got and got[0] == want[0])}/{len(pairs)}"
        out["outputs_equal_plain"] = f"{sum(1 for got, want in pairs if got == want)}/{len(pairs)}"
        diffs = [abs(a - b) for got, want in pairs if got and got[0] == want[0] for a, b in zip(got[1], want[1], strict=True)]
        out["max_confidence_diff"] = max(diffs, default=0.0)
    return out


def bench_variants(
    names: list[str], options: HawkearsOptions, binding: Binding, paths: list[Path], rounds: int, round_chunks: int, work: Path
) -> dict[str, Any]:
    chunks = [
        replace(
            TEMPLATE_CHUNK,
            recording_id=p.stem,
            chunk_id=f"{p.stem}_0",
            source_path=str(p),
            input_path=str(p),
            manifest="bench",
            line=n + 2,
        )
        for n, p in enumerate(paths)
    ]
    variants: list[Variant] = []
    try:
        for name in names:
            variants.append(start_variant(name, options, binding, work))
        for r in range(rounds):
            batch = [chunks[(r * round_chunks + i) % len(chunks)] for i in range(round_chunks)]
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                run_round(variant, batch, r + 1)
    finally:
        for variant in variants:
            variant.supervisor.close()
    reference = next((v for v in variants if v.name == "plain"), None)
    result = {v.name: summary(v, round_chunks, reference) for v in variants}
    if reference is not None:
        base = result["plain"]["per_chunk_s_median"]
        for figures in result.values():
            figures["speedup_vs_plain"] = round(base / figures["per_chunk_s_median"], 3)
    return result
