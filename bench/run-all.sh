#!/usr/bin/env bash
# Every benchmark behind docs/src/benchmarks.md, in one run. Writes the raw output
# to bench/results/ (not committed) and prints it. Needs `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=target/debug/kiln
OUT=bench/results
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'kill ${s3pid:-0} 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== machine"
{ nproc; free -g | head -2; mpirun --version | head -1; } | tee "$OUT/machine.txt"

echo "== all-reduce, 2 ranks, kiln vs raw MPI (same buffers) and memcpy"
$KILN bench allreduce --ranks 2 --min 1KiB --max 256MiB | tee "$OUT/allreduce.txt"

echo "== DDP throughput of the quick-start job, 1 and 2 ranks"
: > "$OUT/ddp.txt"
for variant in "1 0" "2 0" "2 1"; do
  set -- $variant
  r=$1; nb=$2
  d="$work/ddp$r-$nb"; mkdir -p "$d"
  (cd "$d" && KILN_MPI_NONBLOCKING=$nb "$OLDPWD/$KILN" run "$OLDPWD/examples/quickstart.toml" --ranks "$r" >/dev/null 2>&1)
  python3 - "$d/runs/quickstart/metrics.jsonl" "$r" "$nb" <<'PY' | tee -a "$OUT/ddp.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
# The median over logged windows, skipping the first (start-up); windows with an
# eval or a checkpoint in them are slower and fall below the median.
sps = sorted(r["samples_per_s"] for r in rows[1:])
med = sps[len(sps) // 2]
print(f"ranks={sys.argv[2]} mpi_nonblocking={sys.argv[3]} median_samples_per_s={med:.0f} windows={len(sps)}")
PY
done

echo "== checkpoint throughput: local directory"
$KILN bench checkpoint --store "$work/ckpt-file" --mb 256 --repeats 3 | tee "$OUT/checkpoint-file.txt"

echo "== checkpoint throughput: S3 protocol (s3s-fs on loopback)"
mkdir -p "$work/s3/bench"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.tools/bin/s3s-fs --host 127.0.0.1 --port "$port" --access-key kiln --secret-key kiln-secret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
sleep 1
AWS_ACCESS_KEY_ID=kiln AWS_SECRET_ACCESS_KEY=kiln-secret AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true \
  $KILN bench checkpoint --store s3://bench/ckpt --mb 256 --repeats 3 | tee "$OUT/checkpoint-s3.txt"

echo "== coordinator submissions: kiln (held coordinator, loopback) vs sbatch and submitit on the local SLURM cluster"
if sinfo -h >/dev/null 2>&1; then
  .venv/bin/python -c 'import submitit' 2>/dev/null || .venv/bin/pip install -q submitit==1.5.4
  { $KILN bench submit --jobs 1000 --clients 8 --sbatch 100; .venv/bin/python bench/submitit_submit.py 100; } | tee "$OUT/submit.txt"
else
  echo "(no SLURM cluster answers: kiln only; start one with scripts/slurm-cluster.sh start)"
  $KILN bench submit --jobs 1000 --clients 8 | tee "$OUT/submit.txt"
fi

echo "== recommender training: kiln vs PyTorch DDP (gloo), MMoE and M3oE, 1 and 2 ranks"
bash bench/recsys.sh | tee "$OUT/recsys.txt"
