"""SLURM batch scripts: a pure function of what the job runs and how it is sized.

:func:`render` builds the text; nothing here touches the file system. The same body serves the
generated scripts (``badc-mpi orchestrate --sockeye-script``: the plan's manifests and run options
written into the script) and the shipped ones (``slurm/infer.sbatch``, ``slurm/infer-array.sbatch``:
manifests and run options from the ``sbatch`` command line; :func:`shipped_scripts`).

Every value that reaches a shell line is quoted with :func:`shlex.quote`. ``#SBATCH`` lines are not
shell: sbatch reads them itself, so their values are checked against a plain character set instead
(:func:`directive_value`) and a value outside it is refused with the option's name.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from badc_mpi.errors import UsageError
from badc_mpi.orchestrate.sbatch_text import BODY

#: the runner's stop after SIGTERM: --grace-s (20) plus bounded waits, ~26 s (docs/operations.md)
RUN_STOP_S = 26
#: SIGTERM this long before the time limit: the stop, the srun step's teardown, a slow file
#: system's last fsyncs, and DataLad's save of what was done
DEFAULT_SIGNAL_S = 120
MIN_SIGNAL_S = RUN_STOP_S + 14
_DIRECTIVE_RE = re.compile(r"[A-Za-z0-9_.:,=/@%+-]+")


@dataclass(frozen=True)
class SbatchOptions:
    """How the job is sized and what it does around the run (the ``--sockeye-*`` options)."""

    job_name: str = "badc-infer"
    account: str | None = None
    partition: str | None = None
    gres: str | None = "gpu:4"  #: None (or "none"): no GPU request, for a GPU-less test node
    time: str = "12:00:00"
    cpus_per_task: int = 6
    mem: str = "64G"
    nodes: int = 1
    ntasks_per_node: int = 4  #: one rank per GPU: Sockeye's GPU nodes have four
    log_dir: str | None = None  #: LOG_DIR's default: telemetry, detections, bundle, SLURM log
    resume_completed: bool = True  #: --resume when an earlier run exists
    bundle: bool = True
    bundle_aggregate_dir: str | None = None
    bundle_bucket_minutes: float = 60.0
    array: bool = False  #: one manifest per array task
    mpi: str = "pmi2"  #: srun --mpi: pmi2 for the MPICH wheel; the site's (e.g. pmix) with MPI=system
    signal_s: int = DEFAULT_SIGNAL_S
    record_datalad: bool = True  #: datalad save after the run, inside a writable DataLad dataset


@dataclass(frozen=True)
class JobSpec:
    """What the job runs. Without ``manifests`` the script is a shipped one: manifests and run
    options come from its command line, the dataset and Python from where it was submitted."""

    dataset: str | None = None  #: absolute
    manifests: tuple[str, ...] = ()  #: relative to the dataset, or absolute
    run_args: tuple[str, ...] = ()  #: ``badc-mpi run`` options
    python: str | None = None  #: the Python of the badc-mpi install (absolute)
    script_path: str | None = None  #: where the script is written (the resubmit command)
    shipped_name: str = "slurm/infer.sbatch"
    notes: tuple[str, ...] = field(default=())  #: extra comment lines for the head


def directive_value(option: str, value: object) -> str:
    text = str(value)
    if not _DIRECTIVE_RE.fullmatch(text):
        raise UsageError(
            f"{option} {text!r}: #SBATCH lines take letters, digits and _.:,=/@%+- only",
            fix=f"give {option} a plain value (a folder without spaces for --sockeye-log-dir)",
        )
    return text


def validate(options: SbatchOptions) -> None:
    if options.signal_s < MIN_SIGNAL_S:
        raise UsageError(
            f"--sockeye-signal-s {options.signal_s}: the run needs about {RUN_STOP_S} s to stop cleanly after SIGTERM",
            fix=f"give at least {MIN_SIGNAL_S} (default {DEFAULT_SIGNAL_S})",
        )
    for name, number in (("--sockeye-nodes", options.nodes), ("--sockeye-cpus-per-task", options.cpus_per_task)):
        if number < 1:
            raise UsageError(f"{name} {number} is not a positive number", fix=f"give {name} 1 or more")
    if options.bundle_bucket_minutes <= 0:
        raise UsageError("--sockeye-bundle-bucket-minutes must be positive", fix="e.g. 60")


def directives(options: SbatchOptions, *, array_size: int | None) -> list[str]:
    """The ``#SBATCH`` lines (values checked, never quoted: sbatch is not a shell)."""
    d = directive_value
    out = [f"--job-name={d('--sockeye-job-name', options.job_name)}"]
    if options.account:
        out.append(f"--account={d('--sockeye-account', options.account)}")
    if options.partition:
        out.append(f"--partition={d('--sockeye-partition', options.partition)}")
    out += [f"--nodes={int(options.nodes)}", f"--ntasks-per-node={int(options.ntasks_per_node)}"]
    if options.gres and options.gres != "none":
        out.append(f"--gres={d('--sockeye-gres', options.gres)}")
    out += [
        f"--cpus-per-task={int(options.cpus_per_task)}",
        f"--mem={d('--sockeye-mem', options.mem)}",
        f"--time={d('--sockeye-time', options.time)}",
        f"--signal=B:TERM@{int(options.signal_s)}",
    ]
    log = f"{d('--sockeye-log-dir', options.log_dir.rstrip('/'))}/" if options.log_dir else ""
    out.append(f"--output={log}%x-%{'A_%a' if options.array else 'j'}.out")
    if options.array and array_size:
        out.append(f"--array=0-{array_size - 1}")
    return [f"#SBATCH {line}" for line in out]


