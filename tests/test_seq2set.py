"""Seq2Set (Yang et al., ACL 2019): phase switch under the shared engine, label order, decoding, self-critical RL."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import nemu
from mmer import registry
from mmer.phases import EpochPhases, PhasedModule
from baselines.seq2set import SET_LOGIT, Seq2Set, frequency_order, set_f1
from tests.conftest import constant_baseline_micro_f1
from tests.test_lsan import DIMS, padded, toy_batch


pytestmark = pytest.mark.usefixtures("one_thread")


def small(L: int = 4, **kw) -> Seq2Set:
    kw = {"d": 8, "emb_size": 6, "encoder_hidden": 5, "num_layers": 2, "dropout": 0.0, "mle_epochs": 2} | kw
    return Seq2Set(DIMS, L, **kw)


# --- the phase schedule --------------------------------------------------------------------------------


def test_epoch_phases_schedule():
    schedule = EpochPhases((("mle", 2), ("rl", None)))
    assert [schedule.phase(e) for e in range(1, 6)] == ["mle", "mle", "rl", "rl", "rl"]
    assert schedule.first_epoch("rl") == 3
    assert EpochPhases((("a", 1), ("b", 1))).phase(9) == "b"
    with pytest.raises(ValueError, match="last"):
        EpochPhases((("a", None), ("b", 1)))


class Recorder(PhasedModule):
    """A tiny phased model that records the phase of every training batch."""

    def __init__(self):
        super().__init__((("first", 2), ("second", None)))
        self.linear = torch.nn.Linear(1, 2)
        self.seen: list[tuple[int, str]] = []

    def forward(self, batch):
        if self.training:
            self.begin_training_step()
            self.seen.append((self.epoch, self.phase))
        return {"logits": self.linear(batch["x"])}

    def loss(self, outputs, batch):
        return torch.nn.functional.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"])


def test_phase_follows_the_engines_epochs():
    from mmer.engine import fit

    batches = [{"x": torch.randn(3, 1), "labels": torch.ones(3, 2)} for _ in range(3)]
    model = Recorder()
    model.train()  # a stray train() call before fit does not count as an epoch
    fit(model, batches, batches[:1], epochs=4, lr=1e-2, progress=False)
    assert model.seen == [(1, "first")] * 3 + [(2, "first")] * 3 + [(3, "second")] * 3 + [(4, "second")] * 3
    model.reset_phases()
    assert model.epoch == 0 and model.phase == "first"


# --- label order and targets ---------------------------------------------------------------------------


def test_pretraining_order_is_descending_training_frequency_then_eos():
    train = np.array([[0, 1, 1, 0], [0, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 1]])
    order = frequency_order(train, 4)
    assert order == [1, 3, 0, 2]  # counts 1, 3, 1, 3: ties broken by index
    model = small(label_order=order)
    targets, lengths = model.target_sequence(torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]))
    eos = 4
    assert targets.tolist() == [[3, 0, 2, eos], [eos, -1, -1, -1], [1, 0, eos, -1]]
    assert lengths.tolist() == [4, 1, 3]
    with pytest.raises(ValueError):
        small(label_order=[0, 0, 1, 2])


# --- decoding ------------------------------------------------------------------------------------------


def test_eval_logits_mark_exactly_the_greedy_decoded_set_and_ignore_padding():
    torch.manual_seed(0)
    model = small().eval()
    batch = toy_batch()
    with torch.no_grad():
        out = model(batch)
        decoded, _ = model.decode(model.encode(batch))
    assert set(out["logits"].abs().flatten().tolist()) == {SET_LOGIT}
    assert torch.equal(torch.sigmoid(out["logits"]) >= 0.5, decoded)
    with torch.no_grad():
        assert torch.equal(model(padded(batch))["logits"], out["logits"])
    # greedy decoding by hand: argmax each step, emitted labels masked, stop at EOS
    with torch.no_grad():
        context, mask, state = model.encode(batch)
        for b in range(4):
            token, used, chosen = torch.tensor([model.bos]), torch.zeros(1, 4, dtype=torch.bool), set()
            st = (state[0][:, b:b + 1], state[1][:, b:b + 1])
            for _ in range(5):
                scores, st, _ = model.step(token, st, context[b:b + 1], mask[b:b + 1], used)
                choice = int(scores.argmax())
                if choice == model.eos:
                    break
                assert choice not in chosen  # the repeat mask
                chosen.add(choice)
                used[0, choice] = True
                token = torch.tensor([choice])
            assert {i for i in range(4) if decoded[b, i]} == chosen


def sequence_log_prob(model: Seq2Set, batch: dict, index: int, sequence: tuple[int, ...]) -> float:
    one = {"features": {m: x[index:index + 1] for m, x in batch["features"].items()},
           "masks": {m: x[index:index + 1] for m, x in batch["masks"].items()}}
    targets = torch.tensor([[*sequence, model.eos]])
    scores = model.teacher_forced(model.encode(one), targets)
    return float(torch.log_softmax(scores, -1).gather(2, targets[..., None]).sum())


def test_beam_search_with_a_wide_beam_finds_the_most_probable_label_sequence():
    torch.manual_seed(3)
    L = 3
    model = small(L).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # sharper, more varied distributions
    batch = toy_batch(3)
    batch["labels"] = batch["labels"][:, :L]
    sequences = [s for k in range(L + 1) for s in itertools.permutations(range(L), k)]
    with torch.no_grad():
        found = model.beam_search(model.encode(batch), beam_size=len(sequences))
        assert torch.equal(model.beam_search(model.encode(batch), beam_size=1), model.decode(model.encode(batch))[0])
        for b in range(4):
            best = max(sequences, key=lambda s: sequence_log_prob(model, batch, b, s))
            assert {i for i in range(L) if found[b, i]} == set(best)
    model.beam_size = 4
    with torch.no_grad():
        assert torch.equal(torch.sigmoid(model(batch)["logits"]) >= 0.5,
                           model.beam_search(model.encode(batch), beam_size=4))


# --- the two training objectives -----------------------------------------------------------------------


def test_set_f1_reward():
    pred = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    gold = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]])
    assert torch.allclose(set_f1(pred, gold), torch.tensor([2 / 3, 1.0, 0.0, 1.0]))


def test_mle_phase_then_self_critical_policy_gradient():
    torch.manual_seed(4)
    model = small(mle_epochs=1).train()
    batch = toy_batch(4)
    out = model(batch)
    assert model.phase == "mle" and "token_logits" in out and "log_prob" not in out
    targets, _ = model.target_sequence(batch["labels"])
    expected = torch.nn.functional.cross_entropy(out["token_logits"].reshape(-1, 5), targets.reshape(-1),
                                                 ignore_index=-1)
    assert torch.allclose(model.loss(out, batch), expected)

    model.eval()
    model.train()  # the engine's next epoch
    out = model(batch)
    assert model.epoch == 2 and model.phase == "rl" and {"sampled", "greedy", "log_prob"} <= set(out)
    gold = batch["labels"] > 0.5
    advantage = set_f1(out["sampled"], gold) - set_f1(out["greedy"], gold)
    assert torch.allclose(model.loss(out, batch), -(advantage * out["log_prob"]).mean())
    assert (out["log_prob"] <= 0).all()
    # a sample that equals the greedy set carries no gradient (self-critical baseline)
    same = dict(out, greedy=out["sampled"])
    model.zero_grad()
    model.loss(same, batch).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_policy_gradient_raises_the_reward_on_a_fixed_batch():
    torch.manual_seed(5)
    model = small(mle_epochs=0, dropout=0.0)
    batch = toy_batch(5)
    gold = batch["labels"] > 0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)

    def expected_reward(samples=64):
        model.train()
        with torch.no_grad():
            encoded = model.encode(batch)
            return float(np.mean([set_f1(model.decode(encoded, sample=True)[0], gold).mean() for _ in range(samples)]))

    before = expected_reward()
    for _ in range(60):
        model.train()
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert expected_reward() > before + 0.15, before


# --- registry, smoke, planted signal -------------------------------------------------------------------


def test_registered_once_in_the_linguistic_group_with_both_profiles():
    spec = registry.get("Seq2Set")
    assert spec.group == "Linguistic" and spec.kind == "neural" and "ACL 2019" in spec.citation
    paper = spec.config("paper")
    assert paper["mle_epochs"] < paper["epochs"] and paper["beam_size"] == 10
    quick = spec.config("quick")
    assert quick["mle_epochs"] < quick["epochs"]  # both phases run in the quick profile too


def test_one_epoch_on_the_tiny_build(built):
    from mmer.runner import Cell
    from mmer.runner import run_cell

    base, _, _ = built
    record = run_cell(Cell("Seq2Set", "nemu", 0, 0), registry.get("Seq2Set"), base / "out", "quick",
                      overrides={"epochs": 2, "mle_epochs": 1})  # one epoch of each phase
    assert record["status"] == "ok" and record["parameters"] > 0


def test_learns_the_samples_planted_signal(sample_dataset):
    from mmer.engine import seed_everything, train_and_test
    from nemu.loading import split_datasets
    from mmer.runner import data_info

    datasets = split_datasets(sample_dataset)
    spec = registry.get("Seq2Set")
    config = spec.config("quick") | {"seed": 0}
    seed_everything(0)
    model = spec.factory(config, data_info("nemu", sample_dataset, datasets))
    result, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                                  batch_size=config["batch_size"], seed=0, progress=False)
    assert model.epoch == config["epochs"]
    baseline = constant_baseline_micro_f1(nemu.MMERDataset(sample_dataset, "train").labels,
                                          nemu.MMERDataset(sample_dataset, "test").labels)
    assert test["micro_f1"] > baseline + 0.08, (test["micro_f1"], baseline)
