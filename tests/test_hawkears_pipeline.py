"""Throughput options of the resident HawkEars worker, on real HawkEars with the tiny model:
decoding ahead and outputs finalised apart (``--no-hawkears-pipeline`` off), glibc malloc tuning,
and cross-chunk batches (``--hawkears-batch K``).

The pipeline and the malloc tuning must not change a byte of any chunk's ``scores.csv``; a batch
must give the same labels as K=1 (scores within :data:`BATCH_TOLERANCE`; docs/throughput.md).
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from badc_mpi.records import INPUT, Binding
from badc_mpi.runners.base import AttemptResult, Runner, Task
from badc_mpi.runners.hawkears.adapter import HawkearsRunner, build_hawkears_runner
from badc_mpi.runners.hawkears.options import HawkearsOptions
from badc_mpi.runners.hawkears.startup import MALLOC_TUNING
from badc_mpi.transport.messages import ResultEvent, StartEvent, WireTask, WorkerConfig
from badc_mpi.worker.supervisor import Supervisor

from helpers import hawkears_tiny, make_chunk

CPU = Binding(host="localhost", rank=1, local_rank=0, worker="cpu0@localhost", cuda_visible_devices="")
FAKE_PYTHON = str(Path(__file__).parent / "fakes" / "hawkears_python")  # runs the real resident through the test seam
BATCH_TOLERANCE = 1e-4  #: largest score difference allowed between K>1 and K=1 (docs/throughput.md)
RATE = 22050


# ------------------------------------------------------------------ set-up
@pytest.fixture(scope="module")
def hawkears() -> tuple[str, str]:
    return hawkears_tiny()


def started(hawkears: tuple[str, str], python: str | None = None, **options: Any) -> HawkearsRunner:
    real, root = hawkears
    runner = build_hawkears_runner(
        HawkearsOptions(python=python or real, data_root=root, min_score=0.3, models=2, threads=1, **options)  # type: ignore[arg-type]
    )
    runner.start(CPU)
    return runner


def signal_of(seconds: float, seed: int, channels: int = 1) -> np.ndarray:
    """Noise with tones that change every second (the tiny model's scores follow the spectrum a little)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (1200 + 400 * (np.floor(t) % 7)) * t)
    cols = [tone * (0.5 + 0.5 * c) + rng.uniform(-0.2, 0.2, len(t)) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """Chunks of every kind a run meets: WAV, 48-kHz stereo WAV, FLAC, a virtual slice of a FLAC."""
    d = tmp_path_factory.mktemp("pipeline-audio")
    sf.write(d / "a.wav", signal_of(14, 1), RATE, subtype="PCM_16")
    sf.write(d / "b.wav", signal_of(11, 2, channels=2), 48000, subtype="PCM_16")
    sf.write(d / "c.flac", signal_of(16, 3), RATE, subtype="PCM_16")
    sf.write(d / "long.flac", signal_of(30, 4), RATE, subtype="PCM_16")
    out = [
        make_chunk(recording_id=name, chunk_id=f"{name}_0", input_path=str(d / file))
        for name, file in (("a", "a.wav"), ("b", "b.wav"), ("c", "c.flac"))
    ]
    out.append(
        make_chunk(
            recording_id="long",
            chunk_id="long_chunk_7000_19000",
            input_path=str(d / "long.flac"),
            start_ms=7000,
            end_ms=19000,
            extra=(("chunk_kind", "slice"),),
        )
    )
    return out


def score_all(
    runner: HawkearsRunner, chunks: list[Any], scratch: Path, prefetch: bool
) -> tuple[list[bytes], list[AttemptResult]]:
    """Score ``chunks`` one by one as the supervisor does: the next one announced while one runs."""
    outputs, results = [], []
    for n, chunk in enumerate(chunks):
        if prefetch:
            runner.prefetch(chunks[n + 1 : n + 2] if n else chunks[:2], str(scratch / "ahead"))
            time.sleep(0.5 if n == 0 else 0)  # the first announcement a head start (later ones overlap scoring)
        result = runner.run(Task(chunk, 1, str(scratch / f"{n}"), 120.0, "test"))
        assert result.ok, result.reason
        outputs.append(Path(result.raw_output).read_bytes())
        results.append(result)
    return outputs, results


# ------------------------------------------------------------------ pipeline and malloc tuning
@pytest.fixture(scope="module")
def reference(hawkears: tuple[str, str], chunks: list[Any], tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Every chunk's ``scores.csv`` the plain way: no malloc tuning, no pipeline, K=1."""
    plain = started(hawkears, pipeline=False, malloc_tuning=False)
    try:
        assert plain.batch_size == 1 and not plain.pipeline
        assert not any(var in plain._env for var in MALLOC_TUNING) or all(os.environ.get(v) for v in MALLOC_TUNING)
        outputs, _ = score_all(plain, chunks, tmp_path_factory.mktemp("plain"), prefetch=False)
    finally:
        plain.close()
    assert all(out.count(b"\n") > 1 for out in outputs)  # detections to compare, not just headers
    return outputs


@pytest.mark.hawkears
def test_pipeline_and_malloc_tuning_change_no_byte(
    hawkears: tuple[str, str], chunks: list[Any], reference: list[bytes], tmp_path: Path
) -> None:
    tuned = started(hawkears)  # the defaults: pipeline and malloc tuning on
    try:
        assert tuned.pipeline and all(tuned._env[var] == value for var, value in MALLOC_TUNING.items())
        assert tuned._worker is not None and tuned._worker.hello.get("prefetch") is True
        outputs, results = score_all(tuned, chunks, tmp_path / "tuned", prefetch=True)
    finally:
        tuned.close()
    assert outputs == reference
    assert sum(r.metrics.get("decoded_ahead", 0) for r in results) >= len(chunks) - 1  # decoded in a decoder process
    assert not list((tmp_path / "tuned").rglob("*.wav"))  # the slice cut ahead is gone too


@pytest.mark.hawkears
def test_stereo_channel_choice_is_the_same_decoded_ahead(hawkears: tuple[str, str], chunks: list[Any], tmp_path: Path) -> None:
    """HawkEars' GPU default picks the quieter channel of a stereo file: done after a decode ahead too."""
    config = tmp_path / "choose.yaml"
    config.write_text("audio:\n  choose_channel: true\n  check_seconds: 3\n")
    stereo = [chunks[1], chunks[0]]
    outputs = {}
    for pipeline in (False, True):
        runner = started(hawkears, pipeline=pipeline, config=str(config))
        try:
            outputs[pipeline], results = score_all(runner, stereo, tmp_path / f"p{pipeline}", prefetch=pipeline)
        finally:
            runner.close()
        if pipeline:
            assert sum(r.metrics.get("decoded_ahead", 0) for r in results) >= 1
    assert outputs[True] == outputs[False]


# ------------------------------------------------------------------ batches
def labels(raw: bytes) -> list[tuple[str, str, str]]:
    rows = list(csv.reader(io.StringIO(raw.decode())))
    return [(r[1], r[2], r[3]) for r in rows[1:]]  # start, end, class: the labels


def scores(raw: bytes) -> np.ndarray:
    rows = list(csv.reader(io.StringIO(raw.decode())))
    return np.array([float(r[-1]) for r in rows[1:]])


@pytest.mark.hawkears
def test_batches_give_the_same_labels_and_fail_per_chunk(
    hawkears: tuple[str, str], chunks: list[Any], reference: list[bytes], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8)
    batch = [*chunks[:2], make_chunk(recording_id="bad", chunk_id="bad_0", input_path=str(bad)), *chunks[2:]]
    runner = started(hawkears, batch=4, batch_forward="joint")  # the GPU's one pass per model, here on CPU
    try:
        hello = runner._worker.hello  # type: ignore[union-attr]
        assert hello["batch"] == 4 and hello["batch_forward"] == "joint"
        assert 0 <= hello["batch_max_score_diff"] <= BATCH_TOLERANCE
        assert runner.fingerprint()["batch"] == 4  # resume never mixes batched and per-chunk scores
        tasks = [Task(c, 1, str(tmp_path / "k4" / f"{n}"), 120.0, "test") for n, c in enumerate(batch)]
        results = runner.run_batch(tasks[:4]) + runner.run_batch(tasks[4:])
    finally:
        runner.close()
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert results[2].failure_class == INPUT  # the bad file fails alone; its batch goes on
    assert [r.metrics.get("batch") for r in results[:2]] == [4, 4]  # the bad file still travelled in the batch
    batched = [Path(r.raw_output).read_bytes() for r in results if r.ok]
    for got, want in zip(batched, reference, strict=True):
        assert labels(got) == labels(want)
        assert np.max(np.abs(scores(got) - scores(want))) <= BATCH_TOLERANCE


@pytest.mark.hawkears
def test_out_of_memory_splits_the_batch(
    hawkears: tuple[str, str], chunks: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward pass too large for the GPU (the test seam: more than 12 windows) splits the
    batch until each part fits; every chunk still succeeds."""
    monkeypatch.setenv("BADC_TEST_REAL_HAWKEARS_PYTHON", hawkears[0])
    monkeypatch.setenv("BADC_TEST_PREDICT_OOM_ROWS", "12")
    runner = started(hawkears, python=FAKE_PYTHON, batch=3, batch_forward="joint", pipeline=False)
    try:
        tasks = [Task(c, 1, str(tmp_path / f"{n}"), 120.0, "test") for n, c in enumerate(chunks[:3])]
        results = runner.run_batch(tasks)
        worker_pid = runner._worker.proc.pid  # type: ignore[union-attr]
    finally:
        runner.close()
    assert all(r.ok for r in results), [r.reason for r in results]
    assert all(r.metrics.get("batch_splits", 0) >= 1 for r in results)
    assert {r.pid for r in results} == {worker_pid}  # no restart: the batch was split, not failed


# ------------------------------------------------------------------ the supervisor's side
class Recording(Runner):
    """A runner that records how the supervisor drives it (batches, announcements); no processes."""

    name = "recording"
    produces_outputs = False
    pipeline = True
    batch_size = 3

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.announced: list[str] = []
        self.folders: set[str] = set()
        self.gate = threading.Event()

    def run(self, task: Task) -> AttemptResult:
        return self.run_batch([task])[0]

    def run_batch(self, tasks: list[Task]) -> list[AttemptResult]:
        self.gate.wait(30)
        self.batches.append([t.chunk.chunk_id for t in tasks])
        return [AttemptResult(ok=True) for _ in tasks]

    def prefetch(self, chunks: list[Any], folder: str) -> None:
        self.announced += [c.chunk_id for c in chunks]
        self.folders.add(folder)


def test_supervisor_hands_batches_and_announces_what_comes_next(tmp_path: Path) -> None:
    runner = Recording()
    config = WorkerConfig(run_id="r", runner_kind="recording", runner_options=None, output_dir=str(tmp_path), scratch_root=None)
    config = WorkerConfig(**{**config.__dict__, "scratch_dir": str(tmp_path / "scratch")})
    sup = Supervisor(config, CPU, runner)
    sup.start()
    deadline = time.monotonic() + 30
    while not sup.ready and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sup.window() == 6  # a batch running, the next one queued
    sup.submit([WireTask(make_chunk(chunk_id=f"c{n}", input_path=__file__), 1, 60.0) for n in range(7)])
    runner.gate.set()
    events: list[Any] = []
    while sum(isinstance(e, ResultEvent) for e in events) < 7 and time.monotonic() < deadline:
        events += sup.drain_events()
        time.sleep(0.01)
    sup.close()
    events += sup.drain_events()
    done = [e.key for e in events if isinstance(e, ResultEvent)]
    assert sorted(done) == sorted({e.key for e in events if isinstance(e, StartEvent)}) and len(done) == 7
    assert [len(b) for b in runner.batches] == [3, 3, 1]
    assert runner.announced[:3] == ["c3", "c4", "c5"]  # while c0..c2 ran, the next batch was announced
    assert runner.folders == {str(tmp_path / "scratch" / "ahead")}  # prepared under the rank's scratch folder
    assert sup.busy == 0


def test_closing_finalises_what_was_scored(tmp_path: Path) -> None:
    """Results in hand when the run stops are finalised and reported, not lost."""
    runner = Recording()
    runner.gate.set()
    config = WorkerConfig(
        run_id="r",
        runner_kind="recording",
        runner_options=None,
        output_dir=str(tmp_path),
        scratch_root=None,
        scratch_dir=str(tmp_path / "s"),
    )
    sup = Supervisor(config, CPU, runner)
    sup.start()
    deadline = time.monotonic() + 30
    while not sup.ready and time.monotonic() < deadline:
        time.sleep(0.01)
    sup.submit([WireTask(make_chunk(chunk_id=f"c{n}", input_path=__file__), 1, 60.0) for n in range(3)])
    while sup.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    sup.close()
    results = [e for e in sup.drain_events() if isinstance(e, ResultEvent)]
    assert len(results) == 3 and all(e.ok for e in results)


def test_ahead_cuts_slices_announces_and_forgets_what_is_never_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from badc_mpi.runners.hawkears import ahead as ahead_mod
    from badc_mpi.runners.slicing import SliceError

    recording = tmp_path / "rec.flac"
    sf.write(recording, signal_of(6, 5), RATE, subtype="PCM_16")

    def sliced(n: int, start_ms: int, end_ms: int) -> Any:
        return make_chunk(
            recording_id="rec",
            chunk_id=f"rec_{n}",
            input_path=str(recording),
            start_ms=start_ms,
            end_ms=end_ms,
            extra=(("chunk_kind", "slice"),),
        )

    announced: list[str] = []
    monkeypatch.setattr(ahead_mod, "MAX_AHEAD", 2)
    ahead = ahead_mod.Ahead(announced.append)
    root = str(tmp_path / "root")
    try:
        first, bad, third = sliced(1, 0, 3000), sliced(2, 9000, 12000), sliced(3, 3000, 6000)
        ahead.prepare([first, bad], root)
        got = ahead.take(first, str(tmp_path / "unused"))
        assert got.cut is not None and got.cut.frames == 3 * RATE and Path(got.chunk.input_path).is_file()
        assert announced == [got.chunk.input_path]  # its audio announced once cut
        with pytest.raises(SliceError):  # past the recording's end: the attempt that takes it fails (input)
            ahead.take(bad, str(tmp_path / "unused"))
        ahead_mod.discard(got)
        assert not Path(got.folder).exists()
        ahead.prepare([third, sliced(4, 0, 1000), sliced(5, 1000, 2000)], root)  # one more than it keeps
        time.sleep(0.5)
        kept = [p for p in (tmp_path / "root").iterdir()]
        assert len(kept) == 2  # the oldest preparation, never taken, was dropped with its cut
        late = ahead.take(third, str(tmp_path / "now"))  # dropped: cut now, where the attempt says
        assert late.folder == str(tmp_path / "now") and late.cut is not None
    finally:
        ahead.close()
    assert not any((tmp_path / "root").iterdir())
    ahead.prepare([sliced(6, 0, 1000)], root)  # closed: nothing more is prepared
    assert not any((tmp_path / "root").iterdir())
