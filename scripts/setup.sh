#!/usr/bin/env bash
# Create .venv and install mdr with everything the demo, the tests and pyserini need. Idempotent.
#   bash scripts/setup.sh            # CPU machine
#   MDR_EXTRAS=dev,pyserini,me5,gpu bash scripts/setup.sh   # add faiss-gpu on a CUDA machine
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${MDR_EXTRAS:-dev,pyserini,me5}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build on CPU-only machines.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
.venv/bin/python -c "import mdr, torch, faiss, lightning, hydra; print('mdr', mdr.__version__, 'torch', torch.__version__, 'ready')"
