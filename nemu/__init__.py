"""NEMu: build, load and evaluate multi-modal multi-label emotion datasets in one Parquet layout."""

from nemu.loading import MMERDataset, collate, load, read_table, verify
from nemu.shards import read_manifest

__all__ = ["MMERDataset", "collate", "load", "read_manifest", "read_table", "verify"]
