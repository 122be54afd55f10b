"""mmer.engine: learning, checkpoint selection on validation micro-F1 only, checkpoints, determinism."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmer.engine import (
    SELECTION_METRIC,
    evaluate_loader,
    fit,
    move_batch,
    predict,
    seed_everything,
)
from hhmpn.model import HHMPN
from mmer.metrics import binarize, evaluate


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (10-100x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DIMS = {"a": 6, "b": 4}
NUM_LABELS = 3


# --------------------------------------------------------------------- synthetic data
def planted_samples(n, seed):
    """Labels 0 and 1 fire when prototype 0 / 1 is among the nodes of modality a, label 2 when the
    prototype of modality b is among its nodes. Node counts vary (b may be empty); order is random."""
    protos = np.random.default_rng(1234)
    proto_a = protos.normal(size=(2, DIMS["a"])) * 2.5
    proto_b = protos.normal(size=(1, DIMS["b"])) * 2.5
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        y = (rng.random(NUM_LABELS) < 0.35).astype(np.float32)
        a = rng.normal(size=(rng.integers(2, 6), DIMS["a"]))
        b = rng.normal(size=(rng.integers(0 if y[2] == 0 else 1, 5), DIMS["b"]))
        for k in (0, 1):
            if y[k]:
                a[k] += proto_a[k]
        if y[2]:
            b[0] += proto_b[0]
        a, b = rng.permutation(a), rng.permutation(b)
        samples.append({"id": f"{seed}-{i}", "features": {"a": a, "b": b}, "labels": y})
    return samples


def collate(samples, pad_to=None):
    """Pad each modality to the batch's longest node list (or to ``pad_to[name]`` nodes: fixed shapes)."""
    batch = {"features": {}, "masks": {}, "ids": [s["id"] for s in samples]}
    for name, dim in DIMS.items():
        longest = pad_to[name] if pad_to else max(1, max(len(s["features"][name]) for s in samples))
        x = torch.zeros(len(samples), longest, dim)
        mask = torch.zeros(len(samples), longest, dtype=torch.bool)
        for row, s in enumerate(samples):
            nodes = s["features"][name]
            x[row, : len(nodes)] = torch.as_tensor(nodes, dtype=torch.float32)
            mask[row, : len(nodes)] = True
        batch["features"][name], batch["masks"][name] = x, mask
    batch["labels"] = torch.as_tensor(np.stack([s["labels"] for s in samples]))
    return batch


def loaders(n_train=256, n_valid=128, batch_size=32):
    train = DataLoader(planted_samples(n_train, 1), batch_size=batch_size, shuffle=True, collate_fn=collate)
    valid = DataLoader(planted_samples(n_valid, 2), batch_size=64, shuffle=False, collate_fn=collate)
    return train, valid


def tiny_hhmpn(seed=0):
    seed_everything(seed)
    return HHMPN(DIMS, NUM_LABELS, d=16, rounds=2, dropout=0.1)


# --------------------------------------------------------------------- learning
def test_hhmpn_learns_planted_signal_above_label_frequency_baseline():
    train, valid = loaders()
    model = tiny_hhmpn()
    result = fit(model, train, valid, epochs=8, lr=3e-3, seed=0, progress=False, device="cpu")
    metrics = evaluate_loader(model, valid, "cpu")

    y_train = np.concatenate([b["labels"].numpy() for b in train])
    y_valid = np.concatenate([b["labels"].numpy() for b in valid])
    # label-frequency baselines: predict the labels positive in most training samples, or every label
    majority = np.tile(y_train.mean(0) >= 0.5, (len(y_valid), 1)).astype(int)
    baseline = max(
        evaluate(y_valid, majority)["micro_f1"], evaluate(y_valid, np.ones_like(y_valid, dtype=int))["micro_f1"]
    )
    assert metrics["micro_f1"] > baseline + 0.2, (metrics["micro_f1"], baseline)
    assert metrics["micro_f1"] == pytest.approx(result.best_valid["micro_f1"])
    assert len(result.history) == 8 and result.num_parameters > 0


# --------------------------------------------------------------------- checkpoint selection
# Validation: sample 0 carries all 5 labels, samples 1-4 one label each (label k-1).
Y_VALID = np.array(
    [
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
    ],
    dtype=np.float32,
)


