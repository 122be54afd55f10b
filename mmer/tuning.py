"""The one tuning rule of the benchmark: the same budget for every model of a profile, written once.

Every model of a profile is tuned the same way, on the validation split only:

* **Neural models** (HHMPN, its ablations and every neural baseline) train for the profile's
  :data:`MAX_EPOCHS` (quick 10, paper 50) with the shared engine (``mmer.engine``), and the single epoch with
  the best validation micro-F1 (the earliest on ties) is the checkpoint every test metric comes from.
* **No learning-rate search for any model.** In the paper profile every model trains at its own paper's learning
  rate (or, where the paper gives none, the one its module docstring states); in the quick profile, whose widths
  are no paper's, every neural model trains at the one :data:`QUICK_LR` = 3e-3. Why none rather than a grid:
  a grid multiplies the cost of every neural cell by its size (a 3-point grid would about triple the cost of the
  demo's cells, past the 15-minute ``make demo`` on 2 cores, and its paper runs 3x as long), while a
  fixed rate gives every model the same budget (one training run) and hands none of them an advantage. 3e-3 is
  within a factor of 3 of every rate the quick profile set by hand per model before this rule (1e-3 .. 6e-3); at
  10 epochs the median 2e-3 left CIA at the constant baseline on the sample (tests/test_cia.py).
  10 quick epochs: the hand-set counts ranged from 8 (HHMPN) to 30 (ML-GCN);
  with Table 2's three seeds, 15 epochs took ``make demo`` past its 15 minutes on 2 cores (measured: 20 min with
  a test run beside it), and 10 brings it back within them. 50 paper epochs are the HHMPN
  paper's, the longest any of the reproduced papers trains, so no baseline gets fewer epochs than its paper
  (selection on validation keeps the extra epochs from hurting).
* **Classical estimators** (BR, CC, LP) select ``C`` of their base classifier from :data:`C_GRID` (0.01, 0.1, 1)
  in both profiles, by validation micro-F1 (``mmer.runner.select_on_validation``).
* **The decision threshold** is 0.5 for every model (the paper's), or, with ``--threshold validation``
  (:data:`THRESHOLD_RULES`), one threshold per cell chosen on its validation split from
  ``mmer.metrics.THRESHOLD_GRID`` (``mmer.metrics.choose_threshold``) for every model alike.

The model files apply the rule (``epochs`` and, in quick, ``lr`` come from :func:`neural_budget`, the classical
grid from :func:`c_grid`; tests/test_tuning.py checks every registered model), and each model's docstring notes
where its epochs deviate from its paper's. :func:`describe` is the sentence the table notes print.
"""

from __future__ import annotations

PROFILES = ("quick", "paper")
#: Maximum epochs of every neural model, per profile; the best-validation-micro-F1 epoch is selected.
MAX_EPOCHS = {"quick": 10, "paper": 50}
#: The one learning rate of every neural model in the quick profile (the paper profile: each paper's own).
QUICK_LR = 3e-3
#: Inverse regularisation strengths searched on validation by every classical estimator, in both profiles.
C_GRID = (0.01, 0.1, 1.0)
#: ``--threshold`` values: the fixed 0.5 of the paper, or one threshold per cell chosen on validation.
THRESHOLD_RULES = ("0.5", "validation")
DEFAULT_THRESHOLD_RULE = "0.5"
#: The benchmark's CV rotations per profile and its default seeds (baselines.run_all's PROFILE_FOLDS and
#: DEFAULT_SEEDS, which tests/test_cli.py checks against these), here so the command line states them in --help
#: without importing the harness.
BENCHMARK_FOLDS = {"quick": 5, "paper": 10}
BENCHMARK_SEEDS = (0, 1, 2)


def _check(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {PROFILES}")


def neural_budget(profile: str) -> dict:
    """The training keys the rule fixes for every neural model of ``profile``: ``epochs``, and in quick ``lr``
    (in paper the model keeps its own paper's ``lr``)."""
    _check(profile)
    return {"epochs": MAX_EPOCHS[profile]} | ({"lr": QUICK_LR} if profile == "quick" else {})


def c_grid(profile: str) -> dict:
    """The validation grid of every classical estimator of ``profile`` (a ``ParameterGrid`` spec)."""
    _check(profile)
    return {"C": list(C_GRID)}


def check_threshold_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`THRESHOLD_RULES`, else ValueError."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose from {THRESHOLD_RULES}")
    return rule


def describe(profile: str, threshold: str = DEFAULT_THRESHOLD_RULE) -> str:
    """One sentence stating the tuning rule of ``profile`` (and the threshold rule), for the table notes."""
    _check(profile)
    check_threshold_rule(threshold)
    lr = (f"one learning rate ({QUICK_LR:g}) for all" if profile == "quick"
          else "each model's own paper learning rate")
    decision = ("a decision threshold of 0.5" if threshold == "0.5"
                else "one decision threshold per cell chosen on validation (0.05-0.95, best micro-F1)")
    return (f"Tuning ({profile} profile), the same for every model: neural models train {MAX_EPOCHS[profile]} "
            f"epochs and keep the epoch with the best validation micro-F1, with {lr} and no learning-rate "
            f"search; classical models choose C from {{{', '.join(f'{c:g}' for c in C_GRID)}}} on validation; "
            f"{decision}.")
