"""CIA (Chauhan et al., EMNLP 2019): IIM auto-encoders per ordered pair, context within a sample, CAM, masks."""

from __future__ import annotations

import time
from itertools import combinations, permutations

import pytest
import torch
import torch.nn.functional as F

from mmer import registry
from baselines.cia import CIA, MultiStreamBiGRU, cam
from mmer.neural import run_rnn
from mmer.neural import masked_mean
from mmer.runner import Cell
from mmer.runner import data_info, run_cell
from mmer.engine import seed_everything, train_and_test
from nemu.loading import split_datasets
from tests.conftest import constant_baseline_micro_f1
from tests.test_mult import DIMS, make_batch, repad


pytestmark = pytest.mark.usefixtures("one_thread")


def small(dims=DIMS, **kw) -> CIA:
    torch.manual_seed(0)
    return CIA(dims, 5, **({"r_units": 6, "td_units": 8, "drop": 0.0, "rdrop": 0.0} | kw)).eval()


def test_one_auto_encoder_per_ordered_pair_and_cam_per_pair():
    model, batch = small(), make_batch()
    assert set(model.autoencoders) == {f"{m}->{n}" for m, n in permutations(DIMS, 2)}  # 12
    assert len(model.original) == len(list(combinations(DIMS, 2))) == 6
    with torch.no_grad():
        outputs = model(batch)
    for m, n in permutations(DIMS, 2):
        decoded, target, weight = outputs["reconstruction"][f"{m}->{n}"]
        assert decoded.shape == (4, batch["masks"][m].shape[1], DIMS[n])  # every node of m decoded to n
        x_n = model.scaled_input(n, batch["features"][n], batch["masks"][n])
        assert torch.allclose(target, masked_mean(x_n, batch["masks"][n]), atol=1e-6)
        # no loss where m has no node, or n has none in the sample
        assert torch.equal(weight, batch["masks"][m] & batch["masks"][n].any(dim=1, keepdim=True))
    assert set(outputs["cam"]) == {f"{m}|{n}" for m, n in combinations(DIMS, 2)}
    forward_cam, _, mask = outputs["cam"]["lyrics|comments"]
    assert forward_cam.shape[1] == batch["masks"]["lyrics"].shape[1] + batch["masks"]["comments"].shape[1]
    assert torch.equal(mask, torch.cat([batch["masks"]["lyrics"], batch["masks"]["comments"]], dim=1))


