"""Virtual chunks: cutting a slice reads exactly the recording's samples, and HawkEars (tiny model)
scores a slice of a long WAV or FLAC exactly as it scores a WAV cut from the same samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from badc_mpi.inputs.slices import frame_range
from badc_mpi.records import INPUT, Binding
from badc_mpi.runners.base import Task
from badc_mpi.runners.slicing import SliceError, cut_slice, slice_input

from helpers import hawkears_tiny, make_audio, make_chunk

RATE = 22050
CPU = Binding(host="localhost", rank=1, local_rank=0, worker="cpu0@localhost", cuda_visible_devices="")


def samples_int16(seconds: float, seed: int = 3) -> np.ndarray:
    return (np.clip(make_audio.synth_wave(seconds, RATE, seed=seed), -1, 1) * 32767).astype(np.int16)


def test_frame_range_is_floor_at_both_ends_and_clamped() -> None:
    assert frame_range(5000, 11000, 22050, 441000) == (110250, 242550)
    assert frame_range(0, 60000, 44100, 1000) == (0, 1000)  # clamped to the recording
    # adjacent slices share no sample and miss none, whatever the rate
    assert frame_range(0, 333, 44100, 10**6)[1] == frame_range(333, 666, 44100, 10**6)[0]
    with pytest.raises(ValueError, match="past the recording's end"):
        frame_range(60000, 120000, 8000, 8000 * 30)


@pytest.mark.parametrize(
    "fmt,subtype,dtype",
    [("WAV", "PCM_16", "int16"), ("FLAC", "PCM_24", "int32"), ("WAV", "FLOAT", "float32"), ("FLAC", "PCM_16", "int16")],
)
def test_cut_slice_holds_exactly_the_recordings_samples(tmp_path: Path, fmt: str, subtype: str, dtype: str) -> None:
    rng = np.random.default_rng(1)
    if dtype == "float32":
        data = rng.uniform(-0.9, 0.9, (RATE * 4, 2)).astype(np.float32)
    else:
        top = 2**15 if dtype == "int16" else 2**23
        data = rng.integers(-top, top, (RATE * 4, 2)).astype(dtype)
        if dtype == "int32":
            data = data << 8  # 24-bit samples, left-aligned as libsndfile gives them
    src = tmp_path / f"rec.{fmt.lower()}"
    sf.write(src, data, RATE, subtype=subtype, format=fmt)
    cut = cut_slice(str(src), 1000, 2500, str(tmp_path / "out" / "c.wav"))
    first, stop = RATE * 1000 // 1000, RATE * 2500 // 1000
    info = sf.info(cut.path)
    assert (info.format, info.samplerate, info.channels, cut.frames) == ("WAV", RATE, 2, stop - first)
    back, _ = sf.read(cut.path, dtype="int32" if dtype != "float32" else "float32", always_2d=True)
    want = data[first:stop].astype(np.int32) << (16 if dtype == "int16" else 0) if dtype != "float32" else data[first:stop]
    assert np.array_equal(back, want)


def test_slice_input_only_for_slice_chunks_and_bad_slices_are_input_errors(tmp_path: Path) -> None:
    src = tmp_path / "rec.wav"
    sf.write(src, samples_int16(4), RATE, subtype="PCM_16")
    plain = make_chunk(input_path=str(src), start_ms=0, end_ms=2000)
    assert slice_input(plain, str(tmp_path / "s")) == (plain, None)  # the lab's chunk files: untouched
    chunk = make_chunk(input_path=str(src), start_ms=1000, end_ms=3000, extra=(("chunk_kind", "slice"),))
    scored, cut = slice_input(chunk, str(tmp_path / "s"))
    assert cut is not None and scored.input_path == str(tmp_path / "s" / f"{chunk.chunk_id}.wav")
    assert (scored.start_ms, scored.end_ms, scored.recording_id) == (1000, 3000, chunk.recording_id)
    with pytest.raises(SliceError, match="past the recording's end"):
        slice_input(make_chunk(input_path=str(src), start_ms=5000, end_ms=9000, extra=(("chunk_kind", "slice"),)), str(tmp_path))
    with pytest.raises(SliceError, match="chunk_kind 'slices' is not one of"):
        slice_input(make_chunk(input_path=str(src), extra=(("chunk_kind", "slices"),)), str(tmp_path))
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + b"\0" * 100)
    with pytest.raises(SliceError, match="cannot read"):
        slice_input(make_chunk(input_path=str(broken), extra=(("chunk_kind", "slice"),)), str(tmp_path))


# ------------------------------------------------------------- HawkEars, tiny model
@pytest.fixture(scope="module")
def runner():  # noqa: ANN201
    from badc_mpi.runners.hawkears.adapter import build_hawkears_runner
    from badc_mpi.runners.hawkears.options import HawkearsOptions

    python, root = hawkears_tiny()
    built = build_hawkears_runner(HawkearsOptions(python=python, data_root=root, min_score=0.5, models=1))
    built.start(CPU)
    yield built
    built.close()


def score(runner, chunk, scratch: Path) -> bytes:  # noqa: ANN001
    result = runner.run(Task(chunk, 1, str(scratch), 120.0, "test"))
    assert result.ok, result.reason
    assert not (scratch / "slice").exists()  # the cut WAV is gone after the attempt
    return Path(result.raw_output).read_bytes()


@pytest.mark.hawkears
def test_hawkears_scores_a_slice_exactly_as_a_cut_wav(runner, tmp_path: Path) -> None:  # noqa: ANN001
    samples = samples_int16(20)
    wav, flac = tmp_path / "long.wav", tmp_path / "long.flac"
    sf.write(wav, samples, RATE, subtype="PCM_16")
    sf.write(flac, samples, RATE, subtype="PCM_16")
    start_ms, end_ms = 5000, 11000
    chunk_id = f"long_chunk_{start_ms}_{end_ms}"
    cut = tmp_path / "cut" / f"{chunk_id}.wav"  # what an older chunker wrote: a file of the same samples
    cut.parent.mkdir()
    sf.write(cut, samples[RATE * start_ms // 1000 : RATE * end_ms // 1000], RATE, subtype="PCM_16")
    reference = score(
        runner, make_chunk(chunk_id=chunk_id, input_path=str(cut), start_ms=start_ms, end_ms=end_ms), tmp_path / "a"
    )
    assert reference.count(b"\n") > 1  # detections to compare, not just a header
    outputs = {}
    for source in (wav, flac):
        chunk = make_chunk(
            chunk_id=chunk_id, input_path=str(source), start_ms=start_ms, end_ms=end_ms, extra=(("chunk_kind", "slice"),)
        )
        outputs[source.suffix] = score(runner, chunk, tmp_path / f"s{source.suffix}")
    assert outputs[".wav"] == reference and outputs[".flac"] == reference
    # the slice is that slice: its frames, and a longer one of the same file gives other labels
    # (the tiny model's scores hardly depend on the audio, so its length is what shows)
    result = runner.run(
        Task(
            make_chunk(
                chunk_id=chunk_id, input_path=str(flac), start_ms=start_ms, end_ms=end_ms, extra=(("chunk_kind", "slice"),)
            ),
            1,
            str(tmp_path / "m"),
            120.0,
            "test",
        )
    )
    assert result.metrics["slice_frames"] == RATE * end_ms // 1000 - RATE * start_ms // 1000
    other = make_chunk(chunk_id=chunk_id, input_path=str(wav), start_ms=0, end_ms=8000, extra=(("chunk_kind", "slice"),))
    assert b",0.000,8.000," in score(runner, other, tmp_path / "other") and b",8.000," not in reference
    past = make_chunk(chunk_id=chunk_id, input_path=str(wav), start_ms=30000, end_ms=36000, extra=(("chunk_kind", "slice"),))
    result = runner.run(Task(past, 1, str(tmp_path / "past"), 120.0, "test"))
    assert result.failure_class == INPUT and "past the recording's end" in result.reason
