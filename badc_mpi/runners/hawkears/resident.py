#!/usr/bin/env python3
"""The resident HawkEars worker: load the ensemble once, then score one chunk per request.

Runs INSIDE HawkEars' own environment, started by file path by
:class:`badc_mpi.runners.hawkears.adapter.HawkearsRunner` (never imported by the runner: standard library
plus hawkears/britekit/torch only, no badc_mpi imports).

Its siblings, loaded by path (:func:`sibling`; this folder is not on sys.path): the JSON-lines
protocol on stdin/stdout and the stop handling in ``resident_protocol.py``, decoders and batches in
``resident_pipeline.py``, the caches that keep models loaded in ``resident_caches.py``.

Each request runs HawkEars' own ``analyze()`` (the code path of ``hawkears analyze --rtype csv``,
with ``raise_errors=True``), so ``output_dir/scores.csv`` is byte-for-byte what the CLI writes for
the same audio and options. What is kept alive between requests, through HawkEars internals that
are private (hence the exact version check): britekit ``Predictor`` objects (main ensemble and
low-band models), checkpoints read for class names, and the occurrence database. A cached
Predictor is reset to its freshly-constructed audio state before reuse.

The version HawkEars must have comes from the runner (``--require-version``), which owns it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
import traceback

# Run by path, Python puts this folder first on sys.path, where the runner-side ``hawkears.py``
# would shadow the real ``hawkears`` package: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

_STATS = {"decode_s": 0.0}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="resident HawkEars worker (JSON lines on stdin/stdout)")
    p.add_argument("--data-root", required=True, help="HawkEars data root")
    p.add_argument("--require-version", default=None, help="the hawkears version this worker must find (set by the runner)")
    p.add_argument("--cfg", default=None, help="HawkEars -c YAML (absolute paths, merged user YAML)")
    p.add_argument("--min-score", type=float, default=None)
    p.add_argument("--models", type=int, default=None)
    p.add_argument("--low-band", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--label", default=None)
    p.add_argument("--region", default=None)
    p.add_argument("--lat", type=float, default=None)
    p.add_argument("--lon", type=float, default=None)
    p.add_argument("--date", default=None)
    p.add_argument("--include", default=None)
    p.add_argument("--exclude", default=None)
    p.add_argument("--seg", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=1, help="score the windows of up to K chunks per forward pass")
    p.add_argument("--batch-forward", choices=("auto", "joint", "per-chunk"), default="auto", help="a batch's forward passes")
    p.add_argument("--prefetch", choices=("on", "off"), default="off", help="decode announced chunks ahead, in a process")
    p.add_argument("--parent-pid", type=int, default=None, help="exit at once if the parent is not this process")
    p.add_argument(
        "--merge-config",
        nargs=3,
        metavar=("OUT", "BASE", "USER"),
        default=None,
        help="write BASE (JSON/YAML) merged with USER YAML to OUT, then exit (no models loaded)",
    )
    return p.parse_args(argv)


def sibling(stem: str):  # noqa: ANN201
    """``<stem>.py`` next to this file, loaded by path (this folder is not on sys.path)."""
    import importlib.util

    name = f"badc_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, f"{stem}.py"))
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {stem}.py from {_HERE}: ship it beside resident.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pipeline_module():  # noqa: ANN201
    return sibling("resident_pipeline")


def protocol_module():  # noqa: ANN201
    return sibling("resident_protocol")


def decode_audio(path: str, rate: int, choose: bool):  # noqa: ANN201
    """In a decoder process: Audio.load's decode, mix and resample of ``path`` (signal, error)."""
    return pipeline_module().decode_here(path, rate, choose)


