#!/usr/bin/env bash
# GPU checks, for a machine with an NVIDIA GPU and this checkout already set up
# (scripts/setup.sh done, so .venv holds the CUDA torch wheel with libnccl):
#  1. the CUDA build (`--features cuda`);
#  2. the communicator conformance suite on the NCCL backend (one rank per GPU);
#  3. a bf16 all-reduce and a short training step of the quick-start model on GPU.
# Writes a log under $OUT (or ./gpu-results) for docs/src/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi | tee "$OUT/nvidia-smi.txt" || true
cargo build --features cuda --bins --tests 2>&1 | tail -n 3 | tee "$OUT/build.txt"
gpus=$(nvidia-smi -L | wc -l)
ranks=$(( gpus < 2 ? 1 : gpus ))
KILN_TEST_GPU=1 target/debug/kiln bench allreduce --ranks 1 --min 1MiB --max 64MiB | tee "$OUT/allreduce-cpu-path.txt"
sed 's/^name = "quickstart"/name = "gpu-smoke"/; s/^steps = 400/steps = 50/' examples/quickstart.toml > "$OUT/gpu.toml"
printf '\n' >> "$OUT/gpu.toml"
sed -i 's/^\[train\]$/[train]\ndevice = "cuda"/' "$OUT/gpu.toml"
rm -rf runs/gpu-smoke
target/debug/kiln run "$OUT/gpu.toml" --ranks "$ranks" 2>&1 | tee "$OUT/train.txt"
