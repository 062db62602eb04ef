"""How ``--help`` reads: commands in the order of the work, ``run``'s options grouped by
workflow with the everyday ones first. Presentation only: it moves already-added options between
argparse's help groups and orders the groups (argparse-manpage reads the same groups)."""

from __future__ import annotations

import argparse
from typing import Any

#: ``badc-mpi --help``'s command list, in the order of the work
WORKFLOW_ORDER = (
    "init",
    "chunk",
    "validate",
    "check-chunks",
    "orchestrate",
    "run",
    "monitor",
    "bundle",
    "export",
    "review",
    "calibrate",
    "aggregate",
    "gpus",
)

MAIN_EPILOG = """\
typical workflow (inside a DataLad dataset of recordings; `make help` has the same steps as make targets):
  badc-mpi chunk RECORDINGS_DIR --sites sites.csv      make the chunk manifest (next: infer)
  make infer MANIFEST=manifest.csv                     run HawkEars over it on every GPU (resumable)
  badc-mpi monitor artifacts/telemetry/infer -f        watch it from another shell
  make bundle MANIFEST=manifest.csv                    Parquet, DuckDB and report.html
  make export MANIFEST=manifest.csv                    WildTrax, Raven, tables, detection histories
`badc-mpi COMMAND --help` explains each command."""

#: ``run``'s everyday options, in this order, shown first
EVERYDAY = (
    "--hawkears-data-root",
    "--resume",
    "--min-confidence",
    "--allow-tiny-model",
    "--output-dir",
    "--telemetry-dir",
    "--include",
    "--exclude",
)

#: ``run``'s other groups (by title), after the everyday ones: what a user tunes before what a
#: benchmark or a troubleshooter does
RUN_GROUP_ORDER = (
    "input and outputs",
    "resume and stopping",
    "HawkEars runner",
    "GPUs",
    "DataLad",
    "scheduling, retries, timeouts",
    "faulty ranks (a bad GPU, a full disk, a hung node)",
    "runner",
)
RUNNER_TITLE = "other runners and benchmarks"


def arrange_run_help(p: argparse.ArgumentParser) -> None:
    """An "everyday options" group first (moved from their groups), then the others by
    :data:`RUN_GROUP_ORDER`; a short usage line (the options are listed below it)."""
    everyday = p.add_argument_group("everyday options", "what most runs need; the groups below tune and troubleshoot")
    moved = []
    for group in p._action_groups:
        if group is everyday:
            continue
        for action in list(group._group_actions):
            if set(action.option_strings) & set(EVERYDAY):
                group._group_actions.remove(action)
                moved.append(action)
    everyday._group_actions.extend(sorted(moved, key=lambda a: min(EVERYDAY.index(o) for o in a.option_strings if o in EVERYDAY)))
    rank = {title: i for i, title in enumerate(RUN_GROUP_ORDER)}
    fixed = [g for g in p._action_groups if g.title in ("positional arguments", "options")]
    others = [g for g in p._action_groups if g not in fixed and g is not everyday]
    others.sort(key=lambda g: rank.get(g.title or "", len(rank)))
    for g in others:
        if g.title == "runner":
            g.title = RUNNER_TITLE
    p._action_groups[:] = [*fixed, everyday, *others]
    p.usage = "badc-mpi run [options] MANIFEST [MANIFEST ...]"


def order_commands(sub: Any) -> None:
    """The subcommands' list in ``--help`` (and the man page) in :data:`WORKFLOW_ORDER`; any
    command not named there keeps its place after them."""
    rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
    sub._choices_actions.sort(key=lambda a: rank.get(a.dest, len(rank)))
    ordered = sorted(sub.choices.items(), key=lambda item: rank.get(item[0], len(rank)))
    sub.choices.clear()  # the same dict, re-filled in order: the man page's sections follow it
    sub.choices.update(ordered)
