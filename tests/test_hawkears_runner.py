"""The HawkEars runner against real HawkEars 2.3.0 with the tiny random-weight model.

Needs ``make hawkears hawkears-tiny``; without them the ``hawkears`` tests FAIL with the fix,
unless ``BADC_MPI_SKIP_HAWKEARS=1`` (then they are skipped). One resident worker is started per
module and shared; tests that kill it or make it hang check that the next chunk gets a new one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import pickle
import random
import signal
import struct
import threading
import time
import wave
from pathlib import Path

import pytest

from badc_mpi.errors import RunnerSetupError, UsageError
from badc_mpi.records import CRASH, INPUT, TIMEOUT, Binding
from badc_mpi.runners.base import Task
from badc_mpi.runners.hawkears import env as hawkears_env
from badc_mpi.runners.hawkears.adapter import HawkearsRunner, build_hawkears_runner
from badc_mpi.runners.hawkears.options import HawkearsOptions, add_hawkears_arguments
from badc_mpi.runners.hawkears.options import chunk_options as _chunk_options

from helpers import hawkears_tiny  # noqa: E402

CPU_BINDING = Binding(host="localhost", rank=1, local_rank=0, worker="cpu0@localhost", cuda_visible_devices="")
HANG = "hang-me"
HANGING_PYTHON = str(Path(__file__).parent / "fakes" / "hawkears_python")  # the hang seam


@dataclasses.dataclass(frozen=True)
class FakeChunk:
    """The fields of badc_mpi.inputs.manifest.Chunk that the runner reads."""

    input_path: str
    extra: tuple[tuple[str, str], ...] = ()
    line: int = 2
    key: str = "rec/chunk"


# ------------------------------------------------------------------ audio
def write_wav(path: Path, seconds: float, seed: int, rate: int = 22050) -> Path:
    """Noise plus frequency-swept chirps, 16-bit mono (stdlib only)."""
    rng = random.Random(seed)
    n = int(seconds * rate)
    chirps = [(rng.uniform(0, seconds - 1), rng.uniform(0.1, 0.5), rng.uniform(1500, 6000)) for _ in range(int(seconds))]
    out = bytearray()
    for i in range(n):
        t = i / rate
        v = 0.03 * rng.uniform(-1, 1)
        for start, dur, f0 in chirps:
            if start <= t < start + dur:
                u = t - start
                v += 0.4 * math.sin(2 * math.pi * (f0 * u + 2000 * u * u / (2 * dur))) * math.sin(math.pi * u / dur)
        out += struct.pack("<h", int(max(-1.0, min(1.0, v)) * 32767))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(out))
    return path


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hawkears-audio")
    files = {f"good{i}": write_wav(d / f"good{i}.wav", s, seed=i) for i, s in enumerate((12, 10, 15))}
    files["hang"] = write_wav(d / f"{HANG}.wav", 10, seed=9)
    corrupt = d / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(random.Random(1).getrandbits(8) for _ in range(4000)))
    files["corrupt"] = corrupt
    return files


# ------------------------------------------------------------- the env
@pytest.fixture(scope="module")
def hk_python() -> str:
    return hawkears_tiny()[0]


@pytest.fixture(scope="module")
def tiny_root(hk_python: str) -> str:
    root = hawkears_env.tiny_data_root(python=hk_python)
    if not (root / hawkears_env.TINY_MARKER).exists():
        pytest.fail("tiny HawkEars model missing. Fix: run `make hawkears-tiny`", pytrace=False)
    return str(root)


def make_runner(python: str, root: str, **options: object) -> HawkearsRunner:
    return build_hawkears_runner(HawkearsOptions(python=python, data_root=root, **options))  # type: ignore[arg-type]


def run_chunk(runner: HawkearsRunner, path: Path, scratch: Path, timeout_s: float = 120.0, extra=()):  # noqa: ANN001, ANN201
    return runner.run(Task(FakeChunk(str(path), tuple(extra)), 1, str(scratch), timeout_s, "test"))


@pytest.fixture(scope="module")
def resident(hk_python: str, tiny_root: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    mp = pytest.MonkeyPatch()
    mp.setenv("BADC_TEST_REAL_HAWKEARS_PYTHON", hk_python)  # the fake python runs the real one, but
    mp.setenv("BADC_TEST_HANG_ON", HANG)  # its resident process hangs on inputs whose path contains HANG
    mp.setenv("CUDA_VISIBLE_DEVICES", "0")  # the CPU binding must override this
    log_dir = str(tmp_path_factory.mktemp("hawkears-logs"))
    runner = make_runner(HANGING_PYTHON, tiny_root, min_score=0.5, models=1, log_dir=log_dir)
    runner.start(CPU_BINDING)
    yield runner
    runner.close()
    mp.undo()


# ------------------------------------------------------------------ tests
@pytest.mark.hawkears
def test_resident_equals_cli_and_starts_once(
    resident: HawkearsRunner, hk_python: str, tiny_root: str, audio, tmp_path: Path
) -> None:  # noqa: ANN001
    results = [run_chunk(resident, audio[name], tmp_path / f"res-{name}") for name in ("good0", "good1", "good2")]
    assert all(r.ok for r in results), [r.reason for r in results]
    assert {r.metrics["worker_pid"] for r in results} == {results[0].pid}
    assert [r.metrics["worker_starts"] for r in results] == [1, 1, 1]
    assert results[0].hawkears_version == "2.3.0" and results[0].model_version.startswith("tiny:main=[tiny-main-1.ckpt:")
    assert results[0].command[0] == "<resident>" and results[0].metrics["detections"] > 0
    assert results[0].metrics["decode_s"] >= 0 and results[0].metrics["score_s"] > 0
    assert results[0].metrics["peak_vram_mib"] is None  # CPU
    cli = make_runner(hk_python, tiny_root, min_score=0.5, models=1, mode="cli")
    cli.start(CPU_BINDING)
    try:
        for name, res in zip(("good0", "good2"), (results[0], results[2]), strict=True):
            base = run_chunk(cli, audio[name], tmp_path / f"cli-{name}")
            assert base.ok, base.reason
            assert base.command[1:4] == ["analyze", str(audio[name]), "-o"]
            assert Path(res.raw_output).read_bytes() == Path(base.raw_output).read_bytes()
        bad = run_chunk(cli, audio["corrupt"], tmp_path / "cli-corrupt")
        assert bad.failure_class == INPUT and "Could not load recording" in bad.reason
    finally:
        cli.close()


@pytest.mark.hawkears
def test_high_min_score_gives_header_only(hk_python: str, tiny_root: str, audio, tmp_path: Path) -> None:  # noqa: ANN001
    user_yaml = tmp_path / "user.yaml"
    user_yaml.write_text("infer:\n  min_score: 0.99\n")  # --hawkears-config is merged over ours
    outs = []
    for mode, options in (("resident", {"config": str(user_yaml)}), ("cli", {"min_score": 0.99})):
        runner = make_runner(hk_python, tiny_root, models=1, mode=mode, **options)
        runner.start(CPU_BINDING)
        try:
            res = run_chunk(runner, audio["good1"], tmp_path / mode)
        finally:
            runner.close()
        assert res.ok, res.reason
        outs.append(Path(res.raw_output).read_bytes())
    assert outs[0] == outs[1] == b"recording,name,start_time,end_time,score\n"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("infer: [unclosed\n")
    with pytest.raises(RunnerSetupError, match="cannot be merged"):
        make_runner(hk_python, tiny_root, config=str(bad_yaml)).start(CPU_BINDING)


@pytest.mark.hawkears
def test_corrupt_input_keeps_the_worker(resident: HawkearsRunner, audio, tmp_path: Path) -> None:  # noqa: ANN001
    before = resident.worker_starts
    bad = run_chunk(resident, audio["corrupt"], tmp_path / "bad")
    assert bad.failure_class == INPUT and bad.reason.startswith("Could not load recording")
    good = run_chunk(resident, audio["good1"], tmp_path / "good")
    assert good.ok and good.pid == bad.pid and resident.worker_starts == before
    short = run_chunk(resident, write_wav(tmp_path / "short.wav", 0.3, seed=3), tmp_path / "short")
    assert short.failure_class == INPUT and short.reason.startswith("No predictions generated for")
    missing = run_chunk(resident, audio["good1"].with_name("nope.wav"), tmp_path / "missing")
    assert missing.failure_class == INPUT and "not found" in missing.reason and missing.pid is None


@pytest.mark.hawkears
def test_killed_worker_is_a_crash_then_restarts(resident: HawkearsRunner, audio, tmp_path: Path) -> None:  # noqa: ANN001
    starts, pid = resident.worker_starts, resident.active_pids()[0]
    timer = threading.Timer(1.0, os.killpg, (pid, signal.SIGKILL))  # mid-chunk: the hang input never finishes
    timer.start()
    res = run_chunk(resident, audio["hang"], tmp_path / "killed", timeout_s=60)
    timer.join()
    assert res.failure_class == CRASH and res.signal == signal.SIGKILL, res.reason
    assert "hanging on" in res.reason  # the tail of the worker's stderr, also in the rank's log
    assert (
        "[hanging_resident] hanging on" in (Path(resident.options.log_dir) / f"hawkears-rank{CPU_BINDING.rank}.log").read_text()
    )
    assert resident.active_pids() == []
    good = run_chunk(resident, audio["good0"], tmp_path / "after")
    assert good.ok and good.pid != pid and resident.worker_starts == starts + 1 == good.metrics["worker_starts"]


@pytest.mark.hawkears
def test_hang_times_out_kills_and_restarts(resident: HawkearsRunner, audio, tmp_path: Path) -> None:  # noqa: ANN001
    starts, pid = resident.worker_starts, resident.active_pids()[0]
    t0 = time.monotonic()
    res = run_chunk(resident, audio["hang"], tmp_path / "hang", timeout_s=2.0)
    assert res.failure_class == TIMEOUT and time.monotonic() - t0 < 15
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    good = run_chunk(resident, audio["good2"], tmp_path / "after")
    assert good.ok and resident.worker_starts == starts + 1


@pytest.mark.hawkears
def test_cpu_binding_hides_gpus(resident: HawkearsRunner, audio, tmp_path: Path) -> None:  # noqa: ANN001
    assert run_chunk(resident, audio["good0"], tmp_path / "x").ok
    pid = resident.active_pids()[0]
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and os.getpgid(pid) == pid
    assert resident.describe()["device"] == "cpu"


@pytest.mark.hawkears
def test_bundled_recording_and_location_options(resident: HawkearsRunner, hk_python: str, tmp_path: Path) -> None:
    mp3 = hawkears_env.bundled_recording(hk_python)
    assert mp3.name == "CommonYellowthroat.mp3" and mp3.is_file()
    res = run_chunk(resident, mp3, tmp_path / "cy", extra=(("lat", "49.3"), ("lon", "-123.1"), ("date", "2024-06-01")))
    assert res.ok, res.reason
    assert "lat=49.3" in res.command and Path(res.raw_output).read_text().startswith("recording,name,")


@pytest.mark.hawkears
def test_log_dir_option_writes_the_rank_log(hk_python: str, tiny_root: str, audio, tmp_path: Path) -> None:  # noqa: ANN001
    parser = argparse.ArgumentParser()
    add_hawkears_arguments(parser)
    log_dir = tmp_path / "logs" / "hawkears"  # not there yet: start() makes it
    args = parser.parse_args(
        [
            "--hawkears-python",
            hk_python,
            "--hawkears-data-root",
            tiny_root,
            "--models",
            "1",
            "--hawkears-log-dir",
            str(log_dir),
        ]
    )
    runner = build_hawkears_runner(HawkearsOptions.from_namespace(args))
    runner.start(dataclasses.replace(CPU_BINDING, rank=3))
    try:
        good = run_chunk(runner, audio["good0"], tmp_path / "good")
        assert good.ok, good.reason
        short = run_chunk(runner, write_wav(tmp_path / "short.wav", 0.3, seed=3), tmp_path / "short")  # HawkEars warns on stderr
        assert short.failure_class == INPUT and runner.worker_starts == 1, short.reason
    finally:
        runner.close()  # joins the stderr pump: the log and the in-memory tail are complete only now
    assert [p.name for p in log_dir.iterdir()] == ["hawkears-rank3.log"]
    text = (log_dir / "hawkears-rank3.log").read_text()
    assert "hawkears-worker WARNING No predictions generated for" in text, text
    assert text.rstrip("\n") == runner.stderr_tail()


@pytest.mark.hawkears
def test_low_band_without_checkpoints_is_a_clear_error(hk_python: str, tiny_root: str, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    root = tmp_path / "no-low-band"
    (root / "data").mkdir(parents=True)
    for entry in Path(tiny_root).iterdir():
        if entry.name != "data":
            (root / entry.name).symlink_to(entry)
    for entry in (Path(tiny_root) / "data").iterdir():
        if entry.name != "ckpt-low-band":
            (root / "data" / entry.name).symlink_to(entry)
    runner = make_runner(hk_python, str(root), low_band=True)
    with (
        caplog.at_level(logging.WARNING, logger="badc_mpi"),
        pytest.raises(RunnerSetupError, match="--low-band needs low-band checkpoints"),
    ):
        runner.start(CPU_BINDING)
    runner.close()


# ------------------------------------------------------ no HawkEars needed
def test_options_parse_validate_and_pickle(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_hawkears_arguments(parser)
    species = tmp_path / "species.txt"
    species.write_text("American Robin\n")
    args = parser.parse_args(
        [
            "--hawkears-mode",
            "cli",
            "--min-score",
            "0.5",
            "--models",
            "2",
            "--no-low-band",
            "--label",
            "alt_names",
            "--lat",
            "49",
            "--lon",
            "-123",
            "--include",
            str(species),
        ]
    )
    opts = HawkearsOptions.from_namespace(args)
    assert (opts.mode, opts.min_score, opts.models, opts.low_band, opts.label, opts.include) == (
        "cli",
        0.5,
        2,
        False,
        "alt-names",
        str(species),
    )
    assert pickle.loads(pickle.dumps(opts)) == opts
    assert HawkearsOptions.from_namespace(parser.parse_args([])) == HawkearsOptions()
    for bad in (
        dict(models=7),
        dict(lat=1.0),
        dict(region="CA-AB", lat=1.0, lon=2.0),
        dict(label="x"),
        dict(include=str(tmp_path / "none.txt")),
        dict(date="June 1"),
        dict(mode="daemon"),
    ):
        with pytest.raises(UsageError):
            HawkearsOptions(**bad).validate()  # type: ignore[arg-type]


def test_chunk_options_from_manifest_columns() -> None:
    assert _chunk_options(FakeChunk("x", (("lat", "49.1"), ("lon", "-123"), ("date", "20240601")))) == (
        {"lat": 49.1, "lon": -123.0, "date": "20240601"},
        None,
    )
    assert _chunk_options(FakeChunk("x", (("region", "CA-BC"), ("lat", ""), ("lon", "")))) == (
        {"region": "CA-BC"},
        None,
    )
    assert _chunk_options(FakeChunk("x", (("site", "A"),))) == ({}, None)
    assert "bad lat/lon" in (_chunk_options(FakeChunk("x", (("lat", "north"), ("lon", "1"))))[1] or "")
    assert "bad date" in (_chunk_options(FakeChunk("x", (("date", "yesterday"),)))[1] or "")


def test_env_and_data_root_resolution(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    with pytest.raises(RunnerSetupError, match="make hawkears"):
        hawkears_env.find_hawkears_python(env)
    with pytest.raises(RunnerSetupError, match="make hawkears-models"):
        hawkears_env.resolve_data_root(None, env)
    assert hawkears_env.hawkears_env_dir(env).name.startswith("hawkears-") and hawkears_env.hawkears_env_dir(env).name.endswith(
        hawkears_env.python_tag()
    )

    def fake_root(path: Path, tiny: bool = False) -> Path:
        (path / "yaml").mkdir(parents=True)
        (path / "yaml" / "default.yaml").write_text("audio: {}\n")
        (path / "data" / "ckpt").mkdir(parents=True)
        (path / "data" / "ckpt" / "m1.ckpt").write_bytes(b"weights")
        if tiny:
            (path / hawkears_env.TINY_MARKER).write_text("tiny")
        return path

    tiny = fake_root(hawkears_env.tiny_data_root(env), tiny=True)
    with pytest.raises(RunnerSetupError, match="no HawkEars models"):  # never the tiny model unasked
        hawkears_env.resolve_data_root(None, env)
    root = hawkears_env.resolve_data_root(None, env, allow_tiny=True)
    assert (root.path, root.is_tiny, root.source, root.has_low_band) == (str(tiny), True, "tiny", False)
    assert root.model_version.startswith("tiny:main=[m1.ckpt:")
    staged = fake_root(hawkears_env.default_models_dir(env))
    assert hawkears_env.resolve_data_root(None, env, allow_tiny=True).path == str(staged)  # real models first
    via_env = fake_root(tmp_path / "via-env")
    assert hawkears_env.resolve_data_root(None, {**env, "HAWKEARS_DATA_ROOT": str(via_env)}).source == "env"
    assert hawkears_env.resolve_data_root(str(tiny), {**env, "HAWKEARS_DATA_ROOT": str(via_env)}).source == "cli"
    with pytest.raises(RunnerSetupError, match="not a HawkEars data root"):
        hawkears_env.resolve_data_root(str(tmp_path), env)
    overrides = root.config_overrides()
    assert (
        overrides["misc"]["ckpt_folder"] == str(tiny / "data" / "ckpt")
        and Path(overrides["hawkears"]["occurrence_pickle"]).is_absolute()
    )


@pytest.mark.hawkears
def test_no_models_is_an_error_not_the_tiny_model(hk_python: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing staged there
    monkeypatch.delenv("HAWKEARS_DATA_ROOT", raising=False)
    with pytest.raises(RunnerSetupError, match="no HawkEars models") as info:
        build_hawkears_runner(HawkearsOptions(python=hk_python))
    assert "make hawkears-models" in str(info.value) and "--hawkears-data-root" in str(info.value)
    assert build_hawkears_runner(HawkearsOptions(python=hk_python, allow_tiny_model=True)).data_root.is_tiny
    tiny = str(hawkears_env.tiny_data_root(python=hk_python))
    named = build_hawkears_runner(HawkearsOptions(python=hk_python, data_root=tiny)).data_root
    assert named.is_tiny and named.source == "cli"  # naming it is asking for it