def test_auto_encoders_learn_to_map_one_modality_to_another():
    """With a planted linear relation between two modalities the IIM reconstruction error falls."""
    torch.manual_seed(0)
    dims = {"a": 6, "b": 5}
    mixing = torch.randn(6, 5)
    mixing = mixing / mixing.norm(dim=0)  # unit variance per dimension, as the protocol's standardised inputs
    model = CIA(dims, 3, r_units=4, td_units=8, drop=0.0, rdrop=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch():
        a = torch.randn(32, 1, 6)
        mask = torch.ones(32, 1, dtype=torch.bool)
        return {"features": {"a": a, "b": a @ mixing}, "masks": {"a": mask, "b": mask},
                "labels": torch.zeros(32, 3)}

    def error():
        with torch.no_grad():
            return model.reconstruction_losses(model(batch()))["a->b"].item()

    before = error()
    for _ in range(150):
        b = batch()
        loss = sum(model.reconstruction_losses(model(b)).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert error() < 0.3 * before


def test_cam_is_attention_over_the_context_then_gate():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    x_mask = torch.tensor([[True, True, False], [True, True, True]])
    y_mask = torch.tensor([[True, True, True, False, False], [False] * 5])
    out = cam(x, x_mask, y, y_mask)
    weights = torch.softmax(x[0, :2] @ y[0, :3].T, dim=-1)
    assert torch.allclose(out[0, :2], (weights @ y[0, :3]) * x[0, :2], atol=1e-6)
    assert torch.all(out[0, 2] == 0)  # padded query
    assert torch.all(out[1] == 0)  # no real context node: no NaN, nothing attended


def test_node_states_use_the_context_of_their_own_sample_only():
    model, batch = small(), make_batch(lengths=((3, 3, 3, 3),) * 4)
    with torch.no_grad():
        inputs = [batch["features"][m] if n is None else torch.zeros(4, 3, 8) for m, n in model.streams]
        masks = [batch["masks"][m] for m, _ in model.streams]
        before = model.context.gru(inputs, masks)[0]  # the unimodal lyrics stream
        inputs[0] = inputs[0].clone()
        inputs[0][0, 2] = torch.randn(12)  # the last lyric node of sample 0
        after = model.context.gru(inputs, masks)[0]
    assert not torch.allclose(before[0, 0], after[0, 0])  # the first node sees the later one (BiGRU context)
    assert torch.allclose(before[1:], after[1:])  # other samples are not context


def test_multi_stream_gru_equals_independent_bidirectional_grus():
    torch.manual_seed(0)
    sizes, hidden = [3, 5], 4
    streams = MultiStreamBiGRU(sizes, hidden)
    x = [torch.randn(3, 6, 3), torch.randn(3, 4, 5)]
    masks = [torch.tensor([[True] * 6, [True, True, True, False, False, False], [False] * 6]),
             torch.tensor([[True, False, False, False], [True] * 4, [True, True, False, False]])]
    outputs = streams(x, masks)
    for g, size in enumerate(sizes):
        reference = torch.nn.GRU(size, hidden, batch_first=True, bidirectional=True)
        weight, bias = streams.input[g].weight, streams.input[g].bias
        with torch.no_grad():
            for direction, suffix in ((0, ""), (1, "_reverse")):
                rows = slice(3 * hidden * direction, 3 * hidden * (direction + 1))
                getattr(reference, "weight_ih_l0" + suffix).copy_(weight[rows])
                getattr(reference, "bias_ih_l0" + suffix).copy_(bias[rows])
                getattr(reference, "weight_hh_l0" + suffix).copy_(streams.weight_hh[g + direction * len(sizes)].T)
                getattr(reference, "bias_hh_l0" + suffix).copy_(streams.bias_hh[g + direction * len(sizes), 0])
        expected, _ = run_rnn(reference, x[g], masks[g])
        assert outputs[g].shape == expected.shape and torch.allclose(outputs[g], expected, atol=1e-5)
    garbage = [t.clone() for t in x]
    garbage[0][1, 3:] = 50.0
    garbage[1][0, 1:] = 50.0
    assert all(torch.allclose(a, b) for a, b in zip(streams(garbage, masks), outputs))


def test_rnn_ignores_padding_in_both_directions():
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 4, batch_first=True, bidirectional=True)
    x, mask = torch.randn(2, 4, 3), torch.tensor([[True, True, False, False], [False] * 4])
    out, final = run_rnn(gru, x, mask)
    garbage = x.clone()
    garbage[0, 2:] = 99.0
    out2, final2 = run_rnn(gru, garbage, mask)
    assert torch.allclose(out, out2) and torch.allclose(final, final2)
    assert torch.all(out[1] == 0) and torch.all(final[1] == 0) and torch.all(out[0, 2:] == 0)


def test_padding_invariance_empty_modalities_and_one_modality():
    model, batch = small(), make_batch()
    with torch.no_grad():
        logits = model(batch)["logits"]
        assert torch.isfinite(logits).all()
        assert torch.allclose(model(repad(batch))["logits"], logits, atol=1e-5)
    empty = make_batch(lengths=((0, 2, 1, 1), (0, 1, 1, 1), (0, 3, 1, 1), (0, 1, 2, 2)))
    model.train()
    outputs = model(empty)
    model.loss(outputs, empty).backward()
    assert torch.isfinite(outputs["logits"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    one = small({"audio": 7})
    with torch.no_grad():
        out = one(make_batch({"audio": 7}, lengths=((0, 2, 3, 1),)))
    assert out["logits"].shape == (4, 5) and not out["reconstruction"] and set(out["cam"]) == {"audio|audio"}


def test_loss_adds_every_reconstruction_error():
    model, batch = small(recon_weight=0.5), make_batch()
    with torch.no_grad():
        outputs = model(batch)
        bce = F.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"])
        recon = model.reconstruction_losses(outputs)
        assert len(recon) == 12
        assert torch.allclose(model.loss(outputs, batch), bce + 0.5 * sum(recon.values()))


def test_registered_and_smoke_runs_one_epoch(built):
    spec = registry.get("CIA")
    assert spec.group == "Multi-modal" and spec.kind == "neural" and "Chauhan" in spec.citation
    base, _, _ = built
    record = run_cell(Cell("CIA", "nemu", 0, 0), spec, base / "out", "quick", overrides={"epochs": 1})
    assert record["status"] == "ok" and record["parameters"] > 0


def test_learns_the_planted_signal(sample_dataset):
    datasets = split_datasets(sample_dataset)
    info = data_info("nemu", sample_dataset, datasets)
    config = registry.get("CIA").config("quick") | {"seed": 0}
    seed_everything(0)
    model = registry.get("CIA").factory(config, info)
    started = time.perf_counter()
    _, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                             batch_size=config["batch_size"], clip=config["clip"], seed=0, progress=False)
    seconds = time.perf_counter() - started
    baseline = constant_baseline_micro_f1(datasets["train"].labels, datasets["test"].labels)
    print(f"CIA quick: {seconds:.1f} s, test micro-F1 {test['micro_f1']:.3f} vs constant {baseline:.3f}")
    assert test["micro_f1"] > baseline + 0.1, (test["micro_f1"], baseline)
