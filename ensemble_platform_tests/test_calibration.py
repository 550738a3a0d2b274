from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import brier_score_loss

from ensemble_platform.ensemble import calibrators
from ensemble_platform.ensemble.calibrators import ProbabilityCalibrator, select_calibrator
from ensemble_platform.evaluation import metrics
from ensemble_platform.evaluation.calibration import (
    brier_decomposition,
    calibration_metrics,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_table,
)

# Eight distinct predictions used by the hand-computed quantile examples.
P8 = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
Y8 = np.array([0, 0, 1, 1, 0, 0, 1, 1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _synthetic(slope: float, seed: int, n: int = 20000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reported p = sigmoid(z); true p = sigmoid(slope * z); y ~ Bernoulli(true p); 5 folds."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < _sigmoid(slope * z)).astype(int)
    return _sigmoid(z), y, np.arange(n) % 5


@pytest.fixture(scope="module")
def miscalibrated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _synthetic(slope=2.0, seed=0)


@pytest.fixture(scope="module")
def calibrated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _synthetic(slope=1.0, seed=1)


# --------------------------------------------------------------------------- ECE / MCE


def test_ece_and_mce_uniform_known_answer():
    # 2 uniform bins. [0, 0.5): p = .05, .15, .45 -> mean .21667, y = 0,1,1 -> rate .66667, gap .45
    #                 [0.5, 1]: p = .55, .95      -> mean .75,    y = 0,1   -> rate .5,     gap -.25
    # ECE = 3/5 * .45 + 2/5 * .25 = .27 + .10 = .37 ; MCE = .45
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.45, 0.55, 0.95])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.37)
    assert maximum_calibration_error(y, p, n_bins=2) == pytest.approx(0.45)
    # 10 uniform bins: every point alone in its bin, so ECE = mean |y - p| = (.05+.85+.55+.55+.05)/5
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(2.05 / 5)


def test_ece_quantile_known_answer_four_bins():
    # np.quantile (linear) of P8 at 0, .25, .5, .75, 1 -> positions 0, 1.75, 3.5, 5.25, 7:
    # edges .1, .2 + .75*.1 = .275, (.4 + .6)/2 = .5, .7 + .25*.1 = .725, .9
    # bins {.1,.2} {.3,.4} {.6,.7} {.8,.9}; means .15 .35 .65 .85; rates 0 1 0 1
    # gaps -.15 .65 -.65 .15 -> ECE = (.15 + .65 + .65 + .15) / 4 = .4 ; MCE = .65
    table = reliability_table(Y8, P8, n_bins=4, binning="quantile")
    assert table["lower"].tolist() == pytest.approx([0.1, 0.275, 0.5, 0.725])
    assert table["upper"].tolist() == pytest.approx([0.275, 0.5, 0.725, 0.9])
    assert table["count"].tolist() == [2, 2, 2, 2]
    assert table["gap"].tolist() == pytest.approx([-0.15, 0.65, -0.65, 0.15])
    assert expected_calibration_error(Y8, P8, n_bins=4, binning="quantile") == pytest.approx(0.4)
    assert maximum_calibration_error(Y8, P8, n_bins=4, binning="quantile") == pytest.approx(0.65)


def test_ece_quantile_known_answer_two_bins_differs_from_uniform():
    # 2 quantile bins split at the median .5: {.1..0.4} mean .25 rate .5 gap .25;
    # {.6..0.9} mean .75 rate .5 gap -.25 -> ECE = .25.
    assert expected_calibration_error(Y8, P8, n_bins=2, binning="quantile") == pytest.approx(0.25)
    # 10 uniform bins: one point per bin, ECE = mean |y - p| = (.1+.2+.7+.6+.6+.7+.2+.1)/8 = .4
    assert expected_calibration_error(Y8, P8, n_bins=10, binning="uniform") == pytest.approx(0.4)


