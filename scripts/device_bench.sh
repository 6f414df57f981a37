#!/usr/bin/env bash
# The whole GPU benchmark in one call on a lent GPU machine (one H100 or H200, 16 CPUs), printing one table
# at the end. On an H100 it took 351 s with CAM++ cut off at its old 70 s limit, and CAM++ alone 203 s (it
# compiles slowly), so the whole set takes about 9 minutes; the limits below add up to 590 s (run it with
# timeout_s=600). Each run writes its JSON as soon as it finishes, so what finished is in the table even
# when a later run is cut off; the runs go most important first:
#   1. ECAPA-TDNN C=1024, bf16 + torch.compile, noise + reverberation, batch 256, 2 s crops: every stage of
#      scripts/benchmark.py in one run: (a) loading, (b) augmentation + features, (c) step, (d) whole loop,
#      SpeechBrain's ECAPA_TDNN step as the peer, (e) loading and whole loop on 4-20 s WAV and FLAC with a
#      warm and a cold page cache, each with 1 and 4 read threads per loader process, (f) extraction of
#      4-10 s utterances in bf16 (auto and 0 loader processes), the header scan, and the model alone on
#      the same batches from memory (and on batches filled to 64)
#   2. every other encoder of the recipes (ResNet34, CAM++), compiled: (c) and (d)
#   3. ECAPA-TDNN eager (no compile): (c) and (d)
# It installs nothing but the carried wheels (hydra-core, omegaconf, soundfile, speechbrain and their needs)
# and generates its corpora (and, unless carried, its noise and RIRs) on the machine.
#
# Prepare once on the development machine (folders ignored by .gitignore, never committed):
#   mkdir -p .whl && cp ../shared/device-wheels/*.whl .whl/
# Optional, to use the arsc corpus's MUSAN-style noise and RIRs instead of generated ones (~17 MB):
#   mkdir -p .bench_noise && cp -r ../shared/data/arsc/musan ../shared/data/arsc/RIRS_NOISES .bench_noise/
# Then run it with carry [".whl"] (or [".whl", ".bench_noise"]):
#   bash scripts/device_bench.sh
# Results: one JSON per run, the printed tables (tables.txt) and the combined table (table.md) under $OUT
# (or runs/device_bench/).
#
# On a CPU-only machine, SMOKE=1 runs the same sequence with tiny sizes and 20 times the time limits
# (tests/test_benchmark.py does), to check that every run it makes works before a GPU's minutes are spent.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The device machine lacks hydra-core, omegaconf and soundfile: install the carried wheels there only.
if [ -d .whl ] && ! $PY -c "import hydra, omegaconf, soundfile" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-runs/device_bench}
mkdir -p "$OUT_DIR"
: > "$OUT_DIR/tables.txt"
SMOKE=${SMOKE:-0}
# The limits are sized for the GPU; a smoke run on a shared CPU gets LIMIT_SCALE times more (default 20).
SCALE=${LIMIT_SCALE:-1}
[ "$SMOKE" = 1 ] && SCALE=${LIMIT_SCALE:-20}

if [ "$SMOKE" = 1 ]; then
  WORK=${BENCH_DIR:-/tmp/device_bench_smoke}
  SIZES=(--synthetic-speakers 4 --synthetic-utterances 4 --device cpu --precision fp32 --batch-size 4
         --crop-frames 40 --workers 0 --storage-utterances 12 --extract-utterances 10 --extract-workers 0,2
         --storage-read-threads 1,2)
  ECAPA=(--channels 16 --override model.mfa_channels=48 model.attention_channels=8 model.se_bottleneck=8)
  STEPS=(--steps 1 --warmup 1)
  OTHER_STEPS=(--steps 1 --warmup 1)
  OTHER_MODELS=(resnet34_tiny campplus_tiny)
  COMPILE=()
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
  nproc | tee "$OUT_DIR/cpus.txt"
  df -h /dev/shm | tee "$OUT_DIR/shm.txt"  # loader workers hand batches over in shared memory
  # Cold reads need a file system whose pages can be dropped: not tmpfs.
  WORK=/tmp/bench_data
  [ "$(stat -f -c %T /tmp)" = tmpfs ] && WORK=$PWD/data/bench_data
  df -hT "$(dirname "$WORK")" | tee "$OUT_DIR/disk.txt"
  SIZES=(--synthetic-speakers 400 --synthetic-utterances 24 --device cuda --precision bf16 --batch-size 256
         --crop-frames 200 --workers auto --extract-utterances 6000 --extract-workers auto,0
         --storage-read-threads 1,4)
  ECAPA=(--channels 1024)
  STEPS=(--steps 100 --warmup 5)
  OTHER_STEPS=(--steps 40 --warmup 5)
  OTHER_MODELS=(resnet34 campplus)
  COMPILE=(--compile)
fi
NOISE=()
if [ -d .bench_noise/musan ]; then NOISE=(--musan-dir .bench_noise/musan --rir-dir .bench_noise/RIRS_NOISES); fi
COMMON=(--data synthetic --synthetic-dir "$WORK" --storage-dir "${WORK}_storage" "${SIZES[@]}" --augment on
        ${NOISE[@]+"${NOISE[@]}"})

run() {  # name, time limit (s), extra arguments
  local name=$1 limit=$2; shift 2
  echo "=== $name" | tee -a "$OUT_DIR/tables.txt"
  timeout $((limit * SCALE)) "$PY" scripts/benchmark.py "${COMMON[@]}" "$@" --out "$OUT_DIR/$name.json" 2>&1 \
    | grep -v -E "^(W|I)[0-9]{4} " | tee -a "$OUT_DIR/tables.txt"
}

echo "=== generating the corpora" | tee -a "$OUT_DIR/tables.txt"
timeout $((40 * SCALE)) "$PY" scripts/benchmark.py "${COMMON[@]}" ${STEPS[@]+"${STEPS[@]}"} --stages a,e,f --prepare-only 2>&1 \
  | tee -a "$OUT_DIR/tables.txt"
# Most important first: the targets (whole loop, cold storage, extraction) and the peer, in one run.
run ecapa_compiled 240 "${ECAPA[@]}" ${COMPILE[@]+"${COMPILE[@]}"} "${STEPS[@]}" --stages a,b,c,d,e,f --peer on
for model in "${OTHER_MODELS[@]}"; do  # CAM++ compiles for about 150 s on the H100
  run "$model" "$([ "$model" = campplus ] && echo 190 || echo 70)" --model "$model" ${COMPILE[@]+"${COMPILE[@]}"} \
    "${OTHER_STEPS[@]}" --stages c,d --peer off
done
run ecapa_eager 50 "${ECAPA[@]}" "${STEPS[@]}" --stages c,d --peer off
"$PY" scripts/benchmark.py --table "$OUT_DIR"/ecapa_compiled.json "$OUT_DIR"/ecapa_eager.json \
  $(for m in "${OTHER_MODELS[@]}"; do echo "$OUT_DIR/$m.json"; done) | tee "$OUT_DIR/table.md"
echo "done"
