#!/usr/bin/env bash
# Run here (no device time) before a GPU call: what the device machine lacks, put where a call takes it along.
#
#   bash benchmarks/gpu_prepare.sh            # .whl/: the packages the H200 image lacks, at this .venv's versions
#   bash benchmarks/gpu_prepare.sh --qa       # and shared/: all-MiniLM-L6-v2 as float16 plus SQuAD v1.1 dev, for
#                                             # `bash benchmarks/qa_gpu.sh OUT shared/minilm shared/dev-v1.1.json`
#
# Both folders are git-ignored. shared/ travels with every call by itself; .whl must be named in the call's carry, and
# the scripts that run there (gpu_check.sh, qa_gpu.sh) install it under /tmp/site. A call carries at most 64 MiB:
# this prints what the two folders weigh. Missing from the H200 image (benchmarks/gpu_check.sh, 2026-11-27):
# jsonargparse and its docstring_parser and typeshed_client, datasets and its dill and multiprocess.
# qa_gpu.sh widens shared/minilm to float32 in place (91 MB more): a dry run here should use a copy of shared/minilm.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
for name in jsonargparse docstring_parser typeshed_client datasets dill multiprocess; do
    version=$($PY -c "import importlib.metadata as m; print(m.version('$name'))")
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
if [ "${1:-}" = --qa ]; then
    $PY benchmarks/widen_fp16.py narrow ../shared/data/models/all-MiniLM-L6-v2 shared/minilm
    cp ../shared/data/squad/dev-v1.1.json shared/dev-v1.1.json
fi
du -sh .whl ${1:+shared}
