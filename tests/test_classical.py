"""Classical multi-label baselines (BR, CC, LP/RAkEL), early fusion and validation-only model selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score

from baselines.classical import (
    BinaryRelevance,
    ClassifierChains,
    LabelPowerset,
    RAkEL,
    make_base,
    random_labelsets,
)
from mmer.runner import select_on_validation
from mmer.early_fusion import column_names, early_fused, mean_pooled, modality_slices


def micro(Y_true, Y_pred) -> float:
    return f1_score(Y_true, Y_pred, average="micro", zero_division=0)


def planted(n: int = 900, d: int = 12, L: int = 4, seed: int = 0):
    """Y[:, j] = a noisy threshold of feature j (about 22 % positives); features on very different scales."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = (X[:, :L] + 0.2 * rng.normal(size=(n, L)) > 0.8).astype(np.int64)
    X = X * np.logspace(-3, 3, d)  # standardisation inside the estimators must cope
    return X, Y


ESTIMATORS = {
    "BR": lambda **kw: BinaryRelevance(**kw),
    "CC": lambda **kw: ClassifierChains(**kw),
    "ECC": lambda **kw: ClassifierChains(n_chains=3, **kw),
    "LP": lambda **kw: LabelPowerset(**kw),
    "RAkEL": lambda **kw: RAkEL(**kw),
    "RAkEL-soft": lambda **kw: RAkEL(vote="soft", **kw),
}


