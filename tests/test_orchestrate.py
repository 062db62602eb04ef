"""`badc-mpi orchestrate`: the plan, its files, the guard, --submit through the sbatch seam,
--apply; and DataLad: `run --print-datalad-run`, runs recorded with `datalad run` in a real
dataset (annexed audio), `datalad rerun`, a dirty dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from badc_mpi.orchestrate.datalad import collapse_dirs, escape_braces, run_argv
from badc_mpi.orchestrate.plan import tally

from ci_rules import require_or_skip
from helpers import FAKE_CMD, PYTHON, make_chunk, make_dataset, run_badc, run_own

VENV_BIN = Path(PYTHON).parent
DATALAD = VENV_BIN / "datalad"
RUN_ARGS = ["--runner", "command", "--runner-cmd", FAKE_CMD]


def badc(args, cwd, env=None, timeout_s=180):
    return run_own([PYTHON, "-m", "badc_mpi", *args], cwd=cwd, env=env or {}, timeout_s=timeout_s)


# -- pure ------------------------------------------------------------------------------------------
def test_tally_counts_done_only_while_the_sha256_still_matches():
    a = make_chunk(recording_id="r1", chunk_id="a", sha256="1" * 64)
    b = make_chunk(recording_id="r1", chunk_id="b", sha256="2" * 64)
    c = make_chunk(recording_id="r2", chunk_id="c")
    records = {
        "r1/a": ("success", "1" * 64),
        "r1/b": ("success", "9" * 64),  # the audio changed since: not done
        "r2/c": ("failed", None),
    }
    assert tally([a, b, c], records) == {"r1": [2, 1, 0], "r2": [1, 0, 1]}


def test_collapse_dirs_keeps_few_folders_none_inside_another():
    assert collapse_dirs(["audio", "audio/x", "chunks/r1"]) == ["audio", "chunks/r1"]
    many = [f"artifacts/chunks/rec{i:03d}" for i in range(50)] + ["audio"]
    assert collapse_dirs(many) == ["artifacts/chunks", "audio"]


def test_datalad_run_argv_keeps_the_command_s_braces():
    argv = run_argv("m", ["manifests/a.csv"], ["artifacts/infer"], ["python", "--runner-cmd", "x {input}"])
    assert argv[:4] == ["datalad", "run", "-m", "m"] and argv[-1] == "x {{input}}"
    assert "--on-cmd-failure" in argv and escape_braces("{a}") == "{{a}}"


# -- the plan --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_plan_table_files_and_earlier_runs(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 2, 3)
    one = manifest.with_name("one.csv")
    lines = manifest.read_text().splitlines()
    one.write_text("\n".join(lines[:1] + [ln for ln in lines[1:] if ln.startswith("rec001")]) + "\n")
    manifest.write_text("\n".join(lines[:1] + [ln for ln in lines[1:] if ln.startswith("rec000")]) + "\n")
    done = run_badc(["run", str(one), *RUN_ARGS], np=None)  # an earlier run did rec001
    assert done.returncode == 0, done.stderr
    out = badc(["orchestrate", str(tmp_path / "ds"), "--plan-csv", "p.csv", "--plan-json", "p.json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    assert "plan: 2 manifest(s), 2 recording(s), 6 chunks in " + str(tmp_path / "ds") in table[0]
    assert any(ln.split() == ["manifests/chunks.csv", "rec000", "3", "completed", "0", "0", "3"] for ln in table)
    assert any(ln.split() == ["manifests/one.csv", "rec001", "3", "completed", "3", "0", "0"] for ln in table)
    assert any(ln.split() == ["total", "6", "3", "0", "3"] for ln in table)
    assert any(ln.startswith("earlier runs: 1 (latest: data/telemetry/infer/one_") for ln in table)
    csv_rows = (tmp_path / "p.csv").read_text().splitlines()
    assert csv_rows[0] == "manifest,recording_id,chunks,chunk_status,done,failed,remaining,missing_audio"
    assert "manifests/one.csv,rec001,3,completed,3,0,0,0" in csv_rows
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["totals"]["remaining"] == 3 and doc["manifests"] == ["manifests/chunks.csv", "manifests/one.csv"]
    again = badc(["orchestrate", str(tmp_path / "ds"), "--plan", str(tmp_path / "p.csv")], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.splitlines()[:3] == table[:3]  # a plan file names the same queue


def test_guard_refuses_and_nothing_is_written(tmp_path):
    make_dataset(tmp_path / "ds", 1, 1, status="failed")
    out = badc(["orchestrate", str(tmp_path / "ds"), "--plan-csv", "p.csv", "--sockeye-script", "j.sbatch"], cwd=tmp_path)
    assert out.returncode == 3 and "rec000 (failed" in out.stderr and "--allow-partial-chunks" in out.stderr
    assert out.stderr.count("\n") == 1  # one line
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "j.sbatch").exists()
    ok = badc(["orchestrate", str(tmp_path / "ds"), "--allow-partial-chunks", "--plan-csv", "p.csv"], cwd=tmp_path)
    assert ok.returncode == 0 and "rec000,1,failed" in (tmp_path / "p.csv").read_text()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sockeye-script", "j.sbatch", "--sockeye-log-dir", "/my logs"], "--sockeye-log-dir"),
        (["--submit"], "--submit needs --sockeye-script"),
        (["--manifest-dir", "nowhere"], "no manifest folder"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, args, needle):
    make_dataset(tmp_path / "ds", 1, 1)
    out = badc(["orchestrate", str(tmp_path / "ds"), *args], cwd=tmp_path)
    assert out.returncode == 2 and needle in out.stderr and "Fix:" in out.stderr, out.stderr
    assert not (tmp_path / "j.sbatch").exists()


def test_submit_goes_through_the_one_sbatch_wrapper(tmp_path):
    make_dataset(tmp_path / "ds", 1, 1)
    fake = tmp_path / "sbatch"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch.args\necho "777;cluster"\n')
    fake.chmod(0o755)
    args = ["orchestrate", str(tmp_path / "ds"), "--sockeye-script", "j.sbatch", "--submit", "--sockeye-account", "st-x-gpu"]
    out = badc([*args, "--run-args", "--max-retries", "3"], cwd=tmp_path, env={"BADC_MPI_SBATCH": str(fake)})
    assert out.returncode == 0, out.stderr
    assert "submitted  job 777" in out.stdout
    assert (tmp_path / "sbatch.args").read_text().split() == ["--parsable", str(tmp_path / "j.sbatch")]
    script = (tmp_path / "j.sbatch").read_text()
    assert "#SBATCH --account=st-x-gpu" in script and "    --max-retries\n    3\n" in script
    assert os.access(tmp_path / "j.sbatch", os.X_OK)
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Invalid account' >&2\nexit 1\n")
    bad = badc(args, cwd=tmp_path, env={"BADC_MPI_SBATCH": str(fake)})
    assert bad.returncode == 2 and "sbatch refused" in bad.stderr and "Invalid account" in bad.stderr


@pytest.mark.slow
def test_apply_runs_the_plan_as_one_queue_here(tmp_path):
    manifest = make_dataset(tmp_path / "ds", 2, 2)
    other = manifest.with_name("b.csv")
    lines = manifest.read_text().splitlines()
    renamed = []
    for ln in lines[1:]:  # the same audio under other ids
        rec, chunk, rest = ln.split(",", 2)
        renamed.append(",".join([rec.replace("rec0", "recB"), chunk.replace("rec0", "recB"), rest]))
    other.write_text("\n".join(lines[:1] + renamed) + "\n")
    for rec in ("recB00", "recB01"):
        (tmp_path / "ds" / "artifacts" / "chunks" / rec).mkdir(parents=True)
        (tmp_path / "ds" / "artifacts" / "chunks" / rec / ".chunk_status.json").write_text('{"status": "completed"}')
    out = badc(["orchestrate", str(tmp_path / "ds"), "--apply", "--np", "1", "--run-args", *RUN_ARGS], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 chunks on 1 rank" in out.stdout + out.stderr  # both manifests, one run
    assert len(list((tmp_path / "ds" / "data" / "telemetry" / "infer").glob("*.ledger.jsonl"))) == 1
    again = badc(["orchestrate", str(tmp_path / "ds"), "--apply", "--np", "1", "--run-args", *RUN_ARGS], cwd=tmp_path)
    assert again.returncode == 0 and "nothing remains: earlier runs did all 8 chunks" in again.stdout  # issue 21
    assert len(list((tmp_path / "ds" / "data" / "telemetry" / "infer").glob("*.ledger.jsonl"))) == 1  # nothing ran
    rec, chunk, rest = renamed[0].split(",", 2)  # one more recording: a resume runs just it
    other.write_text(other.read_text() + ",".join(["recC00", chunk.replace("recB", "recC"), rest]) + "\n")
    (tmp_path / "ds" / "artifacts" / "chunks" / "recC00").mkdir(parents=True)
    (tmp_path / "ds" / "artifacts" / "chunks" / "recC00" / ".chunk_status.json").write_text('{"status": "completed"}')
    again = badc(["orchestrate", str(tmp_path / "ds"), "--apply", "--np", "1", "--run-args", *RUN_ARGS], cwd=tmp_path)
    assert again.returncode == 0 and "--resume" in again.stdout and "8 skipped" in again.stdout + again.stderr
    assert "resuming: 1 of 9 chunks remain" in again.stdout


# -- DataLad ---------------------------------------------------------------------------------------
@pytest.fixture
def needs_datalad():
    require_or_skip(DATALAD.exists(), "datalad is not installed in the venv: `make install`")


def tool_env():
    env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "badc test")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "badc@example.org")
    return env


def datalad(args, cwd):
    done = subprocess.run(
        [str(DATALAD), *args], cwd=cwd, env={**os.environ, **tool_env()}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def git(args, cwd):
    env = {**os.environ, **tool_env()}  # git-annex (its filter) is in the venv
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    datalad(["create", "-c", "text2git", str(root)], tmp_path)
    manifest = make_dataset(root, 2, 2)
    datalad(["save", "-d", str(root), "-m", "audio, chunk status, manifest"], root)
    audio = next((root / "audio").iterdir())
    assert audio.is_symlink() and "annex/objects" in os.readlink(audio)  # annexed: read through its path
    return root, manifest


def store_lines(root: Path) -> dict[str, list[dict]]:
    """Each run's chunk lines from the detection store, without the run id."""
    runs: dict[str, list[dict]] = {}
    for segment in sorted((root / "artifacts" / "infer" / "detections").glob("*.jsonl")):
        lines = [json.loads(ln) for ln in segment.read_text().splitlines()]
        chunks = [{k: v for k, v in ln.items() if k != "run_id"} for ln in lines if "recording_id" in ln]
        runs[segment.name.split(".")[0]] = sorted(chunks, key=lambda c: (c["recording_id"], c["chunk_id"]))
    return runs


