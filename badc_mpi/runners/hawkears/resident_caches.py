"""The resident HawkEars worker's caches: models, checkpoints and the occurrence database kept
alive across ``analyze()`` calls, the decode timer, and its warm-up recordings.

Runs INSIDE HawkEars' own environment, loaded by path by ``resident.py`` (no badc_mpi imports).
The objects kept are HawkEars internals (hawkears 2.3.0 / britekit 1.8.4, checked by ``resident.py``).
"""

from __future__ import annotations

import json
import os
import time
import wave


def cfg_key(cfg) -> str:  # noqa: ANN001
    """What a Predictor depends on: the config minus the ``hawkears`` section (location etc.)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(vars(cfg))
    data.pop("hawkears", None)
    return json.dumps(data, sort_keys=True, default=str)


def install_caches(stats: dict, batcher=None) -> dict:  # noqa: ANN001
    """Keep models and other expensive objects alive across analyze() calls (and tell ``batcher``,
    when there is one, which Predictor is the main ensemble's)."""
    import britekit.core.audio as audio_mod
    import hawkears.core.analyzer as analyzer_mod
    import hawkears.core.class_manager as class_manager_mod
    import hawkears.core.occurrence_manager as occurrence_mod
    import hawkears.heuristics.canada.low_band as low_band_mod

    predictors: dict = {}
    real_predictor = analyzer_mod.Predictor

    def cached_predictor(model_path, device=None, cfg=None, *args, **kwargs):  # noqa: ANN001, ANN202
        key = (str(model_path), device, cfg_key(cfg), repr(args), repr(sorted(kwargs.items())))
        predictor = predictors.get(key)
        if predictor is None:
            predictor = real_predictor(model_path, device, cfg, *args, **kwargs)
            predictor._badc_own_audio = predictor.audio
            predictors[key] = predictor
        else:  # back to the state of a new Predictor (callers may have swapped or reconfigured audio)
            predictor.audio = predictor._badc_own_audio
            predictor.audio.signal = None
            predictor.audio.path = None
            predictor.audio.load_error = None
            predictor.audio.set_config(predictor.cfg, resample=False)
            predictor.last_frame_map = None
            predictor.labels = None
        if batcher is not None and os.path.basename(os.path.normpath(str(model_path))) != "ckpt-low-band":
            batcher.predictor = predictor
        return predictor

    analyzer_mod.Predictor = cached_predictor
    low_band_mod.Predictor = cached_predictor

    checkpoints: dict = {}
    real_lfc = class_manager_mod.load_from_checkpoint

    def cached_load_from_checkpoint(path, *args, **kwargs):  # noqa: ANN001, ANN202
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, repr(args), repr(sorted(kwargs.items())))
        if key not in checkpoints:
            checkpoints[key] = real_lfc(path, *args, **kwargs)
        return checkpoints[key]

    class_manager_mod.load_from_checkpoint = cached_load_from_checkpoint

    providers: dict = {}
    real_provider = occurrence_mod.OccurrencePickleProvider

    def cached_provider(pickle_path=None):  # noqa: ANN001, ANN202
        key = os.path.abspath(pickle_path) if pickle_path else None
        if key not in providers:
            providers[key] = real_provider(pickle_path)
        return providers[key]

    occurrence_mod.OccurrencePickleProvider = cached_provider

    real_load = audio_mod.Audio.load

    def timed_load(self, path):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        try:
            return real_load(self, path)
        finally:
            stats["decode_s"] += time.perf_counter() - start

    audio_mod.Audio.load = timed_load

    # manifest.yaml (written by every analyze() call) depends only on the Predictor: render once.
    import britekit.core.predictor as predictor_mod

    real_save_manifest = predictor_mod.Predictor.save_manifest

    def cached_save_manifest(self, output_path, cfg=None):  # noqa: ANN001, ANN202
        text = getattr(self, "_badc_manifest", None)
        if cfg is not None or text is None:
            real_save_manifest(self, output_path, cfg)
            if cfg is None:
                with open(os.path.join(output_path, "manifest.yaml"), encoding="utf-8") as handle:
                    self._badc_manifest = handle.read()
            return
        with open(os.path.join(output_path, "manifest.yaml"), "w", encoding="utf-8") as handle:
            handle.write(text)

    predictor_mod.Predictor.save_manifest = cached_save_manifest
    return predictors


def write_silence(path: str, seconds: float = 6.0, rate: int = 22050) -> None:
    """A warm-up recording; not at HawkEars' 28 kHz, so the resampler warms up too."""
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(seconds * rate))


def write_noise(path: str, seconds: float, seed: int, rate: int = 22050) -> None:
    """A batch check recording: seeded noise with tones, so that the models' scores vary."""
    import math
    import random

    rng = random.Random(seed)
    frames = bytearray()
    for i in range(int(seconds * rate)):
        tone = 0.3 * math.sin(2 * math.pi * (1500 + 500 * (i // rate % 5)) * i / rate)
        frames += int(max(-1.0, min(1.0, tone + rng.uniform(-0.2, 0.2))) * 32767).to_bytes(2, "little", signed=True)
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