def _scripted_logits():
    """Validation logits the scripted model outputs after each training epoch (1-based)."""
    y = Y_VALID * 2 - 1  # +1 positive, -1 negative
    nothing = np.full_like(Y_VALID, -0.1)
    # A: sample 0 fully right, samples 1-4 predicted empty -> micro-F1 10/14, accuracy 0.2; confidently wrong
    a = y * 1.0
    a[1:][Y_VALID[1:] == 1] = -5.0
    # B: samples 1-4 right, sample 0 predicted empty -> micro-F1 8/13 but accuracy 0.8 and, being only
    # barely wrong and otherwise very confident, by far the lowest validation loss
    b = y * 10.0
    b[0] = -0.01
    # A again (tie in micro-F1, lower loss): the earliest best epoch must stay selected
    a_again = y * 3.0
    a_again[1:][Y_VALID[1:] == 1] = -0.5
    return {1: nothing, 2: a, 3: b, 4: a_again}


class ScriptedModel(nn.Module):
    """Outputs fixed validation logits per epoch; a buffer counts the training epochs seen so far."""

    def __init__(self, script, test_script=None):
        super().__init__()
        self.script = script
        self.test_script = test_script or {}
        self.weight = nn.Parameter(torch.zeros(()))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        if self.training:
            with torch.no_grad():
                self.epoch += 1  # one training batch per epoch
            logits = torch.zeros_like(batch["labels"])
        else:
            rows = []
            for sample_id in batch["ids"]:
                split, index = sample_id.split("-")
                table = self.script if split == "valid" else self.test_script
                rows.append(torch.as_tensor(table[int(self.epoch)][int(index)]))
            logits = torch.stack(rows)
        return {"logits": logits + 0.0 * self.weight}

    def loss(self, outputs, batch):
        return F.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"])


def _scripted_batch(split, y):
    return {"labels": torch.as_tensor(y), "ids": [f"{split}-{i}" for i in range(len(y))]}


def test_best_checkpoint_is_selected_by_validation_micro_f1_only(tmp_path):
    script = _scripted_logits()
    valid_metrics = {e: evaluate(Y_VALID, binarize(1 / (1 + np.exp(-l)))) for e, l in script.items()}
    y = torch.as_tensor(Y_VALID)
    losses = {e: float(F.binary_cross_entropy_with_logits(torch.as_tensor(l), y)) for e, l in script.items()}
    # the construction: epoch 2 is first-best in micro-F1; the other criteria point elsewhere
    assert max(valid_metrics, key=lambda e: valid_metrics[e]["micro_f1"]) == 2
    assert valid_metrics[4]["micro_f1"] == valid_metrics[2]["micro_f1"]
    assert max(valid_metrics, key=lambda e: valid_metrics[e]["accuracy"]) == 3
    assert min(losses, key=losses.get) == 3
    assert losses[4] < losses[2]
    assert SELECTION_METRIC == "micro_f1"

    # the "test" set prefers epoch 3: it must not influence anything
    y_test = np.eye(5, dtype=np.float32)
    test_script = {e: (y_test * 2 - 1) * (4.0 if e == 3 else -1.0) for e in script}

    model = ScriptedModel(script, test_script)
    train = [_scripted_batch("train", Y_VALID)]
    valid = [_scripted_batch("valid", Y_VALID)]
    path = tmp_path / "best.pt"
    result = fit(model, train, valid, epochs=4, lr=1e-3, seed=0, checkpoint_path=path, progress=False, device="cpu")

    assert result.best_epoch == 2
    assert [record["epoch"] for record in result.history] == [1, 2, 3, 4]
    assert result.history[2]["valid_loss"] == pytest.approx(losses[3], rel=1e-5)
    assert result.best_valid["micro_f1"] == pytest.approx(valid_metrics[2]["micro_f1"])
    assert int(result.best_state["epoch"]) == 2
    assert int(model.epoch) == 2  # the selected state is loaded back into the model
    assert int(torch.load(path, weights_only=True)["epoch"]) == 2
    # every test metric comes from that single checkpoint
    test_metrics = evaluate_loader(model, [_scripted_batch("test", y_test)], "cpu")
    expected = evaluate(y_test, binarize(1 / (1 + np.exp(-test_script[2]))))
    for key in ("accuracy", "hamming_loss", "micro_f1", "macro_f1"):
        assert test_metrics[key] == pytest.approx(expected[key])


