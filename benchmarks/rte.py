"""RTE (sentence pairs), all-MiniLM-L6-v2 fine-tuned with configs/classify/rte_minilm.yaml; records dev accuracy.

    flock /tmp/heavy.lock python benchmarks/rte.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.sst2 import run_ours  # noqa: E402

if __name__ == "__main__":
    os.chdir(ROOT)
    run_ours("rte", "configs/classify/rte_minilm.yaml", "accuracy", sys.argv[1:])
