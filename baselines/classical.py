"""Classical multi-label baselines of the paper's Table 2 (BR, CC, LP) on scikit-learn, and ECC (Read et al.'s
ensemble of classifier chains, beside CC).

All estimators share one interface, on an early-fused feature matrix (``mmer.early_fusion``)::

    model = BinaryRelevance(C=1.0).fit(X, Y)   # X (N, D) float, Y (N, L) 0/1
    model.predict_proba(X)                     # (N, L) float in [0, 1]
    model.predict(X)                           # (N, L) int 0/1

and are scikit-learn estimators (``get_params``/``set_params``/``clone`` work), so
``select_on_validation`` can grid-search them on the validation split.

Common to all (each a deviation from, or a choice left open by, the cited papers):

* **Base classifier.** ``base`` is a name in ``BASE_ESTIMATORS`` (``"logistic"``, the default:
  L2 ``LogisticRegression``, lbfgs, ``max_iter=1000``; ``"linear_svc"``: ``LinearSVC``) or any
  scikit-learn classifier instance (cloned, never modified). The HHMPN paper does not say which base
  classifier its classical baselines used; logistic regression is chosen because it is fast, well
  calibrated enough for ``predict_proba`` and has one hyper-parameter ``C`` to select on validation.
  ``C`` and ``max_iter``, when not None, are set on the base (named or instance); ``random_state`` is
  passed to named bases only (an instance keeps its own).
* **Scores of margin classifiers.** A base without ``predict_proba`` (``LinearSVC``) is wrapped so that
  ``predict_proba`` is the logistic sigmoid of its margin (binary) or the softmax of its one-vs-rest
  margins (multi-class): not calibrated probabilities, but monotone in the margin and consistent with
  the base's own decisions (margin > 0 <=> score > 0.5; argmax unchanged).
* **Standardisation.** The estimators get the protocol's inputs (node features standardised per modality
  and dimension on the training split by ``nemu.loading.split_datasets``, README "The benchmark
  protocol") and mean-pool them. They then standardise the *pooled* columns (``StandardScaler``, fitted on
  the training data only; ``standardize=False`` turns it off). This is not a second input normaliser:
  the mean of a song's standardised nodes has a per-modality variance well below 1 (a lyric mean averages
  tens of lines), and the ``has_nodes`` flags are 0/1, while an L2-regularised base classifier needs
  comparable column scales for one ``C`` to suit every block. Measured on a held-out 240-song sample, 5
  rotations: BR test micro-F1 0.724 with the scaler, 0.696 without it.
* **Labels constant in training** (all 0 or all 1 — rare emotions in small folds) get a constant
  predictor (probability 0 or 1) instead of the base classifier, which refuses a single class.
* **Threshold.** ``predict`` is ``mmer.metrics.binarize(predict_proba)`` (``p >= 0.5``, the one rule of every
  model; except ``LabelPowerset.predict``, the most probable label combination, and RAkEL's hard vote).
* **Randomness.** Every random choice (chain orders, bootstrap samples, labelsets) comes from
  ``random_state``; equal seeds give equal models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import ClassifierChain, MultiOutputClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils import check_array, check_random_state

from mmer.metrics import binarize
from mmer.tuning import c_grid
from mmer.registry import register



# ----------------------------------------------------------------------------------------------
# base classifiers


class MarginProba(ClassifierMixin, BaseEstimator):
    """Give a margin classifier (no ``predict_proba``, e.g. ``LinearSVC``) a ``predict_proba``.

    Binary: ``[1 - sigmoid(m), sigmoid(m)]`` of the margin ``m``; multi-class: softmax of the
    one-vs-rest margins. Uncalibrated (no Platt scaling: it would need an inner cross-validation that
    breaks on rare labels) but consistent with the base's ``predict``.
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y):
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.classes_ = self.estimator_.classes_
        return self

    def decision_function(self, X):
        return self.estimator_.decision_function(X)

    def predict_proba(self, X):
        margin = np.asarray(self.estimator_.decision_function(X), dtype=np.float64)
        if margin.ndim == 1:
            positive = expit(margin)
            return np.column_stack([1.0 - positive, positive])
        return softmax(margin, axis=1)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _logistic(C: float = 1.0, max_iter: int = 1000, random_state=None):
    return LogisticRegression(C=C, max_iter=max_iter, random_state=random_state)


