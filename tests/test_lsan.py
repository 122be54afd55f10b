"""LSAN (Xiao et al., EMNLP 2019) on the early-fused sequence: packing, attentions, adaptive fusion, learning."""

from __future__ import annotations

import pytest
import torch

import nemu
from mmer import registry
from baselines.lsan import LSAN
from mmer.neural import masked_softmax, run_packed, to_front
from tests.conftest import constant_baseline_micro_f1

DIMS = {"a": 5, "b": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_batch(seed: int = 0) -> dict:
    """4 samples over two modalities; sample 1 has no node at all, sample 3 fills every slot."""
    g = torch.Generator().manual_seed(seed)
    masks = {"a": torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool),
             "b": torch.tensor([[1, 0], [0, 0], [0, 0], [1, 1]], dtype=torch.bool)}
    features = {m: torch.randn(4, masks[m].shape[1], dim, generator=g) for m, dim in DIMS.items()}
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    return {"features": features, "masks": masks, "labels": labels, "ids": ["s0", "s1", "s2", "s3"]}


def padded(batch: dict, extra: int = 2, fill: float = 7.0) -> dict:
    """The same batch with ``extra`` more padded slots per modality holding garbage values."""
    out = {"features": {}, "masks": {}, "labels": batch["labels"], "ids": batch["ids"]}
    for m, x in batch["features"].items():
        B, S, D = x.shape
        out["features"][m] = torch.cat([x, torch.full((B, extra, D), fill)], dim=1)
        out["masks"][m] = torch.cat([batch["masks"][m], torch.zeros(B, extra, dtype=torch.bool)], dim=1)
        garbage = ~batch["masks"][m]
        out["features"][m][:, :S][garbage] = fill  # padding inside the original width too
    return out