@pytest.mark.usefixtures("needs_datalad")
@pytest.mark.slow
def test_print_datalad_run_is_exact_and_runs_nothing(dataset):
    root, manifest = dataset
    out = badc(["run", "manifests/chunks.csv", "--np", "1", "--max-retries", "3", "--print-datalad-run"], cwd=root)
    assert out.returncode == 0, out.stderr
    expected = (
        f"cd {root} && datalad run -m 'badc-mpi run: chunks.csv (4 chunks, 0 done earlier)' --input manifests/chunks.csv "
        f"--input audio --output artifacts/infer --output artifacts/telemetry/infer --on-cmd-failure all -- "
        f"{PYTHON} -m badc_mpi run manifests/chunks.csv --max-retries 3"
    )
    assert out.stdout.strip() == expected
    assert not (root / "artifacts" / "infer").exists() and git(["status", "--porcelain"], root) == ""


@pytest.mark.usefixtures("needs_datalad")
@pytest.mark.slow
def test_apply_is_recorded_with_datalad_run_and_rerun_reproduces_it(dataset):
    root, _manifest = dataset
    out = badc(["orchestrate", str(root), "--apply", "--np", "1", "--run-args", *RUN_ARGS], cwd=root, env=tool_env())
    assert out.returncode == 0, out.stdout + out.stderr
    message = git(["log", "-1", "--format=%B"], root)
    assert message.startswith("[DATALAD RUNCMD] badc-mpi run: chunks.csv (4 chunks, 0 done earlier)")
    record = json.loads(message.split("=== Do not change lines below ===")[1].split("^^^")[0])
    assert record["exit"] == 0 and record["inputs"] == ["manifests/chunks.csv", "audio"]
    assert record["outputs"] == ["artifacts/infer", "artifacts/telemetry/infer"]
    assert "-m badc_mpi run manifests/chunks.csv --runner command" in record["cmd"] and "{{input}}" in record["cmd"]
    assert git(["status", "--porcelain"], root) == ""  # everything the run wrote is saved
    first = store_lines(root)
    assert len(first) == 1
    (lines,) = first.values()
    assert [c["recording_id"] for c in lines] == ["rec000", "rec000", "rec001", "rec001"]  # names, never annex keys
    assert not any("MD5E" in c["source_path"] or "annex" in c["source_path"] for c in lines)

    datalad(["rerun"], root)
    assert git(["log", "-1", "--format=%s"], root).startswith("[DATALAD RUNCMD] badc-mpi run: chunks.csv")
    runs = store_lines(root)
    assert len(runs) == 2  # a new run id, a new store segment; the same detections
    old, new = (runs[k] for k in sorted(runs))
    assert new == old and any(c["n"] for c in new)


