#!/usr/bin/env bash
# The baseline table of docs/src/algorithms/kindle.md: random, absolute Pearson and
# absolute Spearman correlation on the shared BEELINE data, scored by `kiln grn eval`
# (synthetic: all pairs; mESC: TF-sourced pairs, --universe tf). Prints Markdown.
#   scripts/grn-baselines.sh [data dir]      (default: ../shared/data/beeline)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/debug/kiln}
data=${1:-../shared/data/beeline}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
row() { # name expression truth universe
  local cells=""
  for m in random pearson spearman; do
    "$KILN" grn baseline --expression "$2" --method "$m" --seed 0 --out "$work/e.csv" >/dev/null
    cells+=$("$KILN" grn eval --truth "$3" --edges "$work/e.csv" --universe "$4" --json |
      python3 -c 'import json,sys; v=json.load(sys.stdin); print(" %.3f / %.2f / %.2f |" % (v["auroc"], v["auprc_ratio"], v["epr"]), end="")')
  done
  echo "| $1 |$cells"
}
echo "| dataset | random AUROC / AUPRC ratio / EPR | Pearson | Spearman |"
echo "|---|---|---|---|"
for net in LI CY LL BF BFC TF; do
  d="$data/synthetic/dyn-$net-2000-1"
  row "dyn-$net-2000-1" "$d/ExpressionData.csv" "$d/refNetwork.csv" all
done
for gt in ChIP-Seq NonSpecific STRING; do
  d="$data/mESC/500nTF"
  row "mESC 500 ($gt, TF-sourced)" "$d/mESC_500nTF_$gt-ExpressionData.csv" "$d/mESC_500nTF_$gt-network.csv" tf
done
