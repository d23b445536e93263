#!/usr/bin/env bash
# The GPU check, run in one call on a lent GPU machine (no Rust there) with the binaries that
# scripts/build-gpu-bins.sh built here, carried in .device/:
#     bash .device/gpu-check.sh            (writes into $OUT, else ./gpu-check-out)
# 1. probe: the device, the driver, which CUDA libraries resolve;
# 2. correctness: tests/gpu.rs (CUDA fused kernels vs the CPU kernels, every dtype, odd sizes,
#    gradients) with every output poisoned (CANDLE_ADEX_POISON=1) so an unwritten element shows,
#    and tests/device.rs (the reference path on the GPU vs the CPU);
# 3. speed: `adex bench --device cuda`: neuron-steps/s per op, dtype and shape, beside a
#    device-to-device copy of the same bytes measured in the same run (the roof); writes the table.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT" .device/run
exec > >(tee "$OUT/gpu-check.log") 2>&1
for f in .device/bin/*.xz; do xz -dc "$f" > ".device/run/$(basename "$f" .xz)"; done
chmod +x .device/run/*
B=.device/run
echo "== probe ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
ldconfig -p | grep -E 'libcuda\.so\.1|libcublas(Lt)?\.so\.13|libcurand\.so\.10|libcudart\.so\.13'
ls -d /usr/local/cuda*/lib64 2>/dev/null
if ldd "$B/adex" | grep -q 'not found'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 $(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__) + "/cu13/lib")' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
fi
ldd "$B/adex" | grep -E 'not found|cuda|cublas|curand'
status=0
echo "== correctness: CUDA fused kernels vs the CPU kernels (outputs poisoned)"
CANDLE_ADEX_POISON=1 timeout 300 "$B/gpu" --test-threads 1 --nocapture || status=1
echo "== correctness: the reference path on the GPU vs the CPU"
timeout 120 "$B/device" --test-threads 1 --nocapture || status=1
echo "== speed: adex bench --device cuda"
timeout 400 "$B/adex" bench --device cuda ${BENCH_ARGS:-} | tee "$OUT/gpu-bench.txt" || status=1
echo "== done: status $status"
exit $status
