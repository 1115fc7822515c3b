#!/usr/bin/env bash
# The GHPO reproduction of docs/src/algorithms/ghpo.md: the warm-up (jobs/ghpo-sft.toml)
# once, then GRPO, GRPO with a curriculum and GHPO from it for each seed, all on
# 2 ranks; prints the tables of the docs page (scripts/ghpo-table.py).
#   scripts/ghpo-repro.sh [seeds...]      (default: 7 8 9)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/debug/kiln}
seeds=("$@")
[ $# -eq 0 ] && seeds=(7 8 9)
work=runs/ghpo-repro-specs
mkdir -p "$work"
if [ ! -e runs/ghpo-sft/ckpt/step-0000001000/COMMIT ]; then
  "$KILN" run jobs/ghpo-sft.toml
fi
for seed in "${seeds[@]}"; do
  for job in grpo curriculum ghpo; do
    name="ghpo-$job-s$seed"
    [ -e "runs/$name/summary.json" ] && continue
    sed -e "0,/^name = \".*\"/s//name = \"$name\"/" -e "s/^seed = .*/seed = $seed/" "jobs/ghpo-$job.toml" > "$work/$name.toml"
    "$KILN" run "$work/$name.toml"
  done
done
python3 scripts/ghpo-table.py "${seeds[@]}"
