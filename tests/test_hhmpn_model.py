"""Property tests of the HHMPN layers and model, one group per equation group of the paper."""

import math

import pytest
import torch

from hhmpn.layers import F2FLayer, M2LReadout, MessagePassingBlock, MPAtt, SumReadout, UPDMLP, masked_softmax
from hhmpn.model import ABLATIONS, HHMPN

@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (10-100x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DIMS = {"lyrics": 6, "audio": 4, "images": 5}
NUM_LABELS = 4


def make_batch(batch_size=3, max_nodes=5, dims=DIMS, seed=0, num_labels=NUM_LABELS):
    g = torch.Generator().manual_seed(seed)
    features, masks = {}, {}
    for index, (name, dim) in enumerate(dims.items()):
        features[name] = torch.randn(batch_size, max_nodes, dim, generator=g, dtype=torch.float64)
        lengths = torch.randint(1, max_nodes + 1, (batch_size,), generator=g)
        lengths[index % batch_size] = max_nodes  # at least one full row
        masks[name] = torch.arange(max_nodes)[None, :] < lengths[:, None]
    labels = (torch.rand(batch_size, num_labels, generator=g) > 0.5).double()
    return {"features": features, "masks": masks, "labels": labels, "ids": [f"s{i}" for i in range(batch_size)]}


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"d": 8, "rounds": 2, "dropout": 0.0, **kwargs}
    model = HHMPN(DIMS, NUM_LABELS, **kwargs).double()
    return model.eval()


# --------------------------------------------------------------------- layers: eqs. (3)-(8)
def test_mp_att_matches_equations_3_to_6():
    torch.manual_seed(0)
    d = 3
    layer = MPAtt(d).double()
    receivers = torch.randn(1, 2, d, dtype=torch.float64)
    senders = torch.randn(1, 3, d, dtype=torch.float64)
    mask = torch.tensor([[True, False, True]])
    g, alpha = layer(receivers, senders, mask)
    wq, wk, wv = layer.w_query.weight, layer.w_key.weight, layer.w_value.weight
    for i in range(2):
        e = [(wq @ receivers[0, i]) @ (wk @ senders[0, j]) / math.sqrt(d) for j in (0, 2)]  # (4)
        a = torch.softmax(torch.stack(e), 0)  # (3) over the real neighbours only
        assert torch.allclose(alpha[0, i], torch.stack([a[0], torch.tensor(0.0, dtype=a.dtype), a[1]]))
        expected = receivers[0, i] + a[0] * (wv @ senders[0, 0]) + a[1] * (wv @ senders[0, 2])  # (5)-(6)
        assert torch.allclose(g[0, i], expected)


def test_masked_softmax_of_nothing_is_zero_not_nan():
    weights = masked_softmax(torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.bool))
    assert torch.equal(weights, torch.zeros(2, 3, 4))


def test_upd_mlp_and_block_match_equations_7_8():
    torch.manual_seed(0)
    upd = UPDMLP(3, 3).double()
    g = torch.randn(2, 3, dtype=torch.float64)
    expected = torch.relu(g @ upd.w_r.weight.T + upd.w_r.bias) @ upd.w_b.weight.T + upd.w_b.bias  # (7)
    assert torch.allclose(upd(g), expected)
    block = MessagePassingBlock(3).double()
    receivers, senders = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 4, 3, dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    out, _ = block(receivers, senders, mask)
    g, _ = block.mp(receivers, senders, mask)
    assert torch.allclose(out, g + block.upd(g))  # (8)


def test_f2f_concatenates_one_message_per_modality_equations_9_10():
    torch.manual_seed(0)
    d = 4
    layer = F2FLayer(("a", "b"), d).double()
    assert layer.upd.w_r.weight.shape == (d, 2 * d)  # W^r_xx is d x |M|d
    states = {"a": torch.randn(1, 2, d, dtype=torch.float64), "b": torch.randn(1, 3, d, dtype=torch.float64)}
    masks = {"a": torch.tensor([[True, True]]), "b": torch.tensor([[True, True, False]])}
    new, attention = layer(states, masks)
    for receiver in ("a", "b"):
        blocks = [layer.mp(states[receiver], states[s], masks[s], residual=False)[0] for s in ("a", "b")]
        expected = states[receiver] + layer.upd(torch.cat(blocks, -1))
        assert torch.allclose(new[receiver], expected)
        # attention is separate per sender modality: it sums to 1 within each modality
        for sender in ("a", "b"):
            total = attention[receiver][sender].sum(-1)
            assert torch.allclose(total, torch.ones_like(total))
    assert torch.all(attention["a"]["b"][..., 2] == 0)  # padded sender


