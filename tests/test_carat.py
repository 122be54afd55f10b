"""CARAT (Peng et al., AAAI 2024): contrastive loss, prototypes, optimiser, modality counts, masks, training."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from baselines.carat import CARAT, BertAdam, ema_update, supervised_contrastive
from mmer import registry
from mmer.engine import seed_everything, train_and_test
from mmer.runner import data_info
from nemu.loading import split_datasets
from tests.conftest import constant_baseline_micro_f1
from tests.test_mult import DIMS, make_batch, repad

pytestmark = pytest.mark.usefixtures("one_thread")


def small(dims=DIMS, **kw) -> CARAT:
    torch.manual_seed(0)
    options = dict(d=16, latent=8, heads=2, intermediate=16, default_layers=1, queue_size=64, dropout=0.0,
                   attention_dropout=0.0, unordered_modalities=("comments", "images"))
    return CARAT(dims, 5, **(options | kw))


def direct_supcon(feats, ids, n_batch, tau=0.07):
    """The official SupConLoss, line by line, on the full matrix (every row an anchor, the diagonal left out)."""
    logits = feats @ feats.T / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = ((ids[:, None] == ids[None, :]) & (ids[:, None] >= 0)).float()
    logits_mask = 1 - torch.eye(len(ids))
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True) + 1e-12)
    return -((mask * log_prob).sum(1) / (mask.sum(1) + 1e-12)).mean()


def test_supervised_contrastive_equals_the_direct_computation():
    generator = torch.Generator().manual_seed(0)
    batch = torch.nn.functional.normalize(torch.randn(7, 4, generator=generator), dim=1).requires_grad_()
    queue = torch.nn.functional.normalize(torch.randn(5, 4, generator=generator), dim=1)
    batch_ids = torch.tensor([0, 1, 0, 2, 3, 1, 0])  # class 3: one member, no positive
    queue_ids = torch.tensor([0, -1, 2, -1, 1])  # -1: an empty queue slot (no class)
    ours = supervised_contrastive(batch, batch_ids, queue, queue_ids)
    direct = direct_supcon(torch.cat([batch, queue]), torch.cat([batch_ids, queue_ids]), 7)
    assert ours.item() == pytest.approx(direct.item(), rel=1e-5) and ours.item() > 0.5
    (grad_ours,) = torch.autograd.grad(ours, batch)
    (grad_direct,) = torch.autograd.grad(direct_supcon(torch.cat([batch, queue]), torch.cat([batch_ids, queue_ids]),
                                                       7), batch)
    assert torch.allclose(grad_ours, grad_direct, atol=1e-5)
    # by hand, two rows, no queue row with a class: anchor 0's only positive is row 1 and vice versa
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.0]])
    tau = 0.5
    s01, s0q, s1q = 0.0, 1.0 / tau, 0.0
    row0 = -(s01 - math.log(math.exp(s01) + math.exp(s0q)))
    row1 = -(s01 - math.log(math.exp(s01) + math.exp(s1q)))
    expected = (row0 + row1 + 0.0) / 3  # the queue row is an anchor without positives: 0
    got = supervised_contrastive(a, torch.tensor([4, 4]), q, torch.tensor([-1]), temperature=tau, base_temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_prototypes_follow_the_ema_rule_and_change_in_training_only():
    generator = torch.Generator().manual_seed(1)
    feats = torch.randn(6, 3, 4, generator=generator)
    members = torch.rand(6, 3, generator=generator) > 0.4
    start = torch.randn(3, 4, generator=generator)
    expected = start.clone()
    for i in range(6):  # the official update_protos loop, one sample after another
        for j in range(3):
            if members[i, j]:
                expected[j] = expected[j] * 0.99 + 0.01 * feats[i, j]
    assert torch.allclose(ema_update(start, feats, members, 0.99), expected, atol=1e-6)
    model, batch = small(), make_batch()
    batch["masks"] = {m: torch.ones_like(x) for m, x in batch["masks"].items()}  # every modality present
    before = {k: v.clone() for k, v in model.state_dict().items() if "prototypes" in k or "queue" in k}
    model.eval()
    with torch.no_grad():
        model(batch)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    model.train()
    outputs = model(batch)
    z = torch.nn.functional.normalize(model.encode["audio"](outputs["r"]["audio"]).detach(), dim=-1)
    expected = ema_update(before["positive_prototypes_audio"], z, batch["labels"] >= 0.5, 0.99)
    assert torch.allclose(model.positive_prototypes_audio, expected, atol=1e-6)
    # 3 stages x 4 modalities x 5 labels x 4 samples went round the 64-slot ring, with the official class ids
    assert int(model.queue_pointer) == (3 * 4 * 5 * 4) % 64 and int((model.queue_ids >= 0).sum()) == 64
    assert int(model.queue_ids.max()) < 2 * 5 * 4


@pytest.mark.parametrize("dims", [{"audio": 7}, {"text": 6, "audio": 4, "vision": 5}, DIMS],
                         ids=["1 modality", "3 modalities", "4 modalities"])
def test_runs_on_any_modality_count_and_a_zero_node_modality(dims):
    model = small(dims)
    lengths = ((0, 2, 3, 1), (2, 0, 4, 6), (1, 3, 0, 2), (4, 4, 1, 0))[:len(dims)]
    batch = make_batch(dims, lengths=lengths)
    model.train()
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    loss.backward()
    assert outputs["logits"].shape == (4, 5) and torch.isfinite(loss)
    assert set(model.loss_terms(outputs, batch)) == {"stage1_bce", "stage2_bce", "stage3_bce", "recon_mse",
                                                     "aug_mse", "beta_mse", "agg_bce", "contrastive", "shuffle_bce"}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.reconstruct[next(iter(dims))][0].in_features == len(dims) * 16
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(batch)["logits"]).all()


def test_output_does_not_depend_on_padding():
    model, batch = small().eval(), make_batch()
    with torch.no_grad():
        logits = model(batch)["logits"]
        assert torch.allclose(model(repad(batch))["logits"], logits, atol=1e-5)
        alone = {**batch, "features": {m: x[1:2, :max(1, int(batch["masks"][m][1].sum()))]
                                       for m, x in batch["features"].items()},
                 "masks": {m: x[1:2, :max(1, int(x[1].sum()))] for m, x in batch["masks"].items()}}
        assert torch.allclose(model(alone)["logits"][0], logits[1], atol=1e-5)


def test_bert_adam_is_the_official_update():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = BertAdam([{"params": [weight], "weight_decay": 0.01}], lr=0.1, warmup=0.5, total_steps=4)
    reference, m, v = weight.detach().clone(), torch.zeros(3, 2), torch.zeros(3, 2)
    for step in range(3):
        grad = torch.randn(3, 2) * 5
        weight.grad = grad.clone()
        optimizer.step()
        grad = grad * min(1.0, 1.0 / (grad.norm().item() + 1e-6))  # each parameter clipped to norm 1
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad * grad
        progress = step / 4
        lr = 0.1 * (progress / 0.5 if progress < 0.5 else max((progress - 1) / (0.5 - 1), 0))
        reference -= lr * (m / (v.sqrt() + 1e-6) + 0.01 * reference)
        assert torch.allclose(weight.detach(), reference, atol=1e-6)
    assert step == 2 and not torch.equal(weight.detach(), torch.zeros(3, 2))


# Its run folders (train_run, run_all cells, hhmpn-predict --run/--raw) are tested with every neural model's in
# tests/test_predict.py and tests/test_predict_raw.py.
def test_registered_with_the_official_configuration():
    spec = registry.get("carat")
    assert spec.name == "CARAT" and spec.group == "After the paper" and spec.kind == "neural" and "Peng" in spec.citation
    paper = spec.config("paper")
    assert (paper["lr"], paper["batch_size"], paper["clip"]) == (5e-5, 64, 1.0)
    assert paper["threshold"] == 0.5  # the harness's one rule, not the official 0.25 (a documented deviation)


ROTATIONS = (0, 2, 4, 6, 8)


def test_learns_the_planted_signal(sample_dataset):
    spec = registry.get("CARAT")
    gains, started = [], time.perf_counter()
    for fold in ROTATIONS:
        datasets = split_datasets(sample_dataset, fold)
        info = data_info("nemu", sample_dataset, datasets)
        config = spec.config("quick")
        seed_everything(0)
        model = spec.factory(config, info)
        _, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                                 batch_size=config["batch_size"], clip=config["clip"], seed=0, progress=False)
        gains.append(test["micro_f1"] - constant_baseline_micro_f1(datasets["train"].labels, datasets["test"].labels))
    print(f"CARAT quick: {time.perf_counter() - started:.1f} s, gains over the constant {np.round(gains, 3)}")
    assert np.mean(gains) >= 0.15, gains
