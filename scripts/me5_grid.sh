#!/usr/bin/env bash
# The whole me5_small grid in the order a partial result is most useful: the mechanism block (c) seed by seed,
# the zero-shot rows (d), then the map (e) at seeds 0-2 for every language before seeds 3-4. Blocks a and b
# (me5_dose, me5_parallel) are complete in docs/results/me5_grid. Every command skips the jobs its sweep folder
# already holds, so rerunning this script after an interruption finishes what is missing.
#   nohup nice -n 10 bash scripts/me5_grid.sh > grid.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
status=0
run() { echo "== $(date -u +%FT%TZ) $*"; "$PY" train.py "$@" || status=1; }
for seed in 0 1 2 3 4; do
  run experiment=me5_miner seed=$seed
  run experiment=me5_miner seed=$seed language=th negatives=bm25_thai_words
done
run experiment=me5_zero_shot
for seed in 0 1 2 3 4; do
  run experiment=me5_map seed=$seed
done
echo "== $(date -u +%FT%TZ) grid finished (status $status)"
exit $status
