"""The real resident HawkEars script (first argument), except that a request whose input path
contains ``BADC_TEST_HANG_ON`` sleeps forever: the tests' way to make HawkEars hang or be killed
mid-chunk. Started by ``tests/fakes/hawkears_python``; production code knows nothing of it."""

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


resident.Resident.handle = handle
sys.exit(resident.main())
