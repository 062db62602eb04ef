"""The monitor's running totals over a telemetry log, and the snapshots it shows (no I/O).

:class:`MonitorState` folds blocks of lines in (vectorised over each block), so the first view of
a 1,000,000-line log and a follow tick of a few hundred lines take the same path. Time series
(chunks finished, retries) live in a :class:`Timeline` of at most ``cap_buckets`` buckets per
worker that doubles its bucket width when the run outgrows it: memory stays bounded over days.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from badc_mpi.monitor.parse import E_FAILURE, E_RETRY, E_START, E_SUCCESS, Columns, parse_block
from badc_mpi.monitor.tail import SummaryHead

UNKNOWN_WORKER = "?"
RATE_WINDOW_S = 60  #: the recent window of the rate (and ETA)


class Timeline:
    """Event counts per kind (:data:`FINISHED`, :data:`RETRIED`) and worker over time buckets of
    ``bucket_ms`` from ``origin_ms``; both kinds share the buckets, so their sparklines line up."""

    def __init__(self, cap_buckets: int = 256, bucket_ms: int = 1000, kinds: int = 2) -> None:
        assert cap_buckets % 2 == 0
        self.cap_buckets = cap_buckets
        self.bucket_ms = bucket_ms
        self.origin_ms: int | None = None
        self.counts = np.zeros((kinds, 0, cap_buckets), dtype=np.int64)

    def grow(self, n_workers: int) -> None:
        kinds, have, cap = self.counts.shape
        if n_workers > have:
            self.counts = np.concatenate([self.counts, np.zeros((kinds, n_workers - have, cap), np.int64)], axis=1)

    def add(self, kind: int, workers: np.ndarray, times_ms: np.ndarray, n_workers: int) -> None:
        self.grow(n_workers)
        keep = times_ms >= 0
        workers, times_ms = workers[keep], times_ms[keep]
        if not len(times_ms):
            return
        if self.origin_ms is None:
            self.origin_ms = int(times_ms.min()) // self.bucket_ms * self.bucket_ms
        while (int(times_ms.max()) - self.origin_ms) // self.bucket_ms >= self.cap_buckets:
            self._coarsen()
        idx = np.clip((times_ms - self.origin_ms) // self.bucket_ms, 0, None)  # late-arriving early events: bucket 0
        n_all = self.counts.shape[1]
        flat = np.bincount(workers * self.cap_buckets + idx, minlength=n_all * self.cap_buckets)
        self.counts[kind] += flat.reshape(n_all, self.cap_buckets)

    def _coarsen(self) -> None:
        kinds, n, cap = self.counts.shape
        half = self.counts.reshape(kinds, n, cap // 2, 2).sum(axis=3)
        self.counts = np.concatenate([half, np.zeros_like(half)], axis=2)
        self.bucket_ms *= 2

    def used(self, until_ms: int) -> int:
        """Buckets from the origin through the one holding ``until_ms``."""
        if self.origin_ms is None or until_ms < 0:
            return 0
        return min(self.cap_buckets, max(0, (until_ms - self.origin_ms) // self.bucket_ms) + 1)

    def row(self, kind: int, worker: int, used: int) -> list[int]:
        if worker >= self.counts.shape[1]:
            return [0] * used
        return self.counts[kind, worker, :used].tolist()


FINISHED, RETRIED = 0, 1  #: the Timeline's kinds


@dataclass(frozen=True)
class LastError:
    at_ms: int
    event: str  #: ``retry`` or ``failure``
    failure_class: str | None
    reason: str


@dataclass(frozen=True)
class WorkerRow:
    worker: str
    rank: int | None
    success: int
    failure: int
    retries: int
    failed_attempts: int
    in_flight: int
    runtime_mean_s: float | None
    util_last_pct: float | None  #: the last attempt's mean utilisation
    util_max_pct: float | None
    vram_last_mib: float | None
    vram_max_mib: float | None
    vram_device_mib: float | None
    idle_s: float | None  #: since this worker's last event
    finished_buckets: list[int]
    retry_buckets: list[int]
    last_error: LastError | None


@dataclass(frozen=True)
class Snapshot:
    """Everything one view shows; built by :meth:`MonitorState.snapshot`, formatted by monitor_view."""

    path: str
    exists: bool
    now_s: float
    run_id: str | None
    state: str | None  #: the summary's state; None before the first summary
    summary_age_s: float | None
    total: int | None
    skipped: int
    success: int
    failure: int
    retries: int
    in_flight: int
    rate_chunks_per_s: float
    rate_window_s: float
    mean_rate_chunks_per_s: float
    eta_s: float | None
    elapsed_s: float | None
    last_event_age_s: float | None
    attempts_by_class: dict[str, int]
    failures_by_class: dict[str, int]
    bucket_s: float
    timeline_start_s: float | None
    size_bytes: int
    lines: int
    bad_lines: int
    workers: list[WorkerRow] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    gone: str | None = None  #: why rank 0 is taken to be gone (monitor.liveness), else None
    resume: str | None = None  #: the resume command, when gone

    @property
    def finished(self) -> int:
        return self.success + self.failure + self.skipped


def _nan_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _last_per_worker(workers: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each worker among ``workers`` (aligned with ascending ``rows``): its last row."""
    uniq, first = np.unique(workers[::-1], return_index=True)
    return uniq, rows[::-1][first]