# --------------------------------------------------------------------- F2L direction
def test_f2l_is_directed_features_never_hear_from_labels():
    model = make_model()
    batch = make_batch()
    before = {k: v.detach().clone() for k, v in model(batch)["feature_states"].items()}
    with torch.no_grad():
        model.label_embedding.add_(torch.randn_like(model.label_embedding) * 3)
        for block in model.f2l:
            block.upd.w_b.weight.mul_(-2.0)
    outputs = model(batch)
    for name in DIMS:
        assert torch.equal(outputs["feature_states"][name], before[name])
    # no gradient path from the label embeddings into the feature states ...
    z_total = sum(z.sum() for z in outputs["feature_states"].values())
    assert torch.autograd.grad(z_total, model.label_embedding, allow_unused=True)[0] is None
    # ... while the labels do read the features
    features = {k: v.clone().requires_grad_(True) for k, v in batch["features"].items()}
    logits = model({**batch, "features": features})["logits"]
    grads = torch.autograd.grad(logits.sum(), list(features.values()))
    assert all(grad.abs().sum() > 0 for grad in grads)


# --------------------------------------------------------------------- masking
def test_padded_node_values_change_nothing():
    model = make_model()
    batch = make_batch()
    reference = model(batch)["logits"]
    junk = {}
    for name, x in batch["features"].items():
        pad = ~batch["masks"][name]
        y = x.clone()
        y[pad] = 1e6
        y[pad.nonzero()[:1].unbind(1)] = float("nan")
        junk[name] = y
    assert any((~m).any() for m in batch["masks"].values())
    out = model({**batch, "features": junk})["logits"]
    assert torch.allclose(out, reference, atol=1e-10)


def test_more_padding_changes_nothing():
    model = make_model()
    batch = make_batch()
    reference = model(batch)
    features = {
        k: torch.cat([v, torch.randn(v.shape[0], 4, v.shape[2], dtype=v.dtype)], 1)
        for k, v in batch["features"].items()
    }
    masks = {k: torch.cat([m, torch.zeros(m.shape[0], 4, dtype=torch.bool)], 1) for k, m in batch["masks"].items()}
    out = model({**batch, "features": features, "masks": masks})
    assert torch.allclose(out["logits"], reference["logits"], atol=1e-10)
    for name in DIMS:
        attention = out["f2l_attention"][name]
        assert torch.all(attention[..., -4:] == 0)
        assert torch.allclose(attention[..., :-4], reference["f2l_attention"][name], atol=1e-10)


def test_all_padded_modality_is_finite_and_contributes_nothing():
    model = make_model()
    batch = make_batch()
    batch["masks"]["audio"][1] = False  # sample 1 has no audio node
    batch["features"]["audio"][1] = float("nan")
    outputs = model(batch)
    assert torch.isfinite(outputs["logits"]).all()
    audio = model.modalities.index("audio")
    assert torch.all(outputs["m2l_weights"][1, ..., audio] == 0)
    assert torch.all(outputs["f2l_attention"]["audio"][1] == 0)
    # the empty modality's values cannot matter
    batch["features"]["audio"][1] = 123.0
    assert torch.allclose(model(batch)["logits"], outputs["logits"], atol=1e-10)
    # gradients stay finite
    model.train()
    loss = model.loss(model(batch), batch)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sample_without_any_node_is_finite_for_every_variant():
    batch = make_batch()
    for name in DIMS:
        batch["masks"][name][0] = False
    for ablation in (None, *ABLATIONS):
        outputs = make_model(ablation=ablation)(batch)
        assert torch.isfinite(outputs["logits"]).all(), ablation
        assert torch.isfinite(outputs["round_logits"]).all(), ablation


# --------------------------------------------------------------------- order invariance
def test_batch_modality_order_does_not_matter():
    model = make_model()
    batch = make_batch()
    reference = model(batch)["logits"]
    order = ["images", "lyrics", "audio"]
    permuted = {
        **batch,
        "features": {k: batch["features"][k] for k in order},
        "masks": {k: batch["masks"][k] for k in reversed(order)},
    }
    out = model(permuted)
    assert torch.equal(out["logits"], reference)
    assert out["modalities"] == tuple(DIMS)  # m2l_weights follow the constructor's order


