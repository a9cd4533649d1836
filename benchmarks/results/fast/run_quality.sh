#!/usr/bin/env bash
# Δp of every fast DB-MTL mode against exact DB-MTL (issue 12): same spec, same budget, same
# seeds, one STL reference per benchmark (trained once in the same run, reused by the report).
# Usage (from the repository root, the workspace on PYTHONPATH):
#   nice -n 10 bash benchmarks/results/fast/run_quality.sh BENCH [BENCH ...]
# Spools and checkpoints go to ${FAST_WORK:-/tmp/fastbench}/BENCH; the reports to
# benchmarks/results/fast/BENCH/.
set -euo pipefail
PY=${PY:-/work/main/.venv/bin/python}
WORK=${FAST_WORK:-/tmp/fastbench}
METHODS=${METHODS:-"ew dbmtl dbmtl_probe dbmtl_rep dbmtl_periodic"}
SEEDS=${SEEDS:-3}
EPOCHS=${EPOCHS:-}  # empty: the spec's budget; else the same reduced budget for every run
# One torch thread per run: two runs side by side on the 2 cores, and no oversubscription
# (torch's default of one thread per core made every run many times slower under load).
export OMP_NUM_THREADS=${THREADS:-1}
EPOCH_ARGS=()
if [ -n "$EPOCHS" ]; then EPOCH_ARGS=(--epochs "$EPOCHS"); fi
for bench in "$@"; do
  dir="$WORK/$bench"
  out="benchmarks/results/fast/$bench"
  mkdir -p "$dir" "$out"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$PY" -m mtlbench.cli run "$bench" --methods $METHODS --seeds "$SEEDS" "${EPOCH_ARGS[@]}" --stl --quiet \
    --no-tracking --spool "$dir/spool" --out "$dir/out"
  "$PY" -m mtlbench.cli report "$bench" --from-spool --spool "$dir/spool" --out "$dir/report"
  cp "$dir"/report/report.md "$dir"/report/report.json "$out"/ 2>/dev/null || cp -r "$dir"/report/. "$out"/
  {
    echo "command: SEEDS=$SEEDS EPOCHS=$EPOCHS THREADS=$OMP_NUM_THREADS nice -n 10 bash benchmarks/results/fast/run_quality.sh $bench"
    echo "  = mtlbench run $bench --methods $METHODS --seeds $SEEDS ${EPOCH_ARGS[*]} --stl --quiet --no-tracking --spool $dir/spool --out $dir/out"
    echo "  + mtlbench report $bench --from-spool --spool $dir/spool --out $dir/report"
    echo "git: $(git rev-parse --short HEAD)  date: $(date -u +%FT%TZ)  wall: $(( $(date +%s) - start )) s"
    echo "machine: $(nproc --all) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), CPU only, no GPU; $OMP_NUM_THREADS torch thread(s) per run; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$out/command.txt"
done
