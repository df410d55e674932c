#!/usr/bin/env bash
# One lent-GPU session's measurements, in priority order, each step under its own time limit so
# that a slow or failing step costs only its own slot and the rest still run (a lent machine
# has no network and ~10 minutes per command: see experiments/results/nvidia-h200/README.md).
#
#   bash experiments/gpu_session.sh [OUT] [BUDGET_S] [PRESET]
#
# OUT: where the log and a tarball of experiments/results/<machine>/ go (default ./gpu_out);
# BUDGET_S: the whole script's deadline (default 540); PRESET: gpu (default) or quick (a check
# of this script on any machine). Python: $PYTHON, else python3. Results folder root: $RESULTS,
# else experiments/results. Pure-Python wheels in .whl/
# (the pinned flax/optax/orbax/ml_collections, see requirements.txt) are installed to
# /tmp/mjfn_site first when present; if our modules fail to import with them, the machine's own
# flax/optax/orbax are used. Results of 2026-11-26: experiments/results/nvidia-h200/README.md.
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
B="$PY experiments/benchmark.py --preset $PRESET --machine $MACHINE --merge --out $RESULTS"

# 1. Imports. Pinned wheels that fail under the machine's jax (an H200 lease, 2026-11-26: flax
#    0.12.8 under jax 0.11.2) are dropped for the machine's own (versions in the log/results).
if ! step imports 60 $PY -c "import mjfn_jax.train, experiments.benchmark_lib"; then
    say "imports failed with the carried wheels: using the machine's flax/optax/orbax"
    rm -rf /tmp/mjfn_site/flax* /tmp/mjfn_site/optax* /tmp/mjfn_site/orbax*
    versions
fi
# 2. The headline: full LOSO at composite scale, each trainer's own CLI as one whole process,
#    the way a user meets it: JAX cold (auto's timed trial included, written to its
#    results.json), then PyTorch eager. The workdirs' results.json come back.
C="experiments/configs/benchmark.py:$PRESET"
step loso_cli_jax 240 $PY -m mjfn_jax.main --config "$C" --workdir "$WORK/jax"
cp "$WORK/jax/results.json" "$OUT/loso_cli_jax_results.json" 2>>"$LOG"
step loso_cli_torch 180 $PY experiments/pytorch_baseline/train.py --config "$C" \
    --workdir "$WORK/torch"
cp "$WORK/torch/results.json" "$OUT/loso_cli_torch_results.json" 2>>"$LOG"
# 3. Training-step throughput at the reference batch: both frameworks, JAX step and scan.
step throughput_fp32 100 $B --skip_loso --batch_sizes 32 \
    --step_variants jax_step,jax_scan,torch_eager
# 4. bf16 (JAX): own results folder.
step throughput_bf16 60 $PY experiments/benchmark.py --preset $PRESET --machine "$MACHINE-bf16" \
    --out "$RESULTS" --merge --skip_loso --batch_sizes 32 --step_variants jax_step,torch_eager \
    --config.model.dtype=bfloat16
# 5. Where the GPU step's time goes (trace per XLA op category) and a 16-fold LOSO breakdown.
step profile 90 $PY -m experiments.profile_step --config "experiments/configs/benchmark.py:$PRESET" \
    --steps 20 --machine "$MACHINE" --out "$RESULTS"
# 6. torch.compile, if time is left.
step throughput_torch_compiled 90 $B --skip_loso --batch_sizes 32 --step_variants torch_compiled

say "done at $(date -u +%FT%TZ), $(($(date +%s) - T0))s"
cp "${MJFN_JAX_CACHE_DIR:-$HOME/.cache/mjfn_jax}/auto_strategy.json" "$OUT/" 2>>"$LOG"
tar czf "$OUT/results.tgz" -C "$RESULTS" $(cd "$RESULTS" && ls -d "$MACHINE"*) 2>>"$LOG"
for f in "$RESULTS/$MACHINE/benchmark.md" "$RESULTS/$MACHINE/profile_step.md"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
done
rm -rf "$WORK"
grep "^==" "$LOG"
