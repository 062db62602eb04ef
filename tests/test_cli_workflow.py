"""The command line a newcomer meets (issue 21), through the real CLI: `badc-mpi --help` in
workflow order with a typical-workflow epilog; `run --help` with the everyday options first; one
name for the confidence threshold (`--min-confidence`; `--min-score` hidden, warns); `run`
accepts `--no-record-datalad`; a "next:" line after chunk, run and bundle; resume's note in plain
words."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_chunk import dataset  # noqa: F401 - the fixture

from badc_mpi.cli import main
from badc_mpi.cli.parser import build_parser
from badc_mpi.cli.resume import run_flags

from helpers import make_dataset, run_badc


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_main_help_lists_commands_in_workflow_order_with_a_typical_workflow(capsys):
    out = _help(capsys)
    listed = [
        ln.split()[0]
        for ln in out.split("COMMAND\n")[1].split("\noptions:")[0].splitlines()
        if ln.startswith("    ") and not ln.startswith("     ")
    ]
    assert listed[:11] == [
        "init", "chunk", "validate", "check-chunks", "orchestrate", "run", "monitor", "bundle", "export", "review", "calibrate",
    ], listed  # fmt: skip
    workflow = out.split("typical workflow")[1]
    steps = ["badc-mpi chunk", "make infer", "badc-mpi monitor", "make bundle", "make export"]
    assert [workflow.index(s) for s in steps] == sorted(workflow.index(s) for s in steps)


def test_run_help_puts_the_everyday_options_first_and_hides_the_old_name(capsys):
    out = _help(capsys, "run")
    assert out.startswith("usage: badc-mpi run [options] MANIFEST")
    groups = [ln for ln in out.splitlines() if ln and not ln.startswith(" ") and ln.endswith(":")]
    assert groups.index("everyday options:") < groups.index("HawkEars runner:") < groups.index("other runners and benchmarks:")
    everyday = out.split("everyday options:")[1].split("\n\n", 2)[1]
    flags = [ln.split()[0] for ln in everyday.splitlines() if ln.startswith("  --")]
    assert flags[:4] == ["--hawkears-data-root", "--resume", "--min-confidence", "--allow-tiny-model"], flags
    assert "--min-score" not in out and "--no-record-datalad" in out.split("DataLad:")[1]


def test_min_score_still_works_warns_and_resumes_as_min_confidence(capsys):
    args = build_parser().parse_args(["run", "m.csv", "--min-score", "0.4"])
    assert args.min_score == 0.4 and "is now called --min-confidence" in capsys.readouterr().err
    assert run_flags(args) == ["--min-confidence", "0.4"]  # the resume command uses the one name
    args = build_parser().parse_args(["run", "m.csv", "--min-confidence", "0.3"])
    assert args.min_score == 0.3 and capsys.readouterr().err == ""
    export = build_parser().parse_args(["export", "b", "--min-confidence", "0.3"])
    assert isinstance(export, argparse.Namespace) and export.min_confidence == 0.3  # the same name in exports


def test_run_accepts_no_record_datalad_says_next_and_resume_speaks_plainly(tmp_path):
    manifest = make_dataset(tmp_path, recordings=3, chunks_per_recording=1)
    done = run_badc(["run", str(manifest), "--dry-run", "--no-record-datalad", "--min-score", "0.4"], np=None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--min-score is now called --min-confidence" in done.stderr
    assert "next: badc-mpi bundle manifests/chunks.csv" in done.stdout  # run from the dataset's top folder
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n")  # one recording left out of the manifest
    again = run_badc(["run", str(manifest), "--dry-run", "--resume"], np=None)
    assert again.returncode == 0, again.stderr[-2000:]
    text = again.stdout + again.stderr
    assert "1 chunk(s) that earlier runs did are no longer in the manifest" in text and "orphan" not in text


def test_chunk_says_next(dataset: Path, tmp_path: Path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(dataset)
    assert main(["chunk", str(dataset / "audio"), "--layout", "wildtrax", "--sites", str(tmp_path / "sites.csv")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("next: make -C ") and "infer MANIFEST=" in last and str(dataset / "manifests" / "audio.csv") in last


def test_commands_run_too_early_name_the_step_to_run_first(tmp_path, capsys, monkeypatch):
    manifest = make_dataset(tmp_path, recordings=2, chunks_per_recording=1, status="in_progress")
    monkeypatch.chdir(tmp_path)
    rel = "manifests/chunks.csv"
    for argv, step in (
        (["bundle", rel], f"`make infer MANIFEST={rel}`"),  # not run yet
        (["export", rel, "--format", "raven"], f"`make infer MANIFEST={rel}`"),
        (["monitor", "artifacts/telemetry/infer"], "start the run first (`make infer MANIFEST=...`"),
        (["run", rel, "--dry-run"], "finish chunking them first: `badc-mpi chunk RECORDINGS_DIR`"),
    ):
        assert main(argv) in (2, 3), argv
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("badc-mpi: error:")]
        assert len(errors) == 1 and step in errors[0], (argv, err)
    from badc_mpi.errors import UsageError
    from badc_mpi.results import open_bundle

    with pytest.raises(UsageError, match="not bundled yet") as raised:
        open_bundle(tmp_path)
    assert "make bundle MANIFEST=" in str(raised.value)
    assert manifest.exists()