# --------------------------------------------------------------------- checkpoints and determinism
def test_checkpoint_round_trips_with_weights_only(tmp_path):
    train, valid = loaders(n_train=64, n_valid=32)
    model = tiny_hhmpn(seed=0)
    path = tmp_path / "ckpt" / "hhmpn.pt"
    result = fit(model, train, valid, epochs=2, lr=3e-3, seed=0, checkpoint_path=path, progress=False, device="cpu")
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())
    for key, value in state.items():
        assert torch.equal(value, result.best_state[key])

    fresh = tiny_hhmpn(seed=99)
    assert not torch.equal(fresh.label_embedding, model.label_embedding)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    ids, probs = predict(model, valid, "cpu")
    ids2, probs2 = predict(fresh, valid, "cpu")
    assert ids == ids2 and len(ids) == 32
    assert probs.shape == (32, NUM_LABELS)
    np.testing.assert_array_equal(probs, probs2)


def test_same_seed_gives_identical_training():
    def run(seed):
        train, valid = loaders(n_train=64, n_valid=32, batch_size=16)
        model = tiny_hhmpn(seed=0)
        result = fit(model, train, valid, epochs=2, lr=3e-3, seed=seed, progress=False, device="cpu")
        return [r["train_loss"] for r in result.history], result.best_state

    losses_a, state_a = run(seed=7)
    losses_b, state_b = run(seed=7)
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    losses_c, _ = run(seed=8)  # shuffling and dropout do depend on the seed
    assert losses_c != losses_a


def test_move_batch_moves_tensors_and_keeps_ids():
    batch = collate(planted_samples(3, 5))
    moved = move_batch(batch, torch.device("cpu"))
    assert moved["ids"] == batch["ids"]
    assert set(moved["features"]) == set(DIMS)
    assert moved["masks"]["a"].dtype == torch.bool
    assert torch.equal(moved["labels"], batch["labels"])