class MonitorState:
    """Totals per worker and overall, folded in block by block (:meth:`apply`)."""

    def __init__(self, cap_buckets: int = 256, rate_window_s: int = RATE_WINDOW_S) -> None:
        self.workers: list[str] = []
        self._ids: dict[str, int] = {}
        self.ranks: list[int] = []
        self.counts = np.zeros((0, 4), dtype=np.int64)  # start, success, retry, failure
        self.runtime_sum_s = np.zeros(0)
        self.runtime_n = np.zeros(0, dtype=np.int64)
        self.gpu = {k: np.zeros(0) for k in ("util_last", "util_max", "vram_last", "vram_max", "vram_device")}
        self.last_ms = np.zeros(0, dtype=np.int64)
        self.last_error: list[LastError | None] = []
        self.timeline = Timeline(cap_buckets)
        self.attempts_by_class: Counter[str] = Counter()
        self.failures_by_class: Counter[str] = Counter()
        self.rate_window_s = rate_window_s
        self.recent: dict[int, int] = {}  # epoch second -> chunks finished, the last window only
        self.first_ms = -1
        self.newest_ms = -1
        self.lines = 0
        self.bad_lines = 0
        self.run_id: str | None = None
        self.header: dict[str, Any] | None = None  #: the run header (the telemetry's first line)
        self._rank_worker: dict[int, int] = {}  # rank -> worker id, from lines that name both

    def _worker(self, name: str) -> int:
        wid = self._ids.get(name)
        if wid is None:
            wid = self._ids[name] = len(self.workers)
            self.workers.append(name)
            self.ranks.append(-1)
            self.last_error.append(None)
        return wid

    def _worker_ids(self, cols: Columns) -> np.ndarray:
        """Each row's worker id. Per-chunk lines name their rank only (telemetry 2): its name is
        the one its ``worker`` event gave (earlier in the file); lines of schema 1 name both."""
        lut = [self._worker(name) for name in cols.worker_names]
        both = (cols.worker >= 0) & (cols.rank >= 0)
        if both.any():  # a few distinct (rank, worker) pairs, however many lines
            span = len(lut) + 1
            for key in np.unique(cols.rank[both] * span + cols.worker[both]):
                self._rank_worker[int(key // span)] = lut[int(key % span)]
        w = np.array(lut + [-1], dtype=np.int64)[cols.worker]  # -1 (no worker) reads the trailing -1
        unnamed = w < 0
        if unnamed.any():
            ranks = cols.rank[unnamed]
            ids = np.empty(len(ranks), dtype=np.int64)
            for rank in np.unique(ranks):
                wid = self._rank_worker.get(int(rank)) if rank >= 0 else None
                if wid is None:
                    wid = self._worker(UNKNOWN_WORKER if rank < 0 else f"rank{int(rank)}")
                ids[ranks == rank] = wid
            w[unnamed] = ids
        return w

    def _grow(self) -> int:
        n = len(self.workers)
        extra = n - self.counts.shape[0]
        if extra > 0:
            self.counts = np.vstack([self.counts, np.zeros((extra, 4), dtype=np.int64)])
            self.runtime_sum_s = np.concatenate([self.runtime_sum_s, np.zeros(extra)])
            self.runtime_n = np.concatenate([self.runtime_n, np.zeros(extra, dtype=np.int64)])
            self.last_ms = np.concatenate([self.last_ms, np.full(extra, -1, dtype=np.int64)])
            for k, arr in self.gpu.items():
                self.gpu[k] = np.concatenate([arr, np.full(extra, np.nan)])
        return n

    def apply(self, block: bytes | memoryview) -> None:
        """Fold in a block of complete telemetry lines."""
        if self.run_id is None:
            self.header = _header(block)
            self.run_id = _run_id(block)
        self.fold(parse_block(block))

    def fold(self, cols: Columns) -> None:
        self.lines += cols.n + cols.bad_lines
        self.bad_lines += cols.bad_lines
        if not cols.n:
            return
        named = (cols.worker >= 0) | (cols.event >= 0)
        if not named.all():  # the run header (and any other line of no worker and no chunk event)
            cols = cols.keep(named)
            if not cols.n:
                return
        w = self._worker_ids(cols)
        nw = self._grow()
        ev = cols.event.astype(np.int64)
        known = ev >= 0
        self.counts += np.bincount(w[known] * 4 + ev[known], minlength=nw * 4).reshape(nw, 4)
        for wid, rank in zip(*_last_per_worker(w[cols.rank >= 0], cols.rank[cols.rank >= 0])):
            self.ranks[wid] = int(rank)
        result = ev > E_START
        rt = cols.floats["runtime_s"]
        timed = result & ~np.isnan(rt)
        self.runtime_sum_s += np.bincount(w[timed], weights=rt[timed], minlength=nw)
        self.runtime_n += np.bincount(w[timed], minlength=nw)
        self._fold_gpu(cols, w, result)
        times = np.maximum(cols.started_ms, cols.finished_ms)
        np.maximum.at(self.last_ms, w, times)
        started = cols.started_ms[cols.started_ms >= 0]
        if len(started) and (self.first_ms < 0 or started.min() < self.first_ms):
            self.first_ms = int(started.min())
        self.newest_ms = max(self.newest_ms, int(times.max()))
        self._fold_errors(cols, w, ev)
        final = (ev == E_SUCCESS) | (ev == E_FAILURE)
        self.timeline.add(FINISHED, w[final], cols.finished_ms[final], nw)
        self.timeline.add(RETRIED, w[ev == E_RETRY], cols.finished_ms[ev == E_RETRY], nw)
        self._fold_recent(cols.finished_ms[final])

    def _fold_gpu(self, cols: Columns, w: np.ndarray, result: np.ndarray) -> None:
        rows = np.arange(cols.n)
        for last_key, max_key, last_col, max_col in (
            ("util_last", "util_max", "gpu_util_pct_mean", "gpu_util_pct_max"),
            ("vram_last", "vram_max", "vram_used_mib", "vram_used_mib"),
            ("vram_device", None, "vram_device_mib", None),
        ):
            values = cols.floats[last_col]
            has = result & ~np.isnan(values)
            if last_key == "vram_device":  # schema 2: the device's size, from its worker's event
                total = cols.floats["gpu_memory_total_mib"]
                values = np.where(np.isnan(values), total, values)
                has = has | ~np.isnan(total)
            if has.any():
                uniq, last = _last_per_worker(w[has], rows[has])
                self.gpu[last_key][uniq] = values[last]
            if max_key is not None and max_col is not None:
                peaks = cols.floats[max_col]
                has = result & ~np.isnan(peaks)
                if has.any():
                    np.fmax.at(self.gpu[max_key], w[has], peaks[has])

    def _fold_errors(self, cols: Columns, w: np.ndarray, ev: np.ndarray) -> None:
        failed = (ev == E_RETRY) | (ev == E_FAILURE)
        if not failed.any():
            return
        rows = np.arange(cols.n)[failed]
        for wid, row in zip(*_last_per_worker(w[failed], rows)):
            code = cols.failure_class[row]
            reason = cols.reason_at(int(row)) or ""
            self.last_error[wid] = LastError(
                at_ms=int(cols.finished_ms[row]),
                event="retry" if ev[row] == E_RETRY else "failure",
                failure_class=cols.class_names[code] if code >= 0 else None,
                reason=reason,
            )
        names = cols.class_names + ["unknown"]
        for target, mask in ((self.attempts_by_class, failed), (self.failures_by_class, ev == E_FAILURE)):
            codes = cols.failure_class[mask]  # -1 (no class) counts as the trailing "unknown"
            for code, n in enumerate(np.bincount(codes % len(names), minlength=len(names))):
                if n:
                    target[names[code]] += int(n)

    def _fold_recent(self, finished_ms: np.ndarray) -> None:
        secs = finished_ms[finished_ms >= 0] // 1000
        if not len(secs):
            return
        newest = max(int(secs.max()), max(self.recent, default=0))
        secs = secs[secs > newest - self.rate_window_s - 1]
        for sec, n in zip(*np.unique(secs, return_counts=True)):
            self.recent[int(sec)] = self.recent.get(int(sec), 0) + int(n)
        for sec in [s for s in self.recent if s <= newest - self.rate_window_s - 1]:
            del self.recent[sec]

    # -- the view ------------------------------------------------------------------------
    def snapshot(
        self,
        path: str,
        now_s: float,
        summary: SummaryHead | None,
        *,
        exists: bool = True,
        size_bytes: int = 0,
        notices: list[str] | None = None,
    ) -> Snapshot:
        """What the view shows at ``now_s`` (the rate's window ends now while the run is live, at
        its last event once the summary says it is over)."""
        now_ms = int(now_s * 1000)
        success, retries, failure = (int(x) for x in self.counts[:, [E_SUCCESS, E_RETRY, E_FAILURE]].sum(axis=0))
        starts = int(self.counts[:, E_START].sum())
        live = summary is None or not summary.final
        end_ms = max(self.newest_ms, now_ms) if live else self.newest_ms
        finished = success + failure
        span_s = (end_ms - self.first_ms) / 1000 if self.first_ms >= 0 else 0.0
        if span_s <= self.rate_window_s:  # a young (or short) run: its whole span is the window
            window_s = span_s
            rate = finished / span_s if span_s > 0 else 0.0
        else:
            window_s = float(self.rate_window_s)
            lo_s = end_ms // 1000 - self.rate_window_s
            rate = sum(n for s, n in self.recent.items() if s > lo_s) / window_s
        elapsed_s = (self.newest_ms - self.first_ms) / 1000 if self.first_ms >= 0 else None
        mean_rate = finished / elapsed_s if elapsed_s else 0.0
        head = self.header or {}
        skipped = summary.skipped if summary else int(head.get("skipped") or 0)
        total = summary.total if summary else head.get("total")  # the header has it from the first line
        eta_s = None
        if total is not None and live and rate > 0:
            eta_s = max(0, total - finished - skipped) / rate
        used = self.timeline.used(self.newest_ms)
        return Snapshot(
            path=path,
            exists=exists,
            now_s=now_s,
            run_id=self.run_id or (summary.run_id if summary else None),
            state=summary.state if summary else None,
            summary_age_s=max(0.0, now_s - summary.written_at_s) if summary else None,
            total=total,
            skipped=skipped,
            success=success,
            failure=failure,
            retries=retries,
            in_flight=max(0, starts - success - failure - retries),
            rate_chunks_per_s=rate,
            rate_window_s=window_s,
            mean_rate_chunks_per_s=mean_rate,
            eta_s=eta_s,
            elapsed_s=elapsed_s,
            last_event_age_s=max(0.0, now_s - self.newest_ms / 1000) if self.newest_ms >= 0 else None,
            attempts_by_class=dict(self.attempts_by_class.most_common()),
            failures_by_class=dict(self.failures_by_class.most_common()),
            bucket_s=self.timeline.bucket_ms / 1000,
            timeline_start_s=self.timeline.origin_ms / 1000 if self.timeline.origin_ms is not None else None,
            size_bytes=size_bytes,
            lines=self.lines,
            bad_lines=self.bad_lines,
            workers=[self._row(i, now_s, used) for i in sorted(range(len(self.workers)), key=self.workers.__getitem__)],
            notices=list(notices or []),
        )

    def _row(self, i: int, now_s: float, used: int) -> WorkerRow:
        starts, success, retries, failure = (int(x) for x in self.counts[i])
        return WorkerRow(
            worker=self.workers[i],
            rank=self.ranks[i] if self.ranks[i] >= 0 else None,
            success=success,
            failure=failure,
            retries=retries,
            failed_attempts=retries + failure,
            in_flight=max(0, starts - success - retries - failure),
            runtime_mean_s=float(self.runtime_sum_s[i] / self.runtime_n[i]) if self.runtime_n[i] else None,
            util_last_pct=_nan_none(self.gpu["util_last"][i]),
            util_max_pct=_nan_none(self.gpu["util_max"][i]),
            vram_last_mib=_nan_none(self.gpu["vram_last"][i]),
            vram_max_mib=_nan_none(self.gpu["vram_max"][i]),
            vram_device_mib=_nan_none(self.gpu["vram_device"][i]),
            idle_s=max(0.0, now_s - self.last_ms[i] / 1000) if self.last_ms[i] >= 0 else None,
            finished_buckets=self.timeline.row(FINISHED, i, used),
            retry_buckets=self.timeline.row(RETRIED, i, used),
            last_error=self.last_error[i],
        )


def _header(block: bytes | memoryview) -> dict[str, Any] | None:
    """The run header, when the block starts with it (telemetry 2's first line)."""
    head = bytes(block[:65536])
    try:
        first = json.loads(head[: head.find(b"\n")])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return first if isinstance(first, dict) and first.get("event") == "run" else None


def _run_id(block: bytes | memoryview) -> str | None:
    """The run id of a block's first line (telemetry lines all carry it)."""
    head = bytes(block[:65536])
    try:
        first = json.loads(head[: head.find(b"\n")])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    value = first.get("run_id") if isinstance(first, dict) else None
    return value if isinstance(value, str) else None
