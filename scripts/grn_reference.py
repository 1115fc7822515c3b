"""The reference side of algorithms/kindle/tests/sklearn.rs: scikit-learn's
ROC and precision-recall areas, computed the way BEELINE's BLEval does
(roc_curve + auc, precision_recall_curve + auc over recall).

  python scripts/grn_reference.py <cases.json>
      cases: [{"scores": [...], "labels": [0/1, ...]}, ...]; prints
      [{"auroc": ..., "auprc": ...}, ...] as JSON.
"""
import json
import sys

from sklearn.metrics import auc, precision_recall_curve, roc_curve


def main():
    out = []
    for case in json.load(open(sys.argv[1])):
        fpr, tpr, _ = roc_curve(case["labels"], case["scores"], pos_label=1)
        precision, recall, _ = precision_recall_curve(case["labels"], case["scores"], pos_label=1)
        out.append({"auroc": auc(fpr, tpr), "auprc": auc(recall, precision)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
