# badc-mpi: Make targets chain chunk-status checks, inference, aggregation and bundles.
# `make help` lists every target. Variables: MANIFEST, NP, ARGS, MPI (pypi|system), PYTHON, TELEMETRY, RECORD_DATALAD (0: no datalad run/save).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
MPI ?= pypi
PY := $(VENV)/bin/python
BADC := $(PY) -m badc_mpi
MPIEXEC ?= $(if $(filter system,$(MPI)),mpiexec,$(VENV)/bin/mpiexec)
TEST_MPIEXEC := $(if $(filter system,$(MPI)),$(MPIEXEC),$(abspath $(MPIEXEC)))
NP ?=
ARGS ?=
MANIFEST ?=
TELEMETRY ?=
RECORD_DATALAD ?= 1
DATASET ?=
BUNDLE ?=
SPECIES ?=
FORMAT ?=
STAMP := $(VENV)/.badc-installed-$(MPI)
# HawkEars' python given (an overlay's bin/python, docs/howto/gpu-overlay.md): gpu-check and
# hawkears-tiny then skip `make hawkears` (and gpu-check skips `make install` when .venv is absent)
HAWKEARS_PYTHON ?= $(BADC_MPI_HAWKEARS_PYTHON)

NP_DEFAULT = $$($(PY) -c 'from badc_mpi.gpu.binding import default_np; print(default_np())' 2>/dev/null || echo 2)

.PHONY: help install lint test test-slurm man chunk check-chunks infer resume monitor aggregate bundle export review browser shellcheck demo bench gpu-check clean

help: ## list every target with one line
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: MANIFEST=path.csv NP=ranks ARGS='extra badc-mpi flags' MPI=pypi|system TELEMETRY=run.jsonl|dir"

$(STAMP): setup.cfg setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
ifeq ($(MPI),system)
	@command -v mpicc >/dev/null || { echo "make install MPI=system: no mpicc on PATH; load your MPI module first (e.g. module load openmpi)" >&2; exit 2; }
	env MPICC="$$(command -v mpicc)" $(PY) -m pip install -q --no-binary=mpi4py --no-cache-dir mpi4py
	$(PY) -m pip install -q -e '.[test]' git-annex
else
	$(PY) -m pip install -q -e '.[test,mpich]' git-annex
endif
	@rm -f $(VENV)/.badc-installed-*
	@touch $@

install: $(STAMP) ## create .venv with badc-mpi (editable), test extras, MPI (MPICH wheel; MPI=system: site mpicc) and git-annex
	@echo "installed: $(VENV) (MPI=$(MPI): $$($(PY) -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0].strip())'))"
	@echo "  in any shell: source $(VENV)/bin/activate  (puts badc-mpi, datalad and git-annex on PATH)"

lint: install ## ruff (ruff.toml) over badc_mpi/, scripts/, tests/, then mypy over badc_mpi/ (setup.cfg [mypy])
	$(VENV)/bin/ruff check badc_mpi scripts tests
	$(VENV)/bin/ruff format --check badc_mpi scripts tests
	$(VENV)/bin/mypy

# The tests start their runs with the same mpiexec (BADC_MPI_TEST_MPIEXEC; tests/helpers.py); the
# in-MPI pass uses pytest-timeout's thread method, the only one that ends a hang inside MPI (setup.cfg).
# Time budgets (docs/howto/testing.md): pytest-timeout's --session-timeout stops a pass that runs
# past its budget (checked between tests; each test has its own 300 s) with a failing summary.
# Under CI=true a test that would skip fails instead (tests/ci_rules.py), so `browser` and
# `shellcheck` must install their tools there.
TEST_BUDGET_S ?= 2400
TEST_MPI_BUDGET_S ?= 600
SLURM_BUDGET_S ?= 1200
test: install hawkears-tiny shellcheck browser ## the whole suite: pytest, then the MPI tests under mpiexec -n 3 (exit 0 only when all pass; budgets TEST_BUDGET_S/TEST_MPI_BUDGET_S: docs/howto/testing.md)
	BADC_MPI_TEST_MPIEXEC='$(TEST_MPIEXEC)' $(PY) -m pytest -q --durations=15 --session-timeout=$(TEST_BUDGET_S)
	BADC_MPI_TEST_MPIEXEC='$(TEST_MPIEXEC)' $(MPIEXEC) -n 3 $(PY) -m pytest -q --only-mpi -p no:cacheprovider --timeout-method=thread --session-timeout=$(TEST_MPI_BUDGET_S)

