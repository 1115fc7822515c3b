#!/usr/bin/env bash
# Training throughput of recsys MMoE and M3oE in kiln (1 and 2 ranks) beside the
# same architectures in PyTorch DDP over gloo (bench/recsys_ddp.py), equal global
# batch (512), AdamW, M3oE with a fixed structure. kiln's numbers include its data
# generator; PyTorch's batches are torch.randint/randn (cheaper). Median samples/s
# over logged windows of 10 steps, the first skipped. Prints Markdown.
#   bench/recsys.sh [steps]      (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/debug/kiln}
steps=${1:-300}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kiln_rate() { # algo ranks
  local d="$work/$1-$2"; mkdir -p "$d"
  cat > "$d/job.toml" <<SPEC
name = "bench"
[checkpoint]
store = "$d/store"
every = 0
keep = 1
[train]
steps = $steps
seed = 1
global_batch = 512
log_every = 10
[train.optimizer]
kind = "adamw"
lr = 0.01
weight_decay = 0.0
[algorithm]
name = "recsys.$1"
users = 2000
items = 1000
domains = 3
dense_features = 8
embedding_dim = 16
hidden = 64
tower_hidden = 32
experts = 4
search = false
eval_samples = 1024
SPEC
  (cd "$d" && "$KILN" run job.toml --ranks "$2" > /dev/null 2>&1)
  python3 - "$d/runs/bench/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
sps = sorted(r["samples_per_s"] for r in rows[1:])
print("%.0f" % sps[len(sps) // 2])
PY
}
echo "| model | ranks | kiln samples/s | PyTorch DDP (gloo) samples/s | kiln / PyTorch |"
echo "|---|---:|---:|---:|---:|"
for m in mmoe m3oe; do
  for r in 1 2; do
    k=$(kiln_rate "$m" "$r")
    p=$(.venv/bin/python bench/recsys_ddp.py "$m" "$r" 512 "$steps")
    echo "| $m | $r | $k | $p | $(python3 -c "print('%.2f' % ($k / $p))") |"
  done
done