def test_node_order_does_not_matter():
    model = make_model()
    batch = make_batch()
    reference = model(batch)
    g = torch.Generator().manual_seed(1)
    features, masks, perms = {}, {}, {}
    for name, x in batch["features"].items():
        perm = torch.randperm(x.shape[1], generator=g)  # moves real nodes and padding around
        perms[name] = perm
        features[name] = x[:, perm]
        masks[name] = batch["masks"][name][:, perm]
    out = model({**batch, "features": features, "masks": masks})
    assert torch.allclose(out["logits"], reference["logits"], atol=1e-10)
    for name, perm in perms.items():
        assert torch.allclose(out["f2l_attention"][name], reference["f2l_attention"][name][..., perm], atol=1e-10)


# --------------------------------------------------------------------- M2L
def test_m2l_weights_are_a_distribution_over_modalities():
    model = make_model(rounds=3)
    outputs = model(make_batch())
    weights = outputs["m2l_weights"]
    assert weights.shape == (3, 3, NUM_LABELS, len(DIMS))  # (B, T, L, |M|)
    assert torch.all(weights >= 0)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=weights.dtype))
    # labels get different modality weights (a per-label readout, eq. 16)
    assert not torch.allclose(weights[:, :, 0], weights[:, :, 1])


def test_m2l_readout_matches_equations_15_16():
    torch.manual_seed(0)
    readout = M2LReadout(3).double()
    states = torch.randn(1, 2, 4, 3, dtype=torch.float64)  # (B, M, L, d)
    present = torch.tensor([[True, True]])
    fused, weights = readout(states, present, torch.zeros(1, 4, 3, dtype=torch.float64))
    scores = (states @ readout.w_l.weight.T).squeeze(-1)  # (B, M, L)
    alpha = torch.softmax(scores, dim=1)  # (16)
    assert torch.allclose(weights, alpha.transpose(1, 2))
    assert torch.allclose(fused, (alpha[..., None] * states).sum(1))  # (15)


# --------------------------------------------------------------------- ablations
def _param_names(model):
    return [name for name, _ in model.named_parameters()]


def test_full_model_has_every_module():
    names = _param_names(make_model())
    for prefix in ("f2f.", "f2l.", "l2l.", "readout."):
        assert any(name.startswith(prefix) for name in names), prefix
    assert any("f2l.0.mp.w_query" in name for name in names)


def _first_round_audio_attention(model, batch, scale_lyrics):
    features = dict(batch["features"])
    features["lyrics"] = features["lyrics"] * scale_lyrics
    return model({**batch, "features": features})["f2l_attention"]["audio"][:, 0]


def test_no_f2f_removes_cross_modal_feature_interaction():
    batch = make_batch()
    full = make_model()
    ablated = make_model(ablation="no_f2f")
    assert not any(name.startswith("f2f.") for name in _param_names(ablated))
    # With F2F, audio features hear the lyrics, so the labels' attention over audio nodes moves when
    # the lyrics change; without F2F it cannot.
    a, b = _first_round_audio_attention(full, batch, 1.0), _first_round_audio_attention(full, batch, -3.0)
    assert not torch.allclose(a, b)
    a, b = _first_round_audio_attention(ablated, batch, 1.0), _first_round_audio_attention(ablated, batch, -3.0)
    assert torch.allclose(a, b, atol=1e-12)


def test_no_f2l_removes_label_specific_feature_attention():
    batch = make_batch()
    model = make_model(ablation="no_f2l")
    names = _param_names(model)
    assert not any(name.startswith("f2l.") and ("w_query" in name or "w_key" in name) for name in names)
    outputs = model(batch)
    for name in DIMS:
        attention = outputs["f2l_attention"][name]  # (B, T, L, S)
        real = batch["masks"][name].double()
        uniform = (real / real.sum(-1, keepdim=True))[:, None, None, :].expand_as(attention)
        assert torch.allclose(attention, uniform)
    # labels still see the features (otherwise every prediction would be constant)
    other = make_batch(seed=5)
    assert not torch.allclose(model(other)["logits"], outputs["logits"][: other["labels"].shape[0]])