@pytest.mark.parametrize("base", ["logistic", "linear_svc"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_learns_planted_signal_above_label_frequency_baseline(name, base):
    X, Y = planted()
    train, test = slice(0, 600), slice(600, None)
    model = ESTIMATORS[name](base=base).fit(X[train], Y[train])
    proba, pred = model.predict_proba(X[test]), model.predict(X[test])
    assert proba.shape == pred.shape == Y[test].shape
    assert np.all((proba >= 0) & (proba <= 1))
    assert set(np.unique(pred)) <= {0, 1}
    # the best label-frequency-only predictor for micro-F1 here: every label positive (F1 = 2p / (1 + p))
    baseline = micro(Y[test], np.ones_like(Y[test]))
    assert baseline < 0.45
    assert micro(Y[test], pred) > max(0.7, baseline + 0.25)


def test_instance_base_and_C_override():
    X, Y = planted(n=400)
    model = BinaryRelevance(base=make_base("logistic"), C=1e-6).fit(X, Y)
    # C = 1e-6 shrinks every coefficient to ~0: all scores sit near each label's base rate
    assert np.ptp(model.predict_proba(X), axis=0).max() < 0.05
    strong = BinaryRelevance(base=make_base("logistic"), C=10.0).fit(X, Y)
    assert np.ptp(strong.predict_proba(X), axis=0).min() > 0.9


def chained(n: int = 1200, seed: int = 0):
    """Label 1 depends on label 0 in a way no linear function of the features captures.

    y0 = [x0 > 0]; y1 = [x1 + 3 y0 > 1.5]: linear in (x1, y0) but a non-convex region of (x0, x1).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y0 = (X[:, 0] > 0).astype(np.int64)
    y1 = (X[:, 1] + 3 * y0 > 1.5).astype(np.int64)
    return X, np.column_stack([y0, y1])


def test_classifier_chain_uses_earlier_labels():
    X, Y = chained()
    train, test = slice(0, 800), slice(800, None)

    def accuracy_label1(model):
        return (model.fit(X[train], Y[train]).predict(X[test])[:, 1] == Y[test, 1]).mean()

    br = accuracy_label1(BinaryRelevance(C=100.0))
    cc = accuracy_label1(ClassifierChains(C=100.0))              # label 0 first: label 1 sees it
    reversed_cc = accuracy_label1(ClassifierChains(C=100.0, order=[1, 0]))  # label 1 first: it cannot
    assert cc > 0.97
    assert cc > br + 0.05
    assert cc > reversed_cc + 0.05


def test_chain_orders_are_seeded():
    X, Y = planted(n=200, L=4)
    a = ClassifierChains(n_chains=3, random_state=7).fit(X, Y)
    b = ClassifierChains(n_chains=3, random_state=7).fit(X, Y)
    c = ClassifierChains(n_chains=3, random_state=8).fit(X, Y)
    assert [o.tolist() for o in a.orders_] == [o.tolist() for o in b.orders_]
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert [o.tolist() for o in a.orders_] != [o.tolist() for o in c.orders_]
    assert ClassifierChains().fit(X, Y).orders_[0].tolist() == [0, 1, 2, 3]  # default: dataset order
    with pytest.raises(ValueError):
        ClassifierChains(order=[0, 0, 1, 2]).fit(X, Y)


class FixedProba(ClassifierMixin, BaseEstimator):
    """Returns the same class probabilities (in sorted class order) for every sample."""

    def __init__(self, proba=(0.2, 0.5, 0.3)):
        self.proba = proba

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        assert len(self.classes_) == len(self.proba)
        return self

    def predict_proba(self, X):
        return np.tile(np.asarray(self.proba, dtype=float), (len(X), 1))

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def test_label_powerset_maps_combinations_and_marginals_by_hand():
    X = np.arange(8, dtype=float).reshape(4, 2)
    Y = np.array([[1, 0], [0, 0], [1, 1], [1, 0]])
    lp = LabelPowerset(base=FixedProba((0.2, 0.5, 0.3))).fit(X, Y)
    np.testing.assert_array_equal(lp.combinations_, [[0, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(lp.transform(Y), [1, 0, 2, 1])
    np.testing.assert_array_equal(lp.transform([[0, 1]]), [-1])  # never seen in training
    np.testing.assert_array_equal(lp.inverse_transform(lp.transform(Y)), Y)
    P = lp.predict_combination_proba(X[:2])
    np.testing.assert_allclose(P, [[0.2, 0.5, 0.3]] * 2)
    # P(label 0) = P([1,0]) + P([1,1]) = 0.8; P(label 1) = P([1,1]) = 0.3
    np.testing.assert_allclose(lp.predict_proba(X[:2]), [[0.8, 0.3]] * 2)
    np.testing.assert_array_equal(lp.predict(X[:2]), [[1, 0]] * 2)  # the most probable combination


def test_label_powerset_single_combination_is_constant():
    X = np.random.default_rng(0).normal(size=(10, 3))
    Y = np.tile([1, 0, 1], (10, 1))
    lp = LabelPowerset().fit(X, Y)
    np.testing.assert_array_equal(lp.predict(X), Y)
    np.testing.assert_allclose(lp.predict_proba(X), Y)


def test_random_labelsets_size_cover_and_seed():
    for L, k in [(6, 3), (7, 3), (10, 3), (9, 4)]:
        for seed in range(5):
            sets = random_labelsets(L, k, random_state=seed)
            assert len(sets) == min(2 * L, math.comb(L, k))
            assert all(len(s) == k and len(set(s.tolist())) == k for s in sets)
            assert len({tuple(s.tolist()) for s in sets}) == len(sets)  # distinct
            assert set(np.concatenate(sets).tolist()) == set(range(L))  # every label covered
            assert [s.tolist() for s in sets] == [s.tolist() for s in random_labelsets(L, k, random_state=seed)]
    assert [s.tolist() for s in random_labelsets(10, 3, random_state=0)] != \
           [s.tolist() for s in random_labelsets(10, 3, random_state=1)]
    # few subsets: uniform draws would miss labels; coverage still holds (m raised to ceil(L / k))
    for seed in range(10):
        sets = random_labelsets(10, 3, n_subsets=2, random_state=seed)
        assert len(sets) == 4 and set(np.concatenate(sets).tolist()) == set(range(10))
    assert [s.tolist() for s in random_labelsets(2, 3)] == [[0, 1]]  # k capped at L


def test_rakel_uses_seeded_labelsets_and_averages_votes():
    X, Y = planted(n=300, L=5)
    model = RAkEL(k=3, random_state=3).fit(X, Y)
    assert [s.tolist() for s in model.labelsets_] == [s.tolist() for s in random_labelsets(5, 3, random_state=3)]
    Xs = model.scaler_.transform(X)
    votes = np.zeros(Y.shape)
    for labels, lp in zip(model.labelsets_, model.powersets_):
        votes[:, labels] += lp.predict(Xs)
    expected = votes / model.label_counts_
    np.testing.assert_allclose(model.predict_proba(X), expected)
    np.testing.assert_array_equal(model.predict(X), expected > 0.5)
    np.testing.assert_array_equal(model.label_counts_, np.bincount(np.concatenate(model.labelsets_), minlength=5))


@pytest.mark.parametrize("base", ["logistic", "linear_svc"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_constant_labels_in_training_do_not_crash(name, base):
    X, Y = planted(n=200, L=4)
    Y[:, 1] = 0
    Y[:, 3] = 1
    model = ESTIMATORS[name](base=base).fit(X, Y)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba[:, 1], 0.0)
    np.testing.assert_allclose(proba[:, 3], 1.0)
    pred = model.predict(X)
    assert (pred[:, 1] == 0).all() and (pred[:, 3] == 1).all()


def test_every_label_constant():
    X = np.random.default_rng(1).normal(size=(20, 3))
    Y = np.zeros((20, 3), dtype=int)
    for make in ESTIMATORS.values():
        assert make().fit(X, Y).predict(X).sum() == 0


class FakeDataset:
    """The attributes of nemu.MMERDataset that early fusion reads; ``with_nodes`` adds the ``_nodes`` layout."""

    def __init__(self, samples, dims, labels, with_nodes=False):
        self.modality_dims = dims
        self.label_names = [f"l{i}" for i in range(labels.shape[1])]
        self.labels = labels.astype(np.float32)
        self.ids = [str(i) for i in range(len(samples))]
        self.samples = samples
        if with_nodes:
            self._nodes = {}
            for m, dim in dims.items():
                parts = [np.asarray(s[m], dtype=np.float32).reshape(-1, dim) for s in samples]
                offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
                self._nodes[m] = (np.concatenate(parts), offsets)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        features = {m: torch.tensor(np.asarray(self.samples[index][m], dtype=np.float32).reshape(-1, dim))
                    for m, dim in self.modality_dims.items()}
        return {"id": self.ids[index], "features": features, "labels": torch.from_numpy(self.labels[index])}


HAND_SAMPLES = [
    {"text": [[1, 2], [3, 4]], "audio": []},                           # no audio node
    {"text": [[-1, 0]], "audio": [[1, 1, 1], [2, 2, 2], [3, 6, 9]]},
    {"text": [], "audio": [[0.5, 0, -0.5]]},                           # no text node
    {"text": [[4, 4], [0, 0], [2, -4]], "audio": []},                  # last sample empty in audio
]
HAND_EXPECTED = np.array([
    # text mean | text has | audio mean    | audio has
    [2, 3, 1, 0, 0, 0, 0],
    [-1, 0, 1, 2, 3, 4, 1],
    [0, 0, 0, 0.5, 0, -0.5, 1],
    [2, 0, 1, 0, 0, 0, 0],
], dtype=np.float32)


@pytest.mark.parametrize("with_nodes", [False, True])
def test_mean_pooled_hand_case_with_empty_modalities(with_nodes):
    dims = {"text": 2, "audio": 3}
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    dataset = FakeDataset(HAND_SAMPLES, dims, labels, with_nodes=with_nodes)
    X = mean_pooled(dataset)
    assert X.dtype == np.float32 and X.shape == (4, 2 + 1 + 3 + 1)
    np.testing.assert_allclose(X, HAND_EXPECTED)
    assert column_names(dims) == ["text:mean[0]", "text:mean[1]", "text:has_nodes",
                                  "audio:mean[0]", "audio:mean[1]", "audio:mean[2]", "audio:has_nodes"]
    assert modality_slices(dims) == {"text": (slice(0, 2), 2), "audio": (slice(3, 6), 6)}
    X2, Y = early_fused(dataset)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(Y, labels)


def test_mean_pooled_fast_path_matches_item_path_and_modality_order():
    rng = np.random.default_rng(0)
    dims = {"b": 3, "a": 5}
    samples = [{m: rng.normal(size=(int(rng.integers(0, 4)), d)) for m, d in dims.items()} for _ in range(60)]
    samples[0]["a"] = np.zeros((0, 5))
    samples[-1]["b"] = np.zeros((0, 3))
    labels = rng.integers(0, 2, size=(60, 2))
    slow = mean_pooled(FakeDataset(samples, dims, labels))
    fast = mean_pooled(FakeDataset(samples, dims, labels, with_nodes=True))
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)
    for i, s in enumerate(samples):  # columns follow modality_dims order: b first
        np.testing.assert_allclose(slow[i, :3], s["b"].mean(0) if len(s["b"]) else 0, rtol=1e-5, atol=1e-6)
        assert slow[i, 3] == (len(s["b"]) > 0) and slow[i, 9] == (len(s["a"]) > 0)


class ConstantGuess(BaseEstimator):
    """Predicts the training majority of each label, flipped when ``flip``."""

    def __init__(self, flip=False):
        self.flip = flip

    def fit(self, X, Y):
        self.row_ = (np.asarray(Y).mean(0) > 0.5).astype(int)
        return self

    def predict(self, X):
        row = 1 - self.row_ if self.flip else self.row_
        return np.tile(row, (len(X), 1))


def test_select_on_validation_uses_validation_not_train():
    rng = np.random.default_rng(0)
    X_train, X_valid = rng.normal(size=(50, 2)), rng.normal(size=(40, 2))
    Y_train = np.tile([1, 1, 0], (50, 1))   # train says "labels 0, 1 on"
    Y_valid = np.tile([0, 0, 1], (40, 1))   # validation says the opposite
    params, model = select_on_validation(ConstantGuess, {"flip": [False, True]}, X_train, Y_train, X_valid, Y_valid)
    assert params == {"flip": True}
    assert model.flip is True and hasattr(model, "row_")
    assert [s for _, s in model.selection_scores_] == [0.0, 1.0]
    # ties go to the first grid point
    params, _ = select_on_validation(ConstantGuess, {"flip": [True, False]}, X_train, Y_train, X_train, Y_train)
    assert params == {"flip": False}


def test_select_on_validation_picks_best_C():
    X, Y = planted(n=700)
    grid = {"C": [1e-6, 1e-2, 1.0]}
    params, model = select_on_validation(BinaryRelevance, grid, X[:400], Y[:400], X[400:550], Y[400:550])
    manual = [micro(Y[400:550], BinaryRelevance(C=c).fit(X[:400], Y[:400]).predict(X[400:550])) for c in grid["C"]]
    assert params == {"C": grid["C"][int(np.argmax(manual))]}
    assert params["C"] != 1e-6  # all-zero predictions lose
    assert isinstance(model, BinaryRelevance) and model.C == params["C"]
    np.testing.assert_allclose([s for _, s in model.selection_scores_], manual)


def test_early_fusion_sequence_concatenates_projected_modalities_and_masks():
    import torch

    from mmer.early_fusion import EarlyFusionSequence

    torch.manual_seed(0)
    fusion = EarlyFusionSequence({"a": 3, "b": 2}, d=4)
    batch = {"features": {"a": torch.randn(2, 2, 3), "b": torch.randn(2, 3, 2)},
             "masks": {"a": torch.tensor([[True, False], [True, True]]),
                       "b": torch.tensor([[True, True, True], [False, False, False]])}}
    states, mask = fusion(batch)
    assert states.shape == (2, 5, 4) and mask.tolist() == [[True, False, True, True, True], [True, True, False, False, False]]
    assert torch.all(states[~mask] == 0)
    expected = fusion.project["b"](batch["features"]["b"][0, 1]) + fusion.modality_embedding[1]
    assert torch.allclose(states[0, 3], expected)
    batch["features"]["a"][0, 1] = 1e6  # padding values change nothing
    assert torch.allclose(fusion(batch)[0], states)


# ----------------------------------------------------------------------------------------------
# ECC, and why CC can equal BR


def test_ecc_is_registered_as_an_ensemble_of_random_order_chains():
    from mmer import registry

    spec = registry.get("ECC")
    assert spec.group == "Classical" and spec.kind == "estimator" and "Read" in spec.citation
    assert spec.config("paper")["n_chains"] == 10 and spec.config("quick")["n_chains"] == 3  # Read et al.: 10
    model = spec.factory(spec.config("paper") | {"seed": 3}, None)
    X, Y = planted(n=200, L=4)
    model.fit(X, Y)
    orders = {tuple(order.tolist()) for order in model.orders_}
    assert len(model.chains_) == 10 and len(orders) >= 8  # 10 chains in (almost surely) distinct random orders
    again = spec.factory(spec.config("paper") | {"seed": 3}, None).fit(X, Y)
    np.testing.assert_array_equal(model.predict_proba(X), again.predict_proba(X))  # the seed fixes the orders


def test_ecc_recovers_a_dependency_that_cc_in_the_dataset_order_cannot_see():
    """The dependent label first in the dataset's order: CC's single chain cannot use the label it depends on, so
    it decides as BR does; ECC's chains in random orders put it after its parent about half the time."""
    X, Y = chained(n=1200)
    Y = Y[:, ::-1]  # column 0 now depends on column 1
    train, test = slice(0, 800), slice(800, None)

    def predictions(model):
        return model.fit(X[train], Y[train]).predict(X[test])

    from mmer import registry

    spec = registry.get("ECC")
    br, cc = predictions(BinaryRelevance(C=100.0)), predictions(ClassifierChains(C=100.0))
    ecc = predictions(spec.factory(spec.config("paper") | {"seed": 0}, None).set_params(C=100.0))
    np.testing.assert_array_equal(cc[:, 0], br[:, 0])  # the first label of a chain sees no label: it is BR's
    accuracy = {name: (p[:, 0] == Y[test, 0]).mean() for name, p in (("BR", br), ("CC", cc), ("ECC", ecc))}
    assert accuracy["ECC"] > accuracy["CC"] + 0.03, accuracy


def test_chained_label_columns_carry_no_weight_among_many_standardised_columns_at_small_c():
    """Why CC's row equals BR's on the sample, and the table says so: the chain's 0/1 label column sits beside
    ~2,000 standardised pooled columns, and at the small C chosen on validation the L2 penalty spreads the weight
    over every column, so the chained label moves no decision (with few columns and a loose penalty it does).
    Table 2 rendered from such runs carries the note (main printed the equal rows with no word)."""
    from baselines.tables import table2
    from mmer.metrics import evaluate

    def wide(seed: int, n: int = 240, d: int = 2000):  # y1 depends on y0 strongly
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, d))
        y0 = (X[:, :40].sum(axis=1) + rng.normal(size=n) * 3 > 2).astype(np.int64)
        y1 = (X[:, 40:80].sum(axis=1) + 6 * y0 + rng.normal(size=n) * 3 > 5).astype(np.int64)
        return X, np.column_stack([y0, y1])

    records = []
    train, test = slice(0, 180), slice(180, None)
    for fold in range(3):  # one draw of the data per "fold"
        X, Y = wide(fold)
        br = BinaryRelevance(C=0.01).fit(X[train], Y[train])
        cc = ClassifierChains(C=0.01).fit(X[train], Y[train])
        np.testing.assert_array_equal(cc.predict(X[test]), br.predict(X[test]))
        assert np.abs(cc.predict_proba(X[test]) - br.predict_proba(X[test])).max() < 0.01
        # the second classifier's weight on the chained label: a thousandth of its weights' total
        second = cc.chains_[0].named_steps["cc"].estimators_[1].estimator_.coef_.ravel()
        assert abs(second[-1]) < 0.01 * np.abs(second[:-1]).sum()
        for name, model in (("BR", br), ("CC", cc)):
            metrics = {k: v for k, v in evaluate(Y[test], model.predict(X[test])).items() if k != "per_label"}
            records.append(_table_record(name, fold, 0.0) | {"metrics": metrics})
    manifest = {"dataset": "NEMu", "modalities": [{"name": "lyrics", "dim": 1999}]}
    assert "CC equals BR on NEMu (source not recorded), and this is not a bug" in " ".join(
        table2(records, {"nemu": manifest}).notes)
    narrow = X[:, 40:80]  # the second label's own features and a loose penalty: the chained column matters
    narrow_br = BinaryRelevance(C=10.0).fit(narrow[train], Y[train]).predict(narrow[test])
    narrow_cc = ClassifierChains(C=10.0).fit(narrow[train], Y[train]).predict(narrow[test])
    assert (narrow_cc[:, 1] != narrow_br[:, 1]).any()


