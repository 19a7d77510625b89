#!/bin/sh
# Issue 4's measurements back to back under one hold of the lock, so our run and the baseline see the same
# machine. Our run first (the target), then the plain transformers loop, then our run is recorded again
# against that baseline, then the frozen-feature table:
#   nohup flock /tmp/heavy.lock sh benchmarks/ner_chain.sh > /tmp/ner_chain.log 2>&1 &
cd "$(dirname "$0")/.."
python benchmarks/ner_run.py --config configs/ner/conll_minilm.yaml --run-dir runs/ner/bench_conll_minilm
ours=$?
python benchmarks/ner_hf_baseline.py
if [ "$ours" -eq 0 ]; then python benchmarks/ner_run.py --record-again runs/ner/bench_conll_minilm; fi
python benchmarks/ner_features.py
