"""The resident HawkEars worker's pipeline: audio decoded ahead in processes, and cross-chunk batches.

Runs INSIDE HawkEars' own environment: loaded by file path by ``resident.py`` (standard library
plus hawkears/britekit/torch/numpy only, no badc_mpi imports). Written against hawkears 2.3.0 and
britekit 1.8.4 (``resident.py`` refuses any other version); the notes in ``docs/throughput.md``.

**Decoding ahead** (:class:`AudioCache`). britekit's ``Audio.load`` decodes with PyAV (which holds
the GIL), mixes or keeps channels, and resamples with soxr. The worker's decoder processes run the
same three steps (``resident.decode_audio``) for the chunks the runner announces
(``{"op": "prefetch"}``) while the current chunk is scored; :func:`install_cached_load` replaces
``Audio.load`` by one that takes a decoded signal when there is one and then does the rest of
``load`` (the stereo channel choice, the float32 cast, the object's state) itself. A signal is
also kept for the rest of its request (:meth:`AudioCache.remember`), so the low-band model and a
batch's second pass do not decode the same file again. Decoding is deterministic: the scores are
byte-for-byte those of HawkEars' own path (tests/test_hawkears_pipeline.py).

**Batches** (:class:`Batcher`). For K chunks, each chunk's windows are cut as
``Predictor.get_overlapping_scores`` cuts them; each model of the main ensemble then scores the
windows of all K chunks in one ``predict`` call; each chunk's frame map is built from its own
rows. HawkEars' ``analyze()`` then runs per chunk as ever, its ``get_overlapping_scores`` returning
the precomputed map. On a CPU the forward passes stay per chunk (a larger batch is slower there). Not bit-exact by guarantee: kernels chosen by batch shape may move a score by
an ULP on CPU, more under bf16 on a GPU. A CUDA out-of-memory error splits the batch in halves; a
chunk whose windows cannot be prepared is left to the per-chunk path, which fails it on its own.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

PREFETCH_KEEP = 64  #: decoded signals announced but not yet used, at most (the oldest are dropped)
LOW_BAND = "ckpt-low-band"


class AudioCache:
    """Signals decoded ahead (by path and rate) and those of the requests now running."""

    def __init__(self, decode: Callable[..., Any], initializer: Callable[[], None], processes: int = 1) -> None:
        self._decode, self._initializer, self._processes = decode, initializer, processes
        self._pool: ProcessPoolExecutor | None = None
        self._ahead: collections.OrderedDict[tuple[str, int, bool], Future] = collections.OrderedDict()
        self._kept: dict[tuple[str, int, bool], Any] = {}
        self._lock = threading.Lock()
        self.audio: tuple[int, bool] | None = None  #: (sampling rate, choose_channel) of the main models
        self.hits = 0  #: loads served by a decode done ahead (a request's figure: reset by the worker)

    def start(self, audio: tuple[int, bool]) -> None:
        """Decode ahead at the main models' (rate, choose_channel); start the decoder processes
        now (they import PyAV and librosa once) rather than with the first chunk."""
        import multiprocessing

        self.audio = audio
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a process that holds CUDA and torch's threads
            self._pool = ProcessPoolExecutor(self._processes, mp_context=context, initializer=self._initializer)
            for _ in range(self._processes):
                self._pool.submit(os.getpid)

    def announce(self, path: str) -> None:
        """Decode ``path`` in a decoder process (from the stdin reader thread: never blocks)."""
        if self.audio is None or self._pool is None or not path:
            return
        key = (path, *self.audio)
        with self._lock:
            if key in self._ahead or key in self._kept:
                return
            self._ahead[key] = self._pool.submit(self._decode, path, *self.audio)
            while len(self._ahead) > PREFETCH_KEEP:
                _, old = self._ahead.popitem(last=False)
                old.cancel()

    def take(self, path: str, rate: int, choose: bool) -> tuple[Any, str | None] | None:
        """(signal, error) for ``path`` at ``rate``: one kept for this request, or one
        decoded ahead (waits for it); None when there is neither."""
        key = (path, rate, choose)
        with self._lock:
            kept = self._kept.get(key)
            future = self._ahead.pop(key, None) if kept is None else None
        if kept is not None:
            return kept, None
        if future is None or future.cancelled():
            return None
        try:
            decoded = future.result()
        except Exception:  # noqa: BLE001 - a broken decoder process: decode here instead
            return None
        self.hits += 1
        return decoded

    def remember(self, path: str, rate: int, choose: bool, signal: Any) -> None:
        """Keep the decoded (pre-choice) signal until :meth:`forget` (the end of the request)."""
        with self._lock:
            self._kept[(path, rate, choose)] = signal

    def forget(self) -> None:
        with self._lock:
            self._kept.clear()

    def close(self) -> None:
        with self._lock:
            for future in self._ahead.values():
                future.cancel()
            self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def install_cached_load(cache: AudioCache) -> None:
    """``Audio.load`` that uses :class:`AudioCache`; the same state and result as britekit's own."""
    import britekit.core.audio as audio_mod
    import numpy as np

    real_load = audio_mod.Audio.load

    def load(self, path):  # noqa: ANN001, ANN202
        if not path or not isinstance(path, str):
            return real_load(self, path)
        rate, choose = int(self.cfg.audio.sampling_rate), bool(self.cfg.audio.choose_channel)
        got = cache.take(path, rate, choose)
        if got is None:
            got = decode_here(path, rate, choose)
        decoded, error = got
        self.load_error = None
        self.path = path
        self.cached = None
        try:
            if error is not None:
                raise RuntimeError(error)
            cache.remember(path, rate, choose, decoded)
            signal = decoded.copy()  # the kept signal stays as decoded, whatever this object does to its own
            if choose:  # as Audio.load: the quieter channel of a stereo file, the only one of a mono file
                if signal.shape[0] == 2:
                    signal = self._choose_channel(signal[0], signal[1])
                elif signal.shape[0] == 1:
                    signal = signal[0]
            self.signal = np.asarray(signal, dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - exactly Audio.load's handling
            self.signal = None
            self.path = None
            self.load_error = str(e)
            logging.error(f"Caught exception in audio load of {path}: {e}")
        return self.signal, self.sampling_rate

    audio_mod.Audio.load = load


def decode_here(path: str, rate: int, choose: bool) -> tuple[Any, str | None]:
    """Audio.load's decode, channel mix (unless the channel is chosen later) and resample."""
    import librosa
    from britekit.core.audio import _decode_audio

    try:
        signal, source_rate = _decode_audio(path)
        if not choose:
            signal = signal.mean(axis=0)
        if source_rate != rate:
            signal = librosa.resample(signal, orig_sr=source_rate, target_sr=rate, res_type="soxr_hq", axis=-1)
        return signal, None
    except Exception as e:  # noqa: BLE001 - the message Audio.load would keep
        return None, str(e)


class Batcher:
    """Frame maps of several chunks from one forward pass per model (see the module's text)."""

    def __init__(self, forward: str = "auto") -> None:
        self.forward = forward  #: ``auto`` | ``joint`` | ``per-chunk``
        self.predictor: Any = None  #: the main ensemble's Predictor (set by the predictor cache)
        self.initial_start_times: list[float] | None = None  #: as analyze() passes them (seen at warm-up)
        self._ready: dict[str, tuple[Any, Any, Any]] = {}  #: path -> (frame map, normalized, unnormalized specs)
        self.forward_s = 0.0
        self.splits = 0

    def install(self) -> None:
        """Route the main predictor's ``get_overlapping_scores`` through the precomputed maps."""
        import britekit.core.predictor as predictor_mod

        real = predictor_mod.Predictor.get_overlapping_scores
        batcher = self

        def get_overlapping_scores(self, recording_path, initial_start_times):  # noqa: ANN001, ANN202
            if self is batcher.predictor:
                batcher.initial_start_times = list(initial_start_times)
                ready = batcher._ready.pop(recording_path, None)
                if ready is not None and os.path.isfile(recording_path):
                    self.audio.load(recording_path)  # the audio state analyze() and the heuristics read (kept signal)
                    frame_map, self.normalized_specs, self.unnormalized_specs = ready
                    return frame_map
            return real(self, recording_path, initial_start_times)

        predictor_mod.Predictor.get_overlapping_scores = get_overlapping_scores

    @property
    def one_pass(self) -> bool:
        """One forward pass per model over the whole batch (``forward="joint"``, or ``"auto"`` on a
        GPU), else one per chunk (see :meth:`_score`)."""
        if self.forward != "auto":
            return self.forward == "joint"
        return not str(self.predictor.device).startswith("cpu")

    @property
    def usable(self) -> bool:
        p = self.predictor
        return p is not None and self.initial_start_times is not None and not getattr(p, "ov", False)

    def precompute(self, paths: list[str]) -> dict[str, int]:
        """Frame maps of ``paths`` for their coming ``analyze()``; the window count of each chunk
        that got one (the others go the per-chunk way)."""
        self._ready.clear()
        self.forward_s, self.splits = 0.0, 0
        if not self.usable:
            return {}
        prepared = {}
        for path in dict.fromkeys(paths):
            windows = self._windows(path)
            if windows is not None:
                prepared[path] = windows
        self._score(prepared)
        return {p: sum(len(s) for _, s in prepared[p][1] if s is not None) for p in prepared if p in self._ready}

    def clear(self) -> None:
        self._ready.clear()

    def _windows(self, path: str) -> tuple[float, list[tuple[list[float], Any]], Any, Any] | None:
        """(duration, [(start times, windows) per model], last normalized, last unnormalized specs),
        cut as ``get_overlapping_scores`` cuts them; None when the chunk is left to that path."""
        import numpy as np

        p = self.predictor
        if not os.path.isfile(path):
            return None
        p.audio = p._badc_own_audio
        p.audio.set_config(p.cfg, resample=False)
        p.audio.load(path)
        duration = p.audio.seconds()
        if duration <= 0:
            return None
        spec_s = p.cfg.audio.spec_duration
        seeds = self.initial_start_times or [0.0]
        per_model: list[tuple[list[float], Any]] = []
        specs, unnormalized = None, None
        for i, _model in enumerate(p.models):
            start = seeds[i % len(seeds)]
            starts = p.get_start_times(duration, start, spec_s, overlap=0)
            if i % len(seeds) != 0 and 0 < start < spec_s:
                starts = [start - spec_s, *starts]
            specs, unnormalized = p.audio.get_spectrograms(starts)
            if specs is None or len(specs) == 0:
                per_model.append((starts, None))
                continue
            per_model.append((starts, np.expand_dims(specs**p.cfg.infer.audio_power, axis=1)))
        return duration, per_model, specs, unnormalized

    def _score(self, prepared: dict[str, tuple[float, list, Any, Any]]) -> None:
        """One ``predict`` per model over all chunks' windows; halves on CUDA out-of-memory."""
        import numpy as np
        import torch

        if not prepared:
            return
        p = self.predictor
        fps_frames = int(p.cfg.train.sed_fps * p.cfg.audio.spec_duration)
        maps: dict[str, list] = {path: [] for path in prepared}
        started = time.perf_counter()
        try:
            for i, model in enumerate(p.models):
                rows = [(path, w[1][i][1]) for path, w in prepared.items() if w[1][i][1] is not None]
                # one pass over every chunk's windows on a GPU; per chunk on a CPU, where a larger
                # batch is slower (cache-bound: 40 windows at once 10-40 % slower than 4 x 10)
                for group in [rows] if self.one_pass else [[row] for row in rows]:
                    if not group:
                        continue
                    segment, frame = model.predict(np.concatenate([r[1] for r in group]), p.device)
                    at = 0
                    for path, windows in group:
                        n = len(windows)
                        seg, frm = segment[at : at + n], None if frame is None else frame[at : at + n]
                        at += n
                        if frm is None:
                            frm = np.repeat(seg[:, :, np.newaxis], fps_frames, axis=2)
                        duration, per_model = prepared[path][0], prepared[path][1]
                        maps[path].append(p.to_global_frames(frm, per_model[i][0], duration))
        except torch.cuda.OutOfMemoryError:
            self.forward_s += time.perf_counter() - started
            torch.cuda.empty_cache()
            if len(prepared) == 1:
                return  # this chunk goes the per-chunk way (and fails as oom there if it must)
            self.splits += 1
            items = list(prepared.items())
            half = len(items) // 2
            self._score(dict(items[:half]))
            self._score(dict(items[half:]))
            return
        self.forward_s += time.perf_counter() - started
        for path, frame_maps in maps.items():
            _, _, specs, unnormalized = prepared[path]
            self._ready[path] = (np.mean(frame_maps, axis=0) if frame_maps else None, specs, unnormalized)


def compare_batched(batcher: Batcher, paths: list[str]) -> float:
    """The largest difference between a chunk's frame map scored alone (HawkEars' own
    ``get_overlapping_scores``) and in one batch with the others (the warm-up's check)."""
    import numpy as np

    p = batcher.predictor
    alone = {}
    for path in paths:
        batcher._ready.clear()
        p.audio = p._badc_own_audio
        p.audio.set_config(p.cfg, resample=False)
        alone[path] = p.get_overlapping_scores(path, batcher.initial_start_times)
    batcher.precompute(paths)
    worst = 0.0
    for path in paths:
        together = batcher._ready.pop(path, (None,))[0]
        if alone[path] is None or together is None:
            continue
        worst = max(worst, float(np.max(np.abs(np.asarray(alone[path]) - np.asarray(together)))))
    batcher.clear()
    return worst
