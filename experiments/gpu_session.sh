#!/usr/bin/env bash
# One lent-GPU session's measurements, in priority order, each step under its own time limit so
# that a slow or failing step costs only its own slot and the rest still run (a lent machine
# has no network and ~10 minutes per command; the index: experiments/results/README.md).
#
#   bash experiments/gpu_session.sh [OUT] [BUDGET_S] [PRESET]
#
# OUT: where the log and a tarball of experiments/results/<machine>/ go (default ./gpu_out);
# BUDGET_S: the whole script's deadline (default 540); PRESET: gpu (default) or quick (a check
# of this script on any machine). STEPS: which measurements, in order (default: all; names in
# run_step below). Python: $PYTHON, else python3. Results folder root: $RESULTS,
# else experiments/results. Pure-Python wheels in .whl/
# (the pinned flax/optax/orbax/ml_collections, see requirements.txt) are installed to
# /tmp/mjfn_site first when present; if our modules fail to import with them, the machine's own
# flax/optax/orbax are used. Results: experiments/results/nvidia-h200/.
#
# On a lent machine: what comes back is $OUT, at most 8 files; the script leaves 5 there (log,
# the results tarball, 3 reports): copy nothing else into $OUT, or the tarball may be left out.
# A later call re-copies the working tree and so overwrites tracked results files on the
# machine: fetch the tarball from each call, or set RESULTS=$OUT/r.
set -u
OUT=${1:-gpu_out}
BUDGET=${2:-540}
PRESET=${3:-gpu}
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-experiments/results}
WORK=$(mktemp -d)  # the CLI runs' workdirs
mkdir -p "$OUT"
LOG="$OUT/log.txt"
T0=$(date +%s)
# JAX and PyTorch share the GPU in one benchmark process: no JAX preallocation of 75% of it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((T0 + BUDGET - $(date +%s))); }
step() { # step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left), log its rc and time
    local name=$1 limit=$2 l s rc
    shift 2
    l=$(left)
    if [ "$l" -lt 25 ]; then
        say "== $name: SKIPPED (${l}s left)"
        return 99
    fi
    [ "$limit" -gt "$l" ] && limit=$l
    s=$(date +%s)
    say "== $name (limit ${limit}s) at $(date -u +%H:%M:%S)"
    timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    say "== $name: rc=$rc in $(($(date +%s) - s))s"
    return $rc
}

say "gpu_session preset=$PRESET budget=${BUDGET}s start $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu,utilization.gpu \
    --format=csv >>"$LOG" 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/mjfn_site .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/mjfn_site
fi
versions() {
    $PY -c "import sys, jax, flax, optax, orbax.checkpoint as o, torch; print(sys.version.split()[0],
'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__,
'torch', torch.__version__, jax.devices())" >>"$LOG" 2>&1
}
versions
MACHINE=$($PY -c "from experiments.benchmark_lib import default_machine_name as d; print(d())" \
    2>>"$LOG")
[ "$PRESET" = quick ] && MACHINE="$MACHINE-quick"
say "machine folder: $RESULTS/$MACHINE"
mkdir -p "$RESULTS/$MACHINE"
B="$PY experiments/benchmark.py --preset $PRESET --machine $MACHINE --merge --out $RESULTS"

# 1. Imports. Pinned wheels that fail under the machine's jax (flax 0.12.8 under jax 0.11.2
#    did) are dropped for the machine's own (versions in the log/results).
if ! step imports 60 $PY -c "import mjfn_jax.train, experiments.benchmark_lib"; then
    say "imports failed with the carried wheels: using the machine's flax/optax/orbax"
    rm -rf /tmp/mjfn_site/flax* /tmp/mjfn_site/optax* /tmp/mjfn_site/orbax*
    versions
