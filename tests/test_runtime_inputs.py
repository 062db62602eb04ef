"""What a run accepts, end to end under real mpiexec: bad manifests (exit 2, nothing written), the
chunk-status guard (exit 3), several manifests as one queue, missing audio (``--allow-missing``),
and no launcher at all (one rank). Each test starts its own run in a subprocess under a timeout."""

from __future__ import annotations

import csv

from helpers import FAKE_CMD, make_dataset, read_jsonl, run_badc, sidecar, store_records, telemetry_files


def test_bad_manifest_exits_2_and_writes_nothing(tmp_path):
    manifest = make_dataset(tmp_path, 1, 2)
    manifest.write_text(manifest.read_text() + "rec000,bad/id,../audio/x.wav,0,500,0,,,s\n")
    tel = tmp_path / "tel"
    proc = run_badc(["run", str(manifest), "--dry-run", "--telemetry-dir", str(tel), "--output-dir", str(tmp_path / "out")], np=3)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "chunks.csv" in errors[0] and "chunk_id" in errors[0]
    assert not tel.exists() and not (tmp_path / "out").exists()


def test_chunk_status_guard_refuses_with_exit_3(tmp_path):
    manifest = make_dataset(tmp_path, 2, 2, status="in_progress")
    proc = run_badc(["run", str(manifest), "--dry-run", "--telemetry-dir", str(tmp_path / "tel")], np=2)
    assert proc.returncode == 3, proc.stderr
    assert "in_progress" in proc.stderr and "rec000" in proc.stderr
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--dry-run",
            "--telemetry-dir",
            str(tmp_path / "tel"),
            "--output-dir",
            str(tmp_path / "out"),
            "--allow-partial-chunks",
        ],
        np=2,
    )
    assert proc.returncode == 0, proc.stderr


def test_several_manifests_form_one_queue_and_stub_dry_run(tmp_path):
    m1 = make_dataset(tmp_path / "a", 2, 5)
    m2 = make_dataset(tmp_path / "b", 2, 5)
    lines = m2.read_text().splitlines()
    renamed = [lines[0]] + [
        ",".join([f[0].replace("rec0", "recB"), f[1].replace("rec0", "recB"), *f[2:]])
        for f in (line.split(",") for line in lines[1:])
    ]
    m2.write_text("\n".join(renamed) + "\n")  # distinct recordings in the second manifest
    tel = tmp_path / "tel"
    proc = run_badc(
        [
            "run",
            str(m1),
            str(m2),
            "--dry-run",
            "--stub-sleep-s",
            "0.01",
            "--telemetry-dir",
            str(tel),
            "--output-dir",
            str(tmp_path / "out"),
            "--no-chunk-check",
        ],
        np=3,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tfile,) = telemetry_files(tel)
    assert tfile.name.startswith("chunks+1_")
    finals = [e for e in read_jsonl(tfile) if e["event"] == "success"]
    assert len(finals) == 20 and {e["chunk_id"][:4] for e in finals} == {"rec0", "recB"}
    assert not any((tmp_path / "out").rglob("*.detections.jsonl"))  # the stub writes telemetry only


def test_allow_missing_turns_absent_audio_into_input_failures(tmp_path):
    manifest = make_dataset(tmp_path, 2, 4, seconds=0.3)
    gone = tmp_path / "audio" / "rec001_chunk_600_900.wav"
    gone.unlink()
    refused = run_badc(
        [
            "run",
            str(manifest),
            "--dry-run",
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tmp_path / "tel"),
        ],
        np=2,
    )
    assert refused.returncode == 2 and "rec001_chunk_600_900.wav" in refused.stderr and "--allow-missing" in refused.stderr
    assert not (tmp_path / "tel").exists()
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--runner",
            "command",
            "--runner-cmd",
            FAKE_CMD,
            "--allow-missing",
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tmp_path / "tel"),
        ],
        np=2,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    (tfile,) = telemetry_files(tmp_path / "tel")
    finals = {e["chunk_id"]: e for e in read_jsonl(tfile) if e["event"] in ("success", "failure")}
    assert len(finals) == 8
    miss = finals["rec001_chunk_600_900"]
    assert miss["event"] == "failure" and miss["failure_class"] == "input" and "not found" in miss["reason"]
    with open(sidecar(tfile, ".failed.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["chunk_id"] for r in rows] == ["rec001_chunk_600_900"] and rows[0]["badc_failure_class"] == "input"


def test_no_launcher_runs_as_one_rank(tmp_path):
    manifest = make_dataset(tmp_path, 1, 5, seconds=0.3)
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--runner",
            "command",
            "--runner-cmd",
            FAKE_CMD,
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tmp_path / "tel"),
        ],
        np=None,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "5 chunks on 1 rank;" in proc.stdout
    (stored,) = store_records(tmp_path / "out").values()
    assert len(stored) == 5
