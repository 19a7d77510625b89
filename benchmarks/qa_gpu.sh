#!/usr/bin/env bash
# Issue 12's wall-time comparison on a GPU lease, in one call: `benchmarks/qa.py --which both` (continued
# pre-training and our qa fit, then the transformers loop), one CUDA GPU, float32, both recorded in
# benchmarks/results.jsonl (the rows added are copied to OUTDIR/results_new.jsonl; the logs to OUTDIR).
#
#   bash benchmarks/qa_gpu.sh OUTDIR MINILM_DIR SQUAD_JSON
#
# The configs read ../shared/data/models/all-MiniLM-L6-v2 and ../shared/data/squad/dev-v1.1.json, which a lease does
# not carry: where they are missing, this links MINILM_DIR and SQUAD_JSON there. MINILM_DIR may hold the weights as
# float16 (`python benchmarks/widen_fp16.py narrow ../shared/data/models/all-MiniLM-L6-v2 shared/minilm` here; the
# float32 file is 91 MB, a lease carries 64 MiB, and a shared/ folder in the checkout travels, git-ignored); they are
# widened to float32 first. Python packages the GPU machine lacks: as benchmarks/gpu_check.sh says (.whl/, installed
# under /tmp/site).
# QA_GPU_SMOKE=1: a few steps of each stage, nothing recorded (QA_GPU_ACCELERATOR=cpu runs that on a CPU).
set -u
OUTDIR=${1:?usage: OUTDIR MINILM_DIR SQUAD_JSON}; MINILM=$(realpath "${2:?}"); SQUAD=$(realpath "${3:?}")
PY=${PYTHON:-python3}
ACCEL=${QA_GPU_ACCELERATOR:-gpu}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUTDIR/pip.log" 2>&1 || { echo "pip install of .whl/*.whl failed ($OUTDIR/pip.log)"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY benchmarks/widen_fp16.py widen "$MINILM" || exit 1
DATA=../shared/data
for pair in "models/all-MiniLM-L6-v2:$MINILM" "squad/dev-v1.1.json:$SQUAD"; do
    where=$DATA/${pair%%:*}
    if [ ! -e "$where" ]; then
        mkdir -p "$(dirname "$where")" && ln -s "${pair#*:}" "$where" || { echo "cannot link $where"; exit 1; }
    fi
done

HF_ARGS="--model $MINILM --data $SQUAD"
TAPT_ARGS="--trainer.accelerator $ACCEL --trainer.devices 1"
QA_ARGS=(--trainer.accelerator "$ACCEL" --trainer.devices 1)
RECORD=()
if [ "${QA_GPU_SMOKE:-0}" = 1 ]; then
    HF_ARGS="$HF_ARGS --max_steps 3 --limit_eval 50"
    TAPT_ARGS="$TAPT_ARGS --trainer.max_steps 3"
    QA_ARGS+=(--trainer.max_epochs 2 --trainer.limit_train_batches 2 --trainer.limit_val_batches 2)
    RECORD=(--no_record)
fi
rows_before=$(wc -l < benchmarks/results.jsonl)
$PY benchmarks/qa.py --which both "${RECORD[@]}" --run_dir runs/bench/squad_minilm_gpu --hf_args "$HF_ARGS" \
    --tapt configs/pretrain/minilm_squad.yaml --tapt_args "$TAPT_ARGS" -- "${QA_ARGS[@]}" 2>&1 | tee "$OUTDIR/qa.log" \
    | grep -E "^(qa:|ours|EM|step 0/|\\$ )"
rc=${PIPESTATUS[0]}
tail -n +$((rows_before + 1)) benchmarks/results.jsonl > "$OUTDIR/results_new.jsonl"
echo "rc=$rc; $(wc -l < "$OUTDIR/results_new.jsonl") rows recorded"
exit "$rc"
