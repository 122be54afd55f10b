"""MulT (Tsai et al., ACL 2019): crossmodal streams and their directions, masks, positions, training."""

from __future__ import annotations

import time
from itertools import permutations

import pytest
import torch

from mmer import registry
from baselines.mult import MulT, TransformerEncoder, sinusoidal_positions
from mmer.neural import last_real, masked_mean
from mmer.runner import Cell
from mmer.runner import data_info, run_cell
from mmer.engine import seed_everything, train_and_test
from nemu.loading import split_datasets
from tests.conftest import constant_baseline_micro_f1

DIMS = {"lyrics": 12, "comments": 10, "audio": 7, "images": 20}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(dims=DIMS, lengths=((0, 1, 3, 5), (2, 0, 4, 6), (1, 3, 0, 2), (4, 4, 1, 0)), pad=0, seed=0, L=5):
    """A batch of 4 samples; lengths[i][b] = nodes of modality i in sample b (0 = the modality is absent)."""
    generator = torch.Generator().manual_seed(seed)
    features, masks = {}, {}
    for (name, dim), counts in zip(dims.items(), lengths):
        counts = torch.tensor(counts)
        width = int(counts.max()) + pad or 1
        mask = torch.arange(width)[None] < counts[:, None]
        features[name] = torch.randn(len(counts), width, dim, generator=generator) * mask[..., None]
        masks[name] = mask
    labels = (torch.rand(len(counts), L, generator=generator) > 0.5).float()
    return {"features": features, "masks": masks, "labels": labels, "ids": [str(i) for i in range(len(counts))]}


def repad(batch, extra=3, seed=1):
    """The same samples with ``extra`` more padded nodes per modality, filled with garbage."""
    generator = torch.Generator().manual_seed(seed)
    out = {**batch, "features": {}, "masks": {}}
    for name, x in batch["features"].items():
        garbage = 100 * torch.randn(x.shape[0], extra, x.shape[2], generator=generator)
        out["features"][name] = torch.cat([x, garbage], dim=1)
        out["masks"][name] = torch.cat([batch["masks"][name], torch.zeros(x.shape[0], extra, dtype=torch.bool)], dim=1)
    return out


def small(dims=DIMS, **kw) -> MulT:
    torch.manual_seed(0)
    options = dict(d=8, heads=2, layers=2, conv_kernel=3, unordered_modalities=("comments", "images"))
    return MulT(dims, 5, **(options | kw)).eval()


def test_one_crossmodal_transformer_per_ordered_pair():
    model = small()
    assert len(model.crossmodal) == 12  # 4 x 3 ordered pairs, not 6
    assert set(model.crossmodal) == {f"{s}->{t}" for s, t in permutations(DIMS, 2)}
    assert set(model.memory) == set(DIMS) and model.stream_width == 3 * 8
    three = small({"text": 6, "audio": 4, "vision": 5}, unordered_modalities=())
    assert len(three.crossmodal) == 6
    assert three.out_layer.in_features == 3 * 2 * 8  # |M| (|M| - 1) d, the official combined_dim


# A change a real source node causes must exceed float noise (~1e-6 in float32 here) by orders of magnitude.
REACHES = 1e-2
NOISE = 1e-5


def test_crossmodal_direction_queries_target_with_source():
    torch.manual_seed(0)
    block = TransformerEncoder(8, 2, 2).eval()
    target, target_mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    source, source_mask = torch.randn(2, 3, 8), torch.tensor([[True, True, False], [True, False, False]])
    out = block(target, target_mask, source=source, source_mask=source_mask)
    assert out.shape == target.shape  # the stream lives on the target's nodes
    # A non-uniform change of one real source node (a uniform shift would be cancelled exactly by the
    # pre-LayerNorm): every target node of that sample moves well above float noise, the other sample not.
    nudge = 3.0 * torch.randn(8, generator=torch.Generator().manual_seed(1))
    changed = source.clone()
    changed[0, 1] += nudge
    moved = (block(target, target_mask, source=changed, source_mask=source_mask) - out).abs()
    assert moved[0].amax(dim=-1).min() > REACHES, moved[0].amax(dim=-1)
    assert moved[1].max() < NOISE
    # The same change with the connection cut (that source node masked out) moves nothing.
    cut = source_mask.clone()
    cut[0, 1] = False
    cut_out = block(target, target_mask, source=source, source_mask=cut)
    assert (block(target, target_mask, source=changed, source_mask=cut) - cut_out).abs().max() < NOISE
    changed = source.clone()
    changed[:, 2] += 50.0 * torch.randn(8)  # padding of the source
    assert (block(target, target_mask, source=changed, source_mask=source_mask) - out).abs().max() < NOISE
    # the model routes modality a into the a->b stream and nowhere else among the b streams
    model, batch = small(), make_batch()
    model.eval()
    batch["masks"] = {name: torch.ones_like(mask) for name, mask in batch["masks"].items()}
    inputs = model.projected(batch)
    x_b, mask_b = inputs["comments"]
    before = {s: model.crossmodal[f"{s}->comments"](x_b, mask_b, source=inputs[s][0], source_mask=inputs[s][1])
              for s in ("lyrics", "audio", "images")}
    lyrics = batch["features"]["lyrics"]
    batch["features"]["lyrics"] = lyrics + 3.0 * torch.randn(lyrics.shape, generator=torch.Generator().manual_seed(2))
    inputs = model.projected(batch)
    after = {s: model.crossmodal[f"{s}->comments"](x_b, mask_b, source=inputs[s][0], source_mask=inputs[s][1])
             for s in ("lyrics", "audio", "images")}
    assert (after["lyrics"] - before["lyrics"]).abs().max() > REACHES
    assert torch.equal(before["audio"], after["audio"]) and torch.equal(before["images"], after["images"])


