#!/usr/bin/env bash
# KuaiSim's tables on synthetic logs made here: a simulator (the response model
# on `kiln kuaisim synth` logs, exported), then every agent of each level and
# the random baseline over seeds 1-3 with `kiln sweep`, 2 ranks each. Prints
# where the three sweep.md tables are.
#   scripts/kuaisim-repro.sh [workdir]      (default runs-kuaisim/)
#   LEVELS="request" scripts/kuaisim-repro.sh ...   (some of whole, request, cross)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/debug/kiln}
work=${1:-runs-kuaisim}
LEVELS=${LEVELS:-whole request cross}
level() { [[ " $LEVELS " == *" $1 "* ]]; }
mkdir -p "$work"
cd "$work"
[ -f synth/log_standard_pure.csv ] || "$KILN" kuaisim synth --out synth --users 300 --items 150 --days 40 > /dev/null

spec() { # name algorithm steps [algorithm keys] [env table]
  cat > "$1.toml" <<SPEC
name = "$1"
[checkpoint]
store = "store"
every = 0
keep = 1
[train]
steps = $3
seed = 1
global_batch = ${GLOBAL_BATCH:-64}
log_every = 100
eval_every = $3
[train.optimizer]
kind = "adamw"
lr = ${LR:-0.001}
weight_decay = 0.0
[algorithm]
name = "$2"
$4
$5
SPEC
}

# The simulator: jobs/kuaisim-response.toml's settings on these logs.
if [ ! -d sim ]; then
  GLOBAL_BATCH=128 LR=0.005 spec uirm kuaisim.response 3000 "" '[algorithm.data]
log = ["synth/log_standard_pure.csv"]
user_features = "synth/user_features_pure.csv"
video_features = "synth/video_features_basic_pure.csv"
core = 5
[algorithm.model]
id_dim = 16
enc_dim = 32
history = 10'
  "$KILN" run uirm.toml --ranks 2 > uirm.log 2>&1
  "$KILN" export uirm.toml --out sim > /dev/null
fi

ac='simulator = "sim"
start_steps = 50
noise = 0.3
buffer = 20000
hidden = [64, 32]
actor_lr_scale = 1.0
eval_users = 64'
sweep() { # base-spec values metrics
  "$KILN" sweep "$1.toml" --set "algorithm.name=$2" --seeds 1,2,3 --ranks 2 --metrics "$3" > "$1.sweep.log" 2>&1
  echo "$1: runs/$1-sweep/sweep.md"
}

whole='[algorithm.env]
level = "whole-session"
batch = 8
initial_temper = 20'
if level whole; then
spec whole kuaisim.ddpg 1500 "$ac" "$whole"
sweep whole kuaisim.ddpg,kuaisim.td3,kuaisim.a2c,kuaisim.hac "depth,avg_reward,total_reward,coverage,ild"
spec whole-random kuaisim.random 1 'simulator = "sim"
eval_users = 64' "$whole"
sweep whole-random kuaisim.random "depth,avg_reward,total_reward,coverage,ild"
fi

request='[algorithm.env]
level = "request"
batch = 8'
rmetrics="avg_l_reward,max_l_reward,coverage,ild,r_ndcg,r_mrr"
if level request; then
LR=0.003 spec request kuaisim.cf 400 'simulator = "sim"
hidden = [64]
eval_users = 128' "$request"
sweep request kuaisim.cf "$rmetrics"
GLOBAL_BATCH=16 spec request-listcvae kuaisim.listcvae 1000 'simulator = "sim"
eval_users = 128' "$request"
sweep request-listcvae kuaisim.listcvae "$rmetrics"
spec request-random kuaisim.random 1 'simulator = "sim"
eval_users = 128' "$request"
sweep request-random kuaisim.random "$rmetrics"
fi

cross='[algorithm.env]
level = "cross-session"
batch = 8'
if level cross; then
spec cross kuaisim.td3 1500 "$ac
rnd_weight = 0.1" "$cross"
sweep cross kuaisim.td3,kuaisim.rlur "return_day,retention,avg_reward"
GLOBAL_BATCH=16 spec cross-cem kuaisim.cem 10 'simulator = "sim"
population = 16
eval_users = 64' "$cross"
sweep cross-cem kuaisim.cem "return_day,retention,avg_reward"
spec cross-random kuaisim.random 1 'simulator = "sim"
eval_users = 64' "$cross"
sweep cross-random kuaisim.random "return_day,retention,avg_reward"
fi
