"""A run's files are its own (issue 19, item 2) and runs are matched by resolved folders (item 10).

Two runs of ``site1.part1.csv`` and ``site1.part2.csv`` started together (an ``sbatch --array``)
once shared ``site1.jsonl`` and ``site1.ledger.jsonl``; now each run's files carry its run id and
are created exclusively, and a run whose file exists already stops before dispatching anything.
A run whose ``--output-dir`` is a symlink and a run of the real folder are runs into one folder:
resume, ``orchestrate`` and bundles find each other's work.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from badc_mpi.cli import main
from badc_mpi.errors import UsageError
from badc_mpi.gpu.nvml import BACKEND_ENV
from badc_mpi.orchestrate.plan import build_plan
from badc_mpi.storage import telemetry as tel
from badc_mpi.storage.ledger import LEDGER_SUFFIX, read_ledger

from fakes.slow_nvml import DELAY_ENV
from helpers import FAKE_CMD, MPIEXEC, PYTHON, make_dataset, run_badc, run_own, telemetry_files

RUN_ARGS = ["--runner", "command", "--runner-cmd", FAKE_CMD]
SLOW_NVML = f"{Path(__file__).resolve().parent / 'fakes' / 'slow_nvml.py'}:SlowNoGpuBackend"


def split_manifest(manifest: Path, names: list[str]) -> list[Path]:
    """The manifest's rows by recording, one manifest per name (same folder: paths stay valid)."""
    header, *rows = manifest.read_text().splitlines()
    recordings = sorted({row.split(",")[0] for row in rows})
    out = []
    for name, recording in zip(names, recordings):
        path = manifest.with_name(name)
        path.write_text("\n".join([header, *(r for r in rows if r.split(",")[0] == recording)]) + "\n")
        out.append(path)
    return out


def bundle_counts(source: str, dest: Path, tel_dir: Path) -> dict:
    assert main(["bundle", source, "--telemetry-dir", str(tel_dir), "--dest", str(dest)]) == 0
    (summary,) = dest.rglob("summary.json")
    return json.loads(summary.read_text())


def test_two_runs_of_dotted_manifests_started_together_keep_their_own_files(tmp_path):
    ds = tmp_path / "ds"
    parts = split_manifest(make_dataset(ds, 2, 2), ["site1.part1.csv", "site1.part2.csv"])
    tel_dir = tmp_path / "tel"
    env = {"PYTHONUNBUFFERED": "1", BACKEND_ENV: SLOW_NVML, DELAY_ENV: "4"}

    def launch(part: Path):
        args = ["run", str(part), *RUN_ARGS, "--telemetry-dir", str(tel_dir), "--output-dir", str(tmp_path / part.stem)]
        return run_own([MPIEXEC, "-n", "2", PYTHON, "-m", "badc_mpi", *args], cwd=ds, env=env, timeout_s=240)

    with ThreadPoolExecutor(2) as pool:  # both plan while the other waits for its second rank
        procs = list(pool.map(launch, parts))
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    telemetry = telemetry_files(tel_dir)
    ledgers = sorted(tel_dir.glob(f"*{LEDGER_SUFFIX}"))
    assert len(telemetry) == 2 and len(ledgers) == 2, sorted(p.name for p in tel_dir.iterdir())
    for part in parts:
        (mine,) = [p for p in ledgers if p.name.startswith(f"{part.stem}_")]
        contents = read_ledger(mine)  # one header: one run
        assert contents.header["manifests"] == [str(part)]
        assert {k.split("/")[0] for k in contents.records} == {part.read_text().splitlines()[1].split(",")[0]}
        run_id = contents.header["run_id"]
        assert mine.name == f"{part.stem}_{run_id}{LEDGER_SUFFIX}"
        own_telemetry = tel.telemetry_path(tel_dir, [str(part)], run_id)
        headers = [json.loads(x) for x in own_telemetry.read_text().splitlines() if '"event":"run"' in x]
        assert [h["run_id"] for h in headers] == [run_id]
    for part in parts:  # resume of each finds its run by the new names
        again = run_badc(
            ["run", str(part), *RUN_ARGS, "--telemetry-dir", str(tel_dir), "--output-dir", str(tmp_path / part.stem), "--resume"],
            np=None,
            cwd=ds,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        assert "2 skipped (done earlier), 0 to run" in again.stdout + again.stderr
    for part in parts:  # the bundle of each keeps its run
        summary = bundle_counts(str(part), tmp_path / f"bundle-{part.stem}", tel_dir)
        assert summary["counts"]["analysed"] == 2 and summary["counts"].get("not_analysed", 0) == 0


def test_a_run_whose_file_exists_already_stops_before_dispatch(tmp_path):
    from badc_mpi.coordinator.planning import check_run_files_free

    tpath = tel.telemetry_path(tmp_path, [str(tmp_path / "site1.part1.csv")], "20261207T000000Z-0123abcd")
    assert tpath.name == "site1.part1_20261207T000000Z-0123abcd.jsonl"
    check_run_files_free(tpath)  # nothing there yet
    tel.sidecar(tpath, LEDGER_SUFFIX).write_text("")
    with pytest.raises(UsageError) as err:
        check_run_files_free(tpath)
    assert err.value.exit_code == 2 and "exists already" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileExistsError):  # and the writers never open another run's file by name
        tel.TelemetryWriter(tel.sidecar(tpath, LEDGER_SUFFIX), exclusive=True)


@pytest.mark.parametrize("first", ["link", "real"])
def test_a_symlinked_output_dir_is_the_same_folder_for_resume_and_bundle(tmp_path, first):
    ds = tmp_path / "ds"
    manifest = make_dataset(ds, 1, 3)
    real = tmp_path / "out-real"
    real.mkdir()
    link = tmp_path / "out-link"
    link.symlink_to(real, target_is_directory=True)
    second = "real" if first == "link" else "link"
    dirs = {"link": link, "real": real}
    base = ["run", str(manifest), *RUN_ARGS, "--telemetry-dir", str(tmp_path / "tel")]
    done = run_badc([*base, "--output-dir", str(dirs[first])], np=None, cwd=ds)
    assert done.returncode == 0, done.stderr[-2000:]
    again = run_badc([*base, "--output-dir", str(dirs[second]), "--resume"], np=None, cwd=ds)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3 skipped (done earlier), 0 to run" in again.stdout + again.stderr
    plan = build_plan(str(ds), [str(manifest)], output_dir=str(dirs[second]), telemetry_dir=str(tmp_path / "tel"))
    assert len(plan.earlier_runs) == 2 and plan.totals()["done"] == 3
    os.symlink(manifest, ds / "manifests" / "alias.csv")  # a manifest named through a link: its runs too
    summary = bundle_counts(str(ds / "manifests" / "alias.csv"), tmp_path / "bundle", tmp_path / "tel")
    assert summary["counts"]["analysed"] == 3