# A throwaway SLURM cluster (scripts/cluster/slurm_cluster.py: munge, slurmctld, two slurmd, fake GPUs, all
# under one temporary folder, own ports and munge socket) for real srun/sbatch runs; always torn
# down. Needs root; installs Debian's slurmd slurmctld slurm-client munge when missing.
# docs/howto/testing-slurm.md. SRUN_MPI: srun's MPI plugin (pmi2 for the MPICH wheel).
# BADC_MPI_SLURM_REQUIRED=1: here a missing cluster fails the SLURM tests instead of skipping them.
test-slurm: ## real SLURM as root: throwaway cluster, real sbatch/srun tests (tests/test_slurm.py), always torn down (~3 min)
	@$(PYTHON) scripts/cluster/slurm_cluster.py prepare
	@$(MAKE) --no-print-directory install hawkears-tiny
	BADC_MPI_SLURM_REQUIRED=1 $(PY) scripts/cluster/slurm_cluster.py run -- $(PY) -m pytest -q -p no:cacheprovider --session-timeout=$(SLURM_BUDGET_S) tests/test_slurm.py $(ARGS)

man: install ## man page from the argparse parser into docs/man/ (read: man ./docs/man/badc-mpi.1)
	@mkdir -p docs/man
	$(VENV)/bin/argparse-manpage --module badc_mpi.cli.parser --function build_parser --prog badc-mpi \
	  --project-name badc-mpi --version "$$($(PY) -c 'import badc_mpi; print(badc_mpi.__version__)')" \
	  --description "run HawkEars over chunk manifests on every GPU of an MPI job" \
	  --author "badc-mpi developers" --manual-title "badc-mpi manual" --output docs/man/badc-mpi.1
	@echo "wrote docs/man/badc-mpi.1 (man ./docs/man/badc-mpi.1)"

chunk: install ## recordings into a manifest of virtual chunks: make chunk ROOT=dir LAYOUT=wildtrax|wildlife-acoustics|audiomoth|lab|'REGEX' [ARGS='--sites sites.csv']
	@test -n "$(ROOT)" -a -n "$(LAYOUT)" || { echo "usage: make chunk ROOT=path/to/recordings LAYOUT=wildtrax [ARGS='--sites sites.csv --out manifests/a.csv']" >&2; exit 2; }
	$(BADC) chunk $(ROOT) --layout '$(LAYOUT)' $(if $(filter 0,$(RECORD_DATALAD)),--no-record-datalad) $(ARGS)

check-chunks: install ## refuse unless every recording of MANIFEST is fully chunked (.chunk_status.json)
	@test -n "$(MANIFEST)" || { echo "usage: make check-chunks MANIFEST=path/to/manifest.csv" >&2; exit 2; }
	$(BADC) check-chunks $(MANIFEST) $(ARGS)

infer: install ## plan + chunk-status guard, then mpiexec -n NP badc-mpi run MANIFEST (NP: usable local GPUs, or 2); resumes what earlier runs left (FRESH=1: re-analyse all); recorded with `datalad run` inside a DataLad dataset (RECORD_DATALAD=0: not)
	@test -n "$(MANIFEST)" || { echo "usage: make infer MANIFEST=path/to/manifest.csv [NP=4] [ARGS='--max-retries 3'] [RECORD_DATALAD=0]" >&2; exit 2; }
	np=$(if $(NP),$(NP),$(NP_DEFAULT)); BADC_MPI_VIA_MAKE=1 $(BADC) orchestrate --manifest $(MANIFEST) --apply $(if $(filter 1,$(FRESH)),--no-resume-completed) \
	  --np $$np --mpiexec '$(TEST_MPIEXEC)' $(if $(filter 0,$(RECORD_DATALAD)),--no-record-datalad) --run-args $(ARGS)

resume: install ## rerun MANIFEST skipping chunks earlier runs finished (same output/telemetry dirs); recorded with `datalad run` in a dataset, as make infer
	@test -n "$(MANIFEST)" || { echo "usage: make resume MANIFEST=path/to/manifest.csv [NP=4] [ARGS=...]" >&2; exit 2; }
	np=$(if $(NP),$(NP),$(NP_DEFAULT)); BADC_MPI_VIA_MAKE=1 $(BADC) orchestrate --manifest $(MANIFEST) --apply \
	  --np $$np --mpiexec '$(TEST_MPIEXEC)' $(if $(filter 0,$(RECORD_DATALAD)),--no-record-datalad) --run-args $(ARGS)