def test_gradients_are_clipped_to_norm_10(monkeypatch):
    seen = []
    original = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        before = original(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        seen.append((float(max_norm), float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)

    class Steep(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(NUM_LABELS))

        def forward(self, batch):
            return {"logits": self.bias.expand(len(batch["ids"]), -1)}

        def loss(self, outputs, batch):
            return 1e4 * F.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"])

    train, valid = loaders(n_train=32, n_valid=16)
    fit(Steep(), train, valid, epochs=1, lr=1e-3, seed=0, progress=False, device="cpu")
    assert seen and all(max_norm == 10.0 for max_norm, _, _ in seen)
    assert seen[0][1] > 10.0  # the raw gradient was larger ...
    assert all(after <= 10.0 + 1e-4 for _, _, after in seen)  # ... and was clipped


# --------------------------------------------------------------------- speed options: same results
def _reference_fit(model, train_loader, valid_loader, *, epochs, lr, clip=10.0, seed=0):
    """The engine's loop as it read before its per-batch and evaluation overhead was cut: default Adam,
    a host-side running loss sum per batch, a sigmoid and a host copy per validation batch."""
    seed_everything(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, best_score, best_state = [], -float("inf"), None
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum, count = 0.0, 0
        for batch in tqdm(train_loader, disable=True):  # as the engine (the wrapper changes the shuffling draws)
            outputs = model(batch)
            loss = model.loss(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch["labels"])
            count += len(batch["labels"])
        model.eval()
        probs, labels, valid_sum, valid_count = [], [], 0.0, 0
        with torch.no_grad():
            for batch in tqdm(valid_loader, disable=True):
                outputs = model(batch)
                probs.append(torch.sigmoid(outputs["logits"]).float().cpu().numpy())
                labels.append(batch["labels"].float().cpu().numpy())
                valid_sum += float(model.loss(outputs, batch)) * batch["labels"].shape[0]
                valid_count += batch["labels"].shape[0]
        metrics = evaluate(np.concatenate(labels), binarize(np.concatenate(probs)))
        history.append((loss_sum / count, valid_sum / valid_count, metrics["micro_f1"]))
        if metrics["micro_f1"] > best_score:
            best_score = metrics["micro_f1"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return history, best_state


def test_fp32_path_is_bit_identical_to_the_straightforward_loop():
    train, valid = loaders(n_train=96, n_valid=48, batch_size=32)
    expected_history, expected_state = _reference_fit(tiny_hhmpn(seed=3), train, valid, epochs=3, lr=3e-3, seed=5)
    result = fit(tiny_hhmpn(seed=3), train, valid, epochs=3, lr=3e-3, seed=5, progress=False, device="cpu")
    got = [(r["train_loss"], r["valid_loss"], r["valid"]["micro_f1"]) for r in result.history]
    assert got == expected_history  # exactly: same losses, same order of additions
    assert set(result.best_state) == set(expected_state)
    assert all(torch.equal(result.best_state[k], expected_state[k]) for k in expected_state)


def test_selection_only_epoch_metrics_select_the_same_checkpoint():
    train, valid = loaders(n_train=96, n_valid=48, batch_size=32)
    full = fit(tiny_hhmpn(), train, valid, epochs=3, lr=3e-3, seed=1, progress=False, device="cpu")
    cheap = fit(tiny_hhmpn(), train, valid, epochs=3, lr=3e-3, seed=1, progress=False, device="cpu",
                epoch_metrics="selection")
    assert cheap.best_epoch == full.best_epoch
    assert all(torch.equal(cheap.best_state[k], v) for k, v in full.best_state.items())
    assert cheap.best_valid == full.best_valid  # every metric, once, for the selected epoch
    assert [r["valid"]["micro_f1"] for r in cheap.history] == [r["valid"]["micro_f1"] for r in full.history]
    assert set(cheap.history[0]["valid"]) == {"micro_f1", "threshold"}


def test_unknown_speed_options_are_rejected():
    train, valid = loaders(n_train=32, n_valid=16)
    with pytest.raises(ValueError, match="precision"):
        fit(tiny_hhmpn(), train, valid, epochs=1, lr=1e-3, progress=False, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="epoch_metrics"):
        fit(tiny_hhmpn(), train, valid, epochs=1, lr=1e-3, progress=False, device="cpu", epoch_metrics="some")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(precision):
    """bf16/fp16 autocast on CPU: the same training up to the 8-bit (bf16) / 11-bit (fp16) mantissa."""
    train, valid = loaders(n_train=96, n_valid=48, batch_size=32)
    reference = fit(tiny_hhmpn(), train, valid, epochs=2, lr=3e-3, seed=0, progress=False, device="cpu")
    mixed = fit(tiny_hhmpn(), train, valid, epochs=2, lr=3e-3, seed=0, progress=False, device="cpu",
                precision=precision)
    for a, b in zip(reference.history, mixed.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.03)
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=0.03)
    for key, value in reference.best_state.items():
        if value.is_floating_point():
            assert mixed.best_state[key].dtype == value.dtype  # master weights stay float32
            assert torch.allclose(mixed.best_state[key], value, atol=0.02, rtol=0.05), key
    _, p_ref = predict(tiny_hhmpn().eval(), valid, "cpu")
    _, p_mixed = predict(tiny_hhmpn().eval(), valid, "cpu", precision=precision)
    assert p_mixed.dtype == np.float32 and np.abs(p_mixed - p_ref).max() < 0.02
    assert np.abs(p_mixed - p_ref).max() > 0  # autocast did run in lower precision


def test_compiled_training_equals_eager():
    """torch.compile (inductor, C++ on CPU) gives the eager training to 1e-5. Tiny model, dropout 0: the
    compiled model draws other dropout masks than eager. Fixed batch shapes keep it to two compilations
    (training, evaluation): about 40 s of CPU time."""
    pytest.importorskip("torch._inductor")
    fixed = functools.partial(collate, pad_to={"a": 5, "b": 4})  # one shape: one graph per mode, no recompiles
    train = DataLoader(planted_samples(32, 1), batch_size=32, shuffle=True, collate_fn=fixed)
    valid = DataLoader(planted_samples(16, 2), batch_size=16, collate_fn=fixed)

    def model():
        seed_everything(0)
        return HHMPN(DIMS, NUM_LABELS, d=8, rounds=2, dropout=0.0)

    eager = fit(model(), train, valid, epochs=2, lr=3e-3, seed=0, progress=False, device="cpu")
    compiled = fit(model(), train, valid, epochs=2, lr=3e-3, seed=0, progress=False, device="cpu", compile=True)
    for a, b in zip(eager.history, compiled.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-6)
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-5, abs=1e-6)
    for key, value in eager.best_state.items():
        assert torch.allclose(compiled.best_state[key], value, atol=1e-5, rtol=1e-5), key
