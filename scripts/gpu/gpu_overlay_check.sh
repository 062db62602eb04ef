#!/bin/bash
# The two device calls of docs/howto/gpu-overlay.md: HawkEars installed from wheels as an overlay on
# the GPU machine's python3 (it has torch; no internet there), then `make gpu-check` through it.
#   call 1: scripts/gpu/gpu_overlay_check.sh 1   carry: .hawkears-wheels/part1   (also writes $OUT/have.txt)
#   call 2: scripts/gpu/gpu_overlay_check.sh 2   carry: .hawkears-wheels/part2   (at once: the machine stays warm ~30 s)
# More parts: `MORE=1 scripts/gpu/gpu_overlay_check.sh N` installs part N without the check; the last runs as above.
# Variables: PYTHON (default python3), HAWKEARS_OVERLAY (default /tmp/hawkears-overlay), OUT (results),
# GPU_CHECK_ARGS (default --budget-s 420: the install and the tiny model fit in a 600-s call too).
set -euo pipefail
part=${1:?usage: scripts/gpu/gpu_overlay_check.sh 1|2}
py=${PYTHON:-python3}
overlay=${HAWKEARS_OVERLAY:-/tmp/hawkears-overlay}
out=${OUT:-/tmp/gpu-overlay-out}
wheels=.hawkears-wheels/part$part
export PYTHONUNBUFFERED=1
mkdir -p "$out"
if [ ! -d "$wheels" ]; then
    echo "gpu_overlay_check: no $wheels here. Fix: make hawkears-wheels, then carry $wheels in this call" >&2
    exit 2
fi
if [ "$part" = 1 ] || [ -n "${MORE:-}" ]; then
    [ "$part" = 1 ] && "$py" scripts/hawkears/hawkears_overlay.py have -o "$out/have.txt"
    "$py" scripts/hawkears/hawkears_overlay.py install --python "$py" --wheels "$wheels" --overlay "$overlay" --no-check
    exit 0
fi
# the last part: install, check the imports (one line and exit 2 when something is missing), then the GPU check
"$py" scripts/hawkears/hawkears_overlay.py install --python "$py" --wheels "$wheels" --overlay "$overlay" | tee "$out/overlay.txt"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # Open MPI as root (ignored by MPICH)
make gpu-check PYTHON="$py" HAWKEARS_PYTHON="$overlay/bin/python" \
    ARGS="--out $out/gpu-check.json ${GPU_CHECK_ARGS:---budget-s 420}" 2>&1 | tee "$out/gpu-check.log"
