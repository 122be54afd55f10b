"""MLEE (Ando et al., Interspeech 2019): existence + dominant heads, the dominant target and its mask,
not applicable without dominant emotions, and learning a planted signal on a MOSEI-format build."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mmer import registry
from baselines.mlee import MLEE, AttentionPool, compact
from mmer.runner import Cell
from mmer.runner import data_info, run_cell
from mmer.engine import seed_everything, train_and_test
from nemu.loading import collate, split_datasets
from nemu.mosei import LABELS, MoseiOptions, build_mosei
from tests.conftest import constant_baseline_micro_f1

DIMS = {"text": 300, "audio": 74, "vision": 35}
STEPS = {"text": 0.5, "audio": 0.1, "vision": 0.25}  # seconds per row, as the SDK's sequences
# The planted signal: each present emotion k raises a block of feature columns in proportion to its
# intensity (so the emotions, and which of them is the strongest, can be read from the features).
BLOCK = {"text": 10, "audio": 4, "vision": 5}
FREQUENCY = np.array([0.5, 0.3, 0.25, 0.15, 0.15, 0.12])  # uneven, like MOSEI (happy most frequent)


def _write_csd(path: Path, root: str, videos: dict) -> None:
    """The SDK's computational-sequence layout: root/data/<video>/{features,intervals}, root/metadata."""
    with h5py.File(path, "w") as f:
        group = f.create_group(root)
        data = group.create_group("data")
        for video, (features, intervals) in videos.items():
            v = data.create_group(video)
            v.create_dataset("features", data=features)
            v.create_dataset("intervals", data=intervals)
        meta = group.create_group("metadata")
        meta.create_dataset("root name", (1,), dtype=h5py.special_dtype(vlen=str))
        meta["root name"][0] = json.dumps(root)


def planted_mosei(base: Path, videos: int = 200, seed: int = 0, signal: float = 1.0) -> Path:
    """A MOSEI SDK source with intensities and a planted signal, built with ``nemu.mosei.build_mosei``.

    One 3 s segment per video; split 70/15/15 by video. Each emotion is present with probability
    ``FREQUENCY[k]`` at an intensity in {1/3, 2/3, 1, 4/3, 5/3, 2, 7/3, 3}; ~8 % of segments have none
    (dominant null). Every present emotion adds ``signal · intensity`` to its block of columns in every
    modality, on every row, over unit Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    src = base / "csd"
    src.mkdir(parents=True)
    seqs: dict[str, dict] = {"labels": {}, **{m: {} for m in DIMS}}
    names = [f"v{i:04d}" for i in range(videos)]
    for video in names:
        present = rng.random(len(LABELS)) < FREQUENCY
        intensity = np.where(present, rng.integers(1, 10, len(LABELS)) / 3.0, 0.0)
        seqs["labels"][video] = (np.array([[0.0, *intensity]]), np.array([[0.0, 3.0]]))
        for m, dim in DIMS.items():
            starts = np.arange(0.0, 3.0, STEPS[m])
            features = rng.normal(size=(len(starts), dim))
            for k in np.flatnonzero(present):
                features[:, k * BLOCK[m]:(k + 1) * BLOCK[m]] += signal * intensity[k]
            seqs[m][video] = (features, np.stack([starts, starts + STEPS[m]], axis=1))
    _write_csd(src / "CMU_MOSEI_Labels.csd", "All Labels", seqs["labels"])
    _write_csd(src / "CMU_MOSEI_TimestampedWordVectors.csd", "glove_vectors", seqs["text"])
    _write_csd(src / "CMU_MOSEI_COVAREP.csd", "COVAREP", seqs["audio"])
    _write_csd(src / "CMU_MOSEI_VisualFacet42.csd", "FACET 4.2", seqs["vision"])
    cut1, cut2 = int(0.7 * videos), int(0.85 * videos)
    folds = base / "folds.json"
    folds.write_text(json.dumps({"train": names[:cut1], "valid": names[cut1:cut2], "test": names[cut2:]}))
    build_mosei(MoseiOptions(src=src, out_dir=base / "out", folds_file=folds, progress=False))
    return base / "out"


@pytest.fixture(scope="module")
def mosei_planted(tmp_path_factory) -> Path:
    return planted_mosei(tmp_path_factory.mktemp("mosei_planted"))


# ----------------------------------------------------------------------------------------------
# registry, applicability


def test_registered_in_the_non_linguistic_group_needing_dominant_emotion():
    spec = registry.get("MLEE")
    assert spec.group == "Non-linguistic" and spec.kind == "neural" and "Ando" in spec.citation
    assert spec.extra_columns == ("dominant_emotion",)
    for profile in ("quick", "paper"):
        assert set(registry.TRAINING_KEYS) <= set(spec.config(profile))
    assert spec.config("paper")["batch_size"] == 64 and spec.config("paper")["epochs"] == 50


def test_not_applicable_on_nemu(built):
    base, _, _ = built
    spec = registry.get("MLEE")
    record = run_cell(Cell("MLEE", "nemu", 0, 0), spec, base / "out", "quick", overrides={"epochs": 1})
    assert record["status"] == "not_applicable"
    assert "dominant_emotion" in record["reason"] and "metrics" not in record


def test_not_applicable_when_dominant_emotion_is_null_throughout(mosei_planted, tmp_path):
    """A MOSEI build whose dominant_emotion is all null (as from the aligned .pt) gets '–' with a reason."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nemu.shards import read_manifest, sha256_file, write_manifest

    copy = tmp_path / "nulls"
    shutil.copytree(mosei_planted, copy)
    manifest = read_manifest(copy)
    for entries in manifest["shards"].values():
        for entry in entries:  # rewrite each shard, and its manifest entry, so the folder is one dataset again
            shard = copy / entry["path"]
            table = pq.read_table(shard)
            index = table.schema.get_field_index("dominant_emotion")
            table = table.set_column(index, "dominant_emotion", pa.nulls(table.num_rows, pa.string()))
            pq.write_table(table, shard)
            entry.update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    write_manifest(copy, manifest)
    record = run_cell(Cell("MLEE", "mosei", 0, 0), registry.get("MLEE"), copy, "quick", overrides={"epochs": 1})
    assert record["status"] == "not_applicable" and "null" in record["reason"]