monitor: install ## live view of a run from its telemetry: make monitor TELEMETRY=run.jsonl|folder [ARGS=--follow]
	@test -n "$(TELEMETRY)" || { echo "usage: make monitor TELEMETRY=path/to/run.jsonl (or its folder) [ARGS='--follow --interval-s 5']" >&2; exit 2; }
	$(BADC) monitor $(TELEMETRY) $(ARGS)

aggregate: install ## runs into Parquet (detections, chunks, runs): make aggregate MANIFEST=m.csv | DATASET=dir [ARGS='--force']
	@test -n "$(MANIFEST)$(DATASET)" || { echo "usage: make aggregate MANIFEST=path/to/manifest.csv | DATASET=path/to/dataset [ARGS=...]" >&2; exit 2; }
	$(BADC) aggregate $(MANIFEST) $(DATASET) $(ARGS)

bundle: install ## aggregate when needed, DuckDB views, quicklook CSVs, report.html (+ exports): make bundle MANIFEST=m.csv | DATASET=dir [ARGS='--export all --focus-species ROPT,RUGR --min-confidence 0.3']
	@test -n "$(MANIFEST)$(DATASET)" || { echo "usage: make bundle MANIFEST=path/to/manifest.csv | DATASET=path/to/dataset [ARGS='--bucket-minutes 30 --export wildtrax,raven,tables,histories --focus-species ROPT,RUGR --min-confidence 0.3']" >&2; exit 2; }
	$(BADC) bundle $(MANIFEST) $(DATASET) $(if $(filter 0,$(RECORD_DATALAD)),,--record-datalad) $(ARGS)

export: install ## WildTrax/Raven/tables/histories from a bundle or runs: make export MANIFEST=m.csv | DATASET=dir | BUNDLE=dir FORMAT=wildtrax,raven [ARGS='--min-confidence 0.3 --focus-species ROPT,RUGR']
	@test -n "$(MANIFEST)$(DATASET)$(BUNDLE)" || { echo "usage: make export MANIFEST=m.csv | DATASET=dir | BUNDLE=dir [FORMAT=wildtrax,raven,tables,histories|all] [ARGS='--output DIR --min-confidence 0.3']" >&2; exit 2; }
	$(BADC) export $(MANIFEST) $(DATASET) $(BUNDLE) --format $(or $(FORMAT),all) $(if $(filter 0,$(RECORD_DATALAD)),,--record-datalad) $(ARGS)

.PHONY: calibrate
calibrate: install ## per-species thresholds from listeners' verdicts: make calibrate BUNDLE=dir VERDICTS='round1.csv round2.csv' [ARGS='--target-precision 0.95']
	@test -n "$(BUNDLE)" || { echo "usage: make calibrate BUNDLE=path/to/bundle VERDICTS='verdicts.csv ...' [ARGS='--target-precision 0.9 --min-verdicts 20'] (no VERDICTS: the ones kept in the bundle)" >&2; exit 2; }
	$(BADC) calibrate $(BUNDLE) $(if $(VERDICTS),--verdicts $(VERDICTS)) $(if $(filter 0,$(RECORD_DATALAD)),,--record-datalad) $(ARGS)

review: install ## a review pack (clips, spectrograms, review.html) of a bundle: make review BUNDLE=dir [SPECIES=RUGR,OVEN] [ARGS='--per-species 50 --strata score --seed 1 --round 2 --near-threshold']
	@test -n "$(BUNDLE)" || { echo "usage: make review BUNDLE=path/to/bundle [SPECIES=CODE,CODE (default: all species)] [ARGS='--per-species 50 --strata score|location|hour --seed N --round 2 --near-threshold --pad-s 1.5']" >&2; exit 2; }
	$(BADC) review $(BUNDLE) $(if $(SPECIES),--species $(SPECIES),--all-species) $(ARGS)

# Debian packages the suite needs, installed when root and missing (apt-get; `apt-get update` and
# again when the first try fails). Not root, or the install fails: a note, and their tests skip;
# under CI=true (.ci/run) the target fails instead, as would the tests.
IN_CI := $(filter true 1,$(CI))
define apt_tool
	@if $(2); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(3) >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(3) >/dev/null; }; } && $(2); then \
	  echo "make $(1): installed $(3)"; \
	elif [ -n "$(IN_CI)" ]; then \
	  echo "make $(1): could not install $(3) (needs root and apt-get); CI=true: failing, as its tests would (tests/ci_rules.py)" >&2; exit 2; \
	else echo "make $(1): no $(3) (as root: make $(1), or sudo apt-get install $(3)); its tests will skip" >&2; fi
endef

