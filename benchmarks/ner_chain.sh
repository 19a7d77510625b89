#!/bin/sh
# Issue 4's three measurements back to back under one hold of the lock (baseline and our run see the same
# machine; the frozen-feature table after them):
#   nohup flock /tmp/heavy.lock sh benchmarks/ner_chain.sh > /tmp/ner_chain.log 2>&1 &
set -e
cd "$(dirname "$0")/.."
python benchmarks/ner_hf_baseline.py
python benchmarks/ner_run.py --config configs/ner/conll_minilm.yaml
python benchmarks/ner_features.py
