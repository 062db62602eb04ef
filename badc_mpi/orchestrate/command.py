"""``badc-mpi orchestrate``: the thin shell over plan, sbatch, datalad and launch (arguments: ``arguments.py``)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence

from badc_mpi.arguments import add_run_arguments, run_options_from_args
from badc_mpi.errors import UsageError
from badc_mpi.inputs.chunk_status import enforce_chunk_status
from badc_mpi.inputs.locations import find_dataset_root
from badc_mpi.orchestrate import datalad as dl
from badc_mpi.orchestrate import launch
from badc_mpi.orchestrate.plan import (
    Plan,
    build_plan,
    earlier_options,
    find_manifests,
    format_plan,
    plan_csv,
    plan_document,
    read_plan_file,
    settings_change,
)
from badc_mpi.orchestrate.sbatch import JobSpec, SbatchOptions, directives, render, validate
from badc_mpi.storage.atomic import atomic_write_text

DIR_FLAGS = ("--output-dir", "--telemetry-dir", "--chunks-dir", "--scratch-dir")


# -- pure helpers ----------------------------------------------------------------------------------
def absolute_dirs(run_args: Sequence[str], cwd: str, root: str | None = None) -> list[str]:
    """``run_args`` with relative folder options made absolute (the batch script runs elsewhere);
    with ``root``, folders inside it relative to it (``datalad run`` runs in the dataset's root)."""

    def place(value: str) -> str:
        path = os.path.normpath(os.path.join(cwd, value))
        return os.path.relpath(path, root) if root is not None and dl.inside(path, root) else path

    out: list[str] = []
    words = list(run_args)
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, value = word.partition("=")
        if flag in DIR_FLAGS and eq:
            out.append(f"{flag}={place(value)}")
        elif word in DIR_FLAGS and i + 1 < len(words):
            out += [word, place(words[i + 1])]
            i += 1
        else:
            out.append(word)
        i += 1
    return out


def sbatch_options(args: argparse.Namespace) -> SbatchOptions:
    d = SbatchOptions()
    pick = {
        "job_name": args.sockeye_job_name,
        "account": args.sockeye_account,
        "partition": args.sockeye_partition,
        "gres": args.sockeye_gres,
        "time": args.sockeye_time,
        "cpus_per_task": args.sockeye_cpus_per_task,
        "mem": args.sockeye_mem,
        "nodes": args.sockeye_nodes,
        "log_dir": os.path.abspath(args.sockeye_log_dir) if args.sockeye_log_dir else None,
        "bundle_aggregate_dir": os.path.abspath(args.sockeye_bundle_aggregate_dir) if args.sockeye_bundle_aggregate_dir else None,
        "bundle_bucket_minutes": args.sockeye_bundle_bucket_minutes,
        "mpi": args.sockeye_mpi,
        "signal_s": args.sockeye_signal_s,
    }
    values = {k: v for k, v in pick.items() if v is not None}
    values.update(
        resume_completed=args.sockeye_resume_completed,
        bundle=args.sockeye_bundle,
        array=args.sockeye_array,
        record_datalad=args.record_datalad,
    )
    return SbatchOptions(**{**d.__dict__, **values})


def queue_manifests(plan: Plan) -> list[str]:
    """The manifests as the queue's command names them: relative to the dataset when inside it."""
    return [plan.show(m) for m in plan.manifests]


def datalad_command(plan: Plan, command: Sequence[str], datalad: str = "datalad") -> list[str]:
    """``datalad run`` recording ``command`` over the plan (paths relative to the dataset)."""
    inputs, _outside = dl.input_paths(plan.dataset, plan.manifests, plan.source_dirs)
    outputs = [
        dl.relative(plan.output_dir, plan.dataset, "output folder"),
        dl.relative(plan.telemetry_dir, plan.dataset, "telemetry folder"),
    ]
    names = ", ".join(os.path.basename(m) for m in plan.manifests[:3]) + (" ..." if len(plan.manifests) > 3 else "")
    t = plan.totals()
    message = f"badc-mpi run: {names} ({t['chunks']} chunks, {t['done']} done earlier)"
    return dl.run_argv(message, inputs, outputs, command, datalad=datalad)


def print_run_record(manifests: Sequence[str], flags: Sequence[str], np: int | None) -> int:
    """``badc-mpi run ... --print-datalad-run``: the ``datalad run`` command for this run; exit 0."""
    first = os.path.abspath(manifests[0])
    root = find_dataset_root(first)
    if root is None:
        raise UsageError(
            f"{first} is not inside a DataLad dataset (no .datalad/ above it)", fix="datalad create the dataset first"
        )
    run_ns = _run_parser().parse_args([*manifests, *flags])
    plan = build_plan(
        root,
        manifests,
        output_dir=run_ns.output_dir,
        telemetry_dir=run_ns.telemetry_dir,
        chunks_dir=run_ns.chunks_dir,
        check_chunks=False,
    )
    ranks = np or launch.default_ranks(os.environ)
    command = launch.launcher(ranks, env=os.environ) + launch.run_command(
        sys.executable, queue_manifests(plan), absolute_dirs(flags, os.getcwd(), plan.dataset)
    )
    print(dl.printable(datalad_command(plan, command), plan.dataset))
    return 0


def save_bundle(folder: str, message: str, what: str = "the bundle", also: Sequence[str] = ()) -> None:
    """``datalad save`` a bundle (or export, manifest) folder and ``also`` (other paths of the same
    dataset: the aggregate an export made, chunk-status files) when it lies in a DataLad dataset
    (else nothing), so the next ``make infer`` finds the dataset clean."""
    root = find_dataset_root(folder)
    datalad = dl.datalad_executable()
    if root is None or datalad is None or not os.path.exists(os.path.join(root, ".git")):
        return  # no dataset, or only a .datalad/ marker (nothing DataLad could record)
    paths = [os.path.relpath(p, root) for p in dict.fromkeys([folder, *also]) if dl.inside(p, root) and os.path.exists(p)]
    argv = dl.save_argv(root, message, paths, datalad=datalad)
    print(f"recording {what}: {shlex.join(argv)}", flush=True)
    if launch.execute(argv, cwd=root, env=dl.tool_env()) != 0:
        raise UsageError(f"datalad save of {folder} failed (above)", fix=f"run it yourself: {shlex.join(argv)}")


def check_species_lists(args: argparse.Namespace) -> None:
    """--include/--exclude lists checked against the data root's taxonomy before any rank starts
    HawkEars (a line HawkEars would not match silently reports nothing for that species)."""
    if args.runner != "hawkears" or args.dry_run or not (args.include or args.exclude):
        return
    from badc_mpi.runners.hawkears.env import resolve_data_root
    from badc_mpi.runners.hawkears.species import check_list_file, load_taxonomy

    taxonomy = load_taxonomy(resolve_data_root(args.hawkears_data_root, allow_tiny=args.allow_tiny_model).path)
    for flag, path in (("--include", args.include), ("--exclude", args.exclude)):
        if path and taxonomy is not None:
            check_list_file(path, taxonomy, flag)


def closing_line(code: int, args: argparse.Namespace, plan: Plan) -> str:
    """What a recorded run ended with, said after DataLad's lines (the resume command when stopped)."""
    if code != 75:
        return f"badc-mpi: run recorded with datalad run in {plan.dataset} (exit {code})"
    manifests = " ".join(shlex.quote(plan.show(m)) for m in plan.manifests)
    if os.environ.get("BADC_MPI_VIA_MAKE"):
        extra = f" ARGS={shlex.quote(shlex.join(args.run_args))}" if args.run_args else ""
        again = f"make resume MANIFEST={shlex.quote(args.manifest[0]) if args.manifest else manifests}{extra}"
    else:
        which = [w for m in args.manifest for w in ("--manifest", m)] if args.manifest else [plan.dataset]
        again = shlex.join(
            ["badc-mpi", "orchestrate", *which, "--apply", *(["--run-args", *args.run_args] if args.run_args else [])]
        )
    return f"badc-mpi: stopped (exit 75); what the ranks wrote is saved (datalad run, {plan.dataset}); resume with:\n  {again}"


def nothing_remains(plan: Plan, resuming: bool, run_ns: argparse.Namespace) -> bool:
    """Say what a resume leaves to do; False (nothing to run or write) when earlier runs did every
    chunk with this run's settings. Other settings (or options not found): the run itself decides
    (``run --resume`` refuses naming what differs, or reruns with ``--rerun-changed``)."""
    if not resuming or not plan.earlier_runs:
        return True
    t = plan.totals()
    if t["remaining"] == 0:
        now = json.loads(json.dumps(run_options_from_args(run_ns).public()))
        changed = settings_change(earlier_options(plan), now)
        if changed:
            print(
                f"badc-mpi: earlier runs did all {t['chunks']} chunks, but {changed}: "
                "`badc-mpi run --resume` decides (it refuses naming what differs, or reruns with --rerun-changed)",
                flush=True,
            )
            return True
        print(
            f"badc-mpi: nothing remains: earlier runs did all {t['chunks']} chunks; nothing run, no script written "
            "(next: `make bundle MANIFEST=...` or `badc-mpi bundle`; --no-resume-completed, FRESH=1 for make, re-analyses all)",
            flush=True,
        )
        return False
    print(
        f"badc-mpi: resuming: {t['remaining']} of {t['chunks']} chunks remain ({t['done']} done by earlier runs; "
        "--no-resume-completed, FRESH=1 for make, re-analyses all)",
        flush=True,
    )
    return True


# -- the shell -------------------------------------------------------------------------------------
def _run_parser() -> argparse.ArgumentParser:
    from badc_mpi.orchestrate.arguments import add_run_no_record

    p = argparse.ArgumentParser(prog="badc-mpi orchestrate --run-args", add_help=False)
    add_run_arguments(p)
    add_run_no_record(p)
    return p


def _manifests(args: argparse.Namespace) -> tuple[str, list[str]]:
    first = args.manifest[0] if args.manifest else None
    # outside a DataLad dataset: here, as for `badc-mpi run`
    dataset = args.dataset or (find_dataset_root(first) if first else None) or "."
    dataset = os.path.abspath(dataset)
    if not os.path.isdir(dataset):
        raise UsageError(f"{dataset}: no such dataset folder", fix="give the dataset's folder")
    if args.manifest:
        return dataset, [os.path.abspath(m) for m in args.manifest]
    if args.plan:
        return dataset, read_plan_file(args.plan, dataset)
    return dataset, find_manifests(dataset, args.manifest_dir, args.pattern)


def cmd_orchestrate(args: argparse.Namespace) -> int:
    if args.submit and not args.sockeye_script:
        raise UsageError("--submit needs --sockeye-script PATH", fix="add --sockeye-script job.sbatch")
    if args.apply and (args.sockeye_script or args.sockeye_array):
        raise UsageError("--apply runs here; --sockeye-script/--sockeye-array write a batch script", fix="choose one")
    dataset, manifests = _manifests(args)
    run_ns = _run_parser().parse_args([*manifests, *args.run_args])
    check_species_lists(run_ns)  # before a batch script or a recorded run is made of a typo
    options = sbatch_options(args)  # bad --sockeye-* values fail before anything is written
    if args.sockeye_script:
        validate(options)
        directives(options, array_size=None)
    plan = build_plan(
        dataset,
        manifests,
        output_dir=run_ns.output_dir,
        telemetry_dir=run_ns.telemetry_dir,
        chunks_dir=run_ns.chunks_dir,
        check_chunks=run_ns.check_chunks,
        per_manifest_output=args.sockeye_array,
    )
    print(format_plan(plan), flush=True)
    if plan.guard is not None:
        enforce_chunk_status(plan.guard, args.allow_partial_chunks or run_ns.allow_partial_chunks)
    run_args = list(args.run_args)
    resume = args.resume_completed and bool(plan.earlier_runs) and not run_ns.resume
    command = launch.run_command(sys.executable, queue_manifests(plan), run_args + (["--resume"] if resume else []))
    ranks = args.np or launch.default_ranks(os.environ)
    command = launch.launcher(ranks, env=os.environ, mpi_plugin=args.mpi, mpiexec=args.mpiexec) + command
    record = plan.is_datalad and args.record_datalad and getattr(run_ns, "record_datalad", True)  # either place says no
    wrapped = datalad_command(plan, command, dl.datalad_executable() or "datalad") if record else None
    if args.print_datalad_run:
        if not plan.is_datalad:
            raise UsageError(
                f"{plan.dataset} is not a DataLad dataset (no .datalad/ at or above it)",
                fix="datalad create it, or run without DataLad",
            )
        print(dl.printable(datalad_command(plan, command), plan.dataset))
    if args.plan_csv:
        print(f"plan csv   {atomic_write_text(args.plan_csv, plan_csv(plan))}")
    if args.plan_json:
        print(f"plan json  {atomic_write_text(args.plan_json, json.dumps(plan_document(plan), indent=1) + chr(10))}")
    resuming = (args.sockeye_resume_completed if args.sockeye_script else args.resume_completed) or run_ns.resume
    if (args.apply or args.sockeye_script) and not nothing_remains(plan, resuming, run_ns):
        return 0
    if args.sockeye_script:
        script = os.path.abspath(args.sockeye_script)
        spec = JobSpec(
            dataset=plan.dataset,
            manifests=tuple(queue_manifests(plan)),
            run_args=tuple(absolute_dirs(run_args, os.getcwd())),
            python=sys.executable,
            script_path=script,
        )
        atomic_write_text(script, render(spec, options))
        os.chmod(script, 0o755)
        if options.log_dir:  # SLURM does not create the --output folder: a job would fail before its first line
            os.makedirs(options.log_dir, exist_ok=True)
        print(f"script     {script}")
        if args.submit:
            job = launch.submit(script, cwd=plan.dataset)
            print(f"submitted  job {job}: watch it with `badc-mpi monitor {shlex.quote(plan.telemetry_dir)} --follow`")
        else:
            print(f"submit it  sbatch {shlex.quote(script)}")
    if not args.apply:
        return 0
    if record:
        if dl.datalad_executable() is None:
            raise UsageError("datalad is not installed", fix="make install (it installs datalad), or pass --no-record-datalad")
        dl.require_clean(plan.dataset)
        print(f"recording with datalad run: {shlex.join(wrapped or [])}", flush=True)
        code = launch.execute(wrapped or [], cwd=plan.dataset, env=dl.tool_env(), shield_sigint=True)
        print(closing_line(code, args, plan), flush=True)  # after DataLad's own lines: badc-mpi's word is the last
        return code
    print(f"running: {shlex.join(command)}", flush=True)
    return launch.execute(command, cwd=plan.dataset)
