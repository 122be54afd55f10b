"""mmer.metrics against hand-computed cases."""

import numpy as np
import pytest

from mmer.metrics import EMPTY_UNION_SCORE, SCALAR_KEYS, binarize, evaluate, evaluate_probabilities

# 4 samples x 3 labels.
Y_TRUE = np.array(
    [
        [1, 0, 1],
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 1],
    ]
)
Y_PRED = np.array(
    [
        [1, 0, 0],  # |∩| = 1, |∪| = 2 -> 1/2
        [0, 1, 0],  # exact match -> 1
        [1, 0, 1],  # |∩| = 1, |∪| = 3 -> 1/3
        [0, 0, 0],  # |∩| = 0, |∪| = 1 -> 0
    ]
)


def test_accuracy_is_sample_averaged_jaccard():
    result = evaluate(Y_TRUE, Y_PRED)
    assert result["accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 3 + 0) / 4)


def test_subset_accuracy_is_reported_separately():
    result = evaluate(Y_TRUE, Y_PRED)
    assert result["subset_accuracy"] == pytest.approx(1 / 4)  # only sample 2 matches exactly
    assert result["subset_accuracy"] != pytest.approx(result["accuracy"])


def test_hamming_loss():
    # wrong cells: sample 0: label 2; sample 2: labels 1 and 2; sample 3: label 2 -> 4 of 12
    assert evaluate(Y_TRUE, Y_PRED)["hamming_loss"] == pytest.approx(4 / 12)


def test_micro_and_macro_f1():
    result = evaluate(Y_TRUE, Y_PRED)
    # tp: (s0, l0), (s1, l1), (s2, l0); fp: (s2, l2); fn: (s0, l2), (s2, l1), (s3, l2)
    tp, fp, fn = 3, 1, 3
    assert result["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert result["micro_precision"] == pytest.approx(tp / (tp + fp))
    assert result["micro_recall"] == pytest.approx(tp / (tp + fn))
    # per label: l0 tp=2 fp=0 fn=0 -> F1 1; l1 tp=1 fp=0 fn=1 -> 2/3; l2 tp=0 fp=1 fn=2 -> 0
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    per_label = result["per_label"]
    assert per_label["label_1"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per_label["label_2"]["precision"] == 0.0
    assert per_label["label_2"]["support"] == 2


def test_label_names_key_per_label_results():
    result = evaluate(Y_TRUE, Y_PRED, ["Sad", "Happy", "Calm"])
    assert list(result["per_label"]) == ["Sad", "Happy", "Calm"]
    assert result["per_label"]["Sad"]["f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        evaluate(Y_TRUE, Y_PRED, ["only", "two"])


def test_empty_union_convention_defaults_to_zero_like_official_code():
    y_true = np.array([[0, 0], [1, 0]])
    y_pred = np.array([[0, 0], [1, 0]])
    assert EMPTY_UNION_SCORE == 0.0
    default = evaluate(y_true, y_pred)
    # sample 0 has an empty union and scores 0, sample 1 scores 1
    assert default["accuracy"] == pytest.approx(0.5)
    assert default["accuracy_empty_union"] == 0.0
    # the other convention counts the empty/empty pair as a perfect match
    lenient = evaluate(y_true, y_pred, empty_union=1.0)
    assert lenient["accuracy"] == pytest.approx(1.0)
    assert lenient["accuracy_empty_union"] == 1.0
    # subset accuracy does count the empty/empty pair as exact
    assert default["subset_accuracy"] == pytest.approx(1.0)


def test_label_with_no_positives_scores_zero_f1_in_macro_average():
    y_true = np.array([[1, 0], [1, 0]])
    y_pred = np.array([[1, 0], [1, 0]])
    result = evaluate(y_true, y_pred)
    assert result["per_label"]["label_1"]["f1"] == 0.0
    assert result["macro_f1"] == pytest.approx(0.5)
    assert result["micro_f1"] == pytest.approx(1.0)


def test_binarize_threshold_is_inclusive():
    probs = np.array([[0.5, 0.49999, 0.9]])
    assert binarize(probs).tolist() == [[1, 0, 1]]
    result = evaluate_probabilities(np.array([[1, 0, 0]]), probs)
    assert result["threshold"] == 0.5
    assert result["micro_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 0))


def test_all_scalar_keys_are_floats_and_inputs_are_validated():
    result = evaluate(Y_TRUE.astype(np.float32), Y_PRED)
    for key in SCALAR_KEYS:
        assert isinstance(result[key], float)
    assert result["n_samples"] == 4 and result["n_labels"] == 3
    with pytest.raises(ValueError):
        evaluate(Y_TRUE, np.full_like(Y_TRUE, 0.7, dtype=float))  # probabilities, not labels
    with pytest.raises(ValueError):
        evaluate(Y_TRUE, Y_PRED[:, :2])


# --- the conventions against scikit-learn (issue 21, item 7): each test fails when its convention breaks ---

from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_score,
    recall_score,
)

from mmer.metrics import EMPTY_UNION_CHOICES, THRESHOLD_GRID, choose_threshold, micro_f1  # noqa: E402


def _sklearn_reference(y_true, y_pred, empty_union):
    present = np.flatnonzero(y_true.sum(axis=0) > 0)
    return {
        "accuracy": jaccard_score(y_true, y_pred, average="samples", zero_division=empty_union),
        "hamming_loss": hamming_loss(y_true, y_pred),
        "micro_f1": f1_score(y_true, y_pred, average="micro", zero_division=0),
        "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "macro_f1_present": f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
        "subset_accuracy": accuracy_score(y_true, y_pred),
        "micro_precision": precision_score(y_true, y_pred, average="micro", zero_division=0),
        "micro_recall": recall_score(y_true, y_pred, average="micro", zero_division=0),
        "macro_precision": precision_score(y_true, y_pred, average="macro", zero_division=0),
        "macro_recall": recall_score(y_true, y_pred, average="macro", zero_division=0),
    }


def test_every_metric_equals_scikit_learn_on_random_cases_with_empty_rows_and_absent_labels():
    rng = np.random.default_rng(0)
    for case in range(300):
        n, labels = int(rng.integers(2, 12)), int(rng.integers(2, 7))
        y_true = (rng.random((n, labels)) < rng.uniform(0.05, 0.6)).astype(int)
        y_pred = (rng.random((n, labels)) < rng.uniform(0.05, 0.6)).astype(int)
        y_true[0] = 0  # an empty gold row in every case; in half of them an empty prediction beside it
        if case % 2:
            y_pred[0] = 0
        y_true[:, -1] = 0  # and a label absent from the gold
        if not y_true.any():
            y_true[1, 0] = 1
        for empty_union in EMPTY_UNION_CHOICES:
            ours = evaluate(y_true, y_pred, empty_union=empty_union)
            for key, value in _sklearn_reference(y_true, y_pred, empty_union).items():
                assert ours[key] == pytest.approx(value, abs=1e-12), (case, key, empty_union)
        assert micro_f1(y_true, y_pred) == pytest.approx(ours["micro_f1"], abs=1e-12)


def test_empty_gold_and_empty_prediction_score_the_stated_convention():
    # Acc is 0 for the empty/empty row under the official code's convention (the default), 1 under the other;
    # subset accuracy counts it as exact either way; Hamming loss and F1 do not depend on the convention
    y_true = np.array([[0, 0, 0], [1, 0, 1], [0, 0, 0]])
    y_pred = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    official = evaluate(y_true, y_pred)
    lenient = evaluate(y_true, y_pred, empty_union=1.0)
    assert official["accuracy"] == pytest.approx((0 + 1 / 2 + 0) / 3)
    assert lenient["accuracy"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert official["accuracy"] == pytest.approx(jaccard_score(y_true, y_pred, average="samples", zero_division=0))
    assert lenient["accuracy"] == pytest.approx(jaccard_score(y_true, y_pred, average="samples", zero_division=1))
    assert (official["accuracy_empty_union"], lenient["accuracy_empty_union"]) == (0.0, 1.0)
    assert official["subset_accuracy"] == lenient["subset_accuracy"] == pytest.approx(1 / 3)
    for key in ("hamming_loss", "micro_f1", "macro_f1", "macro_f1_present"):
        assert official[key] == lenient[key]


def test_macro_f1_over_present_labels_leaves_out_labels_absent_from_the_gold():
    # label 2 never occurs in the gold and is never predicted: F1 0 in the all-labels macro-F1 (the paper's,
    # scikit-learn's zero_division=0), left out of macro_f1_present
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    y_pred = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    result = evaluate(y_true, y_pred)
    assert result["per_label"]["label_2"]["f1"] == 0.0
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert result["macro_f1_present"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["macro_f1_present"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1], average="macro"))
    assert result["n_labels_present"] == 2
    # a label absent from the gold but predicted (a false positive): F1 0 in the all-labels average, and still
    # left out of the present-labels one, which depends on the gold only
    spurious = evaluate(y_true, np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0]]))
    assert spurious["macro_f1_present"] == result["macro_f1_present"]
    assert spurious["macro_f1"] == result["macro_f1"]
    # a fold where every label is present gives the two averages equal
    full = evaluate(Y_TRUE, Y_PRED)
    assert full["macro_f1_present"] == full["macro_f1"]
    # no label present at all: the zero_division value, not an error
    assert evaluate(np.zeros((2, 2), int), np.zeros((2, 2), int))["macro_f1_present"] == 0.0


def test_a_single_label_column_is_evaluated_as_one_multi_label_column():
    # scikit-learn reads one column as a binary target (its "micro" then averages the classes 0 and 1, i.e.
    # accuracy); here one column is one label: micro = macro = that label's F1
    y_true = np.array([[1], [0], [1], [0], [1]])
    y_pred = np.array([[1], [1], [0], [0], [1]])
    label_f1 = f1_score(y_true[:, 0], y_pred[:, 0])  # binary F1 of the label: tp 2, fp 1, fn 1
    assert label_f1 == pytest.approx(2 / 3)
    for empty_union in EMPTY_UNION_CHOICES:
        result = evaluate(y_true, y_pred, ["Happy"], empty_union=empty_union)
        assert result["micro_f1"] == result["macro_f1"] == result["macro_f1_present"] == pytest.approx(label_f1)
        assert micro_f1(y_true, y_pred) == pytest.approx(label_f1)
        assert micro_f1(y_true, y_pred) != pytest.approx(f1_score(y_true, y_pred, average="micro"))
        assert result["hamming_loss"] == pytest.approx(hamming_loss(y_true[:, 0], y_pred[:, 0]))
        assert result["subset_accuracy"] == pytest.approx(accuracy_score(y_true[:, 0], y_pred[:, 0]))
        # per-sample Jaccard: an all-zero second column changes no intersection and no union
        padded = jaccard_score(np.c_[y_true, np.zeros(5, int)], np.c_[y_pred, np.zeros(5, int)],
                               average="samples", zero_division=empty_union)
        assert result["accuracy"] == pytest.approx(padded)
        assert result["per_label"]["Happy"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                                              "support": 3})


def test_choose_threshold_maximises_micro_f1_and_breaks_ties_towards_one_half():
    assert THRESHOLD_GRID[0] == 0.05 and THRESHOLD_GRID[-1] == 0.95 and 0.5 in THRESHOLD_GRID
    y = np.array([[1, 0], [0, 1], [1, 1]])
    low = np.array([[0.3, 0.1], [0.1, 0.32], [0.35, 0.31]])  # every positive in (0.3, 0.35], negatives <= 0.1
    threshold, score = choose_threshold(y, low)
    assert score == 1.0
    # 0.15 .. 0.30 all reach 1.0: the one nearest 0.5 wins
    assert threshold == 0.3
    # every threshold ties (no positive anywhere, all probabilities 0): 0.5 itself
    assert choose_threshold(np.zeros((2, 2), int), np.zeros((2, 2))) == (0.5, 0.0)
