"""Cut a virtual chunk out of its recording: read just its samples, write them as a WAV.

A ``chunk_kind=slice`` chunk (``inputs/slices.py``) names a whole recording and ``[start_ms,
end_ms)``. :func:`cut_slice` seeks to the slice with ``soundfile`` (libsndfile: WAV, FLAC, ...),
reads only its frames and writes them, at the recording's rate, channels and sample format, to a
WAV the runner hands to HawkEars. Integer samples travel as ``int32`` (libsndfile's left-aligned
form), so the WAV holds exactly the recording's samples: HawkEars scores it as it would a WAV cut
from the same samples by any other tool.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

from badc_mpi.inputs.slices import SLICE, chunk_kind, frame_range

_FLOAT_SUBTYPES = {"FLOAT": "float32", "DOUBLE": "float64"}
_WAV_SUBTYPE = {"PCM_S8": "PCM_U8"}  #: FLAC's 8-bit samples: WAV's 8-bit form


class SliceError(Exception):
    """The slice cannot be read (an ``input`` failure of the attempt); the message says why."""


@dataclass(frozen=True)
class Cut:
    path: str
    frames: int
    samplerate: int
    read_s: float


def wav_subtype(subtype: str) -> str:
    """The WAV sample format that holds ``subtype``'s samples unchanged."""
    import soundfile

    subtype = _WAV_SUBTYPE.get(subtype, subtype)
    if soundfile.check_format("WAV", subtype):
        return subtype
    return "FLOAT" if subtype in ("VORBIS", "OPUS", "MPEG_LAYER_III") else "PCM_24"


def cut_slice(source: str, start_ms: int | None, end_ms: int | None, dest: str) -> Cut:
    """Write ``[start_ms, end_ms)`` of ``source`` to ``dest`` (a WAV); SliceError when it cannot."""
    import soundfile

    started = time.perf_counter()
    try:
        with soundfile.SoundFile(source) as audio:
            try:
                first, stop = frame_range(start_ms, end_ms, audio.samplerate, audio.frames)
            except ValueError as exc:
                raise SliceError(f"{source}: {exc}") from None
            dtype = _FLOAT_SUBTYPES.get(audio.subtype, "int32")
            audio.seek(first)
            samples = audio.read(stop - first, dtype=dtype, always_2d=True)
            rate, subtype = audio.samplerate, audio.subtype
    except SliceError:
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile errors: the input is at fault
        raise SliceError(f"cannot read {start_ms}..{end_ms} ms of {source}: {' '.join(str(exc).split())}") from None
    if len(samples) != stop - first:
        raise SliceError(f"{source}: read {len(samples)} of {stop - first} frames: truncated recording")
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    soundfile.write(dest, samples, rate, subtype=wav_subtype(subtype), format="WAV")
    return Cut(dest, len(samples), rate, time.perf_counter() - started)


def slice_input(chunk: Any, folder: str) -> tuple[Any, Cut | None]:
    """The chunk to score: ``chunk`` itself, or for a ``chunk_kind=slice`` chunk a copy whose
    ``input_path`` is its slice cut into ``folder/<chunk_id>.wav``. SliceError when it cannot be."""
    kind, problem = chunk_kind(getattr(chunk, "extra", None))
    if problem:
        raise SliceError(f"manifest line {getattr(chunk, 'line', '?')}: {problem}")
    if kind != SLICE:
        return chunk, None
    name = f"{getattr(chunk, 'chunk_id', None) or 'slice'}.wav"
    cut = cut_slice(
        chunk.input_path, getattr(chunk, "start_ms", None), getattr(chunk, "end_ms", None), os.path.join(folder, name)
    )
    return dataclasses.replace(chunk, input_path=cut.path), cut
