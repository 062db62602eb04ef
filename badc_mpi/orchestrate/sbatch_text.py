"""The batch script's body, shared by every variant (``sbatch.py`` fills the ``@@...@@`` slots).

Plain bash: the operator reads every step as a ``badc-mpi: ...`` line in the SLURM log.
"""

BODY = r"""say() { printf 'badc-mpi: %s\n' "$*"; }

@@ARRAY_PICK@@
cd "$DATASET"
say "job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}: ${SLURM_NTASKS:-?} ranks on ${SLURM_JOB_NODELIST:-?}; dataset $DATASET"
say "manifests (one queue): ${manifests[*]}"

# The run writes into the dataset when it can; into LOG_DIR when LOG_DIR is given or the dataset
# is read-only here (a shared DataLad dataset mounted read-only on compute nodes).
writable() { [[ -w "$1" ]] && { [[ ! -e "$1/artifacts" ]] || [[ -w "$1/artifacts" ]]; }; }
where=()
out_dir=
if [[ -n "$LOG_DIR" ]] || ! writable "$DATASET"; then
    LOG_DIR=${LOG_DIR:-${SCRATCH:-$HOME}/badc-mpi/$(basename "$DATASET")}
    mkdir -p "$LOG_DIR"
    out_dir=$LOG_DIR/infer
    where=(--telemetry-dir "$LOG_DIR/telemetry")
    say "detections, telemetry and the bundle go to LOG_DIR=$LOG_DIR (given, or the dataset is read-only here)"
fi
@@ARRAY_OUTPUT@@if [[ -n "$out_dir" ]]; then where+=(--output-dir "$out_dir"); fi
telemetry_dir=${LOG_DIR:+$LOG_DIR/telemetry}
for ((i = 0; i < ${#run_args[@]}; i++)); do  # a --telemetry-dir among the run options wins
    case ${run_args[i]} in
        --telemetry-dir) telemetry_dir=${run_args[i + 1]:-} ;;
        --telemetry-dir=*) telemetry_dir=${run_args[i]#*=} ;;
    esac
done
if [[ -z "$telemetry_dir" ]]; then
    if [[ -d .datalad ]]; then telemetry_dir=artifacts/telemetry/infer; else telemetry_dir=data/telemetry/infer; fi
fi

# The plan (one line per recording: chunks, chunk status, done/remaining from earlier runs) and
# the chunk-status guard: exit 3 when recordings are not fully chunked (--allow-partial-chunks).
select=()
for m in "${manifests[@]}"; do select+=(--manifest "$m"); done
plan_rc=0
plan=$("$PY" -m badc_mpi orchestrate "$DATASET" "${select[@]}" --run-args ${where[@]+"${where[@]}"} ${run_args[@]+"${run_args[@]}"}) || plan_rc=$?
printf '%s\n' "$plan"
if [[ $plan_rc -ne 0 ]]; then
    say "the plan was refused (exit $plan_rc; 3: recordings not fully chunked, 2: bad input): nothing ran"
    exit "$plan_rc"
fi

earlier=$(grep -m1 '^earlier runs: ' <<<"$plan" || true)
resume=()
if [[ "$RESUME_COMPLETED" == 1 && -n "$earlier" && "$earlier" != "earlier runs: none"* ]]; then
    resume=(--resume)
    say "resume: yes, $earlier; --resume skips the chunks they finished"
else
    say "resume: no (${earlier:-no earlier-runs line}); every chunk of the plan runs"
fi
say "watch it from a login node: $PY -m badc_mpi monitor $DATASET/$telemetry_dir --follow"

# SLURM sends SIGTERM to this shell only (--signal=B:TERM@...): pass it on to every rank with
# scancel --signal (a kill -TERM of srun itself would make srun SIGKILL the ranks); the run drains
# (--grace-s), writes its summary and exits 75. --kill-on-bad-exit=1: a rank that dies takes the
# step down instead of leaving the others waiting on it until the time limit.
step=
term_seen=0
# shellcheck disable=SC2317  # run by the trap
forward_term() {
    term_seen=$((term_seen + 1))
    say "SIGTERM (the time limit is near, or scancel): stopping the run cleanly"
    if [[ -n "$step" ]]; then scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || kill -TERM "$step" 2>/dev/null || true; fi
}
trap forward_term TERM
command=(srun "--mpi=$MPI_PLUGIN" --kill-on-bad-exit=1 "$PY" -m badc_mpi run "${manifests[@]}"
    ${where[@]+"${where[@]}"} ${run_args[@]+"${run_args[@]}"} ${resume[@]+"${resume[@]}"})
say "running: ${command[*]}"
"${command[@]}" &
step=$!
handled=0
while :; do
    rc=0
    wait "$step" || rc=$?
    if [[ $rc -gt 128 && $term_seen -gt $handled ]]; then  # wait was cut short by the trap: wait again
        handled=$term_seen
        continue
    fi
    break
done
trap - TERM
case $rc in
    0) say "the run finished: every chunk succeeded" ;;
    1) say "the run finished: some chunks failed (the run's .failed.csv lists them; a resubmit retries them)" ;;
    75) say "the run stopped before the end (time limit, scancel, or no rank left); nothing done is lost" ;;
    3) say "the chunk-status guard refused (exit 3)" ;;
    *) say "the run ended with exit $rc (2: input or options, 4: output folder locked, 70: a rank crashed)" ;;
esac

stem=$(basename "${manifests[0]}" .csv)
name=$stem
if [[ ${#manifests[@]} -gt 1 ]]; then name=${SLURM_JOB_NAME:-badc-infer}; fi
if [[ "$BUNDLE" == 1 && ($rc -eq 0 || $rc -eq 1) ]]; then
    bundle=("$PY" -m badc_mpi bundle "${manifests[@]}" --name "$name" --bucket-minutes "$BUCKET_MINUTES" --telemetry-dir "$telemetry_dir")
    if [[ -n "$BUNDLE_DIR" ]]; then
        bundle+=(--dest "$BUNDLE_DIR/$name")
    elif [[ -n "$LOG_DIR" ]]; then
        bundle+=(--dest "$LOG_DIR/aggregate/$name")
    fi
    say "bundling: ${bundle[*]}"
    brc=0
    "${bundle[@]}" || brc=$?
    if [[ $brc -ne 0 ]]; then say "the bundle failed (exit $brc); run it again: ${bundle[*]}"; fi
fi

if [[ "$RECORD_DATALAD" == 1 && -d .datalad && -z "$LOG_DIR" && -x "$DATALAD" && $rc -ne 2 && $rc -ne 3 && $rc -ne 4 ]]; then
    save=("$DATALAD" save -d "$DATASET" -m "badc-mpi job ${SLURM_JOB_ID:-?}: ${manifests[*]} (exit $rc)" artifacts)
@@SAVE@@
fi

if [[ $rc -ne 0 ]]; then
    prefix=
    if [[ -n "$resubmit_cd" ]]; then prefix="cd $(printf '%q' "$resubmit_cd") && "; fi
    say "resubmit (it resumes: the chunks done are skipped): $prefix$(printf '%q ' "${resubmit[@]}")"
fi
exit "$rc"
"""