def test_probability_one_is_counted_in_last_uniform_bin():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.0, 0.95, 1.0, 1.0])
    table = reliability_table(y, p, n_bins=10)
    assert table["count"].tolist() == [1] + [0] * 8 + [3]
    assert table["upper"].iloc[-1] == 1.0
    # Bin 9: mean p = (.95 + 1 + 1)/3, rate 1 -> gap .05/3; bin 0: p 0, y 0 -> gap 0.
    assert expected_calibration_error(y, p) == pytest.approx(0.75 * 0.05 / 3)


def test_reliability_table_shape_and_empty_bins():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.45, 0.55, 0.95])
    table = reliability_table(y, p, n_bins=10)
    assert list(table.columns) == ["bin", "lower", "upper", "count", "mean_predicted", "observed_rate", "gap"]
    assert table["bin"].tolist() == list(range(10))
    assert table["count"].sum() == len(p)
    empty = table[table["count"] == 0]
    assert len(empty) == 5
    assert empty["observed_rate"].isna().all() and empty["gap"].isna().all()


def test_quantile_bins_have_near_equal_counts_on_distinct_values():
    rng = np.random.default_rng(3)
    p = rng.random(1003)
    y = (rng.random(1003) < p).astype(int)
    table = reliability_table(y, p, n_bins=10, binning="quantile")
    assert len(table) == 10
    assert table["count"].sum() == len(p)
    assert table["count"].max() - table["count"].min() <= 1


def test_quantile_bins_collapse_tied_edges():
    # Six .2s and two .8s; quantile positions 0, 1.75, 3.5, 5.25, 7 give .2, .2, .2,
    # .2 + .25*(.8 - .2) = .35, .8 -> unique edges .2, .35, .8: 2 bins instead of 4.
    p = np.array([0.2] * 6 + [0.8] * 2)
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    table = reliability_table(y, p, n_bins=4, binning="quantile")
    assert table["count"].tolist() == [6, 2]
    assert table["lower"].tolist() == pytest.approx([0.2, 0.35])
    assert table["upper"].tolist() == pytest.approx([0.35, 0.8])
    assert table["observed_rate"].tolist() == pytest.approx([1 / 6, 1.0])
    # A single value everywhere still gives one (degenerate) bin holding every row.
    single = reliability_table(np.array([0, 1, 1]), np.full(3, 0.4), n_bins=5, binning="quantile")
    assert single["count"].tolist() == [3]


def test_metrics_module_reexports_uniform_ece():
    assert metrics.expected_calibration_error is expected_calibration_error
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.45, 0.55, 0.95])
    assert metrics.binary_metrics(y, p)["ece"] == pytest.approx(expected_calibration_error(y, p, 10, "uniform"))


# --------------------------------------------------------------------------- Brier decomposition


def test_brier_decomposition_exact_on_discrete_predictions():
    # p = .2 for four rows (y 0,0,0,1: rate .25), p = .8 for four rows (y 1,1,1,0: rate .75); obar = .5
    # brier       = (3*.04 + .64 + 3*.04 + .64) / 8      = .19
    # reliability = .5*(.2-.25)^2 + .5*(.8-.75)^2          = .0025
    # resolution  = .5*(.25-.5)^2 + .5*(.75-.5)^2          = .0625
    # uncertainty = .5 * .5                                = .25   -> .0025 - .0625 + .25 = .19
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.2] * 4 + [0.8] * 4)
    d = brier_decomposition(y, p)
    assert d.brier == pytest.approx(0.19, abs=1e-12)
    assert d.reliability == pytest.approx(0.0025, abs=1e-12)
    assert d.resolution == pytest.approx(0.0625, abs=1e-12)
    assert d.uncertainty == pytest.approx(0.25, abs=1e-12)
    assert d.reliability - d.resolution + d.uncertainty == pytest.approx(d.brier, abs=1e-12)
    assert d.within_bin == pytest.approx(0.0, abs=1e-12)