@pytest.mark.usefixtures("needs_datalad")
@pytest.mark.slow
def test_dirty_dataset_gets_one_line_and_exit_2(dataset):
    root, _manifest = dataset
    (root / "notes.txt").write_text("unsaved\n")
    out = badc(["orchestrate", str(root), "--apply", "--np", "1", "--run-args", *RUN_ARGS], cwd=root, env=tool_env())
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "has unsaved changes (notes.txt)" in out.stderr
    assert "datalad save" in out.stderr and "--no-record-datalad" in out.stderr and "Traceback" not in out.stderr
    assert not (root / "artifacts" / "infer").exists()
    plain = badc(
        ["orchestrate", str(root), "--apply", "--np", "1", "--no-record-datalad", "--run-args", *RUN_ARGS],
        cwd=root,
        env=tool_env(),
    )
    assert plain.returncode == 0 and "[DATALAD RUNCMD]" not in git(["log", "-1", "--format=%s"], root)
    # the same said among run's options (make infer ARGS='--no-record-datalad'): run accepts it, orchestrate honours it
    in_args = badc(
        ["orchestrate", str(root), "--apply", "--np", "1", "--run-args", *RUN_ARGS, "--no-record-datalad"],
        cwd=root,
        env=tool_env(),
    )
    assert in_args.returncode == 0, in_args.stderr[-2000:]
    assert "[DATALAD RUNCMD]" not in git(["log", "-1", "--format=%s"], root)


def test_print_datalad_run_outside_a_dataset_says_so(tmp_path):
    manifest = make_dataset(tmp_path / "plain", 1, 1)
    out = badc(["run", str(manifest), "--print-datalad-run"], cwd=tmp_path)
    assert out.returncode == 2 and "not inside a DataLad dataset" in out.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
