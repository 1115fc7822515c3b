#!/usr/bin/env bash
# GRNBoost2 (arboreto 0.1.6) beside kiln's baselines on the shared BEELINE data, all
# scored by `kiln grn eval` (the same metric code). Installs arboreto with the pins that
# work (../shared/reference/kindle.md §3.1) into .venv-grnboost/ once. Prints Markdown.
#   bench/grnboost2.sh [data dir]      (default: ../shared/data/beeline)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/debug/kiln}
data=${1:-../shared/data/beeline}
venv=.venv-grnboost
if ! "$venv/bin/python" -c "import arboreto" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check arboreto==0.1.6 "dask==2024.2.1" "distributed==2024.2.1" "pandas<2.2" "numpy<2" scikit-learn
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
metrics() { # truth edges universe [tfs]
  "$KILN" grn eval --truth "$1" --edges "$2" --universe "$3" ${4:+--tfs "$4"} --json |
    python3 -c 'import json,sys; v=json.load(sys.stdin); print("%.3f / %.2f / %.2f" % (v["auroc"], v["auprc_ratio"], v["epr"]), end="")'
}
row() { # name expression truth universe [tfs]
  local secs pearson start end
  secs=$("$venv/bin/python" bench/grnboost2.py "$2" "$work/g.csv" "${5:--}" 2>/dev/null | tail -n1)
  start=$(date +%s.%N)
  "$KILN" grn baseline --expression "$2" --method pearson --out "$work/p.csv" >/dev/null
  end=$(date +%s.%N)
  pearson=$(python3 -c "print('%.2f' % ($end - $start))")
  echo "| $1 | $(metrics "$3" "$work/g.csv" "$4" "${5:-}") | ${secs} s | $(metrics "$3" "$work/p.csv" "$4" "${5:-}") | ${pearson} s |"
}
echo "| dataset | GRNBoost2 AUROC / AUPRC ratio / EPR | time | Pearson (kiln) | time |"
echo "|---|---|---:|---|---:|"
for cells in 2000 500; do
  for net in LI CY LL BF BFC TF; do
    d="$data/synthetic/dyn-$net-$cells-1"
    row "dyn-$net-$cells-1" "$d/ExpressionData.csv" "$d/refNetwork.csv" all
  done
done
row "GSD (ex1)" "$data/example-GSD/ex1/ExpressionData.csv" "$data/example-GSD/GroundTruthNetwork.csv" all
m="$data/mESC/500nTF"
for gt in ChIP-Seq NonSpecific STRING; do
  row "mESC 500 ($gt, TF-sourced)" "$m/mESC_500nTF_$gt-ExpressionData.csv" "$m/mESC_500nTF_$gt-network.csv" tf
done