fi
# 2. The measurements, each a named step; $STEPS picks and orders them (default: all, in this
#    order; the budget skips what does not fit). The whole-process CLI runs are the headline:
#    each trainer's own command line as one fresh process, the way a user meets it; the JAX
#    one first cold ('auto's timed trial included, cached for the later runs), then again warm
#    (the persistent XLA cache and the trial's choice from the first), and the PyTorch twice.
C="mjfn_jax/configs/benchmark.py:$PRESET"
n_cli=0
cli() { # cli NAME LIMIT TRAINER [overrides...]: one whole-process LOSO; results.json kept
    local name=$1 limit=$2 trainer=$3 rc
    shift 3
    n_cli=$((n_cli + 1))
    if [ "$trainer" = jax ]; then
        step "$name" "$limit" $PY -m mjfn_jax.main --config "$C" --workdir "$WORK/$n_cli" "$@"
    else
        step "$name" "$limit" $PY experiments/pytorch_baseline/train.py --config "$C" \
            --workdir "$WORK/$n_cli" "$@"
    fi
    rc=$?
    say "$name: workdir $(du -sb "$WORK/$n_cli" 2>/dev/null | cut -f1) bytes"  # checkpoints' disk
    cp "$WORK/$n_cli/results.json" "$RESULTS/$MACHINE/${name}_results.json" 2>>"$LOG"
    return $rc
}
run_step() {
    case $1 in
    loso_cli_jax) cli loso_cli_jax 240 jax ;;
    loso_cli_torch) cli loso_cli_torch 180 torch ;;
    loso_cli_jax_warm) cli loso_cli_jax_warm 150 jax ;;
    loso_cli_jax_warm_again) cli loso_cli_jax_warm_again 150 jax ;;
    loso_cli_torch_again) cli loso_cli_torch_again 180 torch ;;
    loso_cli_jax_bf16) cli loso_cli_jax_bf16 150 jax --config.model.dtype=bfloat16 ;;
    # 'auto's timed trial whatever the run's length (parallel.auto_trial_budget=0), cold.
    loso_cli_jax_trial) cli loso_cli_jax_trial 150 jax --config.parallel.auto_trial_budget=0 ;;
    # A fold's 5 epochs in one training call instead of one call per epoch (warm).
    loso_cli_jax_epc5) cli loso_cli_jax_epc5 100 jax --config.parallel.epochs_per_call=5 ;;
    throughput_torch_compiled) step throughput_torch_compiled 90 $B --skip_loso \
        --batch_sizes 32 --step_variants torch_compiled ;;
    # Training-step throughput at the reference batch: both frameworks, JAX step and scan.
    throughput_fp32) step throughput_fp32 100 $B --skip_loso --batch_sizes 32 \
        --step_variants jax_step,jax_scan,torch_eager ;;
    throughput_bf16) step throughput_bf16 60 $PY experiments/benchmark.py --preset $PRESET \
        --machine "$MACHINE-bf16" --out "$RESULTS" --merge --skip_loso --batch_sizes 32 \
        --step_variants jax_step,torch_eager --config.model.dtype=bfloat16 ;;
    *) say "== $1: unknown step" ;;
    esac
}
ALL="loso_cli_jax loso_cli_torch loso_cli_jax_warm throughput_torch_compiled
loso_cli_jax_bf16 loso_cli_torch_again throughput_fp32 throughput_bf16"
for s in ${STEPS:-$ALL}; do
    run_step "$s"
done

say "done at $(date -u +%FT%TZ), $(($(date +%s) - T0))s"
cp "${MJFN_JAX_CACHE_DIR:-$HOME/.cache/mjfn_jax}/auto_strategy.json" "$RESULTS/$MACHINE/" \
    2>>"$LOG"
tar czf "$OUT/results.tgz" -C "$RESULTS" $(cd "$RESULTS" && ls -d "$MACHINE"*) 2>>"$LOG"
for f in "$RESULTS/$MACHINE/benchmark.md"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
done
rm -rf "$WORK"
grep "^==" "$LOG"
