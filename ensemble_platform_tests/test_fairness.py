"""Fairness report: known answers on hand-made arrays, binning, thin groups and the real slice."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ensemble_platform.errors import DataError
from ensemble_platform.evaluation.fairness import (
    MISSING_GROUP,
    SensitiveBinning,
    fairness_report,
    fit_sensitive_binning,
)
from ensemble_platform.policy import FairnessPolicy, GapThreshold

GAPS = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equal_opportunity_difference",
)
# Judge every group, however small: the known-answer tests use a handful of rows.
LOOSE = FairnessPolicy(min_group_size=1, min_group_class_count=1)


def _report(y, decisions_or_proba, labels, policy=LOOSE, **members):
    probas = {"ensemble": np.asarray(decisions_or_proba, dtype=float)}
    probas.update({name: np.asarray(p, dtype=float) for name, p in members.items()})
    return fairness_report(np.asarray(y), probas, {"A": pd.Series(list(labels))}, policy)


def _rows(report, model="ensemble", attr="A"):
    return {row["group"]: row for row in report["attributes"][attr]["groups"][model]}


def _gap(report, name, model="ensemble", attr="A"):
    return report["attributes"][attr]["gaps"][model][name]


# --- per-group metrics -----------------------------------------------------------------------


def test_group_metrics_known_answer():
    # group a: y = 1 1 0 0, p = .9 .4 .6 .1 -> decisions 1 0 1 0
    #   base 2/4 = .5, selection 2/4 = .5, TPR 1/2 = .5, FPR 1/2 = .5
    #   AUC: positive > negative pairs (.9>.6, .9>.1, .4>.1; .4<.6) = 3/4
    #   ECE (10 bins, one row each): (.1 + .6 + .6 + .1) / 4 = .35
    # group b: y = 1 0 0 0, p = .9 .2 .1 .1 -> decisions 1 0 0 0
    #   base .25, selection .25, TPR 1, FPR 0, AUC 1
    #   ECE: bins .9 -> |1-.9| = .1 (1 row); .2 -> .2 (1 row); .1 -> |0-.1| = .1 (2 rows)
    #        = (.1 + .2 + 2 * .1) / 4 = .125
    # group c: y = 0 0, p = .7 .3 -> decisions 1 0: no positives, so TPR and AUC are undefined
    y = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    p = [.9, .4, .6, .1, .9, .2, .1, .1, .7, .3]
    rows = _rows(_report(y, p, "aaaabbbbcc"))

    a, b, c = rows["a"], rows["b"], rows["c"]
    assert (a["count"], a["positives"]) == (4, 2)
    assert a["base_rate"] == pytest.approx(.5)
    assert a["selection_rate"] == pytest.approx(.5)
    assert a["true_positive_rate"] == pytest.approx(.5)
    assert a["false_positive_rate"] == pytest.approx(.5)
    assert a["roc_auc"] == pytest.approx(.75)
    assert a["ece"] == pytest.approx(.35)
    assert not a["thin"] and a["thin_reason"] is None

    assert (b["count"], b["positives"]) == (4, 1)
    assert b["base_rate"] == pytest.approx(.25)
    assert b["selection_rate"] == pytest.approx(.25)
    assert b["true_positive_rate"] == pytest.approx(1.0)
    assert b["false_positive_rate"] == pytest.approx(0.0)
    assert b["roc_auc"] == pytest.approx(1.0)
    assert b["ece"] == pytest.approx(.125)

    assert (c["count"], c["positives"]) == (2, 0)
    assert c["selection_rate"] == pytest.approx(.5)
    assert c["false_positive_rate"] == pytest.approx(.5)
    assert c["true_positive_rate"] is None and c["roc_auc"] is None
    # No positives at all is below any class-count floor: reported but not judged.
    assert c["thin"] and c["thin_reason"] == "0 positives < min_group_class_count 1"


def test_groups_are_sorted_whatever_the_row_order():
    y = [1, 0, 1, 0, 1, 0]
    p = [.9, .1, .8, .2, .7, .6]
    labels = ["zeta", "zeta", "alpha", "alpha", "mid", "mid"]
    report = _report(y, p, labels)
    assert [r["group"] for r in report["attributes"]["A"]["groups"]["ensemble"]] == ["alpha", "mid", "zeta"]
    assert report["attributes"]["A"]["judged_groups"] == ["alpha", "mid", "zeta"]


# --- gaps ------------------------------------------------------------------------------------

# Decisions are given as 0/1 "probabilities", so decision = value at threshold 0.5.
# tpr-driven: a: y 1 1 0 0, d 1 1 0 0 -> sel .5, TPR 1, FPR 0
#             b: y 1 1 0 0, d 1 0 0 0 -> sel .25, TPR .5, FPR 0
#   DP diff .5-.25 = .25, DP ratio .25/.5 = .5, TPR gap .5, FPR gap 0 -> EO .5, EOpp .5
# fpr-driven: a: y 1 1 0 0,   d 1 1 0 0   -> sel .5, TPR 1, FPR 0
#             b: y 1 0 0 0 0, d 1 1 1 1 0 -> sel .8, TPR 1, FPR 3/4
#   DP diff .8-.5 = .3, DP ratio .5/.8 = .625, TPR gap 0, FPR gap .75 -> EO .75, EOpp 0
TPR_DRIVEN = ([1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0, 0, 0], "aaaabbbb")
FPR_DRIVEN = ([1, 1, 0, 0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 1, 1, 1, 1, 0], "aaaabbbbb")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param(TPR_DRIVEN, (.25, .5, .5, .5), id="tpr-gap-drives-equalized-odds"),
        pytest.param(FPR_DRIVEN, (.3, .625, .75, 0.0), id="fpr-gap-drives-equalized-odds"),
    ],
)
def test_gap_values_known_answer(case, expected):
    report = _report(*case)
    values = tuple(_gap(report, name)["value"] for name in GAPS)
    assert values == pytest.approx(expected)


def _policy(**gaps: GapThreshold) -> FairnessPolicy:
    return FairnessPolicy(min_group_size=1, min_group_class_count=1, **gaps)


@pytest.mark.parametrize(
    ("gap", "threshold", "status"),
    [
        # TPR_DRIVEN has DP difference .25: a difference fails only when it exceeds a limit.
        ("demographic_parity_difference", GapThreshold(warn=.25, fail=.4), "pass"),
        ("demographic_parity_difference", GapThreshold(warn=.2, fail=.25), "warn"),
        ("demographic_parity_difference", GapThreshold(warn=.1, fail=.2), "fail"),
        # ... and DP ratio .5: a ratio is bad when it is *below* a limit.
        ("demographic_parity_ratio", GapThreshold(warn=.5, fail=.4, higher_is_worse=False), "pass"),
        ("demographic_parity_ratio", GapThreshold(warn=.8, fail=.5, higher_is_worse=False), "warn"),
        ("demographic_parity_ratio", GapThreshold(warn=.8, fail=.6, higher_is_worse=False), "fail"),
        # EO and EOpp are .5.
        ("equalized_odds_difference", GapThreshold(warn=.5, fail=.6), "pass"),
        ("equal_opportunity_difference", GapThreshold(warn=.4, fail=.5), "warn"),
        ("equal_opportunity_difference", GapThreshold(warn=.3, fail=.4), "fail"),
    ],
)
def test_status_at_policy_limits(gap, threshold, status):
    policy = _policy(**{gap: threshold})
    result = _gap(_report(*TPR_DRIVEN, policy=policy), gap)
    assert result["status"] == status
    assert result["threshold"] == {"warn": threshold.warn, "fail": threshold.fail}


def test_summary_counts_and_worst_status():
    # TPR_DRIVEN under the default limits: DP diff .25 > .2 fail, ratio .5 < .6 fail,
    # EO .5 fail, EOpp .5 fail; the member decides identically in both groups -> all pass.
    y, d, labels = TPR_DRIVEN
    report = _report(y, d, labels, fair=[1, 1, 0, 0, 1, 1, 0, 0])
    summary = report["summary"]
    assert summary["status_counts"] == {"pass": 4, "warn": 0, "fail": 4, "thin": 0}
    assert summary["worst_status"] == "fail"
    assert summary["ensemble_worst_status"] == "fail"
    assert [g["status"] for g in report["attributes"]["A"]["gaps"]["fair"].values()] == ["pass"] * 4


def test_ratio_is_one_when_nobody_is_selected():
    # All selection rates are 0: fairlearn's 0/0 ratio is NaN, but the groups are at parity.
    report = _report([1, 0, 1, 0], [0, 0, 0, 0], "aabb")
    assert _gap(report, "demographic_parity_ratio")["value"] == 1.0
    assert _gap(report, "demographic_parity_difference")["value"] == 0.0


# --- thin groups -----------------------------------------------------------------------------


def test_thin_group_is_flagged_and_left_out_of_the_gaps():
    # a and b as in TPR_DRIVEN (DP diff .25, EO .5); c has 2 rows and selects everyone, which
    # would push the DP difference to 1 - .25 = .75 if it were judged.
    y, d, labels = TPR_DRIVEN
    y3, d3, labels3 = [*y, 1, 0], [*d, 1, 1], labels + "cc"
    policy = FairnessPolicy(min_group_size=3, min_group_class_count=1)
    report = _report(y3, d3, labels3, policy=policy)

    rows = _rows(report)
    assert rows["c"]["thin"] and rows["c"]["thin_reason"] == "2 rows < min_group_size 3"
    assert rows["c"]["selection_rate"] == pytest.approx(1.0)  # still reported
    assert report["attributes"]["A"]["judged_groups"] == ["a", "b"]
    without_c = _report(y, d, labels, policy=policy)
    for name in GAPS:
        assert _gap(report, name)["value"] == pytest.approx(_gap(without_c, name)["value"])
    assert _gap(report, "demographic_parity_difference")["value"] == pytest.approx(.25)


def test_group_with_too_few_of_a_class_is_thin():
    # b has 5 rows but a single positive: its TPR rests on one row.
    y = [1, 1, 0, 0, 1, 0, 0, 0, 0]
    d = [1, 1, 0, 0, 1, 0, 0, 0, 0]
    policy = FairnessPolicy(min_group_size=4, min_group_class_count=2)
    rows = _rows(_report(y, d, "aaaabbbbb", policy=policy))
    assert rows["b"]["thin_reason"] == "1 positives < min_group_class_count 2"
    assert not rows["a"]["thin"]


def test_one_judged_group_gives_thin_status_and_no_value():
    y, d, labels = TPR_DRIVEN
    policy = FairnessPolicy(min_group_size=5, min_group_class_count=1)
    report = _report([*y, 1], [*d, 1], labels + "a", policy=policy)  # a: 5 rows, b: 4 rows
    assert report["attributes"]["A"]["judged_groups"] == ["a"]
    for name in GAPS:
        assert _gap(report, name)["value"] is None
        assert _gap(report, name)["status"] == "thin"
    assert report["summary"]["status_counts"] == {"pass": 0, "warn": 0, "fail": 0, "thin": 4}
    assert report["summary"]["worst_status"] == "thin"


# --- dominant member -------------------------------------------------------------------------


def test_dominant_member_names_the_biased_member():
    # Both groups: y = 1 1 0 0.
    # fair:   p = .8 .8 .2 .05 in a; .95 .8 .2 .05 in b -> decisions 1 1 0 0 in both: every gap 0.
    # biased: p = .9 everywhere in a, .1 everywhere in b -> sel 1 vs 0: DP diff 1, ratio 0, EO 1.
    # ensemble = mean: a .85 .85 .55 .475 -> 1 1 1 0 (sel .75, TPR 1, FPR .5)
    #                  b .525 .45 .15 .075 -> 1 0 0 0 (sel .25, TPR .5, FPR 0)
    #   -> DP diff .5, ratio 1/3, EO .5, EOpp .5: between the two members.
    y = [1, 1, 0, 0] * 2
    fair = np.array([.8, .8, .2, .05, .95, .8, .2, .05])
    biased = np.array([.9] * 4 + [.1] * 4)
    report = _report(y, (fair + biased) / 2, "aaaabbbb", fair=fair, biased=biased)

    assert report["summary"]["dominant_member"] == {"A": {name: "biased" for name in GAPS}}
    expected = {
        "demographic_parity_difference": (0.0, .5, 1.0),
        "demographic_parity_ratio": (1.0, 1 / 3, 0.0),
        "equalized_odds_difference": (0.0, .5, 1.0),
        "equal_opportunity_difference": (0.0, .5, 1.0),
    }
    for name, (fair_value, ensemble_value, biased_value) in expected.items():
        assert _gap(report, name, "fair")["value"] == pytest.approx(fair_value)
        assert _gap(report, name)["value"] == pytest.approx(ensemble_value)
        assert _gap(report, name, "biased")["value"] == pytest.approx(biased_value)
    assert list(report["attributes"]["A"]["groups"]) == ["ensemble", "fair", "biased"]


def test_no_sensitive_attributes_gives_an_empty_report():
    # A dataset spec may list no sensitive columns; the model card then says so.
    report = fairness_report(np.array([1, 0]), {"ensemble": np.array([.7, .2])}, {}, LOOSE)
    assert report["attributes"] == {}
    assert report["summary"]["worst_status"] == "pass"
    assert report["summary"]["status_counts"] == {"pass": 0, "warn": 0, "fail": 0, "thin": 0}
    assert report["summary"]["dominant_member"] == {}


def test_dominant_member_is_none_without_members():
    report = _report(*TPR_DRIVEN)
    assert report["summary"]["dominant_member"] == {"A": {name: None for name in GAPS}}


# --- binning ---------------------------------------------------------------------------------


def test_numeric_binning_uses_training_quantiles_only():
    train = pd.DataFrame({"Age": np.arange(0, 101)})  # quartiles at exactly 25, 50, 75
    binning = fit_sensitive_binning(train, "Age", n_bins=4)
    assert binning.kind == "numeric"
    assert binning.edges == (-np.inf, 25.0, 50.0, 75.0, np.inf)
    assert binning.labels() == ["< 25", "25 – 50", "50 – 75", ">= 75"]

    # Left-closed bins; values outside the training range fall into the outer bins.
    holdout = pd.Series([-5.0, 24.9, 25.0, 49.9, 50.0, 75.0, 1000.0, np.nan], index=range(10, 18))
    labels = binning.assign(holdout)
    assert labels.tolist() == [
        "< 25", "< 25", "25 – 50", "25 – 50", "50 – 75", ">= 75", ">= 75", MISSING_GROUP,
    ]
    assert labels.index.tolist() == list(range(10, 18))

    # Assigning a different holdout does not move anything: a value keeps its group.
    other = binning.assign(pd.Series([1e6, 30.0, -1e6]))
    assert other.tolist() == [">= 75", "25 – 50", "< 25"]
    assert binning.edges == (-np.inf, 25.0, 50.0, 75.0, np.inf)


def test_numeric_binning_on_the_real_split_ignores_holdout(split):
    binning = fit_sensitive_binning(split.train, "Age", n_bins=4)
    inner = np.unique(np.quantile(split.train["Age"].to_numpy(float), [.25, .5, .75]))
    assert binning.edges[1:-1] == tuple(inner)
    assert binning.labels() == ["< 28", "28 – 35", "35 – 44", ">= 44"]
    # A holdout far above the training range lands in the top bin instead of a new one.
    shifted = split.holdout["Age"] + 100
    assert set(binning.assign(shifted)) == {binning.labels()[-1]}


def test_numeric_labels_are_readable_for_fractional_edges():
    train = pd.DataFrame({"x": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]})
    binning = fit_sensitive_binning(train, "x", n_bins=2)  # median 3.0
    assert binning.labels() == ["< 3", ">= 3"]
    # Quartiles of the skewed column are 0, 0, 1: the repeated edge collapses and the edge at
    # the minimum moves to the next value up, so no bin is empty on the training rows.
    skewed = pd.DataFrame({"x": [0.0] * 12 + [1.0, 2.0, 3.0, 4.0, 5.0]})
    skewed_binning = fit_sensitive_binning(skewed, "x", n_bins=4)
    assert skewed_binning.edges == (-np.inf, 1.0, np.inf)
    assert set(skewed_binning.assign(skewed["x"])) == {"< 1", ">= 1"}
    assert json.dumps(binning.describe(), allow_nan=False)
    assert binning.describe()["edges"] == [3.0]


def test_categorical_binning_passes_values_through():
    train = pd.DataFrame({"Marital": ["single", "married", None, "widow"]})
    binning = fit_sensitive_binning(train, "Marital", n_bins=4)
    assert binning.kind == "categorical"
    assert binning.labels() == ["married", "single", "widow"]
    labels = binning.assign(pd.Series(["widow", np.nan, "divorced"]))  # unseen value kept as is
    assert labels.tolist() == ["widow", MISSING_GROUP, "divorced"]


def test_numeric_column_with_few_values_is_categorical():
    train = pd.DataFrame({"children": [0, 1, 2, 2, 1, np.nan]})  # float because of the NaN
    binning = fit_sensitive_binning(train, "children", n_bins=4)
    assert binning.kind == "categorical"
    assert binning.assign(train["children"]).tolist() == ["0", "1", "2", "2", "1", MISSING_GROUP]


def test_numeric_groups_appear_in_natural_order_in_the_report():
    binning = SensitiveBinning(column="Age", kind="numeric", edges=(-np.inf, 30.0, 40.0, np.inf))
    ages = pd.Series([50, 35, 20, np.nan, 45, 33, 25, 60])
    y = np.array([1, 0, 1, 0, 0, 1, 0, 1])
    report = fairness_report(y, {"ensemble": np.full(8, .3)}, {"Age": binning.assign(ages)}, LOOSE)
    order = [r["group"] for r in report["attributes"]["Age"]["groups"]["ensemble"]]
    assert order == ["< 30", "30 – 40", ">= 40", MISSING_GROUP]


# --- the real slice --------------------------------------------------------------------------


def _slice_probas(split):
    numeric = list(split.schema.numeric)
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(split.train[numeric], split.y_train)
    logistic = model.predict_proba(split.holdout[numeric])[:, 1]
    noise = np.random.default_rng(0).uniform(size=len(split.holdout))
    return {"ensemble": (logistic + noise) / 2, "logistic": logistic, "noise": noise}


def _slice_report(split):
    probas = _slice_probas(split)
    groups = {
        column: fit_sensitive_binning(split.train, column, n_bins=4).assign(split.holdout[column])
        for column in ("Age", "Marital")
    }
    return fairness_report(split.y_holdout, probas, groups, FairnessPolicy())


def test_report_on_the_real_split(split):
    report = _slice_report(split)
    text = json.dumps(report, allow_nan=False)
    assert text == json.dumps(_slice_report(split), allow_nan=False)  # deterministic

    for attr in ("Age", "Marital"):
        section = report["attributes"][attr]
        assert list(section["groups"]) == ["ensemble", "logistic", "noise"]
        rows = section["groups"]["ensemble"]
        assert sum(r["count"] for r in rows) == len(split.holdout)
        assert section["judged_groups"] == [r["group"] for r in rows if not r["thin"]]
        assert set(section["gaps"]["noise"]) == set(GAPS)
    # Holdout: 115 married, 24 single, 6 separated, 4 widow, 1 divorced; only married is >= 30 rows.
    marital = report["attributes"]["Marital"]
    assert marital["judged_groups"] == ["married"]
    assert {g["status"] for g in marital["gaps"]["ensemble"].values()} == {"thin"}
    assert len(report["attributes"]["Age"]["groups"]["ensemble"]) == 4
    counts = report["summary"]["status_counts"]
    assert sum(counts.values()) == 2 * 3 * len(GAPS)


def test_rates_and_gaps_equal_fairlearns_on_the_judged_rows(split):
    """The report computes rates directly (for speed); fairlearn is the reference it must match."""
    from fairlearn import metrics as fm

    report = _slice_report(split)
    binning = fit_sensitive_binning(split.train, "Age", n_bins=4)
    labels = binning.assign(split.holdout["Age"]).to_numpy()
    section = report["attributes"]["Age"]
    judged = np.isin(labels, section["judged_groups"])
    assert judged.sum() > 0 and len(section["judged_groups"]) >= 2
    proba = _slice_probas(split)["logistic"]
    y, decisions = split.y_holdout[judged], (proba[judged] >= 0.5).astype(int)
    expected = {
        "demographic_parity_difference": fm.demographic_parity_difference(y, decisions, sensitive_features=labels[judged]),
        "demographic_parity_ratio": fm.demographic_parity_ratio(y, decisions, sensitive_features=labels[judged]),
        "equalized_odds_difference": fm.equalized_odds_difference(y, decisions, sensitive_features=labels[judged]),
        "equal_opportunity_difference": fm.equal_opportunity_difference(y, decisions, sensitive_features=labels[judged]),
    }
    for name, value in expected.items():
        assert section["gaps"]["logistic"][name]["value"] == pytest.approx(value, abs=1e-12), name
    frame = fm.MetricFrame(metrics={"selection_rate": fm.selection_rate, "tpr": fm.true_positive_rate,
                                    "fpr": fm.false_positive_rate},
                           y_true=split.y_holdout, y_pred=(proba >= 0.5).astype(int), sensitive_features=labels)
    for row in section["groups"]["logistic"]:
        assert row["selection_rate"] == pytest.approx(frame.by_group.loc[row["group"], "selection_rate"])
        assert row["true_positive_rate"] == pytest.approx(frame.by_group.loc[row["group"], "tpr"])
        assert row["false_positive_rate"] == pytest.approx(frame.by_group.loc[row["group"], "fpr"])


# --- bad input -------------------------------------------------------------------------------


def test_missing_sensitive_column_is_a_data_error(split):
    with pytest.raises(DataError, match="'Gender'"):
        fit_sensitive_binning(split.train, "Gender", n_bins=4)


def test_numeric_binning_rejects_text_values():
    binning = fit_sensitive_binning(pd.DataFrame({"Age": np.arange(20)}), "Age", n_bins=4)
    with pytest.raises(DataError, match="'Age'.*expected numbers"):
        binning.assign(pd.Series(["young", "old"]))


@pytest.mark.parametrize(
    ("y", "probas", "groups", "message"),
    [
        pytest.param([1, 0, 1], {"ensemble": [.1, .2]}, {"A": ["a", "a", "b"]},
                     "'ensemble'.*expected \\(3,\\)", id="proba-length"),
        pytest.param([1, 0, 1], {"ensemble": [.1, .2, .3], "m1": [.1]}, {"A": ["a", "a", "b"]}, "'m1'",
                     id="member-length"),
        pytest.param([1, 0, 1], {"ensemble": [.1, .2, .3]}, {"Age": ["a", "b"]}, "'Age'.*2 rows",
                     id="groups-length"),
        pytest.param([1, 0, 2], {"ensemble": [.1, .2, .3]}, {"A": ["a", "a", "b"]}, "0/1",
                     id="labels-not-binary"),
        pytest.param([1, 0, 1], {"m1": [.1, .2, .3]}, {"A": ["a", "a", "b"]}, "'ensemble'", id="no-ensemble"),
        pytest.param([1, 0, 1], {"ensemble": [.1, .2, 1.3]}, {"A": ["a", "a", "b"]}, "'ensemble'.*\\[0, 1\\]",
                     id="proba-out-of-range"),
        pytest.param([1, 0, 1], {"ensemble": [.1, .2, .3]}, {"": ["a", "a", "b"]}, "non-empty",
                     id="unnamed-attribute"),
        pytest.param([1, 0, 1], {"ensemble": [.1, .2, .3]}, {"A": ["a", None, "b"]}, "'A'.*missing",
                     id="unlabelled-rows"),
    ],
)
def test_bad_report_input_is_a_value_error(y, probas, groups, message):
    with pytest.raises(ValueError, match=message):
        fairness_report(
            np.asarray(y),
            {name: np.asarray(p) for name, p in probas.items()},
            {attr: pd.Series(labels) for attr, labels in groups.items()},
            LOOSE,
        )
