#!/usr/bin/env bash
# Does `python train.py` take the same wall time whether or not another process keeps one core busy?
# Runs the default training twice on this machine, once quiet and once beside `python -c 'while True: pass'`
# pinned to CPU 0, and prints both wall times and their ratio (the target: within 15%). The synthetic corpus
# is generated first, outside the timing. Needs a machine where nothing else runs: any other load makes
# the "quiet" run contended too.
#
#   bash scripts/cpu_load_check.sh                         # the default run (about 4.5 minutes each)
#   bash scripts/cpu_load_check.sh trainer.epochs=3        # extra overrides go to both runs
#   NICE=15 bash scripts/cpu_load_check.sh                 # both runs and the busy loop at this niceness
# Runs are written under a temporary runs_root, removed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NICE=${NICE:-0}
RUNS=$(mktemp -d)
BUSY=
cleanup() {
  [ -n "$BUSY" ] && kill "$BUSY" 2>/dev/null
  rm -rf "$RUNS"
}
trap cleanup EXIT

echo "CPUs: $(nproc); load average: $(cut -d' ' -f1-3 /proc/loadavg); niceness $NICE; overrides: $*"
nice -n "$NICE" "$PY" -c "
import sys
from speakerid.configs import compose
from speakerid.training.setup import prepare_corpus
prepare_corpus(compose('train', sys.argv[1:]).data)" "$@" || exit 1

timed_run() {  # label, overrides: prints the wall time in seconds
  local label=$1 start end
  shift
  start=$(date +%s.%N)
  nice -n "$NICE" "$PY" train.py runs_root="$RUNS" name="$label" trainer.progress_bar=false "$@" \
    > "$RUNS/$label.log" 2>&1 || { echo "train.py failed:" >&2; tail -20 "$RUNS/$label.log" >&2; return 1; }
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }'
}

quiet=$(timed_run quiet "$@") || exit 1
echo "quiet: ${quiet} s (load average after: $(cut -d' ' -f1-3 /proc/loadavg))"
nice -n "$NICE" taskset -c 0 "$PY" -c 'while True: pass' &
BUSY=$!
busy=$(timed_run busy "$@") || exit 1
kill "$BUSY"; BUSY=
echo "one core busy: ${busy} s (load average after: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "busy / quiet: $(awk -v a="$quiet" -v b="$busy" 'BEGIN { printf "%.3f", b / a }') (target: at most 1.15)"
