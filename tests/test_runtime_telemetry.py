"""What a run's telemetry says, end to end under real mpiexec: per-chunk lines without the
worker's static facts (those once per worker), GPU facts from a faked NVML, and CPU ranks that see
no GPU. Each test starts its own ``mpiexec`` in a subprocess under a timeout."""

from __future__ import annotations

import json

from fakes.nvml import fake_env
from helpers import PYTHON, REPO, make_dataset, read_telemetry, run_badc, telemetry_files


def test_fake_nvml_telemetry_carries_gpu_facts_and_cpu_ranks_see_no_gpu(tmp_path):
    manifest = make_dataset(tmp_path, 2, 6)
    probe_log = tmp_path / "cvd.log"
    probe = tmp_path / "probe_runner.py"
    probe.write_text(
        "import os, sys, time\n"
        "inp, out = sys.argv[1], sys.argv[2]\n"
        "time.sleep(0.3)  # alive long enough to be sampled\n"
        "with open(os.environ['PROBE_LOG'], 'a') as fh:\n"
        "    fh.write(os.path.basename(inp) + '\\t' + repr(os.environ.get('CUDA_VISIBLE_DEVICES')) + '\\n')\n"
        "open(os.path.join(out, 'scores.csv'), 'w').write('recording,name,start_time,end_time,score\\n')\n"
    )
    tel = tmp_path / "tel"
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--runner",
            "command",
            "--runner-cmd",
            f"{PYTHON} {probe} {{input}} {{output_dir}}",
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tel),
            "--cpu-workers",
            "2",
        ],
        np=3,
        env={**fake_env("one"), "PROBE_LOG": str(probe_log)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tfile,) = telemetry_files(tel)
    finals = [e for e in read_telemetry(tfile) if e["event"] == "success"]
    assert len(finals) == 12
    gpu_events = [e for e in finals if e["worker"].startswith("gpu")]
    cpu_events = [e for e in finals if e["worker"].startswith("cpu")]
    assert gpu_events and cpu_events
    fake = json.loads((REPO / "tests" / "fake_nvml" / "one.json").read_text())["devices"][0]
    for e in gpu_events:
        assert e["rank"] == 0
        assert (e["gpu_index"], e["gpu_uuid"], e["gpu_name"]) == (fake["index"], fake["uuid"], fake["name"])
        assert e["vram_used_mib"] is not None and "vram_device_mib" not in e  # device-wide: not per chunk
        assert e["gpu_util_pct_mean"] is not None and e["runtime_s"] >= 0
    for e in cpu_events:
        assert e["gpu_uuid"] is None and e.get("vram_used_mib") is None
    seen = dict(line.split("\t") for line in probe_log.read_text().splitlines())
    assert set(seen) == {f"{e['chunk_id']}.wav" for e in finals}  # every chunk's environment was probed
    cpu_chunks = {e["chunk_id"] for e in cpu_events}
    for name, cvd in seen.items():
        expected = "''" if name[:-4] in cpu_chunks else repr(fake["uuid"])
        assert cvd == expected, (name, cvd)
    assert "binding table" in proc.stderr


def test_telemetry_is_compact_static_facts_once_per_worker(tmp_path):
    """Issue 10: per-chunk lines carry no fact that is the same for every chunk of a worker; those
    are in one ``worker`` event per rank (and the run's in the header); start + final lines stay
    under 400 bytes per chunk on average (stub runner)."""
    manifest = make_dataset(tmp_path, 3, 100, seconds=0.05)
    tel = tmp_path / "tel"
    args = ["run", str(manifest), "--dry-run", "--stub-sleep-s", "0.002", "--no-chunk-check"]
    proc = run_badc([*args, "--telemetry-dir", str(tel), "--output-dir", str(tmp_path / "out")], np=3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tfile,) = telemetry_files(tel)
    raw = tfile.read_bytes().splitlines()
    records = [json.loads(line) for line in raw]
    assert records[0]["event"] == "run" and records[0]["schema"] == "badc-mpi.telemetry/2" and records[0]["run_id"]
    workers = [r for r in records if r["event"] == "worker"]
    assert sorted(w["rank"] for w in workers) == [0, 1, 2], "one worker event per rank"
    for w in workers:
        assert w["host"] and w["pid"] and w["worker"] and w["runner"] == "stub" and w["command"][0] == "<stub>"
    chunk_lines = [(line, r) for line, r in zip(raw, records) if r["event"] in ("start", "retry", "success", "failure")]
    assert sum(r["event"] == "success" for _, r in chunk_lines) == 300
    static = {"schema", "run_id", "host", "pid", "worker", "gpu_uuid", "gpu_name", "gpu_index", "command", "model_version"}
    for line, r in chunk_lines:
        assert not static & set(r), line
        assert {"rank", "recording_id", "chunk_id", "attempt"} <= set(r), line
        assert ("started_at" if r["event"] == "start" else "finished_at") in r, line
    per_chunk = sum(len(line) + 1 for line, _ in chunk_lines) / 300
    assert per_chunk <= 400, f"{per_chunk:.0f} bytes of telemetry per chunk"
    pid_of = {w["rank"]: w["pid"] for w in workers}
    joined = read_telemetry(tfile)
    assert len(joined) == len(chunk_lines) and all(e["pid"] == pid_of[e["rank"]] and e["worker"] for e in joined)