def test_one_epoch_smoke_on_mosei_format(mosei_planted):
    torch.set_num_threads(1)
    record = run_cell(Cell("MLEE", "mosei", 0, 0), registry.get("MLEE"), mosei_planted, "quick",
                      overrides={"epochs": 1})
    assert record["status"] == "ok" and set(record["per_label_f1"]) == set(LABELS)
    assert record["parameters"] > 0


# ----------------------------------------------------------------------------------------------
# mechanism


def _batch(mosei_planted, n=8):
    """n training samples, the first two of them without a dominant emotion (no emotion annotated)."""
    ds = split_datasets(mosei_planted, None, extra_columns=("dominant_emotion",))["train"]
    dominant = ds.extras["dominant_emotion"]
    order = [*np.flatnonzero(dominant < 0)[:2], *np.flatnonzero(dominant >= 0)[:n - 2]]
    return collate([ds[int(i)] for i in order]), ds


def test_dominant_target_is_the_highest_intensity_label(mosei_planted):
    ds = split_datasets(mosei_planted, None, extra_columns=("dominant_emotion",))["train"]
    import nemu

    frame = nemu.load(mosei_planted, "train").set_index("id")
    dominant = ds.extras["dominant_emotion"]
    assert (dominant == -1).any() and (dominant >= 0).any()
    for i, sample in enumerate(ds.ids):
        intensities = np.asarray(frame.loc[sample, "intensities"])
        if intensities.max() > 0:
            assert dominant[i] == int(np.argmax(intensities)) and ds.labels[i, dominant[i]] == 1
        else:
            assert dominant[i] == -1 and ds.labels[i].sum() == 0


def test_outputs_shapes_and_prediction_is_the_existence_head(mosei_planted):
    batch, ds = _batch(mosei_planted)
    torch.manual_seed(0)
    model = MLEE(ds.modality_dims, len(LABELS), d=16, hidden=8, fc=12).eval()
    out = model(batch)
    assert out["logits"].shape == out["dominant_logits"].shape == (8, len(LABELS))
    # the multi-label prediction is the existence head's: changing the dominant head changes nothing there
    with torch.no_grad():
        model.dominant_out.weight.normal_()
        model.dominant_hidden.weight.normal_()
    again = model(batch)
    torch.testing.assert_close(again["logits"], out["logits"])
    assert not torch.allclose(again["dominant_logits"], out["dominant_logits"])
    # ... and the dominant head reads the existence head's intermediate output: it changes with W_e
    with torch.no_grad():
        model.existence_hidden.weight.normal_()
    assert not torch.allclose(model(batch)["dominant_logits"], again["dominant_logits"])


