"""The real resident HawkEars script (first argument), except that a request whose input path
contains ``BADC_TEST_HANG_ON`` sleeps forever (the tests' way to make HawkEars hang or be killed
mid-chunk), and one whose input path contains ``BADC_TEST_OOM_ON`` raises torch's
``OutOfMemoryError`` inside ``analyze``, and with ``BADC_TEST_PREDICT_OOM_ROWS=N`` a forward pass
over more than N windows raises it (a batch too large for the GPU) (a CUDA OOM without a GPU: ``scripts/gpu/gpu_check.py
--dry-run``). With ``BADC_TEST_REPORT_DEVICE`` set, its hello reports that device (a GPU rank's
code paths on a machine without CUDA: the dry run again). Started by ``tests/fakes/hawkears_python``; production code knows nothing of it."""

from __future__ import annotations

import importlib.util
import os
import sys
import time

# the resident's decoder processes (spawned) run this file again, with the parent's argv and env:
# the script's path travels in the environment, and the module is registered so that its
# functions can be pickled by name
script = os.environ.get("BADC_TEST_RESIDENT_SCRIPT") or sys.argv.pop(1)
os.environ["BADC_TEST_RESIDENT_SCRIPT"] = script
spec = importlib.util.spec_from_file_location("badc_resident", script)
assert spec is not None and spec.loader is not None
resident = importlib.util.module_from_spec(spec)
sys.modules["badc_resident"] = resident
spec.loader.exec_module(resident)
hang_on = os.environ.get("BADC_TEST_HANG_ON", "")
real_handle = resident.Resident.handle


def handle(self, request: dict, in_batch: bool = False) -> dict:  # noqa: ANN001
    path = str(request.get("input") or "")
    if hang_on and hang_on in path:
        print(f"[hanging_resident] hanging on {path}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    return real_handle(self, request, in_batch)


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


predict_oom_rows = int(os.environ.get("BADC_TEST_PREDICT_OOM_ROWS") or 0)
if predict_oom_rows:  # a forward pass over more windows than this raises a CUDA OOM (batch splitting)
    from britekit.models.base_model import BaseModel

    real_predict = BaseModel.predict

    def predict(self, x, device=None):  # noqa: ANN001, ANN202
        if len(x) > predict_oom_rows:
            import torch

            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake: {len(x)} windows > {predict_oom_rows})")
        return real_predict(self, x, device)

    BaseModel.predict = predict

resident.Resident.load = load
resident.Resident.handle = handle
resident.Resident.analyze = analyze
if __name__ == "__main__":  # not in a decoder process (``__mp_main__``)
    sys.exit(resident.main())
