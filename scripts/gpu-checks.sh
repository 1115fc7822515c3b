#!/usr/bin/env bash
# GPU checks, for a machine with an NVIDIA GPU and this checkout already set up
# (scripts/setup.sh done, so .venv holds the CUDA torch wheel with libnccl):
#  1. the CUDA build (`--features cuda`);
#  2. the communicator conformance suite on the NCCL backend (one rank per GPU,
#     bf16 all-reduce included);
#  3. a short training run of the quick-start model on the GPU(s).
# Writes a log under $OUT (or ./gpu-results) for docs/src/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi | tee "$OUT/nvidia-smi.txt" || true
cargo build --features cuda --bins --tests 2>&1 | tail -n 3 | tee "$OUT/build.txt"
gpus=$(nvidia-smi -L | wc -l)
ranks=$(( gpus < 2 ? 1 : gpus ))
cargo test --features cuda -p kiln-cluster --test mpi_conformance -- --ignored --nocapture 2>&1 | tee "$OUT/nccl-conformance.txt"
sed "s/^name = \"quickstart\"/name = \"gpu-smoke\"/; s/^steps = [0-9]*/steps = 50/; s/^global_batch = [0-9]*/global_batch = $((128 * ranks))/" examples/quickstart.toml > "$OUT/gpu.toml"
printf '\n' >> "$OUT/gpu.toml"
sed -i 's/^\[train\]$/[train]\ndevice = "cuda"/' "$OUT/gpu.toml"
rm -rf runs/gpu-smoke
target/debug/kiln run "$OUT/gpu.toml" --ranks "$ranks" 2>&1 | tee "$OUT/train.txt"
