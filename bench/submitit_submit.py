"""Times submitit's per-job submission on the local SLURM cluster, the peer of
`kiln bench submit` (bench/run-all.sh runs both). Jobs are submitted held
(`--hold`) and cancelled afterwards, so nothing runs.

Usage: .venv/bin/python bench/submitit_submit.py N
"""
import statistics
import subprocess
import sys
import tempfile
import time

import submitit


def noop():
    return 0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    folder = tempfile.mkdtemp(prefix="submitit-bench-")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(timeout_min=5, slurm_additional_parameters={"hold": True})
    lat, ids = [], []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        job = ex.submit(noop)
        lat.append(time.perf_counter() - s)
        ids.append(job.job_id)
    wall = time.perf_counter() - t0
    subprocess.run(["scancel", *ids], check=False)
    lat.sort()
    p99 = lat[round((len(lat) - 1) * 0.99)]
    print(
        f"submitit {submitit.__version__}, 1 client (sequential): {n} submissions in {wall:.2f} s = {n / wall:.0f} jobs/s; "
        f"latency p50 {statistics.median(lat) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {lat[-1] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