def test_no_l2l_labels_are_updated_independently():
    batch = make_batch()

    def cross_label_gradient(model):
        logits = model(batch)["logits"]
        grad = torch.autograd.grad(logits[:, 0].sum(), model.label_embedding)[0]
        return grad[0].abs().sum(), grad[1:].abs().sum()

    full_own, full_cross = cross_label_gradient(make_model())
    assert full_own > 0 and full_cross > 0
    ablated = make_model(ablation="no_l2l")
    assert not any(name.startswith("l2l.") for name in _param_names(ablated))
    own, cross = cross_label_gradient(ablated)
    assert own > 0 and cross == 0
    assert ablated(batch)["l2l_attention"] is None


def test_no_m2l_replaces_readout_with_sum():
    batch = make_batch()
    batch["masks"]["images"][2] = False  # an empty modality is skipped by the sum too
    model = make_model(ablation="no_m2l")
    assert not any(name.startswith("readout.") for name in _param_names(model))
    assert all(isinstance(readout, SumReadout) for readout in model.readout)
    captured = {}
    model.readout[0].register_forward_hook(lambda mod, args, out: captured.update(args=args, out=out))
    outputs = model(batch)
    states, present, _ = captured["args"]
    assert torch.allclose(captured["out"][0], (states * present[:, :, None, None]).sum(1))
    assert outputs["m2l_weights"] is None
    assert torch.isfinite(outputs["logits"]).all()


def test_unknown_ablation_is_rejected():
    with pytest.raises(ValueError):
        HHMPN(DIMS, NUM_LABELS, ablation="no_everything")


# --------------------------------------------------------------------- loss, eqs. (17)-(20)
def test_loss_matches_equations_18_to_20():
    model = make_model(rounds=3, lam=0.2)
    batch = make_batch()
    outputs = model(batch)
    y = batch["labels"]

    def bce(logits):  # eq. (18)/(19): mean over labels, then over samples
        p = torch.sigmoid(logits)
        per_sample = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean(dim=1)
        return per_sample.mean()

    r = outputs["round_logits"]
    expected = bce(r[:, 2]) + 0.2 * (bce(r[:, 0]) + bce(r[:, 1]))  # (20) with T = 3
    assert torch.allclose(model.loss(outputs, batch), expected)
    assert torch.equal(outputs["logits"], r[:, -1])

    # the intermediate predictions use the same W^o (eq. 17 applied to every round's fused state)
    single = make_model(rounds=1, lam=0.2)
    out1 = single(batch)
    assert torch.allclose(single.loss(out1, batch), bce(out1["logits"]))


def test_loss_on_tiny_hand_case():
    model = make_model(rounds=2, lam=0.5)
    outputs = {
        "logits": torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64),
        "round_logits": torch.tensor([[[math.log(3.0), 0.0], [0.0, math.log(3.0)]]], dtype=torch.float64),
    }
    batch = {"labels": torch.tensor([[1.0, 1.0]], dtype=torch.float64)}
    # round T: p = (1/2, 3/4) -> (ln 2 + ln 4/3) / 2; round 1: p = (3/4, 1/2) -> same value
    j = (math.log(2) + math.log(4 / 3)) / 2
    assert model.loss(outputs, batch).item() == pytest.approx(j + 0.5 * j)


# --------------------------------------------------------------------- general
def test_any_number_of_modalities_and_shapes():
    for dims in ({"text": 3}, {"a": 2, "b": 3, "c": 4, "d": 5}):
        torch.manual_seed(0)
        model = HHMPN(dims, 6, d=8, rounds=3, dropout=0.1)
        batch = make_batch(batch_size=2, max_nodes=3, dims=dims, num_labels=6)
        batch["features"] = {k: v.float() for k, v in batch["features"].items()}
        batch["labels"] = batch["labels"].float()
        outputs = model(batch, return_f2f_attention=True)
        assert outputs["logits"].shape == (2, 6)
        assert outputs["round_logits"].shape == (2, 3, 6)
        assert outputs["m2l_weights"].shape == (2, 3, 6, len(dims))
        for name in dims:
            assert outputs["f2l_attention"][name].shape == (2, 3, 6, 3)
            assert outputs["l2l_attention"][name].shape == (2, 3, 6, 6)
        assert len(outputs["f2f_attention"]) == 3
        model.loss(outputs, batch).backward()


def test_wrong_feature_size_is_rejected():
    model = make_model()
    batch = make_batch(dims={**DIMS, "audio": 7})
    with pytest.raises(ValueError):
        model(batch)


