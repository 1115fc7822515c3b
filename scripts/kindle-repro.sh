#!/usr/bin/env bash
# The KINDLE tables of docs/src/algorithms/kindle.md: one `kindle` job (teacher →
# student → network → evaluation, 2 ranks) per dataset — a simulated one, BEELINE's
# 12 synthetic sets and its curated GSD example, mESC against its three ground
# truths — and the baselines (random, prior-random with the teacher's prior,
# |Pearson|, |Spearman|) scored by the same code. Synthetic and GSD sets have no
# prior of their own: `kiln grn prior` makes one from the reference (seed 1).
# Prints Markdown tables (one per metric) and each job's wall time.
#   scripts/kindle-repro.sh [data dir]     (default: ../shared/data/beeline)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/debug/kiln}
data=${1:-../shared/data/beeline}
specs=runs/kindle-repro-specs
mkdir -p "$specs" runs/kindle-priors
[ -d runs/kindle-sim-data ] || "$KILN" grn simulate --out runs/kindle-sim-data --seed 1 \
  --settings '{"genes": 50, "master_regulators": 5, "trajectories": 2, "cells_per_trajectory": 400, "technical": {}}' > /dev/null

# name|template|expression|pseudotime|prior|truth
datasets=("sim|jobs/kindle-sim.toml|runs/kindle-sim-data/ExpressionData.csv|runs/kindle-sim-data/PseudoTime.csv|runs/kindle-sim-data/prior.csv|runs/kindle-sim-data/refNetwork.csv")
for d in "$data"/synthetic/*/; do
  n=$(basename "$d")
  datasets+=("$n|jobs/kindle-synthetic.toml|${d}ExpressionData.csv|${d}PseudoTime.csv|runs/kindle-priors/$n.csv|${d}refNetwork.csv")
done
datasets+=("GSD|jobs/kindle-synthetic.toml|$data/example-GSD/ex1/ExpressionData.csv|$data/example-GSD/ex1/PseudoTime.csv|runs/kindle-priors/GSD.csv|$data/example-GSD/GroundTruthNetwork.csv")
m=$data/mESC
datasets+=("mESC-ChIP|jobs/kindle-mesc.toml|$m/500nTF/mESC_500nTF_ChIP-Seq-ExpressionData.csv|$m/PseudoTime.csv|$m/STRING-network.csv|$m/500nTF/mESC_500nTF_ChIP-Seq-network.csv")
datasets+=("mESC-NonSpecific|jobs/kindle-mesc.toml|$m/500nTF/mESC_500nTF_NonSpecific-ExpressionData.csv|$m/PseudoTime.csv|$m/STRING-network.csv|$m/500nTF/mESC_500nTF_NonSpecific-network.csv")
datasets+=("mESC-STRING|jobs/kindle-mesc.toml|$m/500nTF/mESC_500nTF_STRING-ExpressionData.csv|$m/PseudoTime.csv|$m/Non-Specific-ChIP-seq-network.csv|$m/500nTF/mESC_500nTF_STRING-network.csv")

# kindle-<name>[-suffix] from a template with the dataset's paths and extra settings.
spec() {
  local name=$1 tpl=$2 expr=$3 pt=$4 prior=$5 truth=$6; shift 6
  local out="$specs/$name.toml"
  sed -e "0,/^name = \".*\"/s//name = \"$name\"/" \
      -e "s|^expression = .*|expression = \"$expr\"|" -e "s|^pseudotime = .*|pseudotime = \"$pt\"|" \
      -e "s|^prior = .*|prior = \"$prior\"|" -e "s|^truth = .*|truth = \"$truth\"|" "$tpl" > "$out"
  for kv in "$@"; do
    grep -q "^${kv%% =*} = " "$out" && sed -i "s|^${kv%% =*} = .*|$kv|" "$out" || echo "$kv" >> "$out"
  done
  echo "$out"
}
json() { python3 -c 'import json,sys; v=json.load(sys.stdin); print(json.dumps(v.get("final_eval", v)))'; }
declare -A cell times
for row in "${datasets[@]}"; do
  IFS='|' read -r ds tpl expr pt prior truth <<< "$row"
  case $prior in runs/kindle-priors/*) [ -e "$prior" ] || "$KILN" grn prior --truth "$truth" --expression "$expr" --seed 1 --out "$prior" > /dev/null ;; esac
  runs=("kindle-$ds|")
  # Small sets also run the student with hidden inputs (input_mask, not in the paper).
  case $ds in mESC*) ;; *) runs+=("kindle-$ds-masked|input_mask = 0.5") ;; esac
  for r in "${runs[@]}"; do
    name=${r%%|*}; extra=${r#*|}
    s=$(spec "$name" "$tpl" "$expr" "$pt" "$prior" "$truth" ${extra:+"$extra"})
    [ -e "runs/$name/summary.json" ] || "$KILN" run "$s" > "runs/$name.log" 2>&1 || { echo "$name failed: runs/$name.log" >&2; exit 1; }
    cell[$name]=$(json < "runs/$name/summary.json")
    times[$name]=$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["wall_s"])' "runs/$name/summary.json")
  done
  universe=all; tfs=()
  case $ds in mESC*) universe=tf; tfs=(--tfs "$m/mouse-tfs.csv") ;; esac
  for b in random prior-random pearson spearman; do
    extra=(); [ "$b" = prior-random ] && extra=(--prior "$prior")
    "$KILN" grn baseline --expression "$expr" --method "$b" "${extra[@]}" --out "$specs/$ds-$b.csv" > /dev/null
    cell[$ds-$b]=$("$KILN" grn eval --truth "$truth" --edges "$specs/$ds-$b.csv" --universe "$universe" "${tfs[@]}" --json | json)
  done
done

metric() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); k=sys.argv[2]; x=v.get(k, v.get("topk", {}).get("precision") if k=="topk_precision" else None); print("—" if x is None else ("%.3f" % x if k in ("auroc","topk_precision") else "%.2f" % x))' "$1" "$2"; }
for k in auroc auprc_ratio epr topk_precision; do
  echo
  echo "**$k**"
  echo
  echo "| dataset | random | prior-random | Pearson | Spearman | teacher | student | student, hidden inputs |"
  echo "|---|---|---|---|---|---|---|---|"
  for row in "${datasets[@]}"; do
    ds=${row%%|*}
    line="| $ds"
    for b in random prior-random pearson spearman; do line+=" | $(metric "${cell[$ds-$b]}" "$k")"; done
    t=$(python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(json.dumps({k[8:]: x for k, x in v.items() if k.startswith("teacher_")}))' "${cell[kindle-$ds]}")
    line+=" | $(metric "$t" "$k") | $(metric "${cell[kindle-$ds]}" "$k")"
    if [ -n "${cell[kindle-$ds-masked]:-}" ]; then line+=" | $(metric "${cell[kindle-$ds-masked]}" "$k")"; else line+=" | —"; fi
    echo "$line |"
  done
done
# The four distillation losses on three small sets (the tables above use rbf).
echo
echo "**Distillation losses** (student AUROC / AUPRC ratio, BEELINE)"
echo
echo "| dataset | hard | soft | bilinear | rbf |"
echo "|---|---|---|---|---|"
for row in "${datasets[@]}"; do
  IFS='|' read -r ds tpl expr pt prior truth <<< "$row"
  case $ds in sim|dyn-LI-2000-1|GSD) ;; *) continue ;; esac
  line="| $ds"
  for d in hard soft bilinear rbf; do
    name="kindle-$ds"; [ "$d" = rbf ] || name="kindle-$ds-$d"
    s=$(spec "$name" "$tpl" "$expr" "$pt" "$prior" "$truth" "distill = \"$d\"")
    [ -e "runs/$name/summary.json" ] || "$KILN" run "$s" > "runs/$name.log" 2>&1 || { echo "$name failed: runs/$name.log" >&2; exit 1; }
    line+=" | $(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["final_eval"]; print("%.3f / %.2f" % (v["auroc"], v["auprc_ratio"]))' "runs/$name/summary.json")"
  done
  echo "$line |"
done
echo
echo "| job | wall s |"
echo "|---|---|"
for row in "${datasets[@]}"; do
  ds=${row%%|*}
  for n in "kindle-$ds" "kindle-$ds-masked"; do
    if [ -n "${times[$n]:-}" ]; then echo "| $n | ${times[$n]} |"; fi
  done
done
