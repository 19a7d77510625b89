#!/usr/bin/env bash
# The checks that need a GPU, in one script sized for a short lease of one CUDA GPU (224 s on an H200, 2026-11-27):
#
#   bash benchmarks/gpu_check.sh OUTDIR            # OUTDIR receives summary.txt, the logs and the recorded rows
#
# 1. every task that run.py lists, on its embedded default config (the bundled samples, nothing downloaded):
#    a. `fit` on one GPU in bf16-mixed (30 optimizer steps), then `predict` from the last.ckpt it wrote;
#    b. `fit` with configs/strategies/fsdp.yaml (FSDP, one GPU: the wrap policy, activation checkpointing and the
#       gathered single-file checkpoint), then `predict` from that checkpoint with the default strategy;
#    c. `fit` with configs/strategies/deepspeed_zero2.yaml (DeepSpeed ZeRO-2, one GPU), if deepspeed imports;
#    and lm and classify once more in 32-true, to compare the final losses of bf16-mixed and float32;
#    these run side by side (one process each, distinct rendezvous ports);
# 2. then, alone on the GPU, benchmarks/throughput.py --device cuda: our BERT and GPT against transformers at
#    BERT-base / GPT-2-small shapes, bf16 autocast and float32 (eager; GPU_CHECK_COMPILE=1 adds torch.compile,
#    GPU_CHECK_THROUGHPUT="bf16" picks the precisions); it appends its rows to
#    benchmarks/results.jsonl, and the rows added are copied to OUTDIR/results_new.jsonl.
# Each step's exit code, wall time and last lines go to OUTDIR/summary.txt; a failing step never stops the others.
# Python packages the GPU machine lacks are given as wheels in .whl/ and installed under /tmp/site first; deepspeed
# as its sdist, built there. The H200 image of 2026-11-27 lacked: jsonargparse, docstring_parser, typeshed_client,
# datasets, dill, multiprocess, and for deepspeed hjson, pydantic, pydantic_core, annotated_types,
# typing_inspection, typing_extensions (a newer one). `pip download --no-deps --only-binary=:all: --python-version
# 3.12 --platform manylinux2014_x86_64 -d .whl NAME==VERSION` fetches each; `pip download --no-deps -d .whl deepspeed`.
set -u
SECONDS=0                                    # phases that would overrun a ~10-minute lease are skipped
OUTDIR=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUTDIR/logs"
SUMMARY=$OUTDIR/summary.txt
PY=${PYTHON:-python3}
STEPS=${GPU_CHECK_STEPS:-30}
ACCEL=${GPU_CHECK_ACCELERATOR:-gpu}          # cpu: a dry run of the plumbing on a machine without a GPU
export PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME TIMEOUT_S CMD...: run CMD, log to logs/NAME.log, one summary line (rc, seconds) and the log's last lines
step() {
    local name=$1 limit=$2; shift 2
    local start rc
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUTDIR/logs/$name.log" 2>&1
    rc=$?
    {
        echo "== $name: rc=$rc in $(( $(date +%s) - start )) s: $*"
        grep -E "Error|error:|metrics:|last checkpoint|Traceback" "$OUTDIR/logs/$name.log" | tail -4 | cut -c1-400
    } >> "$SUMMARY"
    return $rc
}

