#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU tests (every encoder and head under bf16, eager and compiled), then
# the whole-loop benchmark (bf16 + torch.compile, batch 256, 2 s crops, noise + reverberation) for each
# encoder. Carry .whl (see scripts/device_bench.sh). Results under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-runs/device_check}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
timeout 170 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py "tests/test_speed_switches.py::test_cudnn_benchmark_matches_default_algorithms" 2>&1 | tail -5 | tee "$OUT_DIR/tests.txt"
COMMON=(--data synthetic --synthetic-dir /tmp/bench_data --synthetic-speakers 400 --synthetic-utterances 24
        --device cuda --precision bf16 --batch-size 256 --crop-frames 200 --workers auto --augment on --compile
        --stages c,d)
timeout 80 python3 scripts/benchmark.py "${COMMON[@]}" --prepare-only 2>&1 | tail -2
for model in ecapa_tdnn resnet34 campplus; do
  echo "=== $model" | tee -a "$OUT_DIR/tables.txt"
  peer=off; [ "$model" = ecapa_tdnn ] && peer=on
  timeout 110 python3 scripts/benchmark.py "${COMMON[@]}" --model "$model" --channels 1024 --peer $peer \
    --steps 40 --warmup 5 --out "$OUT_DIR/$model.json" 2>&1 | grep -v -E "^(W|I)[0-9]{4} " | tee -a "$OUT_DIR/tables.txt"
done
echo done
