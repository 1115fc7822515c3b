#!/usr/bin/env bash
# The KINDLE table of docs/src/algorithms/kindle.md: on a simulated dataset and on
# BEELINE's mESC data, the teacher, the student with each distillation loss, and the
# baselines (random, prior-random with the teacher's prior, |Pearson|, |Spearman|),
# all scored by `kiln grn eval`'s code. Prints Markdown.
#   scripts/kindle-repro.sh [data dir]     (default: ../shared/data/beeline; mESC rows need it)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/debug/kiln}
data=${1:-../shared/data/beeline}
specs=runs/kindle-repro-specs
mkdir -p "$specs"
[ -d runs/kindle-sim-data ] || "$KILN" grn simulate --out runs/kindle-sim-data --seed 1 \
  --settings '{"genes": 50, "master_regulators": 5, "trajectories": 2, "cells_per_trajectory": 400, "technical": {}}'
cell() { python3 -c 'import json,sys; v=json.load(sys.stdin); v=v.get("final_eval", v); t=v.get("topk_precision", v.get("topk", {}).get("precision")); print("%.3f / %.2f / %.2f / %.3f" % (v["auroc"], v["auprc_ratio"], v["epr"], t), end="")'; }
for ds in sim mesc; do
  teacher="jobs/kindle-$ds-teacher.toml"
  [ -e "runs/kindle-$ds-teacher/summary.json" ] || "$KILN" run "$teacher" > /dev/null
  for d in hard soft bilinear rbf; do
    name="kindle-$ds-student-$d"
    [ -e "runs/$name/summary.json" ] && continue
    sed -e "0,/^name = \".*\"/s//name = \"$name\"/" -e "s/^distill = .*/distill = \"$d\"/" "jobs/kindle-$ds-student.toml" > "$specs/$name.toml"
    "$KILN" run "$specs/$name.toml" > /dev/null
  done
done
alg() { sed -n "/^\[algorithm\]/,\$p" "$1" | sed -n "s/^$2 = \"\(.*\)\"/\1/p"; }
echo "| method | simulated (50 genes, 2 trajectories): AUROC / AUPRC ratio / EPR / top-k precision | mESC 500, cell-type ChIP-seq, TF-sourced |"
echo "|---|---|---|"
declare -A rows
for ds in sim mesc; do
  spec="jobs/kindle-$ds-teacher.toml"
  expr=$(alg "$spec" expression); truth=$(alg "$spec" truth); prior=$(alg "$spec" prior)
  universe=$(alg "$spec" universe); universe=${universe:-all}
  tfs=$(alg "$spec" tfs)
  for m in random prior-random pearson spearman; do
    extra=(); [ "$m" = prior-random ] && extra=(--prior "$prior")
    "$KILN" grn baseline --expression "$expr" --method "$m" "${extra[@]}" --out "$specs/$ds-$m.csv" > /dev/null
    rows[$m]+=" | $("$KILN" grn eval --truth "$truth" --edges "$specs/$ds-$m.csv" --universe "$universe" ${tfs:+--tfs "$tfs"} --json | cell)"
  done
  rows[teacher]+=" | $(cell < "runs/kindle-$ds-teacher/summary.json")"
  for d in hard soft bilinear rbf; do
    rows[student-$d]+=" | $(cell < "runs/kindle-$ds-student-$d/summary.json")"
  done
done
for m in random prior-random pearson spearman teacher student-hard student-soft student-bilinear student-rbf; do
  echo "| $m${rows[$m]} |"
done
