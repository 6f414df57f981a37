#!/usr/bin/env bash
# The GPU benchmark in one call on a lent GPU machine (H100/H200; about 5 minutes: the time limits below
# add up to 9 minutes, so a call with timeout_s=600 returns everything that finished):
# bf16, C=1024, batch 256, 2 s crops; eager and torch.compile, with and without noise + reverberation,
# SpeechBrain's ECAPA_TDNN step as the peer in the same runs. It installs nothing but the carried wheels
# and generates its corpus (and, unless carried, its noise and RIRs) on the machine.
#
# Prepare once on the development machine (folders ignored by .gitignore, never committed):
#   mkdir -p .whl && cp ../shared/device-wheels/*.whl .whl/
# Optional, to use the arsc corpus's MUSAN-style noise and RIRs instead of generated ones (~17 MB):
#   mkdir -p .bench_noise && cp -r ../shared/data/arsc/musan ../shared/data/arsc/RIRS_NOISES .bench_noise/
# Then run it with carry [".whl"] (or [".whl", ".bench_noise"]):
#   bash scripts/device_bench.sh
# Results: one JSON per run and the printed tables (tables.txt) under $OUT (or runs/device_bench/).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
OUT_DIR=${OUT:-runs/device_bench}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
nproc | tee "$OUT_DIR/cpus.txt"
df -h /dev/shm | tee "$OUT_DIR/shm.txt"  # loader workers hand batches over in shared memory

NOISE=()
if [ -d .bench_noise/musan ]; then NOISE=(--musan-dir .bench_noise/musan --rir-dir .bench_noise/RIRS_NOISES); fi
COMMON=(--data synthetic --synthetic-dir /tmp/bench_data --synthetic-speakers 400 --synthetic-utterances 24
        --device cuda --precision bf16 --channels 1024 --batch-size 256 --crop-frames 200 --workers auto
        ${NOISE[@]+"${NOISE[@]}"})

run() {  # name, time limit (s), extra arguments
  local name=$1 limit=$2; shift 2
  echo "=== $name" | tee -a "$OUT_DIR/tables.txt"
  timeout "$limit" python3 scripts/benchmark.py "${COMMON[@]}" "$@" --out "$OUT_DIR/$name.json" 2>&1 \
    | grep -v -E "^(W|I)[0-9]{4} " | tee -a "$OUT_DIR/tables.txt"
}

echo "=== generating the corpus" | tee -a "$OUT_DIR/tables.txt"
timeout 120 python3 scripts/benchmark.py "${COMMON[@]}" --prepare-only 2>&1 | tee -a "$OUT_DIR/tables.txt"
# Most important first (the targets: whole loop with noise + reverberation, and the peer in the same run).
run bf16_compile_augment 200 --augment on --compile --steps 100 --warmup 5
run bf16_eager_augment 100 --augment on --steps 60 --warmup 5
run bf16_compile_noaugment 80 --augment off --compile --steps 100 --warmup 5 --peer off
run bf16_eager_noaugment 50 --augment off --steps 60 --warmup 5 --peer off
echo "done"
