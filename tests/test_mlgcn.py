"""ML-GCN (Chen et al., CVPR 2019): the label correlation matrix (eqs. 6-8), label embeddings and their
provenance, GCN classifiers applied to the fused feature, and learning the sample's planted signal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmer import registry
from mmer.early_fusion import mean_pooled
from baselines.mlgcn import (
    EMBEDDINGS_FILE, MLGCN, TABLE_WORDS, correlation_matrix, fallback_vector, label_embeddings,
    load_embedding_table, normalize_adjacency, pooled_features, write_embedding_table,
)
from mmer.runner import Cell, data_info, run_cell
from mmer.engine import seed_everything, train_and_test
from nemu.labels import LABEL_NAMES
from nemu.loading import MMERDataset, collate, split_datasets
from nemu.mosei import LABELS as MOSEI_LABELS
from pipelines.label_embeddings import main
from tests.conftest import constant_baseline_micro_f1


def test_registered_with_the_paper_hyper_parameters():
    spec = registry.get("ML-GCN")
    assert spec.group == "Non-linguistic" and spec.kind == "neural" and "Chen" in spec.citation
    assert spec.extra_columns == ()
    paper = spec.config("paper")
    assert (paper["tau"], paper["p"], paper["gcn_hidden"], paper["d"]) == (0.4, 0.2, 1024, 2048)
    for profile in ("quick", "paper"):
        assert set(registry.TRAINING_KEYS) <= set(spec.config(profile))


# ----------------------------------------------------------------------------------------------
# the correlation matrix


def _labels(rows: dict[tuple[int, ...], int], num_labels: int) -> np.ndarray:
    out = []
    for present, count in rows.items():
        row = np.zeros(num_labels, np.int8)
        row[list(present)] = 1
        out += [row] * count
    return np.array(out)


def test_correlation_matrix_conditional_direction_threshold_and_reweighting():
    # label 0 appears 4 times, always with label 1; label 1 appears 10 times; label 2 twice with 1, 3 alone;
    # label 3 never appears.
    y = _labels({(0, 1): 4, (1,): 4, (1, 2): 2, (2,): 3}, 4)
    a = correlation_matrix(y, tau=0.4, p=0.2)
    # P(1|0) = 4/4 >= 0.4 → edge 0→1; P(0|1) = 4/10 >= 0.4 → edge 1→0; P(2|1) = 2/10 < 0.4 → no edge 1→2;
    # P(1|2) = 2/5 >= 0.4 → edge 2→1. Rows are "given label i".
    expected = np.array([[0.8, 0.2, 0.0, 0.0],
                         [0.2, 0.8, 0.0, 0.0],
                         [0.0, 0.2, 0.8, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])  # label 3: never seen, only its self-loop
    np.testing.assert_allclose(a, expected)
    # a higher threshold removes 1→0 (0.4 < 0.5) and 2→1: rows 1 and 2 become isolated
    a = correlation_matrix(y, tau=0.5, p=0.2)
    np.testing.assert_allclose(a[1], [0, 1, 0, 0])
    np.testing.assert_allclose(a[2], [0, 0, 1, 0])
    np.testing.assert_allclose(a[0], [0.8, 0.2, 0, 0])


def test_reweighting_spreads_p_over_the_neighbours():
    y = _labels({(0, 1, 2, 3): 5, (0,): 1}, 4)
    a = correlation_matrix(y, tau=0.4, p=0.3)
    np.testing.assert_allclose(np.diag(a), 0.7)
    np.testing.assert_allclose(a[0, 1:], 0.1)  # p / 3 neighbours
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    with pytest.raises(ValueError):
        correlation_matrix(y, tau=0.4, p=1.5)


def test_normalize_adjacency_is_symmetric_degree_scaling():
    a = np.array([[1.0, 1.0], [0.0, 2.0]])
    np.testing.assert_allclose(normalize_adjacency(a), [[0.5, 1 / np.sqrt(2) / np.sqrt(2)], [0.0, 1.0]])
    unit_rows = correlation_matrix(_labels({(0, 1): 3, (1, 2): 3}, 3), 0.4, 0.2)
    np.testing.assert_allclose(normalize_adjacency(unit_rows), unit_rows)  # eq. 8 rows already sum to 1


# ----------------------------------------------------------------------------------------------
# label embeddings


def test_shipped_table_covers_nemu_and_mosei_labels_with_provenance():
    table, dim = load_embedding_table()
    assert dim == 50 and set(table) == set(TABLE_WORDS)
    assert {n.casefold() for n in (*LABEL_NAMES, *MOSEI_LABELS)} == set(TABLE_WORDS)
    raw = json.loads(EMBEDDINGS_FILE.read_text())
    assert raw["missing"] == [] and "PDDL" in raw["license"] and "Pennington" in raw["citation"]
    assert set(raw["source"]["sha256"]) == {"glove_6B_index.parquet", "glove_6B_50d_emb.npy"}
    np.testing.assert_allclose(table["sad"][:3], [0.18822, 0.52772, -0.80729])  # GloVe 6B 50d's own digits
    assert (EMBEDDINGS_FILE.parent / "README.md").is_file()
    for names in (list(LABEL_NAMES), list(MOSEI_LABELS)):
        matrix, sources = label_embeddings(names)
        assert matrix.shape == (len(names), 50) and sources == ["word"] * len(names)
        np.testing.assert_array_equal(matrix[names.index("Sad" if "Sad" in names else "sad")], table["sad"])


def test_multiword_names_and_the_deterministic_fallback():
    table, _ = load_embedding_table()
    matrix, sources = label_embeddings(["Sad-Happy", "Zorblat", "zorblat", "Quuxish"])
    assert sources == ["mean of words", "fallback", "fallback", "fallback"]
    np.testing.assert_allclose(matrix[0], (table["sad"] + table["happy"]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(matrix[1], matrix[2])  # case-insensitive and reproducible
    assert not np.allclose(matrix[1], matrix[3])
    mean_norm = np.mean([np.linalg.norm(v) for v in table.values()])
    assert np.linalg.norm(matrix[1]) == pytest.approx(mean_norm, rel=1e-5)
    np.testing.assert_array_equal(fallback_vector("Zorblat", 50, mean_norm), matrix[1])


def test_table_regenerates_from_glove_text_and_from_the_package_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = ["the", "sad", "happy", "fear"]
    rng = np.random.default_rng(0)
    vectors = np.round(rng.normal(size=(4, 5)), 5).astype(np.float32)
    text = tmp_path / "glove.txt"
    text.write_text("".join(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n" for w, v in zip(words, vectors)))
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.table({"index": words}), folder / "glove_6B_index.parquet")
    np.save(folder / "glove_6B_50d_emb.npy", vectors)
    a = write_embedding_table(text, tmp_path / "a.json", words=("sad", "fear", "nostalgic"))
    assert main(["--write-embeddings", str(folder), "--out", str(tmp_path / "b.json")]) == 0
    table_a, dim = load_embedding_table(tmp_path / "a.json")
    table_b, _ = load_embedding_table(tmp_path / "b.json")
    assert dim == 5 and a["missing"] == ["nostalgic"] and set(table_a) == {"sad", "fear"}
    np.testing.assert_array_equal(table_a["sad"], vectors[1])
    np.testing.assert_array_equal(table_b["fear"], table_a["fear"])


# ----------------------------------------------------------------------------------------------
# the model


def _nemu_batch(built, n=6):
    base, _, _ = built
    ds = MMERDataset(base / "out", None)
    return ds, collate([ds[i] for i in range(n)])


class _Items:
    """The dataset interface ``mean_pooled`` reads, over a list of items."""

    def __init__(self, items, modality_dims):
        self.items, self.modality_dims = items, modality_dims

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_pooled_features_equal_the_early_fusion_matrix(built):
    ds, _ = _nemu_batch(built)
    items = [ds[i] for i in range(len(ds))]
    first, second = list(ds.modality_dims)[:2]
    items[0]["features"][first] = items[0]["features"][first][:0]  # a sample without nodes of a modality
    items[1]["features"][second] = items[1]["features"][second][:0]
    batch = collate(items)
    assert (~batch["masks"][first][0]).all() and (~batch["masks"][second][1]).all()
    expected = mean_pooled(_Items(items, ds.modality_dims))
    np.testing.assert_allclose(pooled_features(batch, tuple(ds.modality_dims)).numpy(), expected,
                               rtol=1e-5, atol=1e-6)


def _model(ds, adjacency, d=8, hidden=6):
    embedding, _ = label_embeddings(ds.label_names)
    torch.manual_seed(0)
    return MLGCN(ds.modality_dims, embedding, adjacency, d=d, gcn_hidden=hidden, dropout=0.0).eval()


def test_logits_are_the_fused_feature_times_the_gcn_classifiers(built):
    ds, batch = _nemu_batch(built)
    L = len(ds.label_names)
    model = _model(ds, correlation_matrix(ds.labels, 0.4, 0.2))
    out = model(batch)
    assert out["classifiers"].shape == (L, 8) and out["features"].shape == (6, 8)
    torch.testing.assert_close(out["logits"], out["features"] @ out["classifiers"].t())
    # classifiers = Â LeakyReLU_0.2(Â E W1) W2, no bias; the embeddings are fixed buffers, not parameters
    adj = model.adjacency
    expected = adj @ torch.nn.functional.leaky_relu(adj @ model.label_embedding @ model.gc1.weight, 0.2) @ model.gc2.weight
    torch.testing.assert_close(model.classifiers(), expected)
    assert "label_embedding" in dict(model.named_buffers()) and not any(
        "label_embedding" in name for name, _ in model.named_parameters())
    assert torch.isfinite(out["logits"]).all()


def test_the_label_graph_propagates_between_correlated_labels_only(built):
    ds, _ = _nemu_batch(built)
    L = len(ds.label_names)
    # labels 0 and 1 always together; the rest independent (identity rows)
    y = np.zeros((20, L), np.int8)
    y[:10, [0, 1]] = 1
    y[10:, 2:] = np.eye(L - 2, dtype=np.int8)[np.arange(10) % (L - 2)]
    model = _model(ds, correlation_matrix(y, 0.4, 0.2))
    before = model.classifiers().detach().clone()
    with torch.no_grad():
        model.label_embedding[0] += 1.0  # change label 0's word vector
    after = model.classifiers().detach()
    changed = (after - before).abs().sum(dim=1) > 1e-6
    assert changed[0] and changed[1], "label 1 is a neighbour of label 0: its classifier must move"
    assert not changed[2:].any(), "labels not connected to 0 keep their classifiers"
    # with the identity graph nothing propagates
    model = _model(ds, np.eye(L))
    before = model.classifiers().detach().clone()
    with torch.no_grad():
        model.label_embedding[0] += 1.0
    changed = (model.classifiers().detach() - before).abs().sum(dim=1) > 1e-6
    assert changed.tolist() == [True] + [False] * (L - 1)


def test_empty_modalities_and_padding(built):
    ds, batch = _nemu_batch(built)
    model = _model(ds, correlation_matrix(ds.labels, 0.4, 0.2))
    out = model(batch)
    padded = {**batch, "features": {}, "masks": {}}
    for m, dim in ds.modality_dims.items():
        padded["features"][m] = torch.cat([batch["features"][m], torch.randn(6, 3, dim)], 1)
        padded["masks"][m] = torch.cat([batch["masks"][m], torch.zeros(6, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(model(padded)["logits"], out["logits"])
    empty = {**batch, "masks": {m: torch.zeros_like(v) for m, v in batch["masks"].items()}}
    result = model(empty)
    assert torch.isfinite(result["logits"]).all() and torch.isfinite(model.loss(result, empty))


def test_one_epoch_smoke_on_built(built):
    torch.set_num_threads(1)
    base, _, _ = built
    record = run_cell(Cell("ML-GCN", "nemu", 0, 0), registry.get("ML-GCN"), base / "out", "quick",
                      overrides={"epochs": 1})
    assert record["status"] == "ok" and set(record["per_label_f1"]) == set(LABEL_NAMES)
    assert record["parameters"] > 0


def test_learns_the_planted_signal(sample_dataset):
    torch.set_num_threads(1)
    spec = registry.get("ML-GCN")
    datasets = split_datasets(sample_dataset)
    info = data_info("nemu", sample_dataset, datasets)
    config = spec.config("quick") | {"seed": 0}
    seed_everything(0)
    model = spec.factory(config, info)
    _, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                             batch_size=config["batch_size"], progress=False, seed=0)
    constant = constant_baseline_micro_f1(datasets["train"].labels, datasets["test"].labels)
    assert test["micro_f1"] > constant + 0.1, (test["micro_f1"], constant)


def test_factory_uses_training_label_statistics_and_label_names(built):
    base, _, _ = built
    datasets = split_datasets(base / "out", 0)
    info = data_info("nemu", base / "out", datasets)
    config = registry.get("ML-GCN").config("quick") | {"seed": 0}
    model = registry.get("ML-GCN").factory(config, info)
    expected = normalize_adjacency(correlation_matrix(datasets["train"].labels, config["tau"], config["p"]))
    np.testing.assert_allclose(model.adjacency.numpy(), expected, rtol=1e-6)
    assert model.embedding_sources == {name: "word" for name in LABEL_NAMES}
    np.testing.assert_array_equal(model.label_embedding.numpy(), label_embeddings(list(LABEL_NAMES))[0])
