#!/usr/bin/env bash
# Memory per rank and throughput of a recsys model with a 10M-row embedding
# table (the generator's users; 1000 items), row-sparse gradients (the default
# for tables of >= 100 000 rows) against dense ones (sparse_min_rows set past
# every table), MMoE, 2 ranks, global batch 2048, AdamW, embedding width 16.
# Peak RSS per rank is summary.json's peak_rss_mb (VmHWM before the final
# checkpoint); samples/s the median over logged windows of 5 steps, the first
# skipped. Prints Markdown.
#   bench/recsys_sparse.sh [steps] [rows]      (defaults 40, 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/debug/kiln}
steps=${1:-40}
rows=${2:-10000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { # label sparse_min_rows
  local d="$work/$1"; mkdir -p "$d"
  cat > "$d/job.toml" <<SPEC
name = "bench"
[checkpoint]
store = "$d/store"
every = 0
keep = 1
[train]
steps = $steps
seed = 1
global_batch = 2048
log_every = 5
[train.optimizer]
kind = "adamw"
lr = 0.01
weight_decay = 0.0
[algorithm]
name = "recsys.mmoe"
users = $rows
items = 1000
embedding_dim = 16
hidden = 64
tower_hidden = 32
experts = 4
eval_samples = 1024
sparse_min_rows = $2
SPEC
  local start=$SECONDS
  (cd "$d" && "$KILN" run job.toml --ranks 2 > "$d/log.txt" 2>&1) || { cat "$d/log.txt"; exit 1; }
  local wall=$((SECONDS - start))
  python3 - "$d/runs/bench" "$1" "$wall" <<'PY'
import json, sys
d, label, wall = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(d + "/metrics.jsonl") if '"train"' in l]
sps = sorted(r["samples_per_s"] for r in rows[1:])
peaks = json.load(open(d + "/summary.json"))["peak_rss_mb"]
print("| %s | %s | %.0f | %s s |" % (label, " / ".join("%.0f" % p for p in peaks), sps[len(sps) // 2], wall))
PY
}
echo "| gradients | peak RSS per rank (MiB, rank 0 / 1) | samples/s | wall (incl. start and final checkpoint) |"
echo "|---|---|---:|---:|"
run "row-sparse" 100000
run "dense" 9223372036854775807
