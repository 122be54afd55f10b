"""The one tuning rule (mmer.tuning, issue 21 item 6): every registered model's profiles apply it."""

from __future__ import annotations

import pytest

from hhmpn.config import profile as hhmpn_profile
from mmer import tuning
from mmer.registry import models


@pytest.mark.parametrize("profile", tuning.PROFILES)
def test_every_neural_model_trains_the_rules_epochs_and_learning_rate(profile):
    neural = {name: spec for name, spec in models().items() if spec.kind == "neural"}
    assert {"HHMPN", "HHMPN w/o L2L", "MulT", "M3ER", "KRF", "ML-GCN", "LSAN", "Seq2Set", "MLEE", "CIA"} <= set(neural)
    for name, spec in neural.items():
        config = spec.config(profile)
        assert config["epochs"] == tuning.MAX_EPOCHS[profile], name
        if profile == "quick":  # one rate for every model, no search
            assert config["lr"] == tuning.QUICK_LR, name
        assert "lr_grid" not in config and "grid" not in config, name
    assert hhmpn_profile(profile).epochs == tuning.MAX_EPOCHS[profile]  # hhmpn-train's profiles too


def test_paper_profile_keeps_each_models_own_learning_rate():
    rates = {name: spec.config("paper")["lr"] for name, spec in models().items() if spec.kind == "neural"}
    assert rates["HHMPN"] == 1e-4 and rates["MulT"] == 1e-3 and rates["Seq2Set"] == 3e-4


@pytest.mark.parametrize("profile", tuning.PROFILES)
def test_every_classical_model_searches_the_rules_c_grid(profile):
    estimators = {name: spec for name, spec in models().items() if spec.kind == "estimator"}
    assert {"BR", "CC", "LP"} <= set(estimators)
    for name, spec in estimators.items():
        assert spec.config(profile)["grid"] == {"C": list(tuning.C_GRID)}, name


def test_describe_states_the_rule_in_one_sentence():
    quick = tuning.describe("quick")
    assert "10 epochs" in quick and "0.003" in quick and "0.01, 0.1, 1" in quick and "0.5" in quick
    assert quick.endswith(".") and quick.count(". ") == 0
    paper = tuning.describe("paper", threshold="validation")
    assert "50 epochs" in paper and "own paper learning rate" in paper and "chosen on validation" in paper
    with pytest.raises(ValueError):
        tuning.describe("fast")
    with pytest.raises(ValueError):
        tuning.describe("quick", threshold="0.4")
