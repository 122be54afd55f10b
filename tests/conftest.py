from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from nemu.build import BuildOptions, build
from nemu.shards import SCHEMA_METADATA_KEY
from tests.rawkit import tiny_raw


def options(raw: Path, out: Path, **kw) -> BuildOptions:
    kw.setdefault("workers", 1)
    return BuildOptions(raw_dir=raw, out_dir=out, image_encoder="efficientnet-lite0", progress=False, **kw)


def manifest_from_schema(schema: pa.Schema) -> dict:
    """The manifest facts a shard's schema carries (nemu.shards.with_manifest)."""
    return json.loads(schema.metadata[SCHEMA_METADATA_KEY].decode("utf-8"))


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.parquet"))}


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the small models train faster without thread hand-offs, and their
    results do not depend on the machine's core count. Test files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A NEMu build of 20 tiny songs (3 train shards of at most 7 rows, row groups of 3)."""
    base = tmp_path_factory.mktemp("built")
    records = tiny_raw(base / "raw", 20)
    summary = build(options(base / "raw", base / "out", rows_per_shard=7, row_group_rows=3))
    return base, records, summary


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """The embedded sample generator's output (160 songs, seed 0, probe 'linear': the sample as it was before
    probes, whose additive signal these tests were written against), built: the planted-signal dataset."""
    from nemu.sample import make_sample

    base = tmp_path_factory.mktemp("sample")
    make_sample(base / "raw", songs=160, seed=0, probe="linear", progress=False)
    build(options(base / "raw", base / "out", workers=2))
    return base / "out"


def constant_baseline_micro_f1(train_labels, test_labels) -> float:
    """Best label-frequency baseline: always predict the k most frequent training labels (best k on train)."""
    import numpy as np
    from sklearn.metrics import f1_score

    order = np.argsort(-train_labels.mean(axis=0), kind="stable")
    best_k, best = 0, -1.0
    for k in range(1, train_labels.shape[1] + 1):
        guess = np.zeros_like(train_labels)
        guess[:, order[:k]] = 1
        score = f1_score(train_labels, guess, average="micro", zero_division=0)
        if score > best:
            best_k, best = k, score
    guess = np.zeros_like(test_labels)
    guess[:, order[:best_k]] = 1
    return float(f1_score(test_labels, guess, average="micro", zero_division=0))