def test_brier_decomposition_continuous_matches_sklearn_and_sums(calibrated):
    p, y, _ = calibrated
    for binning in ("uniform", "quantile"):
        d = brier_decomposition(y, p, n_bins=10, binning=binning)
        assert d.brier == pytest.approx(brier_score_loss(y, p), rel=1e-12)
        total = d.reliability - d.resolution + d.uncertainty + d.within_bin
        assert total == pytest.approx(d.brier, rel=1e-12)


def test_calibration_metrics_keys_and_types(calibrated):
    p, y, _ = calibrated
    m = calibration_metrics(y, p)
    assert set(m) == {
        "ece_uniform", "ece_quantile", "mce_uniform", "mce_quantile", "brier",
        "brier_reliability", "brier_resolution", "brier_uncertainty", "brier_within_bin",
    }
    assert all(type(v) is float for v in m.values())


# --------------------------------------------------------------------------- synthetic calibration


def test_calibrated_data_has_small_ece(calibrated):
    p, y, _ = calibrated
    # ~2000 rows per bin: sampling noise in each rate is about .01.
    assert expected_calibration_error(y, p, binning="uniform") < 0.02
    assert expected_calibration_error(y, p, binning="quantile") < 0.02


def test_miscalibration_is_detected_and_sigmoid_is_chosen(miscalibrated):
    p, y, folds = miscalibrated
    assert expected_calibration_error(y, p) > 0.05  # reported p is too timid (true slope 2)
    choice = select_calibrator(p, y, folds, methods=("none", "sigmoid"))
    assert choice.chosen == "sigmoid"
    assert choice.evidence["sigmoid"]["log_loss"] < choice.evidence["none"]["log_loss"] - 0.02
    assert choice.evidence["sigmoid"]["ece_uniform"] < choice.evidence["none"]["ece_uniform"]
    full = select_calibrator(p, y, folds)
    assert full.chosen != "none"


def test_sigmoid_recovers_slope_and_intercept(miscalibrated):
    p, y, _ = miscalibrated
    params = ProbabilityCalibrator("sigmoid").fit(p, y).describe()["params"]
    assert params["slope"] == pytest.approx(2.0, abs=0.1)
    assert params["intercept"] == pytest.approx(0.0, abs=0.1)


def test_calibrated_data_gains_little_from_calibration(calibrated):
    p, y, folds = calibrated
    choice = select_calibrator(p, y, folds)
    none_loss = choice.evidence["none"]["log_loss"]
    chosen_loss = choice.evidence[choice.chosen]["log_loss"]
    assert chosen_loss <= none_loss
    assert none_loss - chosen_loss < 2e-3  # nothing real to gain on calibrated data


# --------------------------------------------------------------------------- calibrator


def test_isotonic_is_monotone_and_strictly_inside_unit_interval():
    # Separable data: unclipped isotonic would predict exactly 0 below .5 and exactly 1 above.
    p = np.linspace(0.0, 1.0, 40)
    y = (p > 0.5).astype(int)
    cal = ProbabilityCalibrator("isotonic").fit(p, y)
    out = cal.transform(np.linspace(0.0, 1.0, 201))
    assert np.all(np.diff(out) >= 0)
    assert out.min() == pytest.approx(0.5 / 40) and out.max() == pytest.approx(1 - 0.5 / 40)
    assert np.all((out > 0) & (out < 1))
    params = cal.describe()["params"]
    assert set(params) == {"x_thresholds", "y_thresholds", "clip"}
    assert params["clip"] == pytest.approx([0.0125, 0.9875])


def test_none_is_identity_and_records_rows():
    p = np.array([0.1, 0.5, 0.9])
    cal = ProbabilityCalibrator().fit(p, np.array([0, 1, 1]))
    assert cal.n_fit_rows_ == 3
    assert cal.transform(p).tolist() == p.tolist()
    assert cal.describe() == {"method": "none", "params": {}}


def test_calibrator_follows_sklearn_conventions():
    cal = ProbabilityCalibrator("sigmoid")
    assert cal.get_params() == {"method": "sigmoid"}
    with pytest.raises(NotFittedError):
        cal.transform(np.array([0.5]))
    cal.fit(np.array([0.1, 0.3, 0.6, 0.9]), np.array([0, 1, 0, 1]))
    cloned = clone(cal)
    assert cloned.get_params() == {"method": "sigmoid"}
    assert not hasattr(cloned, "n_fit_rows_")