def test_output_does_not_depend_on_padding_and_empty_modalities_are_safe():
    model, batch = small(), make_batch()
    with torch.no_grad():
        logits = model(batch)["logits"]
        assert torch.isfinite(logits).all()
        assert torch.allclose(model(repad(batch))["logits"], logits, atol=1e-5)
        # the same sample alone in its batch (other samples decide the padding) gives the same output
        alone = {**batch, "features": {m: x[1:2, :max(1, int(batch["masks"][m][1].sum()))]
                                       for m, x in batch["features"].items()},
                 "masks": {m: x[1:2, :max(1, int(x[1].sum()))] for m, x in batch["masks"].items()}}
        assert torch.allclose(model(alone)["logits"][0], logits[1], atol=1e-5)
    # a sample with no node in any modality: finite output and gradients
    empty = make_batch(lengths=((0, 2, 1, 1), (0, 1, 1, 1), (0, 3, 1, 1), (0, 1, 2, 2)))
    model.train()
    outputs = model(empty)
    model.loss(outputs, empty).backward()
    assert torch.isfinite(outputs["logits"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unordered_modalities_ignore_node_order():
    batch = make_batch(lengths=((3, 3, 3, 3),) * 4)
    permuted = {**batch, "features": dict(batch["features"])}
    permuted["features"]["comments"] = batch["features"]["comments"][:, [2, 0, 1]]
    with torch.no_grad():
        unordered = small()
        assert torch.allclose(unordered(batch)["logits"], unordered(permuted)["logits"], atol=1e-5)
        ordered = small(unordered_modalities=())  # positions and a kernel-3 convolution: order matters
        assert not torch.allclose(ordered(batch)["logits"], ordered(permuted)["logits"], atol=1e-4)
    assert small().project["comments"].kernel_size == (1,) and small().project["lyrics"].kernel_size == (3,)


def test_positions_and_readouts():
    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    table = sinusoidal_positions(mask, 6)
    assert table.shape == (2, 4, 6) and torch.all(table[0, 3] == 0) and torch.all(table[1] == 0)
    assert torch.allclose(table[0, 0, :3], torch.sin(torch.tensor([1.0, 1.0 * 10000 ** -0.5, 1e-4])))
    x = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    assert torch.equal(last_real(x, mask), torch.stack([x[0, 2], torch.zeros(2)]))
    assert torch.allclose(masked_mean(x, mask), torch.stack([x[0, :3].mean(0), torch.zeros(2)]))
    with torch.no_grad():
        batch = make_batch()
        assert not torch.allclose(small(readout="last")(batch)["logits"], small()(batch)["logits"])


def test_one_modality_has_no_crossmodal_pair_but_runs():
    model = small({"audio": 7})
    assert len(model.crossmodal) == 0
    batch = make_batch({"audio": 7}, lengths=((0, 2, 3, 1),))
    with torch.no_grad():
        assert model(batch)["logits"].shape == (4, 5) and torch.isfinite(model(batch)["logits"]).all()


def test_registered_and_smoke_runs_one_epoch(built):
    spec = registry.get("MulT")
    assert spec.group == "Multi-modal" and spec.kind == "neural" and "Tsai" in spec.citation
    base, _, _ = built
    record = run_cell(Cell("MulT", "nemu", 0, 0), spec, base / "out", "quick", overrides={"epochs": 1})
    assert record["status"] == "ok" and record["parameters"] > 0
    assert 0.0 <= record["metrics"]["micro_f1"] <= 1.0


def test_learns_the_planted_signal(sample_dataset):
    datasets = split_datasets(sample_dataset)
    info = data_info("nemu", sample_dataset, datasets)
    config = registry.get("MulT").config("quick") | {"seed": 0}
    seed_everything(0)
    model = registry.get("MulT").factory(config, info)
    started = time.perf_counter()
    result, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                                  batch_size=config["batch_size"], clip=config["clip"], seed=0, progress=False)
    seconds = time.perf_counter() - started
    baseline = constant_baseline_micro_f1(datasets["train"].labels, datasets["test"].labels)
    print(f"MulT quick: {seconds:.1f} s, test micro-F1 {test['micro_f1']:.3f} vs constant {baseline:.3f}")
    assert test["micro_f1"] > baseline + 0.1, (test["micro_f1"], baseline)
