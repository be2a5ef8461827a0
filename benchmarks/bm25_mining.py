"""BM25 hard-negative mining time: pyserini (Lucene, via a child JVM) vs bm25s, on one language's train split.

python benchmarks/bm25_mining.py --language hi --depth 100
"""

from __future__ import annotations

import argparse
import json
import time

from mdr.data.readers import LocalReader
from mdr.mining.bm25 import bm25s_pools
from mdr.mining.lucene import pyserini_pools

from common import DATA_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--language", default="hi")
    parser.add_argument("--depth", type=int, default=100)
    args = parser.parse_args()
    split = LocalReader(DATA_DIR / "xquad/xquad-sent" / args.language, args.language).load("train")
    figures = {"language": args.language, "docs": len(split.corpus), "queries": len(split.queries)}
    for name, mine in (
        ("bm25s", lambda: bm25s_pools(split, args.depth)),
        ("pyserini", lambda: pyserini_pools(split, args.language, args.depth)),
    ):
        started = time.perf_counter()
        pools = mine()
        figures[f"{name}_s"] = round(time.perf_counter() - started, 2)
        figures[f"{name}_positive_found"] = len(pools.positive_scores)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