def _linear_svc(C: float = 1.0, max_iter: int = 5000, random_state=None):
    return MarginProba(LinearSVC(C=C, max_iter=max_iter, random_state=random_state))


#: name -> factory(C=, max_iter=, random_state=) of a classifier with ``predict_proba``.
BASE_ESTIMATORS: dict[str, Callable] = {"logistic": _logistic, "linear_svc": _linear_svc}


def make_base(base="logistic", *, C: float | None = None, max_iter: int | None = None, random_state=None):
    """A fresh (unfitted) base classifier with ``predict_proba``.

    ``base``: a name in ``BASE_ESTIMATORS`` or a classifier instance (cloned). ``C``/``max_iter`` when
    not None override the base's own; an instance without ``predict_proba`` but with
    ``decision_function`` is wrapped in ``MarginProba``.
    """
    overrides = {key: value for key, value in (("C", C), ("max_iter", max_iter)) if value is not None}
    if isinstance(base, str):
        if base not in BASE_ESTIMATORS:
            raise ValueError(f"unknown base estimator {base!r}; known: {', '.join(BASE_ESTIMATORS)}")
        return BASE_ESTIMATORS[base](random_state=random_state, **overrides)
    estimator = clone(base)
    if overrides:
        target = estimator.estimator if isinstance(estimator, MarginProba) else estimator
        target.set_params(**overrides)
    if not hasattr(estimator, "predict_proba"):
        if not hasattr(estimator, "decision_function"):
            raise TypeError(f"{type(base).__name__} has neither predict_proba nor decision_function")
        estimator = MarginProba(estimator)
    return estimator


