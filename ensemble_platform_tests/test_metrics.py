import numpy as np
import pytest

from ensemble_platform.evaluation.metrics import binary_metrics, expected_calibration_error, is_better


def test_ece_known_answer_two_bins():
    # Bin [0.2, 0.3): p=0.2 twice, outcomes 0,1 -> |0.5-0.2| = 0.3, weight 2/4
    # Bin [0.8, 0.9): p=0.8 twice, outcomes 1,1 -> |1.0-0.8| = 0.2, weight 2/4
    y = np.array([0, 1, 1, 1])
    p = np.array([0.2, 0.2, 0.8, 0.8])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)


def test_ece_zero_when_frequencies_match_and_counts_p_equal_one():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p = np.array([0.25, 0.25, 0.25, 0.25, 1.0, 1.0, 1.0, 1.0])  # 1.0 lands in the last bin
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_binary_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = binary_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)  # predictions 0,0,0,1
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_direction_of_metrics():
    assert is_better("roc_auc", 0.9, 0.8)
    assert is_better("log_loss", 0.3, 0.4)
    assert not is_better("ece", 0.2, 0.1)