def decoder_started() -> None:
    """A decoder process dies with the worker, leaves stop signals to it, imports its libraries once."""
    protocol_module().tie_to_parent(os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import britekit.core.audio  # noqa: F401
    import librosa  # noqa: F401


class _Recorder(logging.Handler):
    """Keeps this request's HawkEars warnings/errors (their wording goes into failure messages)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a bad log record must not fail the request
            pass


_LOG = _Recorder()


def merge_config(out: str, base: str, user: str) -> None:
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.load(base), OmegaConf.load(user))
    OmegaConf.save(merged, out)


def check_version(required: str | None) -> tuple[str, str, str]:
    import britekit
    import hawkears
    import torch

    if not required:
        raise RuntimeError("--require-version is missing: the runner names the hawkears version it supports")
    if hawkears.__version__ != required:
        raise RuntimeError(
            f"the resident HawkEars worker supports hawkears=={required} only (it uses "
            f"HawkEars internals), found {hawkears.__version__}; rebuild the env with `make hawkears`, or "
            "use --hawkears-mode cli"
        )
    return hawkears.__version__, getattr(britekit, "__version__", "?"), torch.__version__


class Resident:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.low_band = {"auto": None, "on": True, "off": False}[args.low_band]
        self.batch = max(1, int(args.batch or 1))
        self.cache = None  #: resident_pipeline.AudioCache, with --prefetch on or --batch > 1
        self.batcher = None  #: resident_pipeline.Batcher, with --batch > 1

    def analyze(self, input_path: str, output_dir: str, options: dict) -> None:
        from hawkears.commands._analyze import analyze

        a = self.args
        # the runner resolves each chunk's place and date (badc_mpi.runners.hawkears.options.resolve_location);
        # a request without them (the warm-up) uses the start options
        region, lat, lon, date = (options.get(k, getattr(a, k)) for k in ("region", "lat", "lon", "date"))
        analyze(
            cfg_path=a.cfg,
            input_path=input_path,
            output_path=output_dir,
            rtype="csv",
            date=date,
            region=region,
            lat=lat,
            lon=lon,
            include=a.include,
            exclude=a.exclude,
            min_score=a.min_score,
            segment_len=a.seg,
            max_models=a.models,
            label_field=a.label,
            low_band=self.low_band,
            quiet=True,
            raise_errors=True,
            data_root=a.data_root,
        )

    def load(self) -> dict:
        """Version check, caches, then one warm-up analyze() that loads every model once; each
        stage named on stderr (:func:`stage`: the rank logs it, so a slow start-up is not silent)."""
        start = time.perf_counter()
        stage("importing HawkEars, BriteKit and torch")
        hk_version, bk_version, torch_version = check_version(self.args.require_version)
        import torch
        from britekit.core import util

        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        if self.args.prefetch == "on" or self.batch > 1:
            pipeline = pipeline_module()
            self.cache = pipeline.AudioCache(decode_audio, decoder_started)
            pipeline.install_cached_load(self.cache)  # first: the decode timer below wraps it
            if self.batch > 1:
                batcher = pipeline.Batcher(self.args.batch_forward)
                batcher.install()
                self.batcher = batcher
        predictors = sibling("resident_caches").install_caches(_STATS, self.batcher)
        extra: dict = {}
        stage(f"loading the models and one warm-up analysis (HawkEars {hk_version}, torch {torch_version})")
        with tempfile.TemporaryDirectory(prefix="badc-hawkears-warmup-") as tmp:
            wav = os.path.join(tmp, "warmup.wav")
            sibling("resident_caches").write_silence(wav)
            self.analyze(wav, os.path.join(tmp, "out"), {})
            if self.batcher is not None:  # the warm-up chunks scored alone and batched: how far apart
                clips = [os.path.join(tmp, f"check{n}.wav") for n in range(2)]
                for n, clip in enumerate(clips):
                    sibling("resident_caches").write_noise(clip, 9.0 + 4 * n, seed=n)
                worst = pipeline.compare_batched(self.batcher, clips)
                extra = {
                    "batch": self.batch,
                    "batch_forward": "joint" if self.batcher.one_pass else "per-chunk",
                    "batch_max_score_diff": float(f"{worst:.3g}"),
                }
            if self.cache is not None:
                self.cache.forget()
        main_models, low_models, max_models, low_band = [], [], None, False
        for key, predictor in predictors.items():  # Predictor loads the first N sorted checkpoints
            count = len(predictor.models)
            loaded = [f for f in sorted(os.listdir(key[0])) if f.endswith(".ckpt")][:count]
            if os.path.basename(os.path.normpath(key[0])) == "ckpt-low-band":
                low_band, low_models = True, loaded
            else:
                max_models, main_models = count, loaded
                if self.cache is not None and self.args.prefetch == "on":
                    self.cache.start((int(predictor.cfg.audio.sampling_rate), bool(predictor.cfg.audio.choose_channel)))
        stage(f"ready in {time.perf_counter() - start:.1f} s: {len(main_models)} model(s) on {util.get_device()}")
        return {
            **extra,
            "prefetch": self.args.prefetch == "on",
            "hello": True,
            "ok": True,
            "pid": os.getpid(),
            "hawkears_version": hk_version,
            "britekit_version": bk_version,
            "torch_version": torch_version,
            "device": util.get_device(),
            "load_s": round(time.perf_counter() - start, 3),
            "models": main_models,
            "low_band_models": low_models,
            "max_models": max_models,
            "low_band": low_band,
            "torch_threads": torch.get_num_threads(),
        }

    def handle_batch(self, items: list[dict]):  # noqa: ANN201
        """Replies to a batch's requests, in order, each as soon as its chunk is done."""
        import torch

        if self.batcher is None or len(items) < 2:
            for item in items:
                yield self.handle(item)
            return
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        _STATS["decode_s"] = 0.0
        if self.cache is not None:
            self.cache.hits = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            windows = self.batcher.precompute([str(item.get("input") or "") for item in items])
        except Exception:  # noqa: BLE001 - every chunk then goes the per-chunk way, and fails there if it must
            traceback.print_exc(file=sys.stderr)
            windows = {}
        shared_s, shared_cpu_s, shared_decode_s = time.perf_counter() - start, time.process_time() - cpu_start, _STATS["decode_s"]
        total = sum(windows.values())
        try:
            for item in items:
                reply = self.handle(item, in_batch=True)
                share = windows.get(str(item.get("input") or ""), 0) / total if total else 1.0 / len(items)
                reply["batch"] = len(items)
                if self.batcher.splits:
                    reply["batch_splits"] = self.batcher.splits
                reply["decode_s"] = round((reply["decode_s"] or 0.0) + share * shared_decode_s, 4)
                reply["score_s"] = round((reply["score_s"] or 0.0) + share * (shared_s - shared_decode_s), 4)
                reply["cpu_s"] = round((reply["cpu_s"] or 0.0) + share * shared_cpu_s, 4)
                yield reply
        finally:
            self.batcher.clear()
            if self.cache is not None:
                self.cache.forget()

    def handle(self, request: dict, in_batch: bool = False) -> dict:
        import torch

        reply = {
            "id": request.get("id"),
            "ok": False,
            "error_class": None,
            "message": "",
            "scores_csv": None,
            "detections": None,
            "decode_s": None,
            "score_s": None,
            "peak_vram_mib": None,
            "pid": os.getpid(),
        }
        input_path = str(request.get("input") or "")
        output_dir = str(request.get("output_dir") or "")
        cuda = torch.cuda.is_available()
        if cuda and not in_batch:  # a batch's chunks report the batch's peak
            torch.cuda.reset_peak_memory_stats()
        _STATS["decode_s"] = 0.0
        if self.cache is not None and not in_batch:
            self.cache.hits = 0
        _LOG.messages.clear()
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            self.analyze(input_path, output_dir, request.get("options") or {})
        except torch.cuda.OutOfMemoryError as exc:
            reply.update(error_class="oom", message=f"CUDA out of memory: {exc}")
        except Exception as exc:  # noqa: BLE001 - failures are data
            text = str(exc)
            is_input = type(exc).__name__ == "InferenceError" and (
                text.startswith("Could not load recording") or text.startswith("Recording ")
            )
            if "out of memory" in text.lower() and cuda:
                reply.update(error_class="oom", message=text)
            else:
                reply.update(
                    error_class="input" if is_input else "error",
                    message=text if is_input else f"{type(exc).__name__}: {text}",
                )
            if not is_input:
                traceback.print_exc(file=sys.stderr)
        total = time.perf_counter() - start
        reply["decode_s"] = round(_STATS["decode_s"], 4)
        reply["score_s"] = round(max(0.0, total - _STATS["decode_s"]), 4)
        reply["cpu_s"] = round(time.process_time() - cpu_start, 4)
        if self.cache is not None:
            reply["decoded_ahead"] = self.cache.hits
        if cuda:
            reply["peak_vram_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if reply["error_class"] is None:
            scores = os.path.join(output_dir, "scores.csv")
            if os.path.isfile(scores):
                with open(scores, encoding="utf-8") as handle:
                    rows = sum(1 for _ in handle) - 1
                reply.update(ok=True, scores_csv=scores, detections=max(rows, 0))
            else:  # HawkEars wrote nothing: no predictions (e.g. audio too short to score); its own words
                said = [m for m in _LOG.messages if m.startswith("No predictions generated")]
                reply.update(
                    error_class="input",
                    message=said[-1] if said else f"No predictions generated for {input_path} (no scores.csv)",
                )
        if self.cache is not None and not in_batch:
            self.cache.forget()
        return reply


STAGE_PREFIX = "badc-stage: "  #: stderr lines the rank logs as start-up stages (process.StderrPump)


def stage(text: str) -> None:
    """Name a start-up stage on stderr (the rank reads it: runners/hawkears/process.py)."""
    print(STAGE_PREFIX + text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    protocol = protocol_module()
    protocol.tie_to_parent(args.parent_pid)
    protocol.exit_on_stop_signals()
    if args.merge_config:
        merge_config(*args.merge_config)
        return 0
    replies = protocol.ReplyStream()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="hawkears-worker %(levelname)s %(message)s")
    logging.getLogger().addHandler(_LOG)
    worker = Resident(args)
    try:
        hello = worker.load()
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        replies.send(protocol.failed_hello(exc))
        return 1
    replies.send(hello)
    return protocol.serve(worker, replies)


if __name__ == "__main__":
    sys.exit(main())
