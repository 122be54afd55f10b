"""KRF (Ma et al., WSDM 2020): knowledge + statistical label relations, their GCN, the review encoder, learning."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import nemu
from mmer import registry
from baselines.krf import (KNOWLEDGE_FILE, KRF, SAME_CATEGORY, SAME_POLARITY, emotion_knowledge,
                           knowledge_relations, normalize_adjacency, statistical_relations)
from nemu.labels import LABEL_NAMES
from nemu.mosei import LABELS as MOSEI_LABELS
from tests.conftest import constant_baseline_micro_f1
from tests.test_lsan import DIMS, padded, toy_batch


pytestmark = pytest.mark.usefixtures("one_thread")


def small(statistical=None, knowledge=None, **kw) -> KRF:
    L = 4
    statistical = np.zeros((L, L), np.float32) if statistical is None else statistical
    knowledge = np.zeros((L, L), np.float32) if knowledge is None else knowledge
    kw = {"d": 8, "gru_hidden": 5, "attention_hidden": 4, "feature": 6, "label_dim": 5, "gcn_hidden": 7,
          "gcn_out": 3, "attention_dropout": 0.5} | kw
    return KRF(DIMS, L, statistical=statistical, knowledge=knowledge, **kw)


# --- knowledge relations -------------------------------------------------------------------------------


def test_knowledge_file_covers_both_datasets_labels_with_dutir_categories():
    knowledge = emotion_knowledge()
    assert {name.casefold() for name in LABEL_NAMES} | {name.casefold() for name in MOSEI_LABELS} <= set(knowledge)
    categories = {"乐": "positive", "好": "positive", "惊": "positive", "怒": "negative", "哀": "negative",
                  "惧": "negative", "恶": "negative"}
    for category, polarity in knowledge.values():
        assert categories[category] == polarity  # DUTIR's P/N grouping of its seven categories
    with open(KNOWLEDGE_FILE, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["term"] and row["lexicon_term"] and row["how"] for row in rows)


def test_knowledge_relations_of_nemu_and_mosei_labels():
    names = list(LABEL_NAMES)
    A = knowledge_relations(names)
    idx = {n: i for i, n in enumerate(names)}
    assert np.array_equal(A, A.T) and not np.diag(A).any()
    assert A[idx["Sad"], idx["Miss"]] == SAME_CATEGORY  # both 哀
    assert A[idx["Lonely"], idx["Nostalgic"]] == SAME_CATEGORY
    assert A[idx["Happy"], idx["Quiet"]] == SAME_POLARITY  # 乐 vs 好, both positive
    assert A[idx["Happy"], idx["Sad"]] == 0 and A[idx["Excited"], idx["Lonely"]] == 0
    M = knowledge_relations(list(MOSEI_LABELS))
    m = {n: i for i, n in enumerate(MOSEI_LABELS)}
    assert M[m["sad"], m["anger"]] == SAME_POLARITY and M[m["fear"], m["disgust"]] == SAME_POLARITY
    assert M[m["happy"], m["surprise"]] == SAME_POLARITY and M[m["happy"], m["sad"]] == 0
    assert (M != SAME_CATEGORY).all()  # six different DUTIR categories
    unknown = knowledge_relations(["Sad", "Zany", "Miss"])
    assert not unknown[1].any() and not unknown[:, 1].any() and unknown[0, 2] == SAME_CATEGORY
    assert np.array_equal(knowledge_relations(["SAD", "miss"]), knowledge_relations(["Sad", "Miss"]))


def test_statistical_relations_count_cooccurrences_above_the_threshold():
    Y = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 0, 0]])
    assert statistical_relations(Y, 1).tolist() == [[0, 3, 1], [3, 0, 2], [1, 2, 0]]
    assert statistical_relations(Y, 2).tolist() == [[0, 3, 0], [3, 0, 2], [0, 2, 0]]


def test_normalized_adjacency_is_symmetric_and_isolated_labels_keep_a_self_loop():
    A = np.array([[0, 2, 0], [2, 0, 0], [0, 0, 0]], np.float32)
    N = normalize_adjacency(A)
    assert torch.allclose(N, torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]]))
    B = np.array([[0, 1, 3], [1, 0, 0], [3, 0, 0]], np.float32)
    d = B.sum(1) ** -0.5
    assert torch.allclose(normalize_adjacency(B), torch.tensor(d[:, None] * B * d[None, :]))
    assert torch.isfinite(normalize_adjacency(np.zeros((4, 4)))).all()


# --- the model -----------------------------------------------------------------------------------------


def test_label_representations_concatenate_one_shared_gcn_over_each_relation_graph():
    torch.manual_seed(0)
    stat = np.array([[0, 5, 0, 0], [5, 0, 0, 0], [0, 0, 0, 3], [0, 0, 3, 0]], np.float32)
    know = knowledge_relations(["Sad", "Miss", "Happy", "Quiet"])
    model = small(stat, know).eval()
    Z = model.label_representations()
    assert Z.shape == (4, 6)
    E = model.label_embedding
    for half, A in ((slice(0, 3), stat), (slice(3, 6), know)):
        adj = normalize_adjacency(A)
        expected = adj @ torch.nn.functional.leaky_relu(adj @ E @ model.gc1.weight, 0.2) @ model.gc2.weight
        assert torch.allclose(Z[:, half], expected, atol=1e-5)
    # changing the knowledge graph changes only the knowledge half
    other = small(stat, np.ones((4, 4), np.float32) - np.eye(4, dtype=np.float32))
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k != "adjacency"}, strict=False)
    Z2 = other.eval().label_representations()
    assert torch.allclose(Z2[:, :3], Z[:, :3]) and not torch.allclose(Z2[:, 3:], Z[:, 3:])


def test_scores_are_the_bilinear_form_of_review_features_and_label_representations():
    torch.manual_seed(1)
    model = small(knowledge=knowledge_relations(["Sad", "Miss", "Happy", "Quiet"])).eval()
    batch = toy_batch(1)
    with torch.no_grad():
        out = model(batch)
        assert out["logits"].shape == (4, 4) and torch.isfinite(out["logits"]).all()
        assert torch.allclose(model(padded(batch))["logits"], out["logits"], atol=1e-5)
        sums = out["attention"].sum(-1)
        assert torch.allclose(sums[[0, 2, 3]], torch.ones(3), atol=1e-6) and sums[1] == 0
        # the node-less sample: zero document vector -> relu(bias) features
        feature = torch.relu(model.fc.bias)
        assert torch.allclose(out["logits"][1], feature @ model.bilinear @ out["label_representations"].T, atol=1e-5)
    model.train()
    loss = model.loss(model(batch), batch)
    loss.backward()
    assert torch.isfinite(loss) and model.label_embedding.grad.abs().sum() > 0 and model.gc1.weight.grad.abs().sum() > 0


def test_factory_builds_both_relation_graphs_from_the_data_info():
    from mmer.registry import DataInfo

    Y = np.array([[1, 1, 0, 0]] * 3 + [[0, 0, 1, 1]] * 1, dtype=np.int8)
    info = DataInfo("nemu", dict(DIMS), ["Sad", "Happy", "Miss", "Quiet"], Y)
    model = registry.get("KRF").factory(registry.get("KRF").config("quick") | {"seed": 0}, info)
    stat, know = model.adjacency
    assert stat[0, 1] > 0 and stat[2, 3] == 0  # 3 co-occurrences pass the quick threshold (2), 1 does not
    assert stat[2, 2] == 1 and stat[3, 3] == 1  # isolated in the statistics: self-loops
    assert know[0, 2] > 0 and know[1, 3] > 0 and know[0, 1] == 0


# --- registry, smoke, planted signal -------------------------------------------------------------------


def test_registered_once_in_the_linguistic_group_with_both_profiles():
    spec = registry.get("KRF")
    assert spec.group == "Linguistic" and spec.kind == "neural" and "WSDM 2020" in spec.citation
    paper = spec.config("paper")
    assert paper["cooccurrence_threshold"] == 10 and paper["gcn_hidden"] == 512 and paper["batch_size"] == 128


def test_one_epoch_on_the_tiny_build(built):
    from mmer.runner import Cell
    from mmer.runner import run_cell

    base, _, _ = built
    record = run_cell(Cell("KRF", "nemu", 0, 0), registry.get("KRF"), base / "out", "quick", overrides={"epochs": 1})
    assert record["status"] == "ok" and record["parameters"] > 0


def test_learns_the_samples_planted_signal(sample_dataset):
    from mmer.engine import seed_everything, train_and_test
    from nemu.loading import split_datasets
    from mmer.runner import data_info

    datasets = split_datasets(sample_dataset)
    spec = registry.get("KRF")
    config = spec.config("quick") | {"seed": 0}
    seed_everything(0)
    model = spec.factory(config, data_info("nemu", sample_dataset, datasets))
    _, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                             batch_size=config["batch_size"], seed=0, progress=False)
    baseline = constant_baseline_micro_f1(nemu.MMERDataset(sample_dataset, "train").labels,
                                          nemu.MMERDataset(sample_dataset, "test").labels)
    assert test["micro_f1"] > baseline + 0.08, (test["micro_f1"], baseline)
