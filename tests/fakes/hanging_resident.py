"""The real resident HawkEars script (first argument), except that a request whose input path
contains ``BADC_TEST_HANG_ON`` sleeps forever (the tests' way to make HawkEars hang or be killed
mid-chunk), and one whose input path contains ``BADC_TEST_OOM_ON`` raises torch's
``OutOfMemoryError`` inside ``analyze`` (a CUDA OOM without a GPU: ``scripts/gpu_check.py
--dry-run``). With ``BADC_TEST_REPORT_DEVICE`` set, its hello reports that device (a GPU rank's
code paths on a machine without CUDA: the dry run again). Started by ``tests/fakes/hawkears_python``; production code knows nothing of it."""

from __future__ import annotations

import importlib.util
import os
import sys
import time

script = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("badc_resident", script)
assert spec is not None and spec.loader is not None
resident = importlib.util.module_from_spec(spec)
spec.loader.exec_module(resident)
hang_on = os.environ.get("BADC_TEST_HANG_ON", "")
real_handle = resident.Resident.handle


def handle(self, request: dict) -> dict:  # noqa: ANN001
    path = str(request.get("input") or "")
    if hang_on and hang_on in path:
        print(f"[hanging_resident] hanging on {path}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    return real_handle(self, request)


oom_on = os.environ.get("BADC_TEST_OOM_ON", "")
real_analyze = resident.Resident.analyze


def analyze(self, input_path: str, output_dir: str, options: dict) -> None:  # noqa: ANN001
    if oom_on and oom_on in input_path:
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake: {input_path} contains {oom_on})")
    real_analyze(self, input_path, output_dir, options)


report_device = os.environ.get("BADC_TEST_REPORT_DEVICE", "")
real_load = resident.Resident.load


def load(self) -> dict:  # noqa: ANN001
    hello = real_load(self)
    if report_device:
        hello["device"] = report_device
    return hello


resident.Resident.load = load
resident.Resident.handle = handle
resident.Resident.analyze = analyze
sys.exit(resident.main())