class BinarySafe(ClassifierMixin, BaseEstimator):
    """A binary classifier that accepts a training target with a single class (constant predictor).

    ``classes_`` is always ``[0, 1]`` and ``predict_proba`` always has two columns, so multi-output
    wrappers (``MultiOutputClassifier``, ``ClassifierChain``) see every label the same way.
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y):
        y = np.asarray(y).ravel()
        if not np.isin(y, (0, 1)).all():
            raise ValueError("BinarySafe expects a 0/1 target")
        y = y.astype(np.int64)
        self.classes_ = np.array([0, 1])
        present = np.unique(y)
        if len(present) == 1:
            self.constant_, self.estimator_ = float(present[0]), None
        else:
            self.constant_, self.estimator_ = None, clone(self.estimator).fit(X, y)
        return self

    def predict_proba(self, X):
        if self.estimator_ is None:
            positive = np.full(len(X), self.constant_, dtype=np.float64)
        else:
            proba = self.estimator_.predict_proba(X)
            positive = proba[:, list(self.estimator_.classes_).index(1)]
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X):
        return binarize(self.predict_proba(X)[:, 1])


def _scaler(standardize: bool):
    return StandardScaler() if standardize else "passthrough"


# ----------------------------------------------------------------------------------------------
# multi-label estimators


class _MultiLabel(BaseEstimator):
    """Input checks and ``predict`` shared by the multi-label estimators."""

    def _check_X(self, X, reset: bool = False) -> np.ndarray:
        X = check_array(X, dtype=(np.float64, np.float32))
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; the model was fitted on {self.n_features_in_}")
        return X

    def _check_XY(self, X, Y) -> tuple[np.ndarray, np.ndarray]:
        X = self._check_X(X, reset=True)
        Y = np.asarray(Y)
        if Y.ndim != 2:
            raise ValueError(f"Y must be (N, L); got shape {Y.shape}")
        if len(Y) != len(X):
            raise ValueError(f"X has {len(X)} rows, Y {len(Y)}")
        if not np.isin(Y, (0, 1)).all():
            raise ValueError("Y must hold only 0 and 1")
        self.n_labels_ = Y.shape[1]
        return X, Y.astype(np.int64)

    def _base(self):
        return make_base(self.base, C=self.C, max_iter=self.max_iter, random_state=self.random_state)

    def predict(self, X) -> np.ndarray:
        """(N, L) int 0/1: ``mmer.metrics.binarize(predict_proba(X))``."""
        return binarize(self.predict_proba(X))


class BinaryRelevance(_MultiLabel):
    """BR: one independent binary classifier per label.

    Paper's citation: Shen, Boutell, Luo & Brown (2004), "Multi-label machine learning and its
    application to semantic scene classification" (the "binary" cross-training scheme of Boutell et al.:
    each sample is a positive example for every label it has). Built on
    ``sklearn.multioutput.MultiOutputClassifier`` over ``StandardScaler`` features.

    Deviations: Shen et al. used SVMs on scene features and combined per-label scores with their own
    decision criteria; here the base is logistic regression by default (``base="linear_svc"`` for an SVM),
    decisions are ``probability >= 0.5`` per label, plus the common choices of the module docstring
    (standardisation, constant predictor for a label constant in training).
    """

    def __init__(self, base="logistic", C: float | None = None, max_iter: int | None = None,
                 standardize: bool = True, n_jobs: int | None = None, random_state=0):
        self.base = base
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, Y):
        X, Y = self._check_XY(X, Y)
        self.model_ = Pipeline([
            ("scale", _scaler(self.standardize)),
            ("br", MultiOutputClassifier(BinarySafe(self._base()), n_jobs=self.n_jobs)),
        ]).fit(X, Y)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return np.column_stack([p[:, 1] for p in self.model_.predict_proba(X)])


class ClassifierChains(_MultiLabel):
    """CC: classifier chain (Read, Pfahringer, Holmes & Frank 2011, Machine Learning 85:333-359).

    Label ``order[j]``'s classifier sees the features plus the labels earlier in the chain: the true
    labels in training, the chain's own 0/1 predictions at test time (Read et al.'s greedy inference).
    Built on ``sklearn.multioutput.ClassifierChain`` (``cv=None``, ``chain_method="predict"``).

    Default, as in the HHMPN paper ("CC, classifier chain"): a single chain in the dataset's label
    order (``order=None``). Options: ``order="random"`` (a permutation drawn from ``random_state``) or an
    explicit permutation; ``n_chains > 1`` gives Read et al.'s ensemble ECC: each chain gets its own
    random order and a bootstrap sample (``sample_fraction`` x N rows, drawn with replacement) of the
    training set.

    Deviations: base classifier, standardisation and constant labels as in the module docstring
    (Read et al. used SVMs); ``predict_proba[:, j]`` is P(label j | x, predicted earlier labels);
    ECC averages the chains' probabilities and thresholds at 0.5, where Read et al. average the chains'
    0/1 votes (with their own threshold choice) — the soft average keeps ``predict_proba`` informative
    for ranking and equals the vote average when the chains are confident.
    """

    def __init__(self, base="logistic", C: float | None = None, max_iter: int | None = None,
                 order: Sequence[int] | str | None = None, n_chains: int = 1, sample_fraction: float = 1.0,
                 standardize: bool = True, random_state=0):
        self.base = base
        self.C = C
        self.max_iter = max_iter
        self.order = order
        self.n_chains = n_chains
        self.sample_fraction = sample_fraction
        self.standardize = standardize
        self.random_state = random_state

    def _orders(self, rng: np.random.RandomState) -> list[np.ndarray]:
        L = self.n_labels_
        if self.n_chains < 1:
            raise ValueError("n_chains must be at least 1")
        if self.n_chains > 1:
            if self.order not in (None, "random"):
                raise ValueError("an ensemble of chains (n_chains > 1) draws random orders; leave order None")
            return [rng.permutation(L) for _ in range(self.n_chains)]
        if self.order is None:
            return [np.arange(L)]
        if isinstance(self.order, str):
            if self.order != "random":
                raise ValueError(f"order must be None, 'random' or a permutation; got {self.order!r}")
            return [rng.permutation(L)]
        order = np.asarray(self.order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(L)):
            raise ValueError(f"order {list(order)} is not a permutation of range({L})")
        return [order]

    def fit(self, X, Y):
        X, Y = self._check_XY(X, Y)
        rng = check_random_state(self.random_state)
        self.orders_ = self._orders(rng)
        self.chains_ = []
        for order in self.orders_:
            rows = np.arange(len(X))
            if self.n_chains > 1:
                size = max(1, int(round(self.sample_fraction * len(X))))
                rows = rng.randint(0, len(X), size=size)
            chain = Pipeline([
                ("scale", _scaler(self.standardize)),
                ("cc", ClassifierChain(BinarySafe(self._base()), order=list(order), cv=None,
                                       chain_method="predict")),
            ])
            self.chains_.append(chain.fit(X[rows], Y[rows]))
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return np.mean([chain.predict_proba(X) for chain in self.chains_], axis=0)


class LabelPowerset(_MultiLabel):
    """LP: one multi-class classifier whose classes are the label combinations seen in training.

    (Tsoumakas & Katakis 2007; the building block of RAkEL.) ``combinations_`` is the (C, L) 0/1 array
    of the distinct training label vectors, in lexicographic order; class ``c`` is row ``c``.

    * ``predict_combination_proba(X)``: (N, C) class probabilities, columns in ``combinations_`` order.
    * ``predict_proba(X)``: per-label marginals ``P @ combinations_`` — P(label j) is the total
      probability of the combinations containing j.
    * ``predict(X)``: the most probable combination (LP's decision; it may differ from
      ``predict_proba > 0.5``, and is always a combination seen in training).

    A combination never seen in training cannot be predicted (``transform`` maps it to -1); a label
    never positive in training has marginal 0. When training has a single combination, the model is
    constant.
    """

    def __init__(self, base="logistic", C: float | None = None, max_iter: int | None = None,
                 standardize: bool = True, random_state=0):
        self.base = base
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, Y):
        X, Y = self._check_XY(X, Y)
        self.combinations_, classes = np.unique(Y, axis=0, return_inverse=True)
        classes = np.asarray(classes).ravel()
        self._index = {tuple(row): c for c, row in enumerate(self.combinations_.tolist())}
        if len(self.combinations_) == 1:
            self.model_ = None
        else:
            self.model_ = Pipeline([("scale", _scaler(self.standardize)), ("lp", self._base())]).fit(X, classes)
            self._columns = np.asarray(self.model_.classes_, dtype=np.int64)
        return self

    def transform(self, Y) -> np.ndarray:
        """Class index of each label vector of Y (N, L); -1 for a combination unseen in training."""
        Y = np.asarray(Y).astype(np.int64)
        return np.array([self._index.get(tuple(row), -1) for row in Y.tolist()], dtype=np.int64)

    def inverse_transform(self, classes) -> np.ndarray:
        """Label vectors (N, L) of class indices."""
        return self.combinations_[np.asarray(classes, dtype=np.int64)]

    def predict_combination_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        P = np.zeros((len(X), len(self.combinations_)))
        if self.model_ is None:
            P[:, 0] = 1.0
        else:
            P[:, self._columns] = self.model_.predict_proba(X)
        return P

    def predict_proba(self, X) -> np.ndarray:
        return np.clip(self.predict_combination_proba(X) @ self.combinations_, 0.0, 1.0)

    def predict(self, X) -> np.ndarray:
        return self.inverse_transform(np.argmax(self.predict_combination_proba(X), axis=1)).astype(np.int64)


def random_labelsets(n_labels: int, k: int = 3, n_subsets: int | None = None, random_state=0) -> list[np.ndarray]:
    """RAkEL-o's labelsets: distinct random k-subsets of ``range(n_labels)`` (sorted int arrays).

    ``n_subsets`` defaults to ``2 * n_labels`` (Tsoumakas et al.'s recommended m = 2L with k = 3); it is
    capped at C(L, k), the number of distinct k-subsets, and raised to ceil(L / k) so that every label
    can be covered. ``k`` is capped at L (then the single subset is all labels: plain LP).

    Deviation from Tsoumakas et al. (who draw the m subsets uniformly, so a label may be left out and
    never predicted): the first ceil(L / k) subsets partition a random permutation of the labels (the
    last one padded with random other labels), so every label is in at least one subset; the rest are
    drawn uniformly among the remaining k-subsets.
    """
    if n_labels < 1 or k < 1:
        raise ValueError("n_labels and k must be at least 1")
    rng = check_random_state(random_state)
    k = min(k, n_labels)
    total = math.comb(n_labels, k)
    wanted = 2 * n_labels if n_subsets is None else n_subsets
    m = max(min(wanted, total), math.ceil(n_labels / k))
    chosen: list[tuple[int, ...]] = []
    permutation = rng.permutation(n_labels)
    for start in range(0, n_labels, k):
        block = permutation[start:start + k].tolist()
        if len(block) < k:
            others = np.setdiff1d(np.arange(n_labels), block)
            block += rng.choice(others, size=k - len(block), replace=False).tolist()
        chosen.append(tuple(sorted(block)))
    seen = set(chosen)
    if len(chosen) < m:
        if total <= 100_000:
            rest = [c for c in itertools.combinations(range(n_labels), k) if c not in seen]
            picks = rng.choice(len(rest), size=m - len(chosen), replace=False)
            chosen += [rest[i] for i in picks]
        else:  # C(L, k) huge and m small: rejection sampling finishes quickly
            while len(chosen) < m:
                candidate = tuple(sorted(rng.choice(n_labels, size=k, replace=False).tolist()))
                if candidate not in seen:
                    seen.add(candidate)
                    chosen.append(candidate)
    return [np.array(c, dtype=np.int64) for c in chosen]


class RAkEL(_MultiLabel):
    """LP as the HHMPN paper describes it: random k-labelsets, overlapping (RAkEL-o).

    Tsoumakas, Katakis & Vlahavas (2011), "Random k-labelsets for multilabel classification", IEEE TKDE
    23(7):1079-1089. The paper's LP "breaks the initial set of labels into a number of small random
    subsets and trains a corresponding classifier": m random k-labelsets (``random_labelsets``; defaults
    k = 3, m = 2L, the values Tsoumakas et al. recommend), a ``LabelPowerset`` on each, and per label the
    average of the 0/1 decisions of the labelsets that contain it; ``predict`` is that average > 0.5
    (Tsoumakas et al.'s threshold t = 0.5; a tie, e.g. 1 of 2 votes, is negative).

    ``predict_proba`` is that vote average (``vote="hard"``, default, as the paper) or, with
    ``vote="soft"``, the average of the labelsets' marginal probabilities (a finer score for ranking).

    Deviations: every label is covered by at least one labelset (see ``random_labelsets``); features are
    standardised once for all labelsets; base classifier and constant labels as in the module docstring
    (Tsoumakas et al. used SVMs); a labelset whose training data hold a single combination gets a
    constant model.
    """

    def __init__(self, base="logistic", C: float | None = None, max_iter: int | None = None, k: int = 3,
                 n_subsets: int | None = None, vote: str = "hard", standardize: bool = True, random_state=0):
        self.base = base
        self.C = C
        self.max_iter = max_iter
        self.k = k
        self.n_subsets = n_subsets
        self.vote = vote
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, Y):
        if self.vote not in ("hard", "soft"):
            raise ValueError(f"vote must be 'hard' or 'soft'; got {self.vote!r}")
        X, Y = self._check_XY(X, Y)
        rng = check_random_state(self.random_state)
        self.labelsets_ = random_labelsets(self.n_labels_, self.k, self.n_subsets, rng)
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        Xs = self.scaler_.transform(X) if self.scaler_ is not None else X
        self.powersets_ = []
        for labels in self.labelsets_:
            seed = int(rng.randint(np.iinfo(np.int32).max))
            lp = LabelPowerset(base=self.base, C=self.C, max_iter=self.max_iter, standardize=False,
                               random_state=seed)
            self.powersets_.append(lp.fit(Xs, Y[:, labels]))
        self.label_counts_ = np.zeros(self.n_labels_, dtype=np.int64)
        for labels in self.labelsets_:
            self.label_counts_[labels] += 1
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        Xs = self.scaler_.transform(X) if self.scaler_ is not None else X
        votes = np.zeros((len(X), self.n_labels_))
        for labels, lp in zip(self.labelsets_, self.powersets_):
            votes[:, labels] += lp.predict(Xs) if self.vote == "hard" else lp.predict_proba(Xs)
        return votes / np.maximum(self.label_counts_, 1)

    def predict(self, X) -> np.ndarray:
        """Hard votes: a strict majority of the labelsets holding a label (Tsoumakas et al.'s vote with t = 0.5,
        a tie negative) -- the method's own rule on vote counts; soft votes: ``mmer.metrics.binarize``."""
        if self.vote == "soft":
            return binarize(self.predict_proba(X))
        X = self._check_X(X)
        Xs = self.scaler_.transform(X) if self.scaler_ is not None else X
        votes = np.zeros((len(X), self.n_labels_), dtype=np.int64)
        for labels, lp in zip(self.labelsets_, self.powersets_):
            votes[:, labels] += lp.predict(Xs)
        return (2 * votes > self.label_counts_).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# registry entries (the paper's "Classical" group); C is selected on the validation split only

# Every classical model searches the tuning rule's C grid (mmer.tuning.C_GRID) in both profiles.

@register("BR", group="Classical", citation="Shen et al., 2004 (binary relevance)", kind="estimator",
          quick={"grid": c_grid("quick")}, paper={"grid": c_grid("paper")})
def _binary_relevance(config, info):
    return BinaryRelevance(random_state=config.get("seed", 0))


@register("CC", group="Classical", citation="Read et al., 2011 (classifier chains)", kind="estimator",
          quick={"grid": c_grid("quick")}, paper={"grid": c_grid("paper")})
def _classifier_chain(config, info):
    return ClassifierChains(random_state=config.get("seed", 0))


# ECC (Read et al. 2011): ECC_CHAINS chains (Read et al.'s 10; ECC_QUICK_CHAINS with fewer solver iterations in
# quick, where 10 would make it the slowest classical cell), each in its own random label order drawn from the cell's
# seed, on a bootstrap sample of the training set, probabilities averaged. CC's single chain in the dataset's order
# equals BR where the chained 0/1 label columns carry no weight at the C chosen on validation (the table note,
# baselines.tables.chain_note); the ensemble is the chain that can differ.
ECC_CHAINS = 10
ECC_QUICK_CHAINS = 3


@register("ECC", group="Classical", citation="Read et al., 2011 (ensembles of classifier chains)", kind="estimator",
          quick={"grid": c_grid("quick"), "n_chains": ECC_QUICK_CHAINS, "max_iter": 200},
          paper={"grid": c_grid("paper"), "n_chains": ECC_CHAINS})
def _ensemble_of_chains(config, info):
    return ClassifierChains(order="random", n_chains=config.get("n_chains", ECC_CHAINS),
                            max_iter=config.get("max_iter"), random_state=config.get("seed", 0))


# Quick: fewer solver iterations -- 2L multinomial fits per grid point dominate the quick run. The C grid is the
# rule's for every classical model (before the rule quick LP searched C = 0.1 only).
@register("LP", group="Classical", citation="Tsoumakas et al., 2011 (RAkEL: label powersets on random k-labelsets)",
          kind="estimator", quick={"grid": c_grid("quick"), "k": 3, "max_iter": 200},
          paper={"grid": c_grid("paper"), "k": 3, "max_iter": 1000})
def _rakel(config, info):
    return RAkEL(k=config.get("k", 3), max_iter=config.get("max_iter"), random_state=config.get("seed", 0))