def _table_record(model: str, fold: int, micro_f1: float) -> dict:
    from mmer import registry
    from mmer.runner import Cell

    return {"key": Cell(model, "nemu", fold, 0).key, "model": model, "group": registry.get(model).group,
            "dataset": "nemu", "fold": fold, "seed": 0, "modalities": ["lyrics", "audio", "comments", "images"],
            "status": "ok", "metrics": {"accuracy": micro_f1 - 0.2, "hamming_loss": 1 - micro_f1,
                                        "micro_f1": micro_f1, "macro_f1": micro_f1 - 0.1, "subset_accuracy": 0.0},
            "per_label_f1": {"x": micro_f1}}


def test_table2_explains_a_cc_row_equal_to_br_and_only_then():
    from baselines.tables import table2

    manifest = {"dataset": "NEMu", "source": {"kind": "synthetic-sample", "seed": 0, "songs": 240},
                "counts": {"kept": 228}, "modalities": [{"name": "lyrics", "dim": 300}, {"name": "audio", "dim": 74}]}
    equal = [_table_record(m, f, 0.5 + 0.01 * f) for f in range(3) for m in ("BR", "CC")]
    notes = " ".join(table2(equal, {"nemu": manifest}).notes)
    assert "CC equals BR on NEMu sample (synthetic, 228 songs)" in notes and "not a bug" in notes
    assert "376 standardised pooled feature columns" in notes and "ECC (--models ECC)" in notes
    with_ecc = equal + [_table_record("ECC", f, 0.55) for f in range(3)]
    assert "ECC, Read et al.'s ensemble of chains (10 in the paper profile, 3 in quick)" in " ".join(table2(with_ecc, {"nemu": manifest}).notes)
    differ = [_table_record(m, f, 0.5 + 0.01 * f + (0.02 if m == "CC" else 0)) for f in range(3) for m in ("BR", "CC")]
    assert "CC equals BR" not in " ".join(table2(differ, {"nemu": manifest}).notes)
