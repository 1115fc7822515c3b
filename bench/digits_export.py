"""Writes scikit-learn's bundled digits data set (1,797 8×8 images of the
digits 0–9, from the UCI Optical Recognition of Handwritten Digits data) as
a CSV file `metric.dml` jobs read: a `label` column and 64 pixel columns
`p0`…`p63` (values 0–16). With `--npy`, also `<stem>-x.npy` and `<stem>-y.npy`.

Usage: .venv/bin/python bench/digits_export.py OUT.csv [--npy]
"""
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: digits_export.py OUT.csv [--npy]")
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write("label," + ",".join(f"p{i}" for i in range(x.shape[1])) + "\n")
        for row, label in zip(x, y):
            f.write(f"{label}," + ",".join(str(int(v)) for v in row) + "\n")
    tmp.replace(out)
    if "--npy" in sys.argv[2:]:
        np.save(out.with_name(out.stem + "-x.npy"), x)
        np.save(out.with_name(out.stem + "-y.npy"), y)
    print(f"{out}: {len(y)} samples, {x.shape[1]} features, {len(set(y.tolist()))} classes")


if __name__ == "__main__":
    main()