def _words(values: tuple[str, ...] | list[str], indent: str = "    ") -> str:
    if not values:
        return "()"
    return "(\n" + "".join(f"{indent}{shlex.quote(v)}\n" for v in values) + ")"


def _head(spec: JobSpec, options: SbatchOptions) -> list[str]:
    kind = "one manifest per array task" if options.array else "one queue"
    gpu = f"--gres={options.gres}" if options.gres and options.gres != "none" else "no GPU request"
    if spec.manifests:
        lines = [
            f"# badc-mpi: HawkEars over {len(spec.manifests)} manifest(s) of {spec.dataset} ({kind}).",
            "# Written by `badc-mpi orchestrate --sockeye-script`; regenerate it rather than editing it.",
            f"#   submit:   sbatch {spec.script_path or 'THIS_SCRIPT'}   (again after a time limit: it resumes)",
        ]
    else:
        usage = f"sbatch{' --array=0-<N-1>' if options.array else ''} [sbatch options] {spec.shipped_name} MANIFEST [MANIFEST...] [-- badc-mpi run options]"
        lines = [
            f"# badc-mpi inference on Sockeye-like clusters ({kind}; {options.ntasks_per_node} ranks per node, {gpu}).",
            f"#   {usage}",
            "# Submit from the repository root after `make install` and `make hawkears`, with models staged on",
            "# the login node (`make hawkears-models DEST=$SCRATCH/hawkears-data`; compute nodes have no internet)",
            "# and `-- --hawkears-data-root $SCRATCH/hawkears-data`. Or let `badc-mpi orchestrate DATASET",
            "# --sockeye-script job.sbatch` write a script for a dataset's manifests. docs/howto/sockeye.md.",
        ]
    lines += [
        "# Environment at submission: LOG_DIR (telemetry, detections and bundle outside the dataset),",
        "# BADC_SRUN_MPI (srun --mpi), BADC_PYTHON, BADC_RESUME=0|1, BADC_BUNDLE=0|1, BADC_BUNDLE_DIR,",
        "# BADC_BUCKET_MINUTES, RECORD_DATALAD=0|1. No GPU here (a test node): sbatch --gres=none ...",
        f"# SIGTERM comes {options.signal_s} s before the time limit (--signal=B:TERM): the run drains for",
        f"# --grace-s (20 s), stops within ~{RUN_STOP_S} s, writes its summary; then the job saves what it did.",
        *(f"# {note}" for note in spec.notes),
    ]
    return lines


def _generated_job(spec: JobSpec) -> list[str]:
    if spec.dataset is None or spec.python is None:
        raise ValueError("a generated script needs the dataset and the Python")
    script = spec.script_path or "THIS_SCRIPT"
    return [
        f"DATASET={shlex.quote(spec.dataset)}",
        "# shellcheck disable=SC2016  # single quotes keep the plan's values as they are",
        f"manifests={_words(list(spec.manifests))}",
        "# shellcheck disable=SC2016",
        f"run_args={_words(list(spec.run_args))}",
        f"PY=${{BADC_PYTHON:-{shlex.quote(spec.python)}}}",
        f"resubmit=(sbatch {shlex.quote(script)})",
        "resubmit_cd=",
    ]