def test_dominant_loss_masks_samples_without_a_dominant_emotion(mosei_planted):
    batch, ds = _batch(mosei_planted, 16)
    torch.manual_seed(0)
    model = MLEE(ds.modality_dims, len(LABELS), d=16, hidden=8, fc=12, dropout=0.0).eval()
    out = model(batch)
    target = batch["extras"]["dominant_emotion"]
    labelled = target >= 0
    assert labelled.any() and (~labelled).any()
    expected = torch.nn.functional.cross_entropy(out["dominant_logits"][labelled], target[labelled])
    torch.testing.assert_close(model.dominant_loss(out, batch), expected)
    existence = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], batch["labels"])
    torch.testing.assert_close(model.loss(out, batch), existence + expected)
    # the masked samples' dominant logits get no gradient
    logits = out["dominant_logits"].detach().requires_grad_(True)
    model.dominant_loss({"dominant_logits": logits}, batch).backward()
    assert torch.all(logits.grad[~labelled] == 0) and torch.any(logits.grad[labelled] != 0)
    # a batch where no sample has a dominant emotion: dominant loss 0, total = existence loss, no NaN
    nothing = dict(batch, extras={"dominant_emotion": torch.full_like(target, -1)})
    assert float(model.dominant_loss(out, nothing).detach()) == 0.0
    torch.testing.assert_close(model.loss(out, nothing), existence)
    with pytest.raises(KeyError, match="dominant_emotion"):
        model.loss(out, {k: v for k, v in batch.items() if k != "extras"})


def test_compact_keeps_order_and_attention_ignores_padding():
    states = torch.arange(1, 7, dtype=torch.float32).view(1, 6, 1).repeat(2, 1, 1)
    mask = torch.tensor([[False, True, False, True, True, False], [False] * 6])
    packed, lengths = compact(states, mask)
    assert lengths.tolist() == [3, 0]
    assert packed[0, :, 0].tolist() == [2, 4, 5, 0, 0, 0] and packed[1].abs().sum() == 0
    pool = AttentionPool(1, 4)
    real = torch.arange(6)[None, :] < lengths[:, None]
    pooled, weights = pool(packed, real)
    assert torch.isfinite(pooled).all() and pooled[1].abs().sum() == 0  # an empty sample pools to zero
    assert weights[0, 3:].abs().sum() == 0 and weights[0].sum().item() == pytest.approx(1.0)


def test_padding_and_empty_modalities_do_not_change_or_break_the_output(mosei_planted):
    batch, ds = _batch(mosei_planted, 4)
    torch.manual_seed(0)
    model = MLEE(ds.modality_dims, len(LABELS), d=16, hidden=8, fc=12).eval()
    out = model(batch)
    # more padding: the same outputs
    padded = {**batch, "features": {}, "masks": {}}
    for m in ds.modality_dims:
        padded["features"][m] = torch.cat([batch["features"][m], torch.randn(4, 5, ds.modality_dims[m])], 1)
        padded["masks"][m] = torch.cat([batch["masks"][m], torch.zeros(4, 5, dtype=torch.bool)], 1)
    torch.testing.assert_close(model(padded)["logits"], out["logits"], atol=1e-5, rtol=1e-5)
    # a sample with no node in any modality: finite outputs
    empty = {**batch, "masks": {m: v.clone() for m, v in batch["masks"].items()}}
    for m in empty["masks"]:
        empty["masks"][m][0] = False
    result = model(empty)
    assert torch.isfinite(result["logits"]).all() and torch.isfinite(model.loss(result, empty))


# ----------------------------------------------------------------------------------------------
# learning


def test_learns_the_planted_signal_and_the_dominant_emotion(mosei_planted):
    torch.set_num_threads(1)
    spec = registry.get("MLEE")
    datasets = split_datasets(mosei_planted, None, extra_columns=spec.extra_columns)
    info = data_info("mosei", mosei_planted, datasets)
    config = spec.config("quick") | {"seed": 0}
    seed_everything(0)
    model = spec.factory(config, info)
    result, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                                  batch_size=config["batch_size"], progress=False, seed=0)
    constant = constant_baseline_micro_f1(datasets["train"].labels, datasets["test"].labels)
    assert test["micro_f1"] > constant + 0.15, (test["micro_f1"], constant)
    # the dominant head learned which emotion is strongest, well above always guessing the most frequent
    model.eval()
    test_batch = collate([datasets["test"][i] for i in range(len(datasets["test"]))])
    with torch.no_grad():
        guess = model(test_batch)["dominant_logits"].argmax(dim=1)
    target = test_batch["extras"]["dominant_emotion"]
    labelled = target >= 0
    accuracy = float((guess[labelled] == target[labelled]).float().mean())
    train_dominant = datasets["train"].extras["dominant_emotion"]
    majority = np.bincount(train_dominant[train_dominant >= 0]).argmax()
    majority_accuracy = float((target[labelled] == int(majority)).float().mean())
    assert accuracy > majority_accuracy + 0.2, (accuracy, majority_accuracy)
