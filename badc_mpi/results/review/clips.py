"""One detection's clip (FLAC) and spectrogram (PNG), cut from its source recording.

Reading: ``soundfile`` opens the source (a recording of virtual chunks, a chunk file, an annexed
file through its symlink) and seeks to the first frame needed, so only the clip's bytes are read
(WAV: exactly; FLAC: from the nearest seek point). Times: a detection's ``start_ms`` is
recording-relative; a source that is long enough to hold the chunk's end is the recording itself
(virtual chunks), a shorter one is the chunk's own file and the chunk's start is subtracted.

Samples are kept: 16-bit sources are read and written as 16-bit, others as 24-bit FLAC (a float
WAV is quantised to 24 bits), all channels. The spectrogram is channel 1's short-time Fourier
transform (Hann window, dB, an 80 dB range) as an 8-bit PNG in matplotlib's magma palette (Pillow,
matplotlib's own image writer, saves it: no figure, a few milliseconds each), the detection's span
marked by white edges and a bar along the top.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from badc_mpi.storage.atomic import temp_path_for

NFFT = 256
IMAGE_WIDTH = 480  #: columns of the spectrogram at most (the hop grows with the clip)
RANGE_DB = 80.0
MAX_FREQ_HZ = 12000.0  #: rows above are cut (HawkEars listens below)
WHITE = 255  #: the palette index of the span's marks


class SourceMissing(Exception):
    """The source recording is not here; ``fix`` says how to bring it."""

    def __init__(self, path: str, reason: str, fix: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.fix = path, reason, fix


@dataclass(frozen=True)
class Cut:
    """Where one clip lies: its source, the frames read, and the detection inside the clip."""

    path: str
    sample_rate: int
    first_frame: int
    frames: int
    detection_start_s: float  #: within the clip
    detection_end_s: float


def resolve(source_path: str, roots: list[str]) -> str:
    """The source recording's path: absolute as given, else the first of ``roots`` (manifest
    folders, the dataset root) where it exists. Raises :class:`SourceMissing` with the fix."""
    candidates = [source_path] if os.path.isabs(source_path) else [os.path.join(r, source_path) for r in roots]
    for path in candidates:
        if os.path.exists(path):
            return path
    for path in candidates:
        if os.path.islink(path):  # a symlink whose target is absent: annexed content not fetched
            return _missing(path, "annexed content not present here")
    where = candidates[0] if candidates else source_path
    return _missing(where, "not found (moved, or not fetched)")


def _missing(path: str, reason: str) -> str:
    raise SourceMissing(path, reason, f"datalad get {path}")


def plan_cut(path: str, sample_rate: int, file_frames: int, det: tuple[int, int, int | None, int | None], pad_s: float) -> Cut:
    """Frames to read for a detection ``(start_ms, end_ms, chunk_start_ms, chunk_end_ms)`` (pure)."""
    start_ms, end_ms, chunk_start_ms, chunk_end_ms = det
    file_ms = file_frames * 1000 / sample_rate
    base_ms = 0 if chunk_end_ms is None or file_ms + 1 >= chunk_end_ms else (chunk_start_ms or 0)
    start_f = (start_ms - base_ms) * sample_rate / 1000
    end_f = (end_ms - base_ms) * sample_rate / 1000
    pad_f = pad_s * sample_rate
    first = max(0, int(round(start_f - pad_f)))
    last = min(file_frames, int(round(end_f + pad_f)))
    last = max(last, first)
    return Cut(path, sample_rate, first, last - first, (start_f - first) / sample_rate, (end_f - first) / sample_rate)


def _subtype(source_subtype: str) -> tuple[str, str]:
    """(numpy dtype to read, FLAC subtype to write) keeping the source's samples."""
    if source_subtype in ("PCM_16", "PCM_S8", "PCM_U8"):
        return "int16", "PCM_16"
    return "int32", "PCM_24"


def cut_clip(
    source: str, det: tuple[int, int, int | None, int | None], pad_s: float, flac: str, png: str
) -> tuple[Cut, np.ndarray]:
    """Read the detection's frames (padded), write the FLAC and the spectrogram PNG (each to a
    temporary name renamed into place); return the cut and the samples read."""
    import soundfile as sf

    try:
        fh = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError) as exc:  # an annex pointer file, a damaged file
        raise SourceMissing(source, f"unreadable as audio ({exc})", f"datalad get {source}") from None
    with fh:
        cut = plan_cut(source, fh.samplerate, fh.frames, det, pad_s)
        dtype, subtype = _subtype(fh.subtype)
        fh.seek(cut.first_frame)
        data = fh.read(cut.frames, dtype=dtype, always_2d=True)
    for folder in {os.path.dirname(flac), os.path.dirname(png)}:
        os.makedirs(folder, exist_ok=True)
    tmp = temp_path_for(flac)
    sf.write(tmp, data, cut.sample_rate, format="FLAC", subtype=subtype)
    os.replace(tmp, flac)
    write_spectrogram(png, data[:, 0], cut)
    return cut, data


def spectrogram_db(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """(dB image, rows low frequency at the bottom; the hop in frames) of one channel (pure)."""
    x = samples.astype(np.float64)
    hop = max(NFFT // 4, int(np.ceil(len(x) / IMAGE_WIDTH)))
    if len(x) < NFFT:
        x = np.pad(x, (0, NFFT - len(x)))
    frames = 1 + (len(x) - NFFT) // hop
    idx = np.arange(NFFT)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(NFFT), axis=1)) ** 2
    rows = int(min(spec.shape[1], np.ceil(MAX_FREQ_HZ / (sample_rate / NFFT)) + 1))
    db = 10 * np.log10(spec[:, :rows].T + 1e-12)
    top = float(db.max())
    return np.clip(db, top - RANGE_DB, top)[::-1], hop


def spectrogram_image(samples: np.ndarray, cut: Cut) -> np.ndarray:
    """Palette indices (uint8: 0..254 the magma scale, 255 white) with the span marked (pure)."""
    db, hop = spectrogram_db(samples, cut.sample_rate)
    lo, hi = float(db.min()), float(db.max())
    idx = np.round((db - lo) * (254.0 / (hi - lo if hi > lo else 1.0))).astype(np.uint8)
    cols = idx.shape[1]
    a = min(cols - 1, max(0, int(cut.detection_start_s * cut.sample_rate / hop)))
    b = min(cols - 1, max(a, int(cut.detection_end_s * cut.sample_rate / hop)))
    idx[:, a] = WHITE
    idx[:, b] = WHITE
    idx[: max(2, idx.shape[0] // 40), a : b + 1] = WHITE
    return idx


@functools.lru_cache(maxsize=1)
def palette() -> tuple[int, ...]:
    """matplotlib's magma in 255 steps, then white (the palette of :func:`spectrogram_image`)."""
    import matplotlib

    matplotlib.use("Agg")
    rgb = (matplotlib.colormaps["magma"](np.linspace(0, 1, 255))[:, :3] * 255).round().astype(int)
    return (*(int(v) for v in rgb.reshape(-1)), 255, 255, 255)


def write_spectrogram(path: str, samples: np.ndarray, cut: Cut) -> None:
    """The PNG (8-bit palette, fast zlib level: a few milliseconds) with the detection's span marked."""
    from PIL import Image

    image = Image.fromarray(spectrogram_image(samples, cut), mode="P")
    image.putpalette(palette())
    tmp = temp_path_for(path)
    image.save(tmp, format="PNG", compress_level=3)
    os.replace(tmp, path)