# --------------------------------------------------------------------------- selection rules


def test_fold_predictions_do_not_depend_on_that_folds_labels(miscalibrated):
    p, y, folds = (a[:3000] for a in miscalibrated)
    base = select_calibrator(p, y, folds)
    k = 2
    y_changed = y.copy()
    y_changed[folds == k] = 1 - y_changed[folds == k]
    changed = select_calibrator(p, y_changed, folds)
    for method in base.cv_proba:
        assert np.array_equal(base.cv_proba[method][folds == k], changed.cv_proba[method][folds == k])
        if method != "none":  # other folds did see fold k's labels, so they do move
            assert not np.array_equal(base.cv_proba[method], changed.cv_proba[method])
    assert base.calibrator.n_fit_rows_ == len(p)
    assert base.describe()["rows"] == len(p)
    assert base.describe()["fitted_on"] == "out_of_fold"


def test_selection_is_deterministic(miscalibrated):
    p, y, folds = (a[:3000] for a in miscalibrated)
    first, second = select_calibrator(p, y, folds), select_calibrator(p, y, folds)
    assert first.describe() == second.describe()
    assert first.evidence == second.evidence
    assert first.describe()["method"] == first.chosen and first.describe()["criterion"] == "log_loss"


def test_ties_keep_the_earlier_method(monkeypatch):
    # Make every method score the same, so only the tie rule decides.
    monkeypatch.setattr(
        calibrators, "_scores",
        lambda y, proba: {"log_loss": 0.5, "brier": 0.2, "ece_uniform": 0.0, "ece_quantile": 0.0},
    )
    p = np.array([0.2, 0.8, 0.3, 0.7] * 5)
    y = np.array([0, 1, 1, 0] * 5)
    folds = np.arange(20) % 2
    assert select_calibrator(p, y, folds).chosen == "none"
    assert select_calibrator(p, y, folds, methods=("isotonic", "sigmoid", "none")).chosen == "isotonic"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "y, p, message",
    [
        ([0, 1], [0.5, 1.2], r"\[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"\[0, 1\]"),
        ([0, 1, 1], [0.5, 0.5], "same length"),
        ([], [], "at least one"),
        ([0, 2], [0.5, 0.5], "binary"),
    ],
)
def test_bad_metric_input_raises(y, p, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(np.array(y), np.array(p, dtype=float))
    with pytest.raises(ValueError, match=message):
        reliability_table(np.array(y), np.array(p, dtype=float), binning="quantile")


def test_unknown_binning_and_method_raise():
    with pytest.raises(ValueError, match="binning must be one of"):
        expected_calibration_error([0, 1], [0.2, 0.8], binning="equal")
    with pytest.raises(ValueError, match="none.*sigmoid.*isotonic"):
        ProbabilityCalibrator("beta").fit([0.2, 0.8], [0, 1])
    with pytest.raises(ValueError, match="none.*sigmoid.*isotonic"):
        select_calibrator([0.2, 0.8, 0.3, 0.7], [0, 1, 0, 1], [0, 0, 1, 1], methods=("none", "beta"))


def test_missing_out_of_fold_probabilities_raise():
    with pytest.raises(ValueError, match="out-of-fold probabilities are missing"):
        select_calibrator(np.array([0.2, np.nan, 0.3, 0.7]), [0, 1, 0, 1], [0, 0, 1, 1])


def test_bad_folds_raise():
    with pytest.raises(ValueError, match="one fold per row"):
        select_calibrator([0.2, 0.8, 0.3, 0.7], [0, 1, 0, 1], [0, 1])
    with pytest.raises(ValueError, match="at least 2 folds"):
        select_calibrator([0.2, 0.8, 0.3, 0.7], [0, 1, 0, 1], [0, 0, 0, 0])