def test_modalities_missing_from_the_model_are_ignored():
    """A model built on a subset of the modalities (Table 3) ignores the others in the batch."""
    torch.manual_seed(0)
    model = HHMPN({"lyrics": 6, "audio": 4}, NUM_LABELS, d=8, rounds=2, dropout=0.0).double().eval()
    batch = make_batch()
    subset = {
        **batch,
        "features": {k: batch["features"][k] for k in ("lyrics", "audio")},
        "masks": {k: batch["masks"][k] for k in ("lyrics", "audio")},
    }
    assert torch.equal(model(batch)["logits"], model(subset)["logits"])
    with pytest.raises(KeyError):
        model({**batch, "features": {"lyrics": batch["features"]["lyrics"]}})


# --------------------------------------------------------------------- optimised forward = straightforward reference
def reference_forward(model, batch):
    """HHMPN's forward pass written the straightforward way, as the code read before it was optimised:
    F2F projects the nodes again for every (receiver, sender) modality pair and updates each receiver
    modality separately; F2L runs once per modality copy. Only MPAtt / UPDMLP calls on single sender sets."""
    states, real = {}, {}
    for name in model.modalities:
        mask = batch["masks"][name].to(torch.bool)
        x = torch.where(mask[..., None], batch["features"][name], torch.zeros((), dtype=batch["features"][name].dtype))
        states[name], real[name] = model.input_dropout(model.embed[name](x)), mask
    f2f_attention = []
    for layer in model.f2f:
        new_states, attention = {}, {}
        for receiver in model.modalities:
            blocks, attention[receiver] = [], {}
            for sender in model.modalities:  # (9), one MP_att per pair
                g_m, alpha = layer.mp(states[receiver], states[sender], real[sender], residual=False)
                blocks.append(g_m)
                attention[receiver][sender] = alpha
            new_states[receiver] = states[receiver] + layer.upd(torch.cat(blocks, dim=-1))  # (10)
        states = new_states
        f2f_attention.append(attention)
    batch_size = next(iter(states.values())).shape[0]
    present = torch.stack([real[name].any(dim=1) for name in model.modalities], dim=1)
    u = model.label_embedding.unsqueeze(0).expand(batch_size, -1, -1)
    out = {"round_logits": [], "m2l": [], "f2l": {n: [] for n in model.modalities}, "l2l": {n: [] for n in model.modalities}}
    n_mod, n_lab = len(model.modalities), model.num_labels
    for t in range(model.rounds):
        copies = []
        for name in model.modalities:  # (11)-(12), one call per modality copy
            u_m, alpha = model.f2l[t](u, states[name], real[name])
            copies.append(u_m)
            out["f2l"][name].append(alpha)
        stacked = torch.stack(copies, dim=1)
        if model.l2l:  # (13)-(14)
            flat = stacked.reshape(batch_size * n_mod, n_lab, model.d)
            flat, alpha = model.l2l[t](flat, flat, torch.ones(batch_size * n_mod, n_lab, dtype=torch.bool))
            stacked = flat.reshape(batch_size, n_mod, n_lab, model.d)
            for index, name in enumerate(model.modalities):
                out["l2l"][name].append(alpha.reshape(batch_size, n_mod, n_lab, n_lab)[:, index])
        u, weights = model.readout[t](stacked, present, u)  # (15)-(16)
        if weights is not None:
            out["m2l"].append(weights)
        out["round_logits"].append(model.project(u))  # (17)
    return {
        "logits": out["round_logits"][-1],
        "round_logits": torch.stack(out["round_logits"], dim=1),
        "f2l_attention": {n: torch.stack(v, dim=1) for n, v in out["f2l"].items()},
        "l2l_attention": {n: torch.stack(v, dim=1) for n, v in out["l2l"].items()} if model.l2l else None,
        "m2l_weights": torch.stack(out["m2l"], dim=1) if out["m2l"] else None,
        "feature_states": states,
        "f2f_attention": f2f_attention,
    }


