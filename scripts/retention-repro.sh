#!/usr/bin/env bash
# The retention comparison (docs/src/retention.md): the cross-session
# baselines (CEM, TD3, RLUR), GFN4Retention, DT4IER (with and without user
# reward weights and the contrastive term) and random fusion weights in the
# cumulative-influence cross-session environment, seeds 1-3 with `kiln
# sweep`, 2 ranks each, against the simulator of scripts/kuaisim-repro.sh
# (trained there first if the workdir has none). Prints where the tables are.
#   scripts/retention-repro.sh [workdir]      (default runs-kuaisim/)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/debug/kiln}
work=${1:-runs-kuaisim}
LEVELS=none scripts/kuaisim-repro.sh "$work" > /dev/null   # the simulator only
cd "$work"

spec() { # name algorithm steps global-batch keys
  cat > "$1.toml" <<SPEC
name = "$1"
[checkpoint]
store = "store"
every = 0
keep = 1
[train]
steps = $3
seed = 1
global_batch = $4
log_every = 100
eval_every = $3
[train.optimizer]
kind = "adamw"
lr = 0.001
weight_decay = 0.0
[algorithm]
name = "$2"
simulator = "sim"
eval_users = 64
$5
[algorithm.env]
level = "cross-session"
batch = 8
[algorithm.env.retention]
model = "cumulative"
SPEC
}
metrics="return_day,retention,avg_reward"
sweep() { # base-spec values [more --set arguments]
  local base=$1 names=$2
  shift 2
  "$KILN" sweep "$base.toml" --set "algorithm.name=$names" "$@" --seeds 1,2,3 --ranks 2 --metrics "$metrics" > "$base.sweep.log" 2>&1
  echo "$base: runs/$base-sweep/sweep.md"
}
ac='start_steps = 50
noise = 0.3
buffer = 20000
hidden = [64, 32]
actor_lr_scale = 1.0'
spec cum kuaisim.td3 1500 64 "$ac
rnd_weight = 0.1"
sweep cum kuaisim.td3,kuaisim.rlur
spec cum-cem kuaisim.cem 10 16 'population = 16'
sweep cum-cem kuaisim.cem
spec cum-gfn retention.gfn4retention 1500 16 'start_steps = 60
buffer = 20000
hidden = [64]
actor_lr_scale = 1.0
noise = 0.3'
sweep cum-gfn retention.gfn4retention
spec cum-random kuaisim.random 1 16 ''
sweep cum-random kuaisim.random
# DT4IER: trajectories from random constant fusion weights in the same
# environment, lists played back (64 user-episodes per rank); its list
# metrics too.
metrics="return_day,retention,avg_reward,play_*,hr@6,ndcg@6,precision"
spec cum-dt retention.dt4ier 300 32 'episodes = 128'
sed -i 's/^lr = 0.001/lr = 0.003/' cum-dt.toml
sweep cum-dt retention.dt4ier --set algorithm.reward_weights=true,false --set algorithm.contrastive_weight=0.1,0.0