browser: ## Debian's chromium and chromium-driver for the report.html test (installed when root and missing; tests/test_bundle.py skips without, fails under CI=true)
	$(call apt_tool,browser,command -v chromium >/dev/null && command -v chromedriver >/dev/null,chromium chromium-driver)

shellcheck: ## Debian's shellcheck for the batch-script tests (installed when root and missing; tests/test_sbatch.py skips without, fails under CI=true)
	$(call apt_tool,shellcheck,command -v shellcheck >/dev/null,shellcheck)

# The demo: scripts/demo/make_demo.py builds (once; a stamp) a DataLad dataset holding a recording tree
# named by the lab's Study/Station folders and WildTrax file names, sites.csv, and the manifest
# `badc-mpi chunk` writes for it (virtual chunks: no audio copied), saved; then infer, bundle, export.
DEMO := examples/demo
DEMO_MANIFEST := $(DEMO)/manifests/demo.csv
DEMO_BUNDLE := $(DEMO)/artifacts/aggregate/demo
DEMO_FOCUS := ROPT,RUGR,STGR,SPGR,WIPT

demo: install hawkears-tiny ## build examples/demo (DataLad dataset: recording tree, sites.csv, `badc-mpi chunk`), infer (2 ranks), bundle with exports
	$(PY) scripts/demo/make_demo.py $(DEMO)
	$(MAKE) --no-print-directory infer MANIFEST=$(DEMO_MANIFEST) NP=2 ARGS="--allow-tiny-model $(DEMO_ARGS) $(ARGS)"
	$(MAKE) --no-print-directory bundle MANIFEST=$(DEMO_MANIFEST) ARGS='--export wildtrax,raven,tables --focus-species $(DEMO_FOCUS) --allow-tiny-model'
	$(MAKE) --no-print-directory review BUNDLE=$(DEMO_BUNDLE) SPECIES=$(DEMO_FOCUS) ARGS='--force'
	$(PY) scripts/demo/demo_verdicts.py $(DEMO_BUNDLE) --species $(DEMO_FOCUS) --review $(DEMO_BUNDLE)/review/1/review.csv \
	  --out $(DEMO_BUNDLE)/review/1/verdicts.csv
	$(MAKE) --no-print-directory calibrate BUNDLE=$(DEMO_BUNDLE) VERDICTS=$(DEMO_BUNDLE)/review/1/verdicts.csv \
	  ARGS="--min-verdicts 8 --note 'synthetic verdicts written by scripts/demo/demo_verdicts.py for the tiny model: no listener, meaningless thresholds'"
	$(MAKE) --no-print-directory export BUNDLE=$(DEMO_BUNDLE) FORMAT=wildtrax,tables ARGS='--thresholds $(DEMO_BUNDLE)/thresholds.csv --output $(DEMO_BUNDLE)/exports_calibrated --allow-tiny-model'
	@echo "demo: results in $(DEMO_BUNDLE)/ (tiny random-weight model: the detections are meaningless)"
	@echo "  report.html                                      open it in a browser"
	@echo "  exports/wildtrax_tags.csv, wildtrax_tasks.csv    WildTrax upload templates"
	@echo "  exports/raven/                                   one Raven selection table per recording"
	@echo "  exports/tables/all.csv, <study_area>.csv         the lab's tables, overall and per study area"
	@echo "  exports/histories/                               detection histories of $(DEMO_FOCUS)"
	@echo "  bundle.duckdb, *.parquet                         views and tables (docs/results.md)"
	@echo "  review/1/review.html                             review pack of $(DEMO_FOCUS): listen, judge, export verdicts.csv"
	@echo "  thresholds.csv, verdicts/                        calibration from synthetic verdicts (report.html: Calibration)"
	@echo "  exports_calibrated/                              WildTrax tags and tables held to thresholds.csv"

bench: install hawkears-tiny ## all benchmarks (manifest load, dispatch, resume, monitor, aggregate, export + overlap merge, chunk scan, calibration, HawkEars); record figures in docs/benchmarks.md
	$(PY) scripts/bench/bench_manifest.py
	$(PY) scripts/bench/bench_manifest.py --check-sources
	$(PY) scripts/bench/bench_dispatch.py
	$(PY) scripts/bench/bench_resume.py
	$(PY) scripts/bench/bench_memory.py
	$(PY) scripts/bench/bench_monitor.py
	$(PY) scripts/bench/bench_aggregate.py
	$(PY) scripts/bench/bench_export.py
	$(PY) scripts/bench/bench_review.py draw --detections 100000000
	$(PY) scripts/bench/bench_review.py cut --per-species 50
	$(PY) scripts/bench/bench_chunk.py
	$(PY) scripts/bench/bench_calibrate.py
	$(PY) scripts/bench/bench_hawkears.py
	$(PY) scripts/bench/bench_hawkears.py --variants all --rounds 4

