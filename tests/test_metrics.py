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
