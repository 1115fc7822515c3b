"""GRNBoost2 (arboreto) on a BEELINE dataset, for bench/grnboost2.sh: reads
ExpressionData.csv (genes x cells), runs arboreto's grnboost2 on the cells x genes
matrix with a local Dask cluster, and writes a ranked edge list
(Gene1,Gene2,EdgeWeight) that `kiln grn eval` scores. Prints the seconds spent.

  python bench/grnboost2.py <ExpressionData.csv> <out.csv> [tfs.csv] [seed]
"""
import sys
import time


def main():
    import pandas as pd
    from arboreto.algo import grnboost2
    from distributed import Client, LocalCluster

    expr = pd.read_csv(sys.argv[1], index_col=0)
    tfs = None
    if len(sys.argv) > 3 and sys.argv[3] != "-":
        listed = set(pd.read_csv(sys.argv[3]).iloc[:, 0])
        tfs = [g for g in expr.index if g in listed]
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 777
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
    client = Client(cluster)
    start = time.perf_counter()
    net = grnboost2(expression_data=expr.T, tf_names=tfs if tfs else "all", client_or_address=client, seed=seed)
    seconds = time.perf_counter() - start
    client.close()
    cluster.close()
    net = net.rename(columns={"TF": "Gene1", "target": "Gene2", "importance": "EdgeWeight"})
    net[["Gene1", "Gene2", "EdgeWeight"]].to_csv(sys.argv[2], index=False)
    print(f"{seconds:.2f}")


if __name__ == "__main__":
    main()
