#!/usr/bin/env bash
# Builds, on a machine without a GPU, the binaries that scripts/gpu-check.sh runs on a lent GPU:
# the `adex` command and the CUDA test binaries (tests/gpu.rs, tests/device.rs), release mode,
# `cuda` feature, stripped and xz-compressed into .device/bin (ignored by git; small enough to
# travel to the GPU machine). Uses ../shared/cuda/setup-cuda.sh for the pinned CUDA 13.0 toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/cuda .device/bin
if [ ! -s target/cuda-env.sh ]; then
  cargo fetch
  bash ../shared/cuda/setup-cuda.sh > target/cuda-env.sh
fi
. target/cuda-env.sh
export CARGO_TARGET_DIR=target/cuda
# Integration tests build the `adex` binary too, with the same lib (one compile of the crate).
cargo test --release --features cuda --no-run --test gpu --test device --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > target/cuda/test-bins.txt
rm -f .device/bin/*
cp target/cuda/release/adex .device/bin/adex
while read -r name exe; do cp "$exe" ".device/bin/$name"; done < target/cuda/test-bins.txt
for b in .device/bin/*; do strip "$b"; xz -T2 -6 "$b"; done
cp scripts/gpu-check.sh .device/
ls -la .device/bin
du -sh .device
