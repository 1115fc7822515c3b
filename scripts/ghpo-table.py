"""Tables of the GHPO reproduction (docs/src/algorithms/ghpo.md) from the runs of
scripts/ghpo-repro.sh: held-out greedy accuracy per level at steps 50 and 100, and
training diagnostics averaged over the steps, each as mean ± std over seeds.

  python3 scripts/ghpo-table.py 7 8 9
"""
import json
import statistics
import sys

JOBS = [("grpo", "GRPO"), ("curriculum", "GRPO + curriculum"), ("ghpo", "GHPO")]


def rows(name, kind):
    with open(f"runs/{name}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r.get("kind") == kind]


def fmt(values):
    if not values:
        return "—"
    m = statistics.mean(values)
    if len(values) == 1:
        return f"{m:.3f}"
    return f"{m:.3f} ± {statistics.stdev(values):.3f}"


def main(seeds):
    warm = rows("ghpo-sft", "eval")[-1]
    levels = [f"accuracy_l{i}" for i in range(1, 6)]
    print("| run | step | " + " | ".join(f"level {i}" for i in range(1, 6)) + " | format |")
    print("|---|---:|" + "---:|" * 6)
    print(f"| warm-up | {warm['step']} | " + " | ".join(f"{warm[k]:.3f}" for k in levels) + f" | {warm['format']:.3f} |")
    for job, label in JOBS:
        for step in (50, 100):
            evals = [next(r for r in rows(f"ghpo-{job}-s{s}", "eval") if r["step"] == step) for s in seeds]
            print(f"| {label} | {step} | " + " | ".join(fmt([e[k] for e in evals]) for k in levels + ["format"]) + " |")
    print()
    keys = ["accuracy", "zero_adv_groups", "response_len", "hinted_00", "hinted_25", "hinted_50", "hinted_75"]
    print("| run | train accuracy | zero-advantage groups | response length | no hint | 25 % | 50 % | 75 % | rollout share |")
    print("|---|" + "---:|" * 8)
    for job, label in JOBS:
        cells = []
        for k in keys:
            per_seed = []
            for s in seeds:
                vals = [r[k] for r in rows(f"ghpo-{job}-s{s}", "train") if k in r]
                if vals:
                    per_seed.append(statistics.mean(vals))
            cells.append(fmt(per_seed))
        share = []
        for s in seeds:
            tr = rows(f"ghpo-{job}-s{s}", "train")
            roll = sum(r["rollout_s"] for r in tr)
            upd = sum(r["update_s"] for r in tr)
            share.append(roll / (roll + upd))
        cells.append(fmt(share))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [7, 8, 9])