if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUTDIR/logs/pip.log" 2>&1 || note "pip install of .whl/*.whl failed (logs/pip.log)"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
    date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    $PY -c "import torch, pytorch_lightning as pl, jsonargparse, tokenizers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), '| lightning', pl.__version__, '| jsonargparse', jsonargparse.__version__, '| tokenizers', tokenizers.__version__, '| transformers', transformers.__version__)" 2>&1
} | tee -a "$SUMMARY"

# deepspeed from its sdist (pure Python with ops compiled on first use), built while the first runs go
if [ "$ACCEL" = gpu ] && ls .whl/deepspeed-*.tar.gz > /dev/null 2>&1; then
    ( DS_BUILD_OPS=0 $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target /tmp/site-ds .whl/deepspeed-*.tar.gz > "$OUTDIR/logs/deepspeed_install.log" 2>&1
      echo $? > /tmp/deepspeed_install.rc ) &
    DS_INSTALL=1
fi

TASKS=${GPU_CHECK_TASKS:-$($PY -c "import run; print(' '.join(run.TASKS))")}
note "tasks: $TASKS"
COMMON=(--trainer.accelerator "$ACCEL" --trainer.devices 1 --trainer.max_steps "$STEPS" --wandb false
        --trainer.enable_progress_bar false)
PRECISION=(--trainer.precision bf16-mixed)
[ "$ACCEL" = cpu ] && PRECISION=(--trainer.precision 32-true)

# fit then predict from the checkpoint the fit wrote; $1 = label, $2 = task, $3 = port, the rest: extra fit args
# (before the common ones, so that a task config given again cannot undo --trainer.max_steps)
fit_predict() {
    local label=$1 task=$2 port=$3; shift 3
    local dir=runs/gpu_check/$label
    MASTER_PORT=$port step "$label.fit" 200 $PY run.py "$task" fit "$@" "${COMMON[@]}" --run_dir "$dir" &&
    step "$label.predict" 90 $PY run.py "$task" predict --ckpt_path "$dir/checkpoints/last.ckpt" \
        --trainer.accelerator "$ACCEL" --trainer.devices 1 --trainer.enable_progress_bar false \
        --predict_output "$dir/predictions.jsonl" &&
    echo "   $label: $(wc -l < "$dir/predictions.jsonl") predictions; first: $(head -c 200 "$dir/predictions.jsonl")" \
        >> "$SUMMARY"
}

rm -rf runs/gpu_check
port=29500                                   # each job its own rendezvous port, counted here, not in the job
for task in $TASKS; do
    port=$((port + 1)); fit_predict "$task.bf16" "$task" $port "${PRECISION[@]}" &
    if [ "$ACCEL" = gpu ]; then
        port=$((port + 1)); fit_predict "$task.fsdp" "$task" $port --config "configs/$task/default.yaml" \
            --config configs/strategies/fsdp.yaml &
    fi
done
for task in lm classify; do
    port=$((port + 1)); fit_predict "$task.fp32" "$task" $port --trainer.precision 32-true &
done
wait

if [ -n "${DS_INSTALL:-}" ] && [ $SECONDS -lt 300 ]; then
    [ "$(cat /tmp/deepspeed_install.rc 2>/dev/null)" = 0 ] || note "deepspeed install failed (logs/deepspeed_install.log)"
    export PYTHONPATH=/tmp/site-ds:$PYTHONPATH
    if $PY -c "import deepspeed; print('deepspeed', deepspeed.__version__)" >> "$SUMMARY" 2>&1; then
        for task in $TASKS; do
            port=$((port + 1))
            MASTER_PORT=$port step "$task.deepspeed" 150 $PY run.py "$task" fit \
                --config "configs/$task/default.yaml" --config configs/strategies/deepspeed_zero2.yaml \
                "${COMMON[@]}" --run_dir "runs/gpu_check/$task.deepspeed" &
        done
        wait
        for task in $TASKS; do
            ls -d runs/gpu_check/$task.deepspeed/checkpoints/* >> "$SUMMARY" 2>&1
        done
        for task in $TASKS; do        # a DeepSpeed checkpoint is a directory: does predict read it?
            [ -e "runs/gpu_check/$task.deepspeed/checkpoints/last.ckpt" ] &&
                step "$task.deepspeed.predict" 90 $PY run.py "$task" predict \
                    --ckpt_path "runs/gpu_check/$task.deepspeed/checkpoints/last.ckpt" --trainer.accelerator gpu \
                    --trainer.devices 1 --predict_output "runs/gpu_check/$task.deepspeed/predictions.jsonl" &
        done
        wait
    fi
fi

# final losses: bf16-mixed against float32, same seed and steps
for label in lm.bf16 lm.fp32 classify.bf16 classify.fp32; do
    [ -f "runs/gpu_check/$label/fit_metrics.json" ] &&
        echo "   $label: $(tr -d '\n' < "runs/gpu_check/$label/fit_metrics.json" | cut -c1-400)" >> "$SUMMARY"
done

if [ "$ACCEL" = gpu ]; then
    before=$(wc -l < benchmarks/results.jsonl)
    # GPU_CHECK_COMPILE=1 adds the torch.compile variants (about 3 more minutes at these shapes)
    for precision in ${GPU_CHECK_THROUGHPUT:-bf16 fp32}; do
        [ $SECONDS -lt 480 ] && step "throughput_$precision" 200 $PY benchmarks/throughput.py --device cuda \
            --precision "$precision" --shapes base --rounds 3 $([ "${GPU_CHECK_COMPILE:-0}" = 1 ] || echo --no-compile)
        grep -A12 "^## Summary" "$OUTDIR/logs/throughput_$precision.log" >> "$SUMMARY"
    done
    tail -n +$((before + 1)) benchmarks/results.jsonl > "$OUTDIR/results_new.jsonl"
fi
tar czf "$OUTDIR/logs.tgz" -C "$OUTDIR" logs && rm -rf "$OUTDIR/logs"
note "done $(date -u)"
