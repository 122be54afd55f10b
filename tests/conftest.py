from __future__ import annotations

from pathlib import Path

import pytest

from nemu.build import BuildOptions, build
from tests.rawkit import tiny_raw


def options(raw: Path, out: Path, **kw) -> BuildOptions:
    kw.setdefault("workers", 1)
    return BuildOptions(raw_dir=raw, out_dir=out, image_encoder="efficientnet-lite0", progress=False, **kw)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.parquet"))}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A NEMu build of 20 tiny songs (3 train shards of at most 7 rows, row groups of 3)."""
    base = tmp_path_factory.mktemp("built")
    records = tiny_raw(base / "raw", 20)
    summary = build(options(base / "raw", base / "out", rows_per_shard=7, row_group_rows=3))
    return base, records, summary
