"""M3ER (Mittal et al., AAAI 2020): CCA modality check, proxy regeneration, multiplicative fusion."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cross_decomposition import CCA

from mmer import registry
from baselines.m3er import PHASE_ACTIVE, PHASE_AGREEMENT, PHASE_MOMENTS, M3ER, ModalityCheck
from mmer.runner import Cell
from mmer.runner import data_info, run_cell
from mmer.engine import seed_everything, train_and_test
from nemu.loading import split_datasets
from tests.conftest import constant_baseline_micro_f1
from tests.test_mult import DIMS, make_batch, repad


pytestmark = pytest.mark.usefixtures("one_thread")


def latent_views(n: int, dims: dict[str, int], noise: float = 0.3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Pooled features of several modalities, each a noisy linear view of a shared 2-d latent."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    views = {}
    for index, (name, dim) in enumerate(dims.items()):
        mixing = np.random.default_rng(100 + index).normal(size=(2, dim))
        views[name] = torch.tensor(z @ mixing + noise * rng.normal(size=(n, dim)) + index, dtype=torch.float32)
    return views


def fit(check: ModalityCheck, views: dict[str, torch.Tensor], batch: int = 100) -> None:
    n = len(next(iter(views.values())))
    present = {m: torch.ones(batch, dtype=torch.bool) for m in views}
    for start in range(0, n, batch):
        check.accumulate({m: v[start:start + batch] for m, v in views.items()}, present)


def test_cca_and_proxy_regression_match_reference_solutions():
    dims = {"a": 6, "b": 5}
    views = latent_views(2000, dims)
    check = ModalityCheck(dims, components=2, shrinkage=0.0, n_train=2000)
    assert check.phase.item() == PHASE_MOMENTS
    fit(check, views)
    assert check.phase.item() == PHASE_AGREEMENT and check.seen.item() == 0
    a, b = views["a"].double().numpy(), views["b"].double().numpy()
    reference = CCA(n_components=2, max_iter=2000, tol=1e-10).fit(a, b)
    x_scores, y_scores = reference.transform(a, b)
    expected = [abs(np.corrcoef(x_scores[:, i], y_scores[:, i])[0, 1]) for i in range(2)]
    assert np.allclose(getattr(check.fitted, "correlations_a->b").numpy(), expected, atol=1e-3)
    # our canonical variates are the reference's up to sign
    u = check.standardised("a", views["a"]) @ getattr(check.fitted, "projection_a->b")
    for i in range(2):
        assert abs(np.corrcoef(u[:, i].numpy(), x_scores[:, i])[0, 1]) > 0.999
    # proxy b from a: ordinary least squares with intercept (no shrinkage)
    design = np.hstack([a, np.ones((len(a), 1))])
    coefficients, *_ = np.linalg.lstsq(design, b, rcond=None)
    assert np.allclose(check.proxy("a", "b", views["a"][:5]).numpy(), design[:5] @ coefficients, atol=1e-3)


def test_check_flags_the_noisy_modality_only():
    dims = {"face": 6, "text": 5, "speech": 4}
    check = ModalityCheck(dims, components=2, shrinkage=0.0, tau_z=1.0, n_train=3000)
    views = latent_views(3000, dims, noise=0.2)
    fit(check, views)
    fit(check, latent_views(3000, dims, noise=0.2, seed=1))  # phase 2: agreement statistics
    assert check.phase.item() == PHASE_ACTIVE
    pairs = ("face->text", "face->speech", "text->speech")
    assert all(np.isfinite(getattr(check.fitted, f"tau_{p}").item()) for p in pairs)
    test = latent_views(400, dims, noise=0.2, seed=2)
    noisy = torch.arange(400) < 200
    test["speech"][noisy] = latent_views(200, dims, noise=0.2, seed=3)["speech"]  # another sample's speech
    present = torch.ones(400, 3, dtype=torch.bool)
    effective = check.effective(test, present)
    assert effective[noisy, 2].float().mean() < 0.4  # the replaced cue is caught most of the time
    assert effective[~noisy, 2].float().mean() > 0.8  # clean samples keep it
    assert effective[:, :2].float().mean() > 0.85  # the clean cues stay effective
    # a missing modality is never effective; with no present modality to check against, one is kept
    present[0, 1:] = False
    assert check.effective(test, present)[0].tolist() == [True, False, False]


def small(dims=DIMS, **kw) -> M3ER:
    torch.manual_seed(0)
    return M3ER(dims, 5, **({"hidden": 6, "dropout": 0.0, "cca_components": 2, "cca_shrinkage": 0.3} | kw))


def test_missing_modalities_are_regenerated_once_the_statistics_are_fitted():
    model, batch = small(n_train=8), make_batch()
    absent = ~torch.stack([batch["masks"][m].any(dim=1) for m in DIMS], dim=1)
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert not outputs["replaced"].any() and torch.equal(outputs["available"], ~absent)
    model.train()
    model(batch)
    model(make_batch(seed=5))  # 8 training samples: the moments phase is complete
    assert model.check.phase.item() == PHASE_AGREEMENT
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert torch.equal(outputs["replaced"], absent) and outputs["available"].all()
    assert torch.isfinite(outputs["logits"]).all()
    # a replaced modality is read as one proxy node: its output no longer depends on the absent padding
    with torch.no_grad():
        assert torch.allclose(model(repad(batch))["logits"], outputs["logits"], atol=1e-5)
    # the fit travels with the state dict; the running sums do not
    state = model.state_dict()
    assert "check.phase" in state and "check.fitted.regression_audio->images" in state
    assert not any(key.startswith("check.stats.") for key in state)


def test_phases_end_at_evaluation_without_a_training_size():
    model, batch = small(n_train=None), make_batch()
    model.train()
    model(batch)
    assert model.check.phase.item() == PHASE_MOMENTS
    model.eval()
    with torch.no_grad():
        model(batch)
    assert model.check.phase.item() == PHASE_AGREEMENT
    model.train()
    model(batch)
    model.eval()
    with torch.no_grad():
        model(batch)
    assert model.check.phase.item() == PHASE_ACTIVE


def test_multiplicative_loss_boosts_the_reliable_cue():
    model = small({"a": 3, "b": 3, "c": 3}, beta=2.0)
    # B = 2 samples, M = 3 modalities, L = 2 labels
    logits = torch.tensor([[[2.0, -1.0], [-2.0, 0.0], [0.5, 3.0]],
                           [[0.0, 0.0], [1.0, -1.0], [-1.0, 2.0]]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    available = torch.ones(2, 3, dtype=torch.bool)
    per_label = torch.sigmoid(torch.where(labels[:, None] > 0.5, logits, -logits))  # p of the true state
    p_true = per_label.prod(dim=-1) ** 0.5  # the label set's probability, geometric mean over labels
    assert torch.allclose(model.true_label_probability(logits, labels), p_true)
    weights = model.modality_weights(logits, labels, available)
    assert torch.allclose(weights, p_true ** (2.0 / 2))  # (p_m^y)^(beta / (M - 1)), per sample and modality
    assert weights[0, 0] > weights[0, 1] and weights[1, 2] > weights[1, 1]  # the cue that is right weighs more
    outputs = {"modality_logits": logits.clone().requires_grad_(), "available": available}
    loss = model.loss(outputs, {"labels": labels})
    assert torch.allclose(loss, (p_true * -torch.log(p_true)).sum(dim=1).mean())
    loss.backward()  # weights are constants: the gradient is the weighted BCE gradient
    expected = p_true[..., None] * (torch.sigmoid(logits) - labels[:, None]) / 2 / 2  # / L / B
    assert torch.allclose(outputs["modality_logits"].grad, expected, atol=1e-6)
    liu = small({"a": 3, "b": 3, "c": 3}, beta=2.0, weighting="liu").modality_weights(logits, labels, available)
    others = torch.stack([(1 - p_true[:, [1, 2]]).prod(dim=1), (1 - p_true[:, [0, 2]]).prod(dim=1),
                          (1 - p_true[:, [0, 1]]).prod(dim=1)], dim=1)
    assert torch.allclose(liu, others)  # Liu et al.: trained where the other cues fail
    # an unavailable modality adds nothing; one modality is plain BCE
    partial = torch.tensor([[True, False, True], [True, True, True]])
    manual = (p_true * -torch.log(p_true)) * partial
    assert torch.allclose(model.loss({"modality_logits": logits, "available": partial}, {"labels": labels}),
                          manual.sum(dim=1).mean())
    single = small({"a": 3})
    single_outputs = {"modality_logits": logits[:, :1], "available": available[:, :1]}
    assert torch.allclose(single.loss(single_outputs, {"labels": labels}),
                          F.binary_cross_entropy_with_logits(logits[:, 0], labels))


def test_prediction_is_the_product_of_the_available_experts():
    prior = [0.1, 0.2, 0.5, 0.7, 0.9]
    model, batch = small(label_prior=prior).eval(), make_batch()
    with torch.no_grad():
        outputs = model(batch)
    z, available = outputs["modality_logits"], outputs["available"]
    # p(y | x) is proportional to p(y) * prod_m p(y | x_m) / p(y) over the available modalities
    p = torch.sigmoid(z)
    prior_p = torch.tensor(prior)
    prior_odds = prior_p / (1 - prior_p)
    odds = prior_odds.expand(z.shape[0], -1)
    for m in range(z.shape[1]):
        ratio = (p[:, m] / (1 - p[:, m])) / prior_odds
        odds = odds * torch.where(available[:, m:m + 1], ratio, torch.ones_like(ratio))
    assert torch.allclose(torch.sigmoid(outputs["logits"]), odds / (1 + odds), atol=1e-5)
    assert not available.all()  # the batch has absent modalities, which are left out
    empty = make_batch(lengths=((0, 2), (0, 1), (0, 3), (0, 1)))
    with torch.no_grad():
        logits = model(empty)["logits"]
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits[0], torch.logit(prior_p))  # no modality at all: the prior
    model.train()
    outputs = model(empty)
    model.loss(outputs, empty).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_registered_and_smoke_runs_one_epoch(built):
    spec = registry.get("M3ER")
    assert spec.group == "Multi-modal" and spec.kind == "neural" and "Mittal" in spec.citation
    base, _, _ = built
    record = run_cell(Cell("M3ER", "nemu", 0, 0), spec, base / "out", "quick", overrides={"epochs": 1})
    assert record["status"] == "ok" and record["parameters"] > 0


def test_learns_the_planted_signal(sample_dataset):
    datasets = split_datasets(sample_dataset)
    info = data_info("nemu", sample_dataset, datasets)
    config = registry.get("M3ER").config("quick") | {"seed": 0}
    seed_everything(0)
    model = registry.get("M3ER").factory(config, info)
    assert model.check.n_train == len(datasets["train"])
    started = time.perf_counter()
    _, test = train_and_test(model, datasets, epochs=config["epochs"], lr=config["lr"],
                             batch_size=config["batch_size"], clip=config["clip"], seed=0, progress=False)
    seconds = time.perf_counter() - started
    assert model.check.phase.item() == PHASE_ACTIVE or config["epochs"] < 3
    baseline = constant_baseline_micro_f1(datasets["train"].labels, datasets["test"].labels)
    print(f"M3ER quick: {seconds:.1f} s, test micro-F1 {test['micro_f1']:.3f} vs constant {baseline:.3f}")
    assert test["micro_f1"] > baseline + 0.1, (test["micro_f1"], baseline)
