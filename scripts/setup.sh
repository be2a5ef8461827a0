#!/usr/bin/env bash
# Create .venv and install mdr with everything the demo, the tests and pyserini need. Idempotent.
#   bash scripts/setup.sh            # CPU machine: torch 2.13.0 (CPU wheel) + faiss-cpu
#   bash scripts/setup.sh --gpu      # CUDA machine (run it on a GPU node): torch 2.13.0 for CUDA 12 + faiss-gpu
#   MDR_EXTRAS=dev,pyserini,me5,thai,gpu bash scripts/setup.sh   # the same as --gpu
# Exactly one faiss build ends up installed (faiss-cpu and faiss-gpu ship the same files). A GPU install
# replaces a CPU torch left in a reused venv, and ends by checking that faiss sees as many GPUs as torch
# (python -m mdr.utils.environment check --want gpu). docs/gpu.md: the supported torch / faiss / CUDA pairing.
#   MDR_TORCH_INDEX   where the GPU install takes torch from (default: PyTorch's CUDA 12.8 index)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${MDR_EXTRAS:-dev,pyserini,me5,thai}
WANT=cpu
for arg in "$@"; do
  case "$arg" in
    --gpu) WANT=gpu ;;
    --cpu) WANT=cpu ;;
    *) echo "setup.sh: unknown argument $arg (--gpu or --cpu)" >&2; exit 2 ;;
  esac
done
if [[ ",$EXTRAS," == *",gpu,"* ]]; then WANT=gpu; fi
# the faiss extra: `cpu` or `gpu`, never both
EXTRAS=$(echo ",$EXTRAS," | sed -e 's/,cpu,/,/g' -e 's/,gpu,/,/g' -e 's/^,*//' -e 's/,*$//')
EXTRAS=${EXTRAS:+$EXTRAS,}$WANT
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip
check() { PYTHONPATH=. $PY -m mdr.utils.environment "$@"; }  # stdlib + torch/faiss only: runs before mdr is installed
if [ "$WANT" = gpu ]; then
  TORCH_INDEX=${MDR_TORCH_INDEX:-$(PYTHONPATH=. $PY -c 'from mdr.utils.environment import TORCH_CUDA_INDEX as i; print(i)')}
  if ! check torch --want gpu; then  # no torch, a CPU torch from a reused venv, or another CUDA major
    $PY -m pip uninstall -y -q torch || true
    $PY -m pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple
  fi
  UNWANTED=faiss-cpu
else
  # torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build on CPU-only machines.
  $PY -m pip install -q "torch==2.13.0"
  UNWANTED=faiss-gpu
fi
# both builds write faiss/*: removing one leaves the other broken, so remove both and reinstall the wanted one
if $PY -m pip show -q "$UNWANTED" >/dev/null 2>&1; then
  echo "[mdr] removing $UNWANTED (this venv now gets the $WANT faiss build)"
  $PY -m pip uninstall -y -q faiss-cpu faiss-gpu
fi
$PY -m pip install -q -e ".[${EXTRAS}]"
check check --want "$WANT"
$PY -c "import mdr, torch, faiss, lightning, hydra; print('mdr', mdr.__version__, 'torch', torch.__version__, 'faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0, 'ready')"