# With HAWKEARS_PYTHON: badc-mpi's side runs in .venv when installed, else in $(PYTHON) (a machine
# without internet whose python has numpy, pyarrow, mpi4py, nvidia-ml-py).
GPU_CHECK_PY = $(if $(HAWKEARS_PYTHON),$(if $(wildcard $(STAMP)),$(PY),$(PYTHON)),$(PY))
gpu-check: $(if $(HAWKEARS_PYTHON),hawkears-tiny,install hawkears-tiny) ## on one NVIDIA GPU: NVML, masks, HawkEars by UUID, OOM, bench, --workers-per-gpu x --hawkears-batch sweep; Markdown table (<= 8 min; exit 3 without GPU; ARGS='--dry-run' on CPU, '--out r.json'; HAWKEARS_PYTHON=overlay/bin/python)
	$(GPU_CHECK_PY) scripts/gpu/gpu_check.py $(if $(HAWKEARS_PYTHON),--python '$(HAWKEARS_PYTHON)') $(ARGS)

clean: ## remove build leftovers (keeps .venv and outputs)
	rm -rf build dist *.egg-info .pytest_cache

# --- hawkears (begin) ---
# HawkEars runs in its own Python env (pins: vendor/HawkEars/requirements.txt), created once under
# $${XDG_CACHE_HOME:-~/.cache}/badc-mpi/hawkears-<sha12 of the pins>-py<XY>/ and reused by every
# checkout while the pins are unchanged. See vendor/HawkEars/README.md.
# Variables: DEST=dir (hawkears-models), PYTHON (the python that owns the HawkEars venv).
HAWKEARS_ENV := $(PYTHON) scripts/hawkears/hawkears_env.py

.PHONY: hawkears hawkears-tiny hawkears-python hawkears-models bench-hawkears hawkears-wheels hawkears-overlay

hawkears: ## HawkEars' own env (torch, hawkears 2.3.0; ~3 min, ~9 GB once, then reused); prints its path
	@$(HAWKEARS_ENV) create

hawkears-tiny: $(if $(HAWKEARS_PYTHON),,hawkears) ## tiny random-weight HawkEars data root for tests/demos (offline, seconds; HAWKEARS_PYTHON=...: built with that python)
	@$(if $(HAWKEARS_PYTHON),BADC_MPI_HAWKEARS_PYTHON='$(HAWKEARS_PYTHON)') $(HAWKEARS_ENV) tiny

hawkears-python: ## print the HawkEars env's python
	@$(HAWKEARS_ENV) python

hawkears-models: hawkears ## stage real HawkEars models (internet, e.g. Sockeye login node): make hawkears-models [DEST=dir]
	@$(HAWKEARS_ENV) models $(if $(DEST),--dest '$(DEST)')

# HawkEars as an overlay on an existing python with torch, where its own env cannot be built
# (scripts/hawkears/hawkears_overlay.py, docs/howto/gpu-overlay.md). HAVE: the target's have file
# (`python3 scripts/hawkears/hawkears_overlay.py have` there); WHEELS: the parts; INCLUDE: extra names.
HAVE ?= scripts/hawkears/overlay_have/nvidia-h200.txt
WHEELS ?= .hawkears-wheels
OVERLAY ?=
INCLUDE ?=

hawkears-wheels: ## wheels HawkEars lacks on a python with torch (HAVE=its have file), xz-packed in parts <= 60 MiB under WHEELS (internet)
	@$(PYTHON) scripts/hawkears/hawkears_overlay.py download --have '$(HAVE)' --dest '$(WHEELS)' $(if $(INCLUDE),--include $(INCLUDE))

hawkears-overlay: ## install WHEELS (a part, or every part) on PYTHON into OVERLAY, offline; prints OVERLAY/bin/python for HAWKEARS_PYTHON
	@$(PYTHON) scripts/hawkears/hawkears_overlay.py install --python '$(PYTHON)' --wheels '$(WHEELS)' $(if $(OVERLAY),--overlay '$(OVERLAY)')

bench-hawkears: install hawkears-tiny ## HawkEars resident vs CLI vs bare in-process scoring (tiny model; JSON); ARGS='--variants all': malloc tuning, pipeline, --hawkears-batch 1/4/16
	$(PY) scripts/bench/bench_hawkears.py $(ARGS)
# --- hawkears (end) ---