def _assert_outputs_close(got, expected, tol):
    """Equal to ``tol`` absolutely and relatively (the w/o-M2L sum readout grows the states ~|M|-fold per round)."""
    for key in ("logits", "round_logits", "m2l_weights"):
        if expected[key] is None:
            assert got[key] is None, key
        else:
            assert got[key].shape == expected[key].shape, key
            assert torch.allclose(got[key], expected[key], atol=tol, rtol=tol), key
    for key in ("f2l_attention", "l2l_attention", "feature_states"):
        if expected[key] is None:
            assert got[key] is None, key
            continue
        for name, value in expected[key].items():
            assert got[key][name].shape == value.shape, (key, name)
            assert torch.allclose(got[key][name], value, atol=tol, rtol=tol), (key, name)
    assert len(got["f2f_attention"]) == len(expected["f2f_attention"])
    for layer_got, layer_expected in zip(got["f2f_attention"], expected["f2f_attention"]):
        for receiver, senders in layer_expected.items():
            for sender, value in senders.items():
                assert torch.allclose(layer_got[receiver][sender], value, atol=tol, rtol=tol), (receiver, sender)


def _uneven_float_batch():
    """Modalities of different node counts, padding, an empty modality and a sample with no node at all."""
    dims = DIMS
    batch = make_batch(batch_size=4, max_nodes=5, seed=3)
    batch["features"]["audio"] = batch["features"]["audio"][:, :3]
    batch["masks"]["audio"] = batch["masks"]["audio"][:, :3].clone()
    batch["masks"]["images"][1] = False  # sample 1: no image
    for name in dims:
        batch["masks"][name][3] = False  # sample 3: nothing at all
    batch["features"] = {k: v.float() for k, v in batch["features"].items()}
    batch["labels"] = batch["labels"].float()
    return batch


@pytest.mark.parametrize("ablation", [None, *ABLATIONS])
def test_optimised_forward_equals_straightforward_reference(ablation):
    torch.manual_seed(0)
    model = HHMPN(DIMS, NUM_LABELS, d=16, rounds=3, dropout=0.0, ablation=ablation).eval()
    batch = _uneven_float_batch()
    got = model(batch, return_f2f_attention=True)
    expected = reference_forward(model, batch)
    _assert_outputs_close(got, expected, tol=1e-5)
    # the forward without attention maps (the training path) gives the same predictions
    assert torch.allclose(model(batch)["round_logits"], expected["round_logits"], atol=1e-5, rtol=1e-5)


def test_optimised_gradients_equal_straightforward_reference():
    torch.manual_seed(0)
    model = HHMPN(DIMS, NUM_LABELS, d=16, rounds=3, dropout=0.0).train()
    batch = _uneven_float_batch()
    grads = torch.autograd.grad(model.loss(model(batch), batch), list(model.parameters()))
    reference = torch.autograd.grad(model.loss(reference_forward(model, batch), batch), list(model.parameters()))
    for (name, _), got, expected in zip(model.named_parameters(), grads, reference):
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), name


def test_fused_attention_equals_explicit_and_is_safe_for_empty_senders():
    from hhmpn.layers import masked_attention

    g = torch.Generator().manual_seed(0)
    query = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    key = torch.randn(3, 4, 8, generator=g, requires_grad=True)
    value = torch.randn(3, 4, 8, generator=g, requires_grad=True)
    mask = torch.tensor([[True, True, False, True], [False, False, False, False], [True, False, False, False]])
    explicit, alpha = masked_attention(query, key, value, mask, fused=False)
    fused, none = masked_attention(query, key, value, mask, fused=True)
    assert none is None and torch.allclose(fused, explicit, atol=1e-6, rtol=0)
    assert torch.equal(fused[1], torch.zeros_like(fused[1]))  # no real sender: zero message, not NaN
    assert torch.all(alpha[:, :, ~mask[0]][0] == 0)
    grads = torch.autograd.grad(fused.square().sum(), (query, key, value))
    assert all(torch.isfinite(grad).all() for grad in grads)
    expected = torch.autograd.grad(explicit.square().sum(), (query, key, value))
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(grads, expected))


def test_model_through_the_fused_kernel_equals_explicit(monkeypatch):
    """The fused path (taken on accelerators) gives the same model, empty modalities included."""
    import hhmpn.layers

    torch.manual_seed(0)
    model = HHMPN(DIMS, NUM_LABELS, d=16, rounds=2, dropout=0.0).train()
    batch = _uneven_float_batch()
    explicit = model(batch)["round_logits"]
    monkeypatch.setattr(hhmpn.layers, "use_fused_attention", lambda x: True)
    outputs = model(batch)
    assert torch.allclose(outputs["round_logits"], explicit, atol=1e-5, rtol=0)
    model.loss(outputs, batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