def test_masked_softmax_ignores_masked_positions_and_zeroes_empty_rows():
    scores = torch.tensor([[1.0, 2.0, 50.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    weights = masked_softmax(scores, mask)
    expected = torch.tensor([*torch.tensor([1.0, 2.0]).softmax(0).tolist(), 0.0])
    assert torch.allclose(weights[0], expected)
    assert torch.equal(weights[1], torch.zeros(3))


def test_to_front_keeps_order_and_run_packed_ignores_padding():
    states = torch.arange(1, 7, dtype=torch.float32).view(1, 6, 1)
    mask = torch.tensor([[False, True, False, True, True, False]])
    front, front_mask, lengths = to_front(states, mask)
    assert front[0, :, 0].tolist() == [2.0, 4.0, 5.0] and front_mask.tolist() == [[True, True, True]]
    assert lengths.tolist() == [3]

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(1, 3, batch_first=True, bidirectional=True)
    out, out_mask, _ = run_packed(lstm, states, mask)
    alone, _, _ = run_packed(lstm, torch.tensor([[[2.0], [4.0], [5.0]]]), torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(out, alone, atol=1e-6)  # the backward direction did not start in the padding
    empty, empty_mask, _ = run_packed(lstm, states, torch.zeros_like(mask))
    assert not empty_mask.any() and torch.equal(empty, torch.zeros_like(empty))


def test_lsan_outputs_ignore_padding_and_survive_empty_samples():
    torch.manual_seed(0)
    model = LSAN(DIMS, 4, d=8, hidden=6, d_a=5, mlp_hidden=7).eval()
    batch = toy_batch()
    out = model(batch)
    assert out["logits"].shape == (4, 4) and torch.isfinite(out["logits"]).all()
    assert torch.allclose(model(padded(batch))["logits"], out["logits"], atol=1e-5)
    # self-attention: one distribution over the real nodes per label; nothing for the node-less sample
    sums = out["self_attention"].sum(-1)
    assert torch.allclose(sums[[0, 2, 3]], torch.ones(3, 4), atol=1e-6) and torch.equal(sums[1], torch.zeros(4))
    assert torch.equal(out["label_attention"][1], torch.zeros_like(out["label_attention"][1]))
    assert ((out["alpha"] > 0) & (out["alpha"] < 1)).all()
    loss = model.train().loss(model(batch), batch)
    loss.backward()
    assert torch.isfinite(loss) and model.label_embedding.grad.abs().sum() > 0  # C is learned through the label attention


def test_adaptive_fusion_weights_select_the_label_or_the_self_attention_path():
    torch.manual_seed(1)
    model = LSAN(DIMS, 4, d=8, hidden=6, d_a=5, mlp_hidden=7).eval()
    batch = toy_batch(1)
    with torch.no_grad():
        # alpha -> 1: only the label-attention representation reaches the classifier
        model.w3.bias.fill_(60.0)
        model.w4.bias.fill_(-60.0)
        label_only = model(batch)
        model.label_embedding.zero_()  # no label attention left: M_l = 0
        assert torch.allclose(model(batch)["logits"], model.mlp(torch.zeros(1, 12)).squeeze(-1).expand(4, 4),
                              atol=1e-5)
    assert torch.allclose(label_only["alpha"], torch.ones(4, 4))
    with torch.no_grad():
        # alpha -> 0: only the self-attention representation; the (zeroed) label embeddings no longer matter
        model.w3.bias.fill_(-60.0)
        model.w4.bias.fill_(60.0)
        self_only = model(batch)
        model.label_embedding.normal_()
        assert torch.allclose(model(batch)["logits"], self_only["logits"], atol=1e-5)
    assert not torch.allclose(self_only["logits"], label_only["logits"])


def test_label_attention_uses_each_direction_with_its_own_half_of_the_states():
    torch.manual_seed(2)
    model = LSAN(DIMS, 4, d=8, hidden=6, d_a=5).eval()
    batch = toy_batch(2)
    with torch.no_grad():
        out = model(batch)
        nodes, mask = model.fusion(batch)
        H, mask, _ = run_packed(model.lstm, nodes, mask)
        a_fwd = model.label_embedding @ H[..., :6].transpose(1, 2)
        a_bwd = model.label_embedding @ H[..., 6:].transpose(1, 2)
    assert torch.allclose(out["label_attention"][:, 0], a_fwd * mask[:, None, :], atol=1e-5)
    assert torch.allclose(out["label_attention"][:, 1], a_bwd * mask[:, None, :], atol=1e-5)


def test_registered_once_in_the_linguistic_group_with_both_profiles():
    spec = registry.get("LSAN")
    assert spec.group == "Linguistic" and spec.kind == "neural" and "EMNLP" in spec.citation
    assert {"epochs", "lr", "batch_size", "clip", "threshold"} <= set(spec.config("paper"))
    assert spec.config("paper")["hidden"] == 300 and spec.config("paper")["d_a"] == 200


def test_one_epoch_on_the_tiny_build(built):
    from mmer.runner import Cell
    from mmer.runner import run_cell

    base, _, _ = built
    record = run_cell(Cell("LSAN", "nemu", 0, 0), registry.get("LSAN"), base / "out", "quick",
                      overrides={"epochs": 1})
    assert record["status"] == "ok" and record["parameters"] > 0
    assert 0.0 <= record["metrics"]["micro_f1"] <= 1.0


def test_learns_the_samples_planted_signal(sample_dataset):
    from mmer.engine import seed_everything, train_and_test
    from nemu.loading import split_datasets
    from mmer.runner import data_info

    datasets = split_datasets(sample_dataset)
    spec = registry.get("LSAN")
    config = spec.config("quick") | {"seed": 0}
    seed_everything(0)
    model = spec.factory(config, data_info("nemu", sample_dataset, datasets))
    _, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                             batch_size=config["batch_size"], seed=0, progress=False)
    baseline = constant_baseline_micro_f1(nemu.MMERDataset(sample_dataset, "train").labels,
                                          nemu.MMERDataset(sample_dataset, "test").labels)
    assert test["micro_f1"] > baseline + 0.08, (test["micro_f1"], baseline)