def _shipped_job(spec: JobSpec, array: bool) -> list[str]:
    usage = (
        f"usage: sbatch{' --array=0-<N-1>' if array else ''} {spec.shipped_name} MANIFEST [MANIFEST...] [-- badc-mpi run options]"
    )
    return [
        f"usage() {{ echo {shlex.quote(usage)} >&2; exit 2; }}",
        "submit_dir=${SLURM_SUBMIT_DIR:-$PWD}",
        "resubmit=(sbatch)",
        'if [[ -n "${SLURM_JOB_ACCOUNT:-}" ]]; then resubmit+=("--account=$SLURM_JOB_ACCOUNT"); fi',
        'if [[ -n "${SLURM_JOB_PARTITION:-}" ]]; then resubmit+=("--partition=$SLURM_JOB_PARTITION"); fi',
        f'resubmit+=({shlex.quote(spec.shipped_name)} "$@")',
        "resubmit_cd=$submit_dir",
        'absolute() { if [[ "$1" == /* ]]; then printf \'%s\\n\' "$1"; else printf \'%s\\n\' "$submit_dir/$1"; fi; }',
        "manifests=()",
        'while [[ $# -gt 0 && "$1" != "--" ]]; do manifests+=("$(absolute "$1")"); shift; done',
        'if [[ "${1:-}" == "--" ]]; then shift; fi',
        'run_args=("$@")',
        "if [[ ${#manifests[@]} -eq 0 ]]; then usage; fi",
        "dataset_of() {  # the DataLad dataset holding the manifest, else the submit folder",
        "    local d",
        '    d=$(dirname "$1")',
        '    while [[ "$d" != / && ! -d "$d/.datalad" ]]; do d=$(dirname "$d"); done',
        '    if [[ -d "$d/.datalad" ]]; then printf \'%s\\n\' "$d"; else printf \'%s\\n\' "$submit_dir"; fi',
        "}",
        'DATASET=${DATASET:-$(dataset_of "${manifests[0]}")}',
        "PY=${BADC_PYTHON:-$submit_dir/.venv/bin/python}",
    ]


ARRAY_PICK = """\
if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    say "one manifest per array task: submit with sbatch --array=0-$((${#manifests[@]} - 1))"
    exit 2
fi
if [[ $SLURM_ARRAY_TASK_ID -ge ${#manifests[@]} ]]; then
    say "array task $SLURM_ARRAY_TASK_ID has no manifest (${#manifests[@]} manifests: tasks 0-$((${#manifests[@]} - 1)))"
    exit 2
fi
manifests=("${manifests[$SLURM_ARRAY_TASK_ID]}")
resubmit=("${resubmit[0]}" "--array=$SLURM_ARRAY_TASK_ID" "${resubmit[@]:1}")
"""

ARRAY_OUTPUT = """\
# each array task its own output folder (and output lock): <output>/<manifest stem>
out_dir=${out_dir:-artifacts/infer}/$(basename "${manifests[0]}" .csv)
"""

SAVE_QUEUE = """\
    say "recording what the job wrote in the dataset: ${save[*]}"
    src=0
    "${save[@]}" || src=$?
    if [[ $src -ne 0 ]]; then say "datalad save failed (exit $src); run it yourself: ${save[*]}"; fi"""

SAVE_ARRAY = """\
    say "array tasks do not save (they would race for the dataset's index); after the last task: ${save[*]}\""""


def render(spec: JobSpec, options: SbatchOptions) -> str:
    """The whole batch script (pure: the same inputs give the same text, byte for byte)."""
    validate(options)
    settings = [
        f"MPI_PLUGIN=${{BADC_SRUN_MPI:-{shlex.quote(options.mpi)}}}",
        f"LOG_DIR=${{LOG_DIR:-{shlex.quote(options.log_dir) if options.log_dir else ''}}}",
        f"RESUME_COMPLETED=${{BADC_RESUME:-{int(options.resume_completed)}}}",
        f"BUNDLE=${{BADC_BUNDLE:-{int(options.bundle)}}}",
        f"BUNDLE_DIR=${{BADC_BUNDLE_DIR:-{shlex.quote(options.bundle_aggregate_dir) if options.bundle_aggregate_dir else ''}}}",
        f"BUCKET_MINUTES=${{BADC_BUCKET_MINUTES:-{shlex.quote(format(options.bundle_bucket_minutes, 'g'))}}}",
        f"RECORD_DATALAD=${{RECORD_DATALAD:-{int(options.record_datalad)}}}",
        'DATALAD=${BADC_DATALAD:-$(dirname "$PY")/datalad}',
    ]
    job = _generated_job(spec) if spec.manifests else _shipped_job(spec, options.array)
    body = (
        BODY.replace("@@ARRAY_PICK@@\n", ARRAY_PICK if options.array else "")
        .replace("@@ARRAY_OUTPUT@@", ARRAY_OUTPUT if options.array else "")
        .replace("@@SAVE@@", SAVE_ARRAY if options.array else SAVE_QUEUE)
    )
    array_size = len(spec.manifests) if spec.manifests else None
    parts = [
        "#!/bin/bash",
        *_head(spec, options),
        *directives(options, array_size=array_size),
        "",
        "set -euo pipefail",
        "",
        *job,
        *settings,
        "",
        body.rstrip("\n"),
    ]
    return "\n".join(parts) + "\n"


def shipped_scripts() -> dict[str, str]:
    """The scripts in ``slurm/``, by file name (tests check the files equal these)."""
    return {
        "infer.sbatch": render(JobSpec(shipped_name="slurm/infer.sbatch"), SbatchOptions()),
        "infer-array.sbatch": render(JobSpec(shipped_name="slurm/infer-array.sbatch"), SbatchOptions(array=True)),
    }
