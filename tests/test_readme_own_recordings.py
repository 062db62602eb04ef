"""Issue 21's "Done when": the README's "Your own recordings" block, run as written (one bash, set
-e, from the checkout) on a freshly made recording tree, with the tiny model staged where the
block looks for models ($SCRATCH/hawkears-data) and a HOME of its own (~/field2024)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_cli import REPO, this_venv
from test_orchestrate import git, tool_env

from helpers import PYTHON, hawkears_tiny, make_audio, run_own

SITES = "location,latitude,longitude,region,time_zone,study_area\nKAK-01,61.2,-117.2,CA-NT,America/Yellowknife,Kakisa\n"


def readme_block() -> str:
    """The first ```sh block under the README's "## Your own recordings"."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Your own recordings\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README: no ```sh block under '## Your own recordings'"
    return match.group(1)


def test_readme_block_is_short():
    commands = [line for line in readme_block().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) <= 8 and any(line.startswith("badc-mpi init") for line in commands)


@pytest.mark.hawkears
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_readme_own_recordings_runs_as_written(tmp_path):
    python, tiny_root = hawkears_tiny()
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    data = home / "field2024"
    path = data / "KAK-01" / "KAK-01_20240601_050000.wav"  # one short recording: the run is HawkEars' start-up
    path.parent.mkdir(parents=True)
    make_audio.write_wav(str(path), make_audio.synth_wave(3.0, 22050, 1), 22050)
    (data / "sites.csv").write_text(SITES)
    scratch.mkdir()
    (scratch / "hawkears-data").symlink_to(tiny_root)
    venv = Path(PYTHON).parent.parent
    block = readme_block().replace("source .venv/bin/activate", f"source {venv}/bin/activate")
    env = {
        "HOME": str(home),
        "SCRATCH": str(scratch),
        "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"),  # HawkEars' env, built once
        "BADC_MPI_HAWKEARS_PYTHON": python,
        "BADC_MPI_ALLOW_TINY_MODEL": "1",
        "NP": "1",  # make's ranks (the block leaves NP to make): one HawkEars start-up on a 2-core CI machine  # the exports of the tiny model's detections (each file says so)
        "PATH": os.environ.get("PATH", ""),  # a fresh shell: the venv is not on it until the block sources it
        **{k: v for k, v in tool_env().items() if k != "PATH"},
        **dict(arg.split("=", 1) for arg in this_venv()),  # make's VENV/MPI/MPIEXEC of this test run
    }
    done = run_own(["bash", "-e", "-c", block], cwd=REPO, env=env, timeout_s=360)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bundle = data / "artifacts" / "aggregate" / "field"
    assert (bundle / "report.html").exists()
    for rel in ("wildtrax_tags.csv", "tables/all.csv", "histories/OVEN.csv", "export.json"):
        assert (bundle / "exports" / rel).exists(), rel
    assert "TINY TEST MODEL" in (bundle / "exports" / "histories" / "OVEN.csv").read_text()
    wav = next(data.glob("KAK-01/*.wav"))
    assert wav.is_symlink() and ".git/annex/objects" in os.readlink(wav)  # audio annexed, never in git
    assert not (data / "sites.csv").is_symlink()
    assert git(["status", "--porcelain"], data) == ""  # every step recorded its outputs
